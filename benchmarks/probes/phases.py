"""Where the seconds of one `fmnist train` go, phase by phase (not a benchmark: a pointer).

    python -m benchmarks.probes.phases --out /tmp/run [fmnist train flags...]

Runs `fmnist train` in this process with a timer wrapped around each phase of the loop (the
phases are looked up by name; nothing in fmnist changes), then prints one line per phase and
what the timers did not cover. The seconds outside training do not depend on the run's length,
so `--steps 40` measures them in a few seconds; the default's own length gives its epochs.
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()

import functools  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from collections import defaultdict  # noqa: E402
from typing import Any  # noqa: E402

from benchmarks.common import machine_info, machine_line  # noqa: E402

SECONDS: dict[str, float] = defaultdict(float)
ORDER: list[str] = []


def timed(owner: Any, name: str, label: str) -> None:
    """Replace `owner.name` by a wrapper adding its seconds to SECONDS[label]."""
    inner = getattr(owner, name)

    @functools.wraps(inner)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        begun = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            if label not in ORDER:
                ORDER.append(label)
            SECONDS[label] += time.perf_counter() - begun

    setattr(owner, name, wrapper)


def main(argv: list[str]) -> int:
    import fmnist.cli

    imported = time.perf_counter()
    from fmnist import card, plots, tensorboard
    from fmnist.train import callbacks, loop

    timed(loop, "set_up", "set_up (data, device)")
    timed(loop, "build", "build (whitening, model, optimiser)")
    timed(loop, "train_epoch", "train epochs (steps, progress)")
    timed(loop, "evaluate_epoch", "evaluation (test + holdout)")
    timed(loop, "save_state", "saves (checkpoint, resume.pt)")
    timed(loop, "calibrate", "calibration")
    timed(card.ModelCard, "on_fit_end", "model card")
    timed(callbacks.Curves, "on_fit_end", "curves")
    timed(plots, "save_training_curves", "curves (plot)")
    timed(tensorboard.TensorBoardLog, "_graph", "tensorboard graph")
    timed(tensorboard.TensorBoardLog, "_test_set_figures", "tensorboard figures")
    timed(tensorboard.TensorBoardLog, "on_fit_end", "tensorboard end (all)")
    timed(card, "measure", "model card: measure")
    timed(loop, "run_epochs", "run_epochs (all of the loop)")
    code = fmnist.cli.main(["train", *argv])
    ended = time.perf_counter()
    # torch and the training stack are imported inside the command: in "whole command" only
    lines = {"import fmnist.cli": imported - STARTED, **SECONDS, "whole command": ended - STARTED}
    for label, seconds in lines.items():
        print(f"{label:<40} {seconds:8.2f} s")
    print(json.dumps({"machine": machine_line(machine_info()), "argv": argv, "seconds": lines}))
    return code or 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
