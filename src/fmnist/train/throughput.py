"""What `--time-budget` plans with: the recipe's training throughput and evaluation time on this
machine, measured from a few real steps before the run and watched while it goes (the planning
itself is fmnist.budget)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch

from fmnist import budget, rundir
from fmnist.atomic import write_text
from fmnist.recipes import to_dict
from fmnist.train.callbacks import Callback, RunState
from fmnist.train.evaluation import evaluate_split
from fmnist.train.setup import Setup, build, endless, train_step


def plan_for(setup: Setup, seconds: float, show: bool) -> budget.Plan:
    """`setup.recipe` fitted to `seconds` on this machine (printed when `show`). The run
    evaluates the epochs its recipe says (the default: the last only), as the plan counts."""
    plan = budget.plan(setup.recipe, seconds, lambda r: measure(replace(setup, recipe=r)))
    if show:
        print(plan.describe(), flush=True)
    return plan


def measure(setup: Setup) -> budget.Measured:
    """Training throughput and the time of one plain evaluation of `setup.recipe` on this
    machine, from a few real steps on a throw-away model (what `--time-budget` plans with)."""
    parts = build(setup, None)
    parts.train_model.train()

    batches = endless(parts.batches)
    for _ in range(budget.WARMUP_STEPS):
        train_step(parts, setup, *next(batches)).item()  # .item(): wait for the step to finish
    steps, images, t0 = 0, 0, time.perf_counter()
    while steps < budget.MIN_STEPS or time.perf_counter() - t0 < budget.MEASURE_SECONDS:
        x, y = next(batches)
        train_step(parts, setup, x, y).item()
        steps, images = steps + 1, images + len(y)
    images_per_s = images / (time.perf_counter() - t0)
    data, n = setup.data, min(2048, len(setup.data.test_images))
    t0 = time.perf_counter()
    evaluate_split(parts.model, data.test_images[:n], data.test_labels[:n], setup, tta=False)
    per_image = (time.perf_counter() - t0) / max(1, n)
    evaluated = len(data.test_images) + (0 if data.holdout_images is None else len(data.holdout_images))
    recipe = setup.recipe
    return budget.Measured(images_per_s, parts.batches.samples_per_rank, per_image * evaluated,
                           recipe.eval_every, 2 if recipe.tta_flip else 1)


class BudgetKeeper(Callback):
    """Re-plans a budgeted run while it goes: every `every` seconds of training and at each
    epoch's end, the steps left are fitted to the time left from the throughput of the last
    window and what the ends of the epochs left take: saving each, evaluating those the recipe
    evaluates, and the last one's evaluation with the recipe's TTA. The evaluation's time is the
    plan's measurement (`RunState.plan`) until an epoch's end measures one; so from the first
    re-plan on, the final evaluation has its time kept free. The one callback that changes the
    run: it retargets the schedule (fmnist.train.optim.Schedule) and the epoch count."""

    def __init__(self, deadline: float, show: bool, every: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.deadline, self.show, self.every, self.clock = deadline, show, every, clock
        # which epochs evaluate, with how many passes the last, and a plain evaluation's seconds
        self.measured = budget.Measured(0.0, 0, 0.0)
        self.save_seconds = 0.0  # an epoch's end that evaluates nothing, once measured
        self.step_seconds = 0.0  # of the last window with steps in it
        self.replans: list[dict[str, Any]] = []

    def on_fit_start(self, state: RunState) -> None:
        if state.plan is not None:
            self.measured = state.plan.measured

    def on_epoch_start(self, state: RunState) -> None:
        self.window = (self.clock(), state.global_step + state.progress.step)

    def on_step(self, state: RunState, step: int, loss: torch.Tensor, batch: int) -> None:
        now = self.clock()
        self.last_step, self.done = now, state.global_step + step + 1
        started, first = self.window
        if now - started >= self.every:
            self.step_seconds = (now - started) / (self.done - first)
            self.replan(state, self.done, now)
            self.window = (now, self.done)

    def on_epoch_end(self, state: RunState, row: dict[str, Any]) -> None:
        now = self.clock()
        overhead = now - self.last_step
        if "test_accuracy" in row:  # evaluated: plain, or with flip TTA (two passes)
            passes = 2 if row.get("tta") else 1
            seconds = max(0.0, overhead - self.save_seconds) / passes
            self.measured = replace(self.measured, eval_seconds=seconds)
        else:
            self.save_seconds = overhead
        started, first = self.window
        if self.done > first:
            self.step_seconds = (self.last_step - started) / (self.done - first)
        self.replan(state, self.done, now)

    def on_fit_end(self, state: RunState) -> None:
        """config.json records the steps that ran (and status.json each re-plan)."""
        if state.run_dir is None or not self.replans:
            return
        parts = state.parts
        assert parts is not None
        ran = replace(state.recipe, steps=parts.total_steps, epochs=parts.epochs)
        write_text(state.run_dir / rundir.CONFIG, json.dumps(to_dict(ran), indent=2) + "\n",
                   "run config")
        rundir.note_status(state.run_dir, "running", replans=self.replans)

    def replan(self, state: RunState, done: int, now: float) -> None:
        parts, step_seconds = state.parts, self.step_seconds
        assert parts is not None
        per_epoch = len(parts.batches)
        if done >= parts.total_steps or step_seconds <= 0:
            return  # the run is over, or nothing measured yet
        first = done // per_epoch + 1  # the epoch the steps left start in

        def ends(k: int) -> float:  # of epochs first .. first + k - 1, the last the run's
            return k * self.save_seconds + self.measured.ends(k, first)

        left = budget.remaining_steps(self.deadline - now, done, per_epoch, step_seconds, ends)
        total = done + left  # 0 left: the run ends now, its last epoch part-way
        if total == parts.total_steps:
            return
        before = parts.total_steps
        parts.schedule.retarget(done, total)
        state.epochs = parts.epochs
        self.replans.append({"at_step": done, "steps": parts.total_steps,
                             "seconds_left": round(self.deadline - now, 2),
                             "step_ms": round(1000 * step_seconds, 3)})
        if self.show:
            print(f"Re-planned at step {done:,} with {self.deadline - now:.1f} s left at "
                  f"{1000 * step_seconds:.1f} ms a step: {before:,} -> {parts.total_steps:,} "
                  f"steps ({parts.epochs} epochs).", flush=True)
