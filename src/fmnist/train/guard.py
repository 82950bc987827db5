"""The divergence guard: a run that has stopped learning ends with a sentence instead of
training on for its whole schedule and saving a model that predicts one class. It judges
learning, not the size of a loss: an ordinary run can end with a test loss above chance (two
classes, no label smoothing, long training on a small folder: 85 % accuracy at a test loss of
1.5, where chance is 0.69), because an overconfident model pays heavily for its few mistakes.

The run has diverged when
- a training or test loss is not a number (any epoch),
- an epoch's mean training loss is more than `FAR` times its starting level: the loss of the
  run's first step (a fresh model's, near chance, ln(classes)), or chance where the first step
  is not known (a run resumed from before it was recorded), whichever is larger; or
- the last epoch's test accuracy is no better than always answering the commonest test class,
  after at least `JUDGED_STEPS` steps (fewer, as in a smoke test of a few steps, may not have
  had the time to learn anything: that is not divergence).
Measured: the default recipe's first epoch on 3 classes x 100 images, batch 32 (8 warm-up steps),
averaged 2.39 against a start of 1.10 (2.2x) and the run went on to 95 %+; the same images at
batch 128 (12 steps of the one-cycle schedule at lr 0.1) trained at 1.50, 15.6 (14x), 3.22, ...
and ended at 33.33 %; lr 10 on the default recipe trained at 42.3 (18x) in its first epoch.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from fmnist.train.data import Data

FAR = 4.0
# Accuracy this close to the commonest class's share (in points) is a constant guess.
AT_CHANCE = 0.01
# The steps a run must have taken before its accuracy is judged: the recipes' `min_steps`, the
# least a run on a small dataset is given to learn.
JUDGED_STEPS = 100


def diverged(row: dict[str, Any], rows: list[dict[str, Any]], data: Data, last: bool,
             steps: int) -> str | None:
    """What shows that the run whose epoch `row` follows `rows` has diverged (the run's `last`
    epoch? after `steps` optimiser steps), or None while it learns."""
    train, test = row["train_loss"], row.get("test_loss")  # None: an epoch not evaluated
    if not math.isfinite(train) or (test is not None and not math.isfinite(test)):
        return "the loss is not a number"
    chance = math.log(max(2, len(data.classes)))
    first = rows[0] if rows else row
    start = max(chance, first.get("start_loss", chance))
    if train > FAR * start:
        return (f"the training loss is {train:.2f}, more than {FAR:g}x where it started "
                f"({start:.2f})")
    accuracy = row.get("test_accuracy")
    if last and steps >= JUDGED_STEPS and accuracy is not None and len(data.test_labels):
        commonest = torch.bincount(data.test_labels).max().item() / len(data.test_labels)
        if accuracy <= commonest + AT_CHANCE:
            return (f"its test accuracy ends at {accuracy:.2%}, no better than always answering "
                    f"the commonest class ({commonest:.2%}): the model did not learn")
    return None
