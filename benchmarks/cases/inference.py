"""Images/s at batch 1 and 1024, single-image latency p50/p99 and model file size for each
recipe's model, through fmnist's Predictor with flip TTA off and on; reference: a plain eager
fp32 forward (NCHW) on the model's own copy."""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.common import ratio

RECIPES = ("quickstart", "default", "best")
# A model's result has one entry per side: "fmnist" (the Predictor, TTA off), "fmnist_tta"
# (flip TTA on), "reference" (plain eager); the first and last keep the keys of results saved
# before TTA was measured, so old files render alike.
ROUNDS = 5  # the sides take turns in this many rounds, so a disturbance hits them alike


def _durations(fn: Callable[[], object], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def assert_nchw(model: Any) -> None:
    """The reference must be torch's default: conv weights in NCHW. A channels_last weight
    (as a shared model once got from the Predictor) would time oneDNN's NHWC path instead."""
    from torch import nn

    bad = [name for name, m in model.named_modules()
           if isinstance(m, nn.Conv2d) and not m.weight.is_contiguous()]
    if bad:
        raise AssertionError(f"reference conv weights are not NCHW-contiguous: {', '.join(bad)}")


def eager_calls(ref: Any, one: Any, big: Any) -> tuple[Callable[[], object], ...]:
    """Single-image and batch calls of a plain fp32 forward + softmax of `ref`, on float input
    prepared outside the timing."""
    import torch

    x1, xb = (torch.from_numpy(a).float().div(255).unsqueeze(1) for a in (one, big))  # (N,1,H,W)

    def forward(x: torch.Tensor) -> None:
        with torch.no_grad():
            torch.softmax(ref(x), 1)

    return (lambda: forward(x1)), (lambda: forward(xb))


def predictor_calls(predictor: Any, one: Any, big: Any) -> tuple[Callable[[], object], ...]:
    """Single-image and batch calls of `predictor`: uint8 images in, probabilities out."""
    return (lambda: predictor.predict_arrays(one)), (lambda: predictor.predict_arrays(big))


def time_sides(sides: dict[str, tuple[Callable[[], object], Callable[[], object]]],
               batch: int, n_lat: int, n_big: int) -> dict[str, dict[str, float]]:
    """p50/p99 single-image latency and batch-1 / batch-`batch` images/s of each side."""
    import numpy as np

    lat: dict[str, list[float]] = {k: [] for k in sides}
    big: dict[str, list[float]] = {k: [] for k in sides}
    for single, many in sides.values():  # lazy initialisation stays out of the samples
        single(), many()
    for _ in range(ROUNDS):
        for side, (single, many) in sides.items():
            lat[side] += _durations(single, n_lat // ROUNDS)
            big[side] += _durations(many, max(1, n_big // ROUNDS))
    return {side: {"latency_p50_ms": 1e3 * float(np.percentile(lat[side], 50)),
                   "latency_p99_ms": 1e3 * float(np.percentile(lat[side], 99)),
                   "batch1_img_s": 1 / float(np.median(lat[side])),
                   "batch1024_img_s": batch / float(np.median(big[side]))}
            for side in sides}


def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    import torch

    from fmnist import checkpoint, datasets
    from fmnist.models import build_model
    from fmnist.predict import Predictor
    from fmnist.recipes import get_recipe

    images, _ = datasets.load_arrays("fashion-mnist", "test")
    one, big = images[:1], images[:1024]
    n_lat, n_big = (50, 5) if args.quick else (300, 10)
    models = {}
    for name in RECIPES:
        recipe = get_recipe(name)
        torch.manual_seed(0)  # speed does not depend on the weights: untrained models
        model = build_model(recipe.model, recipe.model_config)
        meta = {"classes": datasets.class_names(), "dataset": "fashion-mnist",
                "normalize": {"mean": 0.2860, "std": 0.3530}, "recipe": name,
                "tta_flip": recipe.tta_flip}
        folder = tmp / name
        path = checkpoint.save_model(folder, model, meta)
        # The reference's own copy, in torch's default layout, whatever the Predictors do
        ref = copy.deepcopy(model).eval()
        sides = {"reference": eager_calls(ref, one, big),
                 "fmnist": predictor_calls(Predictor(model, meta, tta=False), one, big),
                 "fmnist_tta": predictor_calls(Predictor(model, meta, tta=True), one, big)}
        assert_nchw(ref)
        models[name] = {
            "model": recipe.model, "model_config": recipe.model_config,
            "serves_tta": recipe.tta_flip,
            "file_bytes": path.stat().st_size if path.is_file() else
            sum(p.stat().st_size for p in folder.iterdir()),
            **time_sides(sides, len(big), n_lat, n_big),
        }
    return {"note": "in process, untrained weights; Predictor.predict_arrays (uint8 in, "
                    "probabilities out) with flip TTA off (fmnist) and on (fmnist_tta) vs plain "
                    "model(x) + softmax in eager fp32 on an NCHW copy of the model, float input "
                    "prepared outside the timing (reference)",
            "models": models}


def _latency(s: dict[str, float]) -> str:
    return f"{s['latency_p50_ms']:.2f} / {s['latency_p99_ms']:.2f} ms"


def _throughput(s: dict[str, float]) -> str:
    return f"{s['batch1_img_s']:,.0f} / {s['batch1024_img_s']:,.0f}"


def _pair(case: str, what: str, fast: dict[str, float], slow: dict[str, float],
          slow_name: str) -> list[tuple[str, ...]]:
    """Latency and images/s rows of `fast` against `slow`; ratios above 1: `fast` is faster."""
    return [
        (case, f"{what}batch 1: p50 / p99 latency", _latency(fast),
         f"{_latency(slow)} ({slow_name})",
         ratio(slow["latency_p50_ms"], fast["latency_p50_ms"])),
        (case, f"{what}batch 1 / 1024 images/s", _throughput(fast), _throughput(slow),
         f"{ratio(fast['batch1_img_s'], slow['batch1_img_s'])} / "
         f"{ratio(fast['batch1024_img_s'], slow['batch1024_img_s'])}"),
    ]


def rows(result: dict[str, Any]) -> list[tuple[str, ...]]:
    out = []
    for name, r in result["models"].items():
        serves = ", serves with TTA" if r.get("serves_tta") else ""
        case = f"inference `{name}` ({r['model']}, {r['file_bytes'] / 1024:,.0f} KiB file{serves})"
        out += _pair(case, "", r["fmnist"], r["reference"], "plain eager")
        if "fmnist_tta" in r:  # measured since the Predictor serves with TTA
            out += _pair(case, "flip TTA on vs off: ", r["fmnist_tta"], r["fmnist"], "TTA off")
    return out
