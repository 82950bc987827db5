"""Planning a time budget at its edges: budgets under a second, whole steps and epochs, exactly
one epoch fitting, the time spent measuring, narrowing odd widths and only a cnn's, the epoch in
progress when re-planning, and the budget counted from the process's start."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import replace

from test_budget import BASE

from fmnist.budget import (
    Measured,
    narrower,
    parse_duration,
    plan,
    process_started,
    remaining_steps,
    steps_for,
)
from fmnist.recipes import apply_overrides, get_recipe


def test_a_budget_under_a_second_is_a_budget():
    assert parse_duration("0.5s") == 0.5 and parse_duration(0.25) == 0.25


def test_steps_are_whole_steps():
    m = Measured(images_per_s=2_000, train_images=60_000, eval_seconds=2.0)
    assert m.steps_per_epoch(128) == 469  # the last batch of an epoch is a part batch
    steps = steps_for(10.03, m, 100)  # 8.03 s of training: 160.6 batches' worth
    assert steps == 160 and isinstance(steps, int)


def test_exactly_one_epoch_fitting_keeps_the_model():
    recipe = replace(BASE, batch_size=100)
    fixed = Measured(images_per_s=1_000, train_images=1_000, eval_seconds=0.05)  # 10 steps, 1 s
    p = plan(recipe, 1.06, lambda r: fixed)
    assert p.recipe.steps == 10 and p.recipe.model_config == BASE.model_config


def test_the_time_spent_measuring_comes_out_of_the_budget():
    def slow_measure(recipe):
        time.sleep(0.5)
        return Measured(images_per_s=1_000, train_images=1_000, eval_seconds=0.0)

    p = plan(replace(BASE, batch_size=100), 5.0, slow_measure)
    assert p.spent >= 0.5 and p.seconds <= 5.0


def test_only_a_cnn_is_narrowed_and_odd_widths_round_down_to_at_least_4():
    cnn = apply_overrides(BASE, {"model_config": {"widths": [5, 25, 50]}})
    assert narrower(cnn).model_config["widths"] == [4, 12, 25]
    resnet = apply_overrides(get_recipe("default"), {"model": "resnet",
                                                     "model_config": {"widths": [16, 32, 64]}})
    assert narrower(resnet) is None


def test_a_replan_mid_epoch_finishes_the_epoch_it_is_in_before_counting_whole_ones():
    # 15 steps into epochs of 10: 5 steps left in this one. Time for 10 more steps and one
    # epoch's end (1 s), after the run's end allowance: finish this epoch, start no other.
    assert remaining_steps(1.0 + 1.0 + 1.0 + 0.05, done=15, per_epoch=10, step_seconds=0.1,
                           ends=lambda k: k * 1.0) == 5


def test_the_budget_counts_from_the_process_start():
    code = ("import time; time.sleep(1.0); t = time.monotonic(); "
            "from fmnist.budget import process_started; print(t - process_started())")
    age = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                               check=True).stdout)
    assert 1.0 <= age < 30  # the sleep, and the interpreter's start before it
    assert process_started() < time.monotonic()  # and in this process, started long ago
