"""What a time-budgeted run tells its user: the plan's line (model, steps, epochs, throughput,
evaluations, expected time) and durations written as a person reads them (5.0 s, 90 s,
2.5 min), and a budgeted run's folder records the steps that ran and each re-plan."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import pytest
from synthetic import make_data
from test_budget import BASE, fake_measure
from test_train import SMALL

import fmnist.train.throughput
from fmnist.budget import Measured, Plan, plan
from fmnist.errors import ConfigError
from fmnist.recipes import apply_overrides, get_recipe, read_config_file
from fmnist.train import fit


def test_the_plans_line_says_what_will_run():
    recipe = replace(BASE, steps=938, epochs=2)
    line = Plan(recipe, Measured(2_000, 60_000, 1.0), budget=90, spent=0.5).describe()
    # 938 x 128 images = 2.00 epochs; 0.5 + 60.03 + 2 x 1.0 = 62.5 s
    assert line == ("Plan for a 90 s budget: cnn 16,64,128, 938 steps = 2.00 epochs at ~2,000 "
                    "img/s, evaluated 2 times (1.0 s a pass): ~63 s with 0.5 s of measuring.")
    one = Plan(replace(recipe, steps=400, epochs=1), Measured(2_000, 60_000, 1.0), 300, 0.25)
    assert "evaluated once, at the end (1.0 s a pass): ~27 s with 0.2 s of measuring." in one.describe()
    # the default's evaluations: its last epoch only, with flip TTA (two passes of 1.0 s)
    last = Plan(replace(recipe, steps=938, epochs=2), Measured(2_000, 60_000, 1.0, 0, 2), 90, 0.5)
    assert last.describe().endswith(
        "evaluated once, at the end (1.0 s a pass, two for the last: flip TTA): ~63 s with 0.5 s "
        "of measuring.")  # 0.5 + 60.03 + 2 x 1.0
    every_other = Plan(replace(recipe, steps=2345, epochs=5), Measured(2_000, 60_000, 1.0, 2, 1),
                       300, 0.5)
    assert "evaluated 3 times (1.0 s a pass): ~2.6 min" in every_other.describe()  # epochs 2, 4, 5
    mlp = Plan(replace(get_recipe("quickstart"), steps=400, epochs=1), Measured(2_000, 60_000, 1.0),
               300, 0.25)
    assert mlp.describe().startswith("Plan for a 5.0 min budget: mlp, 400 steps = ")


@pytest.mark.parametrize("seconds, words", [(5, "5.0 s"), (9.94, "9.9 s"), (10, "10 s"),
                                            (119, "119 s"), (120, "2.0 min"), (150, "2.5 min"),
                                            (600, "10.0 min")])
def test_durations_are_written_as_a_person_reads_them(seconds, words):
    line = Plan(replace(BASE, steps=1, epochs=1), Measured(1e9, 60_000, 0.0), seconds, 0).describe()
    assert line.startswith(f"Plan for a {words} budget: ")


def test_a_budget_too_small_for_any_model_names_each_one_tried():
    with pytest.raises(ConfigError) as refused:
        plan(BASE, 150, fake_measure(10, []))
    assert str(refused.value) == (
        "Not even one epoch fits in 2.5 min on this machine (cnn 16,64,128 needs 6004 s an epoch; "
        "cnn 8,32,64 needs 3003 s an epoch; cnn 4,16,32 needs 1502 s an epoch): give a larger "
        "--time-budget, or set --epochs instead.")


def test_a_budget_already_spent_is_said_as_none_left():
    # a sweep trial whose time ran out a hair before it was planned: "0.0 s", never "-0.0 s"
    with pytest.raises(ConfigError, match=r"^Not even one epoch fits in 0\.0 s on this machine"):
        plan(BASE, -0.004, fake_measure(10, []))


def test_a_budgeted_run_that_saves_nothing_replans_and_finishes(tmp_path, capsys, monkeypatch):
    """`fit(..., time_budget=..., save=False)`: no folder to record the re-plans in, and none
    written, but the run re-plans and ends as one with a folder does."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(fmnist.train.throughput, "measure",
                        lambda setup: Measured(2_560.0, 256, 0.05))
    recipe = apply_overrides(SMALL, {"epochs": 1, "eval_every": 0})
    result = fit(recipe, data=make_data(), time_budget="0.3s", save=False)
    assert "Re-planned at step" in capsys.readouterr().out
    assert result.rows and result.rows[-1]["test_accuracy"] is not None
    assert list(tmp_path.iterdir()) == []


def test_a_budgeted_runs_folder_records_the_steps_that_ran_and_why(tmp_path, capsys,
                                                                    monkeypatch):
    # 2,560 img/s = 0.1 s an epoch of 256 images; this machine is slower, so the run re-plans
    monkeypatch.setattr(fmnist.train.throughput, "measure",
                        lambda setup: Measured(2_560.0, 256, 0.05))
    recipe = apply_overrides(SMALL, {"epochs": 1, "eval_every": 0})
    result = fit(recipe, data=make_data(), out=tmp_path / "run", time_budget="0.8s")
    out = capsys.readouterr().out
    # less start-up, and the 0.5 s kept free for curves.png (Curves.end_seconds)
    assert re.search(r"Plan for a 0\.[0-3] s budget: cnn 8,8,16, ", out)
    config = read_config_file(tmp_path / "run" / "config.json")
    assert config["eval_every"] == 0  # the recipe's own: its last epoch evaluated
    assert config["epochs"] == len(result.rows) and 0 < config["steps"] <= 20
    text = (tmp_path / "run" / "config.json").read_text()  # rewritten, laid out as written first
    assert text == json.dumps(json.loads(text), indent=2) + "\n"
    replans = json.loads((tmp_path / "run" / "status.json").read_text())["replans"]
    assert replans and replans[-1]["steps"] == config["steps"]
    assert f"-> {config['steps']:,} steps ({config['epochs']} epochs)." in out
    assert all(r["seconds_left"] < 0.3 and r["step_ms"] > 0 for r in replans)
