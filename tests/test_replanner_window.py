"""The time-budget re-planner judges by what the machine does now: on a machine that slows down
for half a minute and then recovers, the step time it plans with (status.json's `replans`) is
the recent one, not the run's or the epoch's average, and the run still ends on time.

A fake clock drives a budgeted run's steps (two minutes of them: the real thing would be slow and
its timing noisy); the schedule, epochs and re-planning are the real ones."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from synthetic import make_data
from test_train import SMALL
from test_write_errors import read_only

from fmnist.budget import END_SECONDS, Measured, Plan, remaining_steps, steps_for
from fmnist.distributed import DistInfo
from fmnist.errors import WriteError
from fmnist.train import RunState
from fmnist.train.setup import build, set_up
from fmnist.train.throughput import BudgetKeeper

BATCH, PER_EPOCH = 8, 1000  # long epochs: a window the re-planner forgets must lie inside one
FAST, SLOW = 0.05, 0.2  # seconds a step
SLOW_FROM, SLOW_UNTIL = 5.0, 35.0
OVERHEAD = 0.5  # an evaluation (a pass over the test images)
SAVE = 0.125  # an epoch's end, besides any evaluation


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def step_seconds(now: float) -> float:
    return SLOW if SLOW_FROM <= now < SLOW_UNTIL else FAST


def budgeted_run(budget_s: float, show: bool = False, every: float | None = 1.0,
                 step_time: Callable[[float], float] = step_seconds, run_dir: Path | None = None,
                 tta: bool = False, eval_every: int = 1,
                 ) -> tuple[float, RunState, BudgetKeeper]:
    """A run planned for `budget_s` at the fast step time, driven as fmnist.train.loop drives it
    (re-planned every `every` seconds; None: fit's own, BudgetKeeper's default); when it ended,
    the state its callbacks saw, and the re-planner (its `replans`). An evaluation takes
    OVERHEAD a pass (the last one's two with `tta`), and each epoch's end SAVE more;
    the recipe evaluates every `eval_every`-th epoch (0: the last only)."""
    recipe = replace(SMALL, batch_size=BATCH, epochs=1, tta_flip=tta, eval_every=eval_every)
    setup = set_up(recipe, DistInfo(), make_data(n_train=BATCH * PER_EPOCH, n_test=8), None, None)
    measured = Measured(BATCH / FAST, BATCH * PER_EPOCH, OVERHEAD, eval_every, 2 if tta else 1)
    setup = replace(setup, recipe=replace(recipe, steps=steps_for(budget_s - END_SECONDS,
                                                                  measured, BATCH)))
    parts = build(setup, None)
    state = RunState(setup.recipe, run_dir, True, PER_EPOCH, BATCH * PER_EPOCH, parts.epochs,
                     setup=setup, parts=parts, plan=Plan(setup.recipe, measured, budget_s, 0.0))
    clock = FakeClock()
    keeper = (BudgetKeeper(budget_s, show=show, clock=clock) if every is None
              else BudgetKeeper(budget_s, show=show, every=every, clock=clock))
    keeper.on_fit_start(state)
    epoch = 0
    while epoch < parts.epochs:
        epoch += 1
        state.epoch = epoch
        keeper.on_epoch_start(state)
        for step in range(PER_EPOCH):
            if state.global_step + step >= parts.total_steps:
                break
            clock.now += step_time(clock.now)
            keeper.on_step(state, step, torch.zeros(()), BATCH)
        last = epoch >= parts.epochs  # evaluated with the recipe's TTA (fmnist.train.loop)
        evaluated = last or (eval_every and epoch % eval_every == 0)
        if evaluated:
            clock.now += OVERHEAD * (2 if tta and last else 1) + SAVE
            keeper.on_epoch_end(state, {"test_accuracy": 0.5, "tta": tta and last})
        else:
            clock.now += SAVE
            keeper.on_epoch_end(state, {})
    if not last and (tta or not evaluated):  # re-planned to end: the loop's evaluate_final
        clock.now += OVERHEAD * (2 if tta else 1)
    return clock.now + END_SECONDS, state, keeper


def test_after_a_slow_spell_the_replanner_plans_with_the_recent_step_time():
    budget = 120.0
    end, _, keeper = budgeted_run(budget)
    replans = keeper.replans
    # re-plans made once the windows since the recovery hold only fast steps
    after = [r for r in replans if budget - r["seconds_left"] >= SLOW_UNTIL + 1.0]
    during = [r for r in replans if SLOW_FROM + 1.0 <= budget - r["seconds_left"] < SLOW_UNTIL]
    assert during and all(abs(r["step_ms"] - 1000 * SLOW) < 1 for r in during), during
    assert after and all(abs(r["step_ms"] - 1000 * FAST) < 1 for r in after), after
    assert 0.95 * budget <= end <= budget


def test_each_replan_is_said_as_it_happens_and_recorded(capsys):
    _, state, keeper = budgeted_run(120.0, show=True)
    replans = keeper.replans
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(replans) >= 3
    steps = None
    for line, r in zip(lines, replans, strict=True):
        assert line.startswith(f"Re-planned at step {r['at_step']:,} with "
                               f"{r['seconds_left']:.1f} s left at {r['step_ms']:.1f} ms a step: ")
        assert line.endswith(f" -> {r['steps']:,} steps ({-(-r['steps'] // PER_EPOCH)} epochs).")
        if steps is not None:
            assert f": {steps:,} -> " in line  # from what the previous re-plan planned
        steps = r["steps"]
    assert [r["at_step"] for r in replans] == sorted(r["at_step"] for r in replans)
    # the progress line's "epoch i/N" (RunState.epochs, what callbacks read) follows the plan
    assert state.epochs == -(-replans[-1]["steps"] // PER_EPOCH)


ODD = 0.0537123  # seconds a step: re-plan times and step times with more decimals than recorded


def test_fit_re_plans_every_five_seconds_and_its_first_re_plan_keeps_the_plans_evaluations_free():
    """The window fit's re-planner uses (its default) is 5 s; before the first epoch has ended,
    the evaluations the plan measured are kept free (here one an epoch, OVERHEAD each); its
    record rounds to 10 ms and 1 us."""
    budget = 120.0
    _, _, keeper = budgeted_run(budget, every=None, step_time=lambda now: ODD)
    now, at = 0.0, 0
    while now < 5.0:  # the fake clock as the run moved it
        now, at = now + ODD, at + 1
    first = keeper.replans[0]
    assert first["at_step"] == at
    assert first["seconds_left"] == round(budget - now, 2) != round(budget - now, 3)
    assert first["step_ms"] == round(1000 * ODD, 3) != round(1000 * ODD, 4)
    assert first["steps"] == at + remaining_steps(budget - now, at, PER_EPOCH, now / at,
                                                  lambda k: k * OVERHEAD)


def test_a_run_folder_that_cannot_take_the_re_planned_config_says_which_file(small_disk):
    """config.json is rewritten at the end with the steps that ran: on a read-only disk that
    fails as one sentence naming it."""
    run = small_disk / "run"
    run.mkdir()
    _, state, keeper = budgeted_run(120.0, run_dir=run)
    assert keeper.replans
    read_only(small_disk)
    with pytest.raises(WriteError) as caught:
        keeper.on_fit_end(state)
    assert str(caught.value) == (f"Could not write the run config {run / 'config.json'}: the "
                                 "filesystem is read-only.")


def test_a_run_that_evaluates_only_its_last_epoch_keeps_its_tta_evaluation_free_from_the_start():
    """The default recipe evaluates its last epoch only, with flip TTA (two passes): a run
    shorter than an epoch has no evaluation to measure before its end, so the re-plans keep the
    plan's measured two passes free from the first one on, and the run ends on time."""
    budget = 30.0  # 600 of an epoch's 1,000 steps
    end, _, keeper = budgeted_run(budget, step_time=lambda now: FAST, tta=True, eval_every=0)
    now, at = 0.0, 0
    while now < 1.0:  # the fake clock as the run moved it, to the first re-plan
        now, at = now + FAST, at + 1
    assert keeper.replans[0]["at_step"] == at
    assert keeper.replans[0]["steps"] == at + remaining_steps(
        budget - now, at, PER_EPOCH, now / at, lambda k: 2 * OVERHEAD)  # nothing saved yet
    # on time, but for the one save that no epoch's end measured before it
    assert 0.95 * budget <= end <= budget + SAVE


def test_epoch_ends_that_evaluate_nothing_are_measured_as_saves_and_counted_for_each_epoch():
    budget = 160.0  # three epochs and a fifth at FAST
    end, _, keeper = budgeted_run(budget, step_time=lambda now: FAST, tta=True, eval_every=0)
    assert keeper.save_seconds == SAVE and keeper.measured.eval_seconds == OVERHEAD
    # the fourth epoch's save and its TTA evaluation were kept free: the run ends on time
    assert 0.95 * budget <= end <= budget
