"""Per-epoch evaluation: test (and holdout) accuracy and loss, each rank scoring a slice."""

from __future__ import annotations

import torch
from torch import nn

from fmnist import distributed
from fmnist.inference import predict_logits, score
from fmnist.train.setup import Setup


def evaluate_split(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, setup: Setup,
) -> tuple[float, float]:
    """(accuracy, mean loss) over all of `images`; each rank does a 1/world slice, then sum."""
    recipe, info = setup.recipe, setup.info
    part = slice(info.rank, None, info.world_size)
    x, y = images[part], labels[part]
    # fp32 even when training in bf16: the accuracy a run reports must be the accuracy its
    # checkpoint serves, and Predictor, evaluate and the server all run fp32.
    logits = predict_logits(model, x, setup.mean, setup.std, batch_size=recipe.eval_batch_size,
                            tta_flip=recipe.tta_flip)
    batch = recipe.eval_batch_size if recipe.eval_loss == "batches" else 0
    totals = score(logits, y, loss_per_batch=batch)
    totals = distributed.all_reduce_sum(totals.to(reduce_device(logits.device)), info).cpu()
    return (totals[0] / totals[3]).item(), (totals[1] / totals[2]).item()


def evaluate_epoch(model: nn.Module, setup: Setup) -> dict[str, float]:
    """The test (and holdout) accuracy and loss of the model rank 0 saves."""
    distributed.broadcast_buffers(model, setup.info)
    data = setup.data
    row = dict(zip(("test_accuracy", "test_loss"),
                   evaluate_split(model, data.test_images, data.test_labels, setup), strict=True))
    if data.holdout_images is not None and data.holdout_labels is not None:
        row["holdout_accuracy"], row["holdout_loss"] = evaluate_split(
            model, data.holdout_images, data.holdout_labels, setup)
    return row


def reduce_device(device: torch.device) -> torch.device:
    # NCCL reduces CUDA tensors only; gloo takes CPU tensors.
    return device if device.type == "cuda" else torch.device("cpu")
