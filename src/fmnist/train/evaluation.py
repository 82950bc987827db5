"""Per-epoch evaluation: test (and holdout) accuracy and loss, each rank scoring a slice.

Intermediate epochs are evaluated plain (one forward pass); the final epoch with the recipe's
flip TTA (`tta=True`), so what a run reports last is what its checkpoint serves. The final
evaluation's test logits are kept (`Evaluation.test_logits`) for what needs them at the end
(TensorBoard's confusion matrix and PR curves), so the test set is not passed over again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fmnist import distributed
from fmnist.inference import predict_logits, score
from fmnist.train.setup import Setup


@dataclass
class Evaluation:
    """One epoch's evaluation: its metrics row (test_accuracy, test_loss, tta, holdout_...) and
    this rank's test logits (all of them in one process; a 1/world slice under torchrun)."""

    row: dict[str, Any]
    test_logits: torch.Tensor
    holdout_logits: torch.Tensor | None = None  # this rank's, as test_logits


def split_logits(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, setup: Setup,
    tta: bool | None = None,
) -> tuple[float, float, torch.Tensor]:
    """(accuracy, mean loss) over all of `images`, and this rank's logits: each rank does a
    1/world slice, then sum. `tta` None: the recipe's flip TTA."""
    recipe, info = setup.recipe, setup.info
    part = slice(info.rank, None, info.world_size)
    x, y = images[part], labels[part]
    # fp32 even when training in bf16: the accuracy a run reports must be the accuracy its
    # checkpoint serves, and Predictor, evaluate and the server all run fp32.
    logits = predict_logits(model, x, setup.mean, setup.std, batch_size=recipe.eval_batch_size,
                            tta_flip=recipe.tta_flip if tta is None else tta)
    batch = recipe.eval_batch_size if recipe.eval_loss == "batches" else 0
    totals = score(logits, y, loss_per_batch=batch)
    totals = distributed.all_reduce_sum(totals.to(reduce_device(logits.device)), info).cpu()
    return (totals[0] / totals[3]).item(), (totals[1] / totals[2]).item(), logits


def evaluate_split(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, setup: Setup,
    tta: bool | None = None,
) -> tuple[float, float]:
    """(accuracy, mean loss) over all of `images` (see split_logits)."""
    acc, loss, _ = split_logits(model, images, labels, setup, tta)
    return acc, loss


def evaluate_epoch(model: nn.Module, setup: Setup, final: bool = True) -> Evaluation:
    """The test (and holdout) accuracy and loss of the model rank 0 saves: with the recipe's
    flip TTA when `final`, plain otherwise. The row's `tta` says which."""
    distributed.broadcast_buffers(model, setup.info)
    data = setup.data
    tta = setup.recipe.tta_flip and final
    acc, loss, logits = split_logits(model, data.test_images, data.test_labels, setup, tta)
    row: dict[str, Any] = {"test_accuracy": acc, "test_loss": loss, "tta": tta}
    held = None
    if data.holdout_images is not None and data.holdout_labels is not None:
        row["holdout_accuracy"], row["holdout_loss"], held = split_logits(
            model, data.holdout_images, data.holdout_labels, setup, tta)
    return Evaluation(row, logits, held)


def reduce_device(device: torch.device) -> torch.device:
    # NCCL reduces CUDA tensors only; gloo takes CPU tensors.
    return device if device.type == "cuda" else torch.device("cpu")
