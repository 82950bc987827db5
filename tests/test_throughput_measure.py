"""What `--time-budget` measures before it plans: a few real training steps and one real
evaluation, timed on a fake clock that moves only when a step or the evaluation runs, so that
every figure `measure` returns is exact (no timing is asserted: the clock is the test's)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from synthetic import make_data
from test_train import SMALL

import fmnist.train.throughput as throughput
from fmnist import budget
from fmnist.distributed import DistInfo
from fmnist.train.setup import set_up

STEP_S, EVAL_S = 0.125, 0.5  # exact in binary: the loop's `<` against 1.5 s is not blurred


@pytest.fixture
def clocked(monkeypatch: pytest.MonkeyPatch) -> dict[str, list]:
    """Each training step takes STEP_S and each evaluation EVAL_S of the fake clock; what each
    was given is kept."""
    now, seen = [0.0], {"steps": [], "evaluated": [], "tta": []}
    step, evaluate = throughput.train_step, throughput.evaluate_split

    def timed_step(parts, setup, x, y):
        now[0] += STEP_S
        seen["steps"].append(len(y))
        return step(parts, setup, x, y)

    def timed_evaluation(model, images, labels, setup, tta=None):
        now[0] += EVAL_S
        seen["evaluated"].append(len(images))
        seen["tta"].append(tta)
        return evaluate(model, images, labels, setup, tta)

    monkeypatch.setattr(throughput, "train_step", timed_step)
    monkeypatch.setattr(throughput, "evaluate_split", timed_evaluation)
    monkeypatch.setattr(throughput.time, "perf_counter", lambda: now[0])
    return seen


def test_the_throughput_is_the_images_of_the_timed_steps_over_their_seconds(clocked) -> None:
    # 1.5 s of steps at 0.125 s: 12 timed steps of 32 images, after 3 untimed warm-up steps
    data = make_data(n_train=320, n_test=2_100)
    recipe = replace(SMALL, holdout=64, tta_flip=True, eval_every=3)
    m = throughput.measure(set_up(recipe, DistInfo(), data, None, None))
    timed = round(budget.MEASURE_SECONDS / STEP_S)
    assert clocked["steps"] == [32] * (budget.WARMUP_STEPS + timed)
    assert m.images_per_s == 32 / STEP_S
    assert m.train_images == 320 - 64  # what an epoch trains on: the holdout is kept out
    # one plain evaluation of the first 2,048 test images, scaled to what an evaluation covers
    assert clocked["evaluated"] == [2_048] and clocked["tta"] == [False]
    assert m.eval_seconds == pytest.approx(EVAL_S / 2_048 * (2_100 + 64))
    # the recipe's evaluations: every third epoch, and the last with flip TTA (two passes)
    assert (m.eval_every, m.final_passes) == (3, 2)
    assert m.ends(4) == 3 * m.eval_seconds and m.ends(3) == 2 * m.eval_seconds
    no_tta = throughput.measure(set_up(replace(recipe, tta_flip=False, eval_every=0), DistInfo(),
                                       data, None, None))
    assert (no_tta.eval_every, no_tta.final_passes) == (0, 1)


def test_a_fast_machine_still_times_the_fewest_steps(clocked, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(budget, "MEASURE_SECONDS", STEP_S)  # reached after the first timed step
    m = throughput.measure(set_up(SMALL, DistInfo(), make_data(n_test=64), None, None))
    assert clocked["steps"] == [32] * (budget.WARMUP_STEPS + budget.MIN_STEPS)
    assert m.images_per_s == 32 / STEP_S
    assert clocked["evaluated"] == [64] and m.eval_seconds == pytest.approx(EVAL_S)


def test_a_budget_is_planned_from_what_this_setup_measures(clocked, capsys) -> None:
    """`plan_for` measures the recipe's own setup (its data, its model) and plans with it: at
    256 images/s of a 256-image epoch, 60 s hold tens of epochs, evaluated as the recipe says."""
    data = make_data(n_train=320, n_test=64)
    setup = set_up(replace(SMALL, holdout=64, eval_every=0), DistInfo(), data, None, None)
    plan = throughput.plan_for(setup, 60.0, show=True)
    planned = plan.recipe
    assert capsys.readouterr().out.startswith("Plan for a ")
    # the recipe's evaluations are kept (the last epoch only) and planned for
    assert planned.eval_every == 0 and planned.model == SMALL.model
    assert plan.measured.eval_every == 0
    assert len(clocked["steps"]) == budget.WARMUP_STEPS + round(budget.MEASURE_SECONDS / STEP_S)
    assert planned.steps and planned.steps > 8 * 256 // 32  # more than 8 epochs of 8 steps
