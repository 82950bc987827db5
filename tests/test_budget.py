"""Training to a time budget: the planner on given throughputs (no timing is asserted), and a
planned run on synthetic data whose config.json repeats it exactly."""

from __future__ import annotations

import json
import re
import time
from dataclasses import replace

import pytest
import torch
from synthetic import make_data
from test_train import SMALL, weights

from fmnist.budget import Measured, narrower, parse_duration, plan, steps_for
from fmnist.cli import main
from fmnist.distributed import DistInfo
from fmnist.errors import ConfigError
from fmnist.recipes import Recipe, apply_overrides, get_recipe, read_config_file
from fmnist.train import fit


@pytest.mark.parametrize("text, seconds", [("90", 90), ("90s", 90), ("5m", 300), ("1.5min", 90),
                                           ("2h", 7200), (" 45 s ", 45), (30, 30), (2.5, 2.5)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "5 minutes", "-3s", "0", "1e3", "s"])
def test_bad_durations_are_one_sentence(text):
    with pytest.raises(ConfigError, match="duration|positive"):
        parse_duration(text)


def test_steps_from_a_given_throughput():
    m = Measured(images_per_s=2_000, train_images=60_000, eval_seconds=2.0)
    # batch 100: 600 steps (30 s) an epoch, then 2 s of evaluation
    assert m.seconds(600, 100) == 32.0 and m.seconds(601, 100) == 34.05
    assert steps_for(96, m, 100) == 1800  # exactly three epochs
    assert steps_for(90, m, 100) == 1680  # two epochs and 4/5 of a third (evaluated too)
    assert m.seconds(1680, 100) == pytest.approx(90)
    assert steps_for(65, m, 100) == 1200  # 2 s left after two epochs: not worth a third's eval
    assert steps_for(10, m, 100) == 160 and steps_for(2, m, 100) == 0


def fake_measure(img_per_s_at_full_width: float, calls: list):
    """Throughput that doubles each time the widths halve, like a compute-bound conv net."""
    def measure(recipe: Recipe) -> Measured:
        calls.append(recipe.model_config["widths"])
        scale = 16 / recipe.model_config["widths"][0]
        return Measured(img_per_s_at_full_width * scale, 60_000, 1.0)
    return measure


# a fixed cnn recipe, so these checks do not move when the default recipe's widths do
BASE = apply_overrides(get_recipe("default"), {"model_config": {"widths": [16, 64, 128]}, "epochs": 4})


def test_plan_keeps_the_model_and_fits_the_epochs():
    calls: list = []
    p = plan(BASE, 300, fake_measure(2_000, calls))  # 31 s an epoch
    assert calls == [[16, 64, 128]]
    assert p.recipe.model_config == {"widths": [16, 64, 128]}
    assert p.recipe.epochs == 10 and 9 * 469 < p.recipe.steps < 10 * 469  # batch 128
    assert 299 < p.seconds <= 300  # the budget is used, not just whole epochs of it
    assert f"cnn 16,64,128, {p.recipe.steps:,} steps = 9." in p.describe()
    # everything else is the recipe's own
    assert apply_overrides(p.recipe, {"epochs": 4, "steps": 0}) == BASE
    # asking for epochs later drops the planned step count (it would silently win otherwise)
    assert apply_overrides(p.recipe, {"epochs": 4}) == BASE


def test_plan_narrows_the_model_when_one_epoch_does_not_fit():
    calls: list = []
    p = plan(BASE, 40, fake_measure(1_000, calls))  # 61 s, 31 s, ...
    assert calls == [[16, 64, 128], [8, 32, 64]]
    assert p.recipe.epochs == 2 and p.recipe.model_config["widths"] == [8, 32, 64]


def test_plan_says_when_nothing_fits():
    with pytest.raises(ConfigError, match=r"Not even one epoch fits in 5.0 s .*--time-budget"):
        plan(BASE, 5, fake_measure(100, []))
    assert narrower(get_recipe("quickstart")) is None  # only a cnn's widths shrink


def test_measuring_trains_the_recipes_model_on_this_machine():
    from fmnist.distributed import DistInfo
    from fmnist.train.setup import set_up
    from fmnist.train.throughput import measure

    m = measure(set_up(SMALL, DistInfo(), make_data(), None, None))
    assert m.train_images == 256 and m.images_per_s > 0 and m.eval_seconds > 0


def test_a_planned_run_ends_its_schedule_and_its_config_records_it(tmp_path, capsys, monkeypatch):
    import fmnist.train.throughput

    # A fixed measurement: 2,560 img/s = 0.1 s an epoch of 256 images, 0.05 s an evaluation ->
    # 20 steps in 0.3 s. This machine is slower, so the run re-plans as it goes.
    monkeypatch.setattr(fmnist.train.throughput, "measure", lambda setup: Measured(2_560.0, 256, 0.05))
    # eval_every 0 (the default's) is kept: only the last epoch is evaluated
    recipe = apply_overrides(SMALL, {"epochs": 1, "schedule": "onecycle", "eval_every": 0})
    planned = fit(recipe, data=make_data(), out=tmp_path / "planned", time_budget="0.8s")
    out = capsys.readouterr().out
    # the budget left when the plan is made: 0.8 s less the 0.5 s kept free for curves.png, and
    # what start-up took on a busy machine
    assert re.match(r"Plan for a 0\.[1-3] s budget: cnn 8,8,16, ", out), out[:200]
    config = read_config_file(tmp_path / "planned" / "config.json")
    epochs, steps = config["epochs"], config["steps"]
    assert 0 < steps <= 20 and epochs == -(-steps // 8)  # 8 batches an epoch
    assert len(planned.rows) == epochs and planned.rows[-1]["epoch"] == epochs
    assert config["eval_every"] == 0 and "test_accuracy" in planned.rows[-1]
    assert not any("test_accuracy" in r for r in planned.rows[:-1])
    replans = json.loads((tmp_path / "planned" / "status.json").read_text()).get("replans")
    if replans:  # config.json says what ran, and the log said why
        assert replans[-1]["steps"] == steps and f"-> {steps:,} steps" in out
    else:
        assert f"cnn 8,8,16, {steps:,} steps = " in out
    # config.json alone repeats the run's length, its schedule ending at zero (and, when the
    # run was not re-planned, its weights: a run cut short by the clock ends where it stood)
    again = fit(apply_overrides(SMALL, config), data=make_data(), out=tmp_path / "again",
                display=False)
    assert len(again.rows) == epochs and again.rows[-1]["lr"] == pytest.approx(0.0, abs=1e-12)
    if not replans:
        assert planned.rows[-1]["lr"] == pytest.approx(0.0, abs=1e-12)
        wp, wa = weights(planned.model), weights(again.model)
        assert all(torch.equal(wp[k], wa[k]) for k in wp)


def test_budget_refuses_resume_and_epochs(tmp_path, capsys):
    fit(apply_overrides(SMALL, {"epochs": 1}), data=make_data(), out=tmp_path / "r", display=False)
    with pytest.raises(ConfigError, match="cannot be combined with resume"):
        fit(resume=tmp_path / "r", data=make_data(), time_budget=60, display=False)
    assert main(["train", "--time-budget", "60s", "--epochs", "3"]) == 2
    assert "drop --epochs and --steps" in capsys.readouterr().err
    assert main(["train", "--time-budget", "60s", "--steps", "30"]) == 2
    assert "drop --epochs and --steps" in capsys.readouterr().err
    assert main(["train", "--time-budget", "soon"]) == 2
    assert "is not a duration" in capsys.readouterr().err


# ---- re-planning while the run goes: a fake clock, the real loop's hooks --------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def simulate(budget_s: float, step_s, overhead_s: float, replan: bool,
             tta: bool = False) -> tuple[float, int]:
    """Drive a budgeted run's epochs with a fake clock (steps cost `step_s(now)` seconds, each
    epoch's end `overhead_s`; with `tta`, the recipe's, the last epoch's TTA evaluation twice
    that); returns when it ended and the steps it took."""
    from fmnist.budget import END_SECONDS, Plan, steps_for
    from fmnist.train import RunState
    from fmnist.train.setup import build, set_up
    from fmnist.train.throughput import BudgetKeeper

    setup = set_up(SMALL, DistInfo(), make_data(n_train=320), None, None)  # 10 steps an epoch
    measured = Measured(32 / step_s(0.0), 320, overhead_s, final_passes=2 if tta else 1)
    planned = steps_for(budget_s - END_SECONDS, measured, 32)
    setup = replace(setup, recipe=replace(SMALL, steps=planned, tta_flip=tta))
    parts = build(setup, None)
    state = RunState(setup.recipe, None, True, 10, 320, parts.epochs, setup=setup, parts=parts,
                     plan=Plan(setup.recipe, measured, budget_s, 0.0))
    clock = FakeClock()
    keeper = BudgetKeeper(budget_s, show=False, every=1.0, clock=clock)
    keeper.on_fit_start(state)
    epoch = 0
    while epoch < parts.epochs:
        epoch += 1
        state.epoch = epoch
        if replan:
            keeper.on_epoch_start(state)
        for step in range(10):
            if state.global_step + step >= parts.total_steps:
                break
            clock.now += step_s(clock.now)
            if replan:
                keeper.on_step(state, step, torch.zeros(()), 32)
        last = epoch >= parts.epochs  # evaluated with the recipe's TTA (fmnist.train.loop)
        clock.now += overhead_s * (2 if tta and last else 1)
        if replan:
            keeper.on_epoch_end(state, {"test_accuracy": 0.5, "tta": tta and last})
    if tta and not last:  # re-planned to end after a plain evaluation: the loop's evaluate_final
        clock.now += overhead_s
    return clock.now + END_SECONDS, parts.total_steps


def test_the_replanner_ends_on_time_when_the_throughput_halves():
    def halves(now: float) -> float:  # another job takes half the cores 15 s in
        return 0.05 if now < 15 else 0.1

    planned_end, planned_steps = simulate(60, halves, 0.5, replan=False)
    end, steps = simulate(60, halves, 0.5, replan=True)
    assert planned_end > 1.25 * 60  # the plan made at the start overruns by far
    assert 0.9 * 60 <= end <= 60 and steps < planned_steps


def test_the_replanner_uses_the_time_given_back():
    def recovers(now: float) -> float:  # slow at the start (when the plan is made), then fast
        return 0.1 if now < 10 else 0.05

    end, steps = simulate(60, recovers, 0.5, replan=True)
    planned_end, planned_steps = simulate(60, recovers, 0.5, replan=False)
    assert planned_end < 0.8 * 60 and steps > planned_steps and 0.9 * 60 <= end <= 60


def test_the_replanner_keeps_time_for_the_last_epochs_tta_evaluation():
    def halves(now: float) -> float:
        return 0.05 if now < 15 else 0.1

    # every epoch but the last evaluates plain: the last one's end costs twice what was measured
    end, _ = simulate(60, halves, 0.5, replan=True, tta=True)
    assert 0.9 * 60 <= end <= 60


def test_at_a_steady_throughput_a_run_without_tta_keeps_its_plan():
    # nothing to keep back for a last TTA evaluation, and every step costs what was measured
    steady = simulate(60, lambda now: 0.03, 0.5, replan=True)
    assert steady == simulate(60, lambda now: 0.03, 0.5, replan=False)


def test_the_budget_keeps_free_what_the_ends_of_the_run_take(tmp_path, capsys, monkeypatch):
    """The budget ends with the run's last file: the callbacks' ends (Callback.end_seconds:
    here one of 2 s, and curves.png's 0.5 s) are kept free of training when the run saves, and
    `fmnist train` keeps its own exit free too."""
    import fmnist.budget
    import fmnist.train.throughput
    from fmnist.cli.train import EXIT_SECONDS, left_of_budget
    from fmnist.train import Callback

    class SlowEnd(Callback):
        end_seconds = 2.0

    monkeypatch.setattr(fmnist.train.throughput, "measure", lambda setup: Measured(2_560.0, 256, 0.05))
    recipe = apply_overrides(SMALL, {"epochs": 1})

    def planned_budget(**kwargs) -> float:
        fit(recipe, data=make_data(), time_budget=3.0, callbacks=[SlowEnd()], **kwargs)
        return float(re.search(r"Plan for a (\d+\.\d) s budget", capsys.readouterr().out)[1])

    assert 0.0 < planned_budget(out=tmp_path / "run") <= 3.0 - 2.0 - 0.5
    assert 3.0 - 2.5 < planned_budget(save=False) <= 3.0  # nothing written: nothing kept free
    started = time.monotonic()  # a process that has just started
    monkeypatch.setattr(fmnist.budget, "process_started", lambda: started)
    assert EXIT_SECONDS > 0
    assert 60 - EXIT_SECONDS - 1 < left_of_budget("60s") <= 60 - EXIT_SECONDS
    with pytest.raises(ConfigError, match="used up by start-up alone"):
        left_of_budget(f"{EXIT_SECONDS}s")
