"""What a sweep maximises: validation accuracy alone, or with a second objective for a Pareto
front of faster or smaller models (`--objective accuracy,latency` or `accuracy,params`).

Latency is measured on this machine, as the model would serve on it: the fp32 forward pass (with
the trial's flip TTA when it has it) over one fixed batch of `LATENCY_BATCH` images, the best
of `LATENCY_REPEATS` timed passes after one warm-up pass, in ms per image. The best pass is
the one least disturbed by whatever else runs on the machine.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from fmnist.errors import ConfigError
from fmnist.inference import predict_logits

LATENCY_BATCH = 256
LATENCY_REPEATS = 5
SECOND = {"latency": ("minimize", "ms per image"), "params": ("minimize", "parameters")}


@dataclass(frozen=True)
class Objective:
    """`accuracy`, or `accuracy` and a second measure to minimise."""

    second: str | None = None

    @property
    def name(self) -> str:
        return "accuracy" + (f",{self.second}" if self.second else "")

    @property
    def directions(self) -> list[str]:
        return ["maximize"] + ([SECOND[self.second][0]] if self.second else [])

    @property
    def labels(self) -> list[str]:
        return ["validation accuracy"] + ([SECOND[self.second][1]] if self.second else [])

    def measure(self, model: nn.Module, tta_flip: bool) -> float:
        """The second value of a trial's trained model (only when there is a second)."""
        if self.second == "params":
            return float(sum(p.numel() for p in model.parameters()))
        return latency_ms(model, tta_flip)


def parse_objective(text: str) -> Objective:
    """`accuracy`, `accuracy,latency` or `accuracy,params`; ConfigError for anything else."""
    words = [w.strip() for w in text.split(",")]
    if words == ["accuracy"]:
        return Objective()
    if len(words) == 2 and words[0] == "accuracy" and words[1] in SECOND:
        return Objective(words[1])
    raise ConfigError(f"Invalid objective '{text}'. Only accuracy, accuracy,latency and "
                      "accuracy,params are supported.")


def latency_ms(model: nn.Module, tta_flip: bool) -> float:
    """ms per image of `model` on a fixed batch (see the module's docstring)."""
    images = torch.zeros(LATENCY_BATCH, 28, 28, dtype=torch.uint8)
    model = model.cpu().eval()
    predict_logits(model, images, 0.0, 1.0, batch_size=LATENCY_BATCH, tta_flip=tta_flip)
    best = float("inf")
    for _ in range(LATENCY_REPEATS):
        start = time.perf_counter()
        predict_logits(model, images, 0.0, 1.0, batch_size=LATENCY_BATCH, tta_flip=tta_flip)
        best = min(best, time.perf_counter() - start)
    return 1000 * best / LATENCY_BATCH
