"""The learning-rate range test: on a problem whose best lr is known, and on a tiny fmnist
recipe through the Python API and the command line."""

from __future__ import annotations

import math

import pytest
import torch
from synthetic import make_data, write_csv

from fmnist.cli import main
from fmnist.lr_find import lr_find, range_test
from fmnist.recipes import Recipe

SMALL = Recipe(name="t", model="cnn", model_config={"widths": [8, 8, 16]}, epochs=1,
               batch_size=32, lr=0.05, bf16="off", eval_batch_size=64, channels_last=False,
               flip=False, tta_flip=False)


def quadratic(curvature: float):
    """One SGD step on 0.5 * h * |w|^2: the best lr is 1/h (w reaches 0 in a step) and any lr
    above 2/h diverges."""
    w = torch.ones(10)

    def step(lr: float) -> float:
        nonlocal w
        loss = 0.5 * curvature * float((w**2).sum())
        w = w - lr * curvature * w
        return loss

    return step


@pytest.mark.parametrize("curvature", [5.0, 500.0])
def test_finds_the_right_decade_and_stops_on_divergence(curvature):
    best, limit = 1 / curvature, 2 / curvature
    result = range_test(quadratic(curvature), start=1e-6, end=10.0, steps=200)
    # the loss is lowest where it starts to blow up; a tenth of that is the decade just below
    # the best lr: stable, and within 10x of the best
    assert limit / 2 <= result.minimum_lr <= 2 * limit
    assert best / 10 <= result.suggestion <= best
    assert result.diverged and len(result.lrs) < 200  # stopped early ...
    assert limit < result.lrs[-1] < 10 * limit  # ... soon after the lr became unstable


def test_one_lucky_batch_does_not_make_the_suggestion():
    quad = quadratic(5.0)

    def step(lr: float) -> float:  # one step early on reports a loss of 0 (a lucky batch)
        loss = quad(lr)
        return 0.0 if 1e-4 <= lr < 1.09e-4 else loss

    result = range_test(step, start=1e-6, end=10.0, steps=200)
    assert 0.2 / 10 <= result.suggestion <= 0.2


def test_a_loss_that_never_falls_gives_no_suggestion():
    flat = range_test(lambda lr: 1.0, steps=50)
    assert flat.suggestion is None and not flat.diverged and len(flat.lrs) == 50
    nan = range_test(lambda lr: math.nan if lr > 1e-3 else 1.0, steps=50)
    assert nan.diverged and nan.lrs[-1] > 1e-3 and len(nan.lrs) < 50


def test_on_a_recipe_it_diverges_and_suggests_a_usable_lr():
    result = lr_find(SMALL, data=make_data(), start=1e-4, end=1e4, steps=80)
    assert result.diverged and len(result.lrs) < 80
    assert result.suggestion is not None and 1e-4 < result.suggestion < result.lrs[-1] / 10
    assert min(result.smoothed) < result.smoothed[0] * 0.9  # it did learn on the way


def test_the_command_prints_a_suggestion_usable_as_lr_and_plots(tmp_path, capsys):
    dataset = write_csv(tmp_path / "data")
    config = tmp_path / "t.toml"
    config.write_text(f'dataset = "{dataset}"\nmodel = "cnn"\nbatch_size = 32\nbf16 = "off"\nchannels_last = false\n'
                      'flip = false\n[model_config]\nwidths = [8, 8, 16]\n')
    plot = tmp_path / "lr.png"
    assert main(["lr-find", "--config", str(config), "--start", "1e-4", "--end", "1e4",
                 "--steps", "80", "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    suggested = next(line for line in out.splitlines() if line.startswith("Suggested lr: "))
    lr = suggested.removeprefix("Suggested lr: ")
    assert f"fmnist train --recipe default --lr {lr}" in out
    from fmnist.cli import get_parser
    from fmnist.cli.train import recipe_from_args

    assert recipe_from_args(get_parser().parse_args(["train", "--lr", lr])).lr == float(lr)
    assert plot.stat().st_size > 10_000


@pytest.mark.parametrize("argv, message", [
    (["--start", "1", "--end", "0.1"], "The lr range must grow"),
    (["--steps", "3"], "too few for a range test"),
    (["--recipe", "nope"], "Unknown recipe 'nope'"),
])
def test_bad_ranges_are_one_sentence(argv, message, capsys):
    assert main(["lr-find", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
