"""The divergence guard: a run that has stopped learning ends with a sentence instead of
training on for its whole schedule and saving a model that predicts one class.

The rule, from measurements. Chance is ln(classes), the loss of a uniform guess; a model starts
near it (or above: a fresh cnn's first batches can score worse) and goes down while it learns.
The run has diverged when
- a training or test loss is not a number (any epoch),
- an epoch after the first trains at a mean loss above `DIVERGED` x chance, or
- the last epoch's test loss is above `DIVERGED` x chance: it ends no better than a guess.
The first epoch is spared the second rule: on 3 classes x 100 images, batch 32, the default
recipe's first epoch (8 warm-up steps) averaged 2.39 against a chance of 1.10 and the run went
on to 95 %+. Where it fired: the same images at batch 128 (12 steps of the one-cycle schedule
at lr 0.1) trained at 1.50, 15.6, 3.22, ... and ended at 33.33 % with a test loss of 6.29;
lr 10 on the default recipe trained at 42.3 in its first epoch.
"""

from __future__ import annotations

import math
from typing import Any

from fmnist.errors import DivergedError
from fmnist.recipes import Recipe

DIVERGED = 2.0


def check_learning(row: dict[str, Any], classes: int, recipe: Recipe, last: bool) -> None:
    """Raise DivergedError when the epoch's `row` (the run's `last`?) shows a diverged run."""
    limit = DIVERGED * math.log(max(2, classes))
    train, test = row["train_loss"], row.get("test_loss")  # None: an epoch not evaluated
    if not math.isfinite(train) or (test is not None and not math.isfinite(test)):
        what = "the loss is not a number"
    elif row["epoch"] > 1 and train > limit:
        what = f"the training loss is {train:.2f}, far above chance ({limit / DIVERGED:.2f})"
    elif last and test is not None and test > limit:
        what = (f"the test loss ends at {test:.2f}, far above chance ({limit / DIVERGED:.2f}): "
                "the model did not learn")
    else:
        return
    raise DivergedError(
        f"Training diverged in epoch {row['epoch']}: {what}. Try a lower learning rate "
        f"(--lr {recipe.lr / 2:g}), or more steps for the schedule to warm up (--min-steps, "
        "--epochs)."
    )
