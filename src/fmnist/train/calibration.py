"""The end-of-fit step: what model.json keeps about how far to trust the model's answers (its
temperature, conformal set thresholds and out-of-distribution threshold; see fmnist.trust),
fitted on the held-out training images the model never trained on.

A run without held-out images (`holdout` 0, as the Quickstart recipe) fits nothing: its
checkpoint predicts with temperature 1 and no sets.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fmnist import trust
from fmnist.inference import predict_logits
from fmnist.train.setup import Setup


def fit_trust(model: nn.Module, setup: Setup,
              logits: torch.Tensor | None = None) -> dict[str, Any] | None:
    """model.json's `trust`, from the held-out images' logits with the recipe's flip TTA (the
    way the checkpoint predicts): `logits` when the final evaluation already has them, else
    computed here; None when the run held none out. Under torchrun every process computes
    all of them, so `fit` returns the same metadata on every rank."""
    images, labels = setup.data.holdout_images, setup.data.holdout_labels
    if images is None or labels is None or len(images) == 0:
        return None
    recipe = setup.recipe
    if logits is None or len(logits) != len(labels):
        logits = predict_logits(model, images, setup.mean, setup.std,
                                batch_size=recipe.eval_batch_size, tta_flip=recipe.tta_flip)
    return trust.fit(logits.double().cpu().numpy(), labels.cpu().numpy())
