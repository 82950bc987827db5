"""What `fmnist sweep --objective` measures, as docs/sweep.md promises it: `accuracy` alone, or
with `latency` or `params` as a second measure to minimise (anything else refused in one
sentence); latency is the fp32 forward pass over one fixed batch of 256 blank 28x28 images (with
the flipped pass too when the trial has flip TTA), the best of 5 timed passes after one warm-up
pass that is not timed, in ms per image.

The latency tests run a model that records what it is given on a clock of their own, which moves
only when the model runs: each pass takes the time the test says, so the figure is exact."""

from __future__ import annotations

import types

import pytest
import torch
from torch import nn

from fmnist.errors import ConfigError
from fmnist.models import build_model
from fmnist.sweep import measures
from fmnist.sweep.measures import Objective, latency_ms, parse_objective

# seconds each pass takes: the warm-up (the fastest here, so a timed warm-up would show), then
# the five timed passes, the best of them the fourth: 0.512 s for 256 images, 2 ms an image
PASSES = [0.1, 0.9, 0.7, 0.8, 0.512, 0.6]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def perf_counter(self) -> float:
        return self.now


class Recorder(nn.Module):
    """Ten logits of zeros; notes each input and moves the clock by its pass's time (a pass
    with flip TTA is two forward calls, each half of it)."""

    def __init__(self, clock: Clock, calls_per_pass: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.clock, self.per_pass, self.inputs = clock, calls_per_pass, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.clock.now += PASSES[len(self.inputs) // self.per_pass] / self.per_pass
        self.inputs.append(x.clone())
        return torch.zeros(len(x), 10)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(measures, "time", types.SimpleNamespace(perf_counter=clock.perf_counter))
    return clock


@pytest.mark.parametrize("tta_flip", [False, True])
def test_latency_is_the_best_of_five_timed_passes_after_a_warm_up_in_ms_per_image(clock, tta_flip):
    calls = 2 if tta_flip else 1
    model = Recorder(clock, calls).train()
    assert latency_ms(model, tta_flip) == pytest.approx(0.512 * 1000 / 256)
    # one warm-up and five timed passes, each over the same fixed batch of 256 blank images,
    # normalised as the model would see blank pixels at mean 0 and std 1
    assert len(model.inputs) == 6 * calls
    for x in model.inputs:
        assert x.shape == (256, 1, 28, 28) and x.dtype == torch.float32
        assert torch.equal(x, torch.zeros(256, 1, 28, 28))
    assert not model.training  # measured as it serves: in eval mode


def test_the_latency_objective_measures_the_trials_model_with_its_flip_tta(clock):
    model = Recorder(clock, 2)
    assert Objective("latency").measure(model, True) == pytest.approx(2.0)
    assert len(model.inputs) == 12  # the flipped pass too


def test_the_params_objective_counts_the_models_parameters():
    model = build_model("cnn", {"widths": [4, 4, 8], "num_classes": 10})
    count = Objective("params").measure(model, False)
    assert count == float(sum(p.numel() for p in model.parameters())) and count > 0
    assert isinstance(count, float)


def test_a_real_models_latency_is_a_positive_figure_in_ms_per_image():
    model = build_model("cnn", {"widths": [4, 4, 8], "num_classes": 10})
    assert 0 < latency_ms(model, tta_flip=False) < 1000


@pytest.mark.parametrize(("text", "second", "directions", "labels"), [
    ("accuracy", None, ["maximize"], ["validation accuracy"]),
    ("accuracy,latency", "latency", ["maximize", "minimize"],
     ["validation accuracy", "ms per image"]),
    (" accuracy , params ", "params", ["maximize", "minimize"],
     ["validation accuracy", "parameters"]),
])
def test_the_objectives_a_sweep_takes(text, second, directions, labels):
    goal = parse_objective(text)
    assert goal == Objective(second)
    assert (goal.name, goal.directions, goal.labels) == (
        "accuracy" + (f",{second}" if second else ""), directions, labels)


@pytest.mark.parametrize("text", ["speed", "latency", "accuracy latency", "accuracy,speed",
                                  "latency,accuracy", "speed,params", "accuracy,latency,params",
                                  "accuracy,", ""])
def test_any_other_objective_is_refused_in_one_sentence(text):
    with pytest.raises(ConfigError) as e:
        parse_objective(text)
    assert str(e.value) == (f"Invalid objective '{text}'. Only accuracy, accuracy,latency and "
                            "accuracy,params are supported.")
