"""The learning-rate range test (Smith 2015; fastai's `lr_find`): train a fresh model of the
recipe for a few hundred steps while the lr grows exponentially from `start` to `end`, stop
when the loss diverges, and suggest a learning rate from the curve.

The suggestion starts from the lr where the loss, smoothed, is lowest: past it the lr is too
large to keep improving. For a constant lr it is a tenth of that (fastai's `lr_min / 10`), the
largest lr that still descends reliably. For a schedule that warms up to its peak and anneals
(onecycle, cosine) it is that lr itself: Smith's rule for the peak of a one-cycle schedule
("the largest lr at which the loss still falls"), which the warm-up makes safe.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fmnist.recipes import Recipe
    from fmnist.train import Data

START, END, STEPS = 1e-6, 10.0, 200
# The stop rule reads an exponential moving average (it can only look back); the suggestion
# reads a centred moving average, which does not lag: an EMA of 0.98 trails the loss by ~50
# steps, 1.7 decades at 200 steps over 7, and put the minimum far too late.
SMOOTH = 0.98
WINDOW = 11  # steps in the centred average (0.4 decade at the defaults)
DIVERGE = 4.0  # stop when the EMA exceeds this many times its best so far


@dataclass
class RangeTest:
    lrs: list[float]
    losses: list[float]
    smoothed: list[float]  # centred moving average of `losses`
    minimum_lr: float | None  # lr at the smoothed minimum; None when the loss never fell
    suggestion: float | None
    diverged: bool  # stopped before `end` because the loss blew up


def lr_at(i: int, steps: int, start: float, end: float) -> float:
    """The lr of step `i` of `steps`: exponentially from `start` to `end`."""
    return start * (end / start) ** (i / max(1, steps - 1))


def range_test(step: Callable[[float], float], start: float = START, end: float = END,
               steps: int = STEPS, divisor: float = 10.0, smooth: float = SMOOTH,
               diverge: float = DIVERGE) -> RangeTest:
    """Call `step(lr)` (one optimiser step at `lr`, returning its loss) with growing lrs; the
    suggestion is the smoothed minimum's lr / `divisor`."""
    lrs: list[float] = []
    losses: list[float] = []
    avg, best, diverged = 0.0, math.inf, False
    for i in range(steps):
        lr = lr_at(i, steps, start, end)
        loss = step(lr)
        avg = smooth * avg + (1 - smooth) * loss
        value = avg / (1 - smooth ** (i + 1))  # bias-corrected, like Adam's moments
        lrs.append(lr)
        losses.append(loss)
        if not math.isfinite(loss) or value > diverge * best:
            diverged = True
            break
        best = min(best, value)
    smoothed = centred_mean(losses, WINDOW)
    low = minimum(smoothed)
    minimum_lr = None if low is None else lrs[low]
    return RangeTest(lrs, losses, smoothed, minimum_lr,
                     None if minimum_lr is None else minimum_lr / divisor, diverged)


def centred_mean(values: list[float], window: int) -> list[float]:
    """The mean of each value's `window` neighbours (fewer at the ends); NaN/inf propagate."""
    half = window // 2
    return [sum(values[max(0, i - half): i + half + 1]) / len(values[max(0, i - half): i + half + 1])
            for i in range(len(values))]


def minimum(smoothed: list[float]) -> int | None:
    """Index of the smoothed minimum; None if it is at the very start (the loss never fell:
    the range starts too high, or nothing is learning)."""
    finite = [(v, i) for i, v in enumerate(smoothed) if math.isfinite(v)]
    if not finite:
        return None
    _, low = min(finite)
    return None if low < max(1, len(smoothed) // 20) else low


def lr_find(recipe: Recipe | None = None, *, data: Data | None = None, data_dir: str | Path | None = None,
            start: float = START, end: float = END, steps: int = STEPS) -> RangeTest:
    """The range test on a fresh model of `recipe` (default: `default`), its optimiser
    (momentum, weight decay) and its data pipeline (augmentation included), in one process."""
    from fmnist import distributed
    from fmnist.errors import ConfigError
    from fmnist.recipes import get_recipe, validate
    from fmnist.train.setup import build, endless, set_up, train_step

    recipe = recipe or get_recipe("default")
    validate(recipe)
    if not 0 < start < end:
        raise ConfigError(f"The lr range must grow: --start {start} and --end {end} do not.")
    if steps < 10:
        raise ConfigError(f"--steps {steps} is too few for a range test: take 100 or more.")
    setup = set_up(recipe, distributed.DistInfo(), data, data_dir, None)
    parts = build(setup, None)
    parts.train_model.train()
    batches = endless(parts.batches)

    # the lr found is the first group's (the recipe's lr); other groups keep their ratio to it
    # (the conv filters' muon_lr with optimizer muon); the schedule's warm-up has set every lr
    # to 0, its peaks are kept as initial_lr
    peaks = [g["initial_lr"] for g in parts.optimizer.param_groups]
    ratios = [peak / peaks[0] for peak in peaks]

    def step(lr: float) -> float:
        for group, ratio in zip(parts.optimizer.param_groups, ratios, strict=True):
            group["lr"] = lr * ratio
        # train_step also steps the recipe's schedule; the lr set above is the one used
        # .item(): the divergence check needs every loss, so one sync per step
        return train_step(parts, setup, *next(batches)).item()

    try:
        return range_test(step, start, end, steps,
                          divisor=10.0 if recipe.schedule == "constant" else 1.0)
    finally:
        distributed.shutdown()
