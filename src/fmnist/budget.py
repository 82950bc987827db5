"""Training to a time budget: `fmnist train --time-budget 90s`, `fit(recipe, time_budget=90)`.

Lightning's `max_time` stops a run when time is up, in the middle of its learning-rate schedule.
Here the budget is planned instead: measure this machine's training throughput and evaluation
time on the recipe's own model for a few steps, then choose the number of optimiser steps (the
last epoch may stop part-way) so that the schedule *ends* when the budget does. When not even one
epoch of the recipe's model fits, its cnn widths are halved until one does. The plan is an
ordinary recipe (steps, epochs, widths), written to the run's config.json, so `--config` repeats
the run exactly without planning again.

The budget is what the user waits: from the command's start (the process's, for `fmnist
train`) to its end, start-up, data loading, measuring and the final files included. The plan is
not trusted to hold: while the run goes, `remaining_steps` re-plans the steps left from the
throughput and epoch overhead seen lately, so the schedule still ends at the budget when
another job takes the cores (or gives them back). config.json then records the steps that ran.
"""

from __future__ import annotations

import itertools
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from fmnist.errors import ConfigError
from fmnist.recipes import Recipe

_UNITS = {"": 1.0, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
# The throughput measurement: steps untimed (lazy init, allocator warm-up), then timed steps
# until this many seconds have passed (at least MIN_STEPS).
WARMUP_STEPS, MIN_STEPS, MEASURE_SECONDS = 3, 5, 1.5


def parse_duration(text: str | float) -> float:
    """`90`, `90s`, `5m`, `1.5min`, `1h` -> seconds (> 0); anything else is a ConfigError."""
    if isinstance(text, int | float):
        seconds = float(text)
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*", text.lower())
        if m is None or m.group(2) not in _UNITS:
            raise ConfigError(f"Time budget {text!r} is not a duration: use e.g. 90s, 5m or 1h.")
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    if not seconds > 0:
        raise ConfigError(f"Time budget must be positive, got {text!r}.")
    return seconds


@dataclass(frozen=True)
class Measured:
    """What one epoch costs on this machine for a given recipe."""

    images_per_s: float  # training throughput
    train_images: int  # images per epoch
    eval_seconds: float  # one plain evaluation (test set, and holdout if any)
    # Which epochs are evaluated: every `eval_every`-th (0: none) and the last, whose evaluation
    # makes `final_passes` forward passes (2 with flip TTA). The defaults count one plain
    # evaluation an epoch.
    eval_every: int = 1
    final_passes: int = 1

    def evaluated(self, first: int, last: int) -> int:
        """How many of epochs `first` .. `last - 1` (not the run's last) are evaluated."""
        return sum(1 for e in range(first, last) if self.eval_every and e % self.eval_every == 0)

    def ends(self, k: int, first: int = 1) -> float:
        """The evaluations of epochs `first` .. `first + k - 1`, the last of them the run's."""
        return (self.evaluated(first, first + k - 1) + self.final_passes) * self.eval_seconds

    def steps_per_epoch(self, batch_size: int) -> int:
        return -(-self.train_images // batch_size)

    def epochs(self, steps: int, batch_size: int) -> int:
        """Epochs that `steps` reach into (the last one maybe part-way)."""
        return -(-steps // self.steps_per_epoch(batch_size))

    def seconds(self, steps: int, batch_size: int) -> float:
        """Training `steps` batches, and the evaluations of the epochs they reach into."""
        return steps * batch_size / self.images_per_s + self.ends(self.epochs(steps, batch_size))


@dataclass(frozen=True)
class Plan:
    recipe: Recipe  # the resolved recipe: steps, epochs (and maybe widths) fitted to the budget
    measured: Measured
    budget: float  # seconds, as asked for
    spent: float  # seconds already spent measuring

    @property
    def seconds(self) -> float:
        """The run's expected training + evaluation time, measuring included."""
        return self.spent + self.measured.seconds(self.recipe.steps, self.recipe.batch_size)

    def describe(self) -> str:
        m, r = self.measured, self.recipe
        epochs = r.steps * r.batch_size / m.train_images
        n = m.evaluated(1, r.epochs) + 1
        evaluated = "once, at the end" if n == 1 else f"{n} times"
        tta = ", two for the last: flip TTA" if m.final_passes > 1 else ""
        return (f"Plan for a {_fmt(self.budget)} budget: {_describe_model(r)}, {r.steps:,} steps "
                f"= {epochs:.2f} epochs at ~{m.images_per_s:,.0f} img/s, evaluated {evaluated} "
                f"({m.eval_seconds:.1f} s a pass{tta}): "
                f"~{_fmt(self.seconds)} with {self.spent:.1f} s of measuring.")


def _fmt(seconds: float) -> str:
    seconds = max(0.0, seconds)  # a budget spent to the last millisecond is 0.0 s, not -0.0 s
    if seconds < 10:
        return f"{seconds:.1f} s"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def steps_for(seconds: float, measured: Measured, batch_size: int) -> int:
    """The most optimiser steps whose training, and the evaluations of the epochs they reach
    into, fit in `seconds` (0 when none do)."""
    per_epoch = measured.steps_per_epoch(batch_size)
    return _fitting_steps(seconds, per_epoch, per_epoch, measured.ends,
                          lambda t: int(t * measured.images_per_s) // batch_size)


def _fitting_steps(seconds: float, left_in_epoch: int, per_epoch: int,
                   ends: Callable[[int], float], steps_in: Callable[[float], int]) -> int:
    """The most steps, `left_in_epoch` before the current epoch ends, whose training
    (`steps_in(t)` steps fit in t seconds) and the ends of the epochs they reach into
    (`ends(k)` seconds for k epochs from here, the k-th the run's last: evaluation, saving) fit
    in `seconds`."""
    best = 0
    for k in itertools.count(1):  # the run ends in the k-th epoch from here
        cap = left_in_epoch + (k - 1) * per_epoch
        steps = min(cap, max(0, steps_in(seconds - ends(k))))
        if steps <= cap - per_epoch:  # the time runs out before that epoch starts
            return best
        best = steps
    raise AssertionError("unreachable")


def narrower(recipe: Recipe) -> Recipe | None:
    """The recipe with its cnn at half the widths, or None when it cannot shrink further."""
    widths = recipe.model_config.get("widths")
    if recipe.model != "cnn" or not widths or min(widths) <= 4:
        return None
    return replace(recipe, model_config={**recipe.model_config,
                                         "widths": [max(4, w // 2) for w in widths]})


def plan(recipe: Recipe, budget: float, measure: Callable[[Recipe], Measured]) -> Plan:
    """Fit `recipe` to `budget` seconds, calling `measure` on each candidate it considers."""
    t0 = time.perf_counter()
    candidate: Recipe | None = recipe
    tried: list[str] = []
    while candidate is not None:
        measured = measure(candidate)
        spent = time.perf_counter() - t0
        batch = candidate.batch_size
        steps = steps_for(budget - spent, measured, batch)
        if steps >= measured.steps_per_epoch(batch):  # at least one whole epoch
            epochs = measured.epochs(steps, batch)
            return Plan(replace(candidate, steps=steps, epochs=epochs), measured, budget, spent)
        one_epoch = measured.seconds(measured.steps_per_epoch(batch), batch)
        tried.append(f"{_describe_model(candidate)} needs {one_epoch:.0f} s an epoch")
        candidate = narrower(candidate)
    raise ConfigError(
        f"Not even one epoch fits in {_fmt(budget)} on this machine ({'; '.join(tried)}): "
        "give a larger --time-budget, or set --epochs instead."
    )


def _describe_model(recipe: Recipe) -> str:
    widths: Any = recipe.model_config.get("widths")
    return recipe.model + (f" {','.join(map(str, widths))}" if widths else "")


# What the end of a run costs after its last epoch's evaluation (curves.png, status.json, the
# TensorBoard figures), in seconds, on top of one more epoch overhead: kept free of training.
END_SECONDS = 1.0


def process_started() -> float:
    """When this process started, on `time.monotonic()`'s clock (Linux; elsewhere: now)."""
    try:
        stat = Path("/proc/self/stat").read_text()
        ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22, starttime, in clock ticks
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return time.monotonic()
    return time.monotonic() - max(0.0, age)


def remaining_steps(seconds: float, done: int, per_epoch: int, step_seconds: float,
                    ends: Callable[[int], float]) -> int:
    """How many more optimiser steps fit in `seconds` (less `END_SECONDS`), `done` steps into a
    run of `per_epoch` steps an epoch, each step taking `step_seconds` and the ends of k epochs
    from here (evaluation, saving; the k-th the run's last) `ends(k)`: the end of every epoch
    reached into must fit too. 0 when only the current epoch's end does."""
    return _fitting_steps(seconds - END_SECONDS, per_epoch - done % per_epoch, per_epoch,
                          ends, lambda t: int(t / step_seconds))
