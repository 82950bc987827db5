"""What TensorBoard logging costs `fmnist train`: training images/s (the loop with its per-step
sampling, from metrics.jsonl) and process wall time (adds the import, the graph and the
end-of-run figures), each recipe with and without `--no-tensorboard`, in alternating order;
reference: the same run with --no-tensorboard."""

from __future__ import annotations

import argparse
import shlex
import statistics
from pathlib import Path
from typing import Any

from benchmarks.common import med, ratio, sec, train, train_cmd

# quickstart: 938 small steps an epoch, where a per-step cost shows most; default: the recipe
# people run. One epoch each keeps the case to minutes; the sides alternate every repetition.
RUNS = {"quickstart": ["--recipe", "quickstart", "--epochs", "2"],
        "default": ["--recipe", "default", "--epochs", "1"]}
SIDES = {"tensorboard": [], "off": ["--no-tensorboard"]}


def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    reps = 1 if args.quick else args.reps
    out: dict[str, Any] = {"commands": [], "recipes": {}}
    for name, flags in RUNS.items():
        samples: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
        for i in range(reps):
            order = list(SIDES) if i % 2 == 0 else list(reversed(SIDES))  # ABBA: drift cancels
            for side in order:
                res, rows = train(tmp / f"{name}-{side}-{i}", *flags, *SIDES[side])
                samples[side].append({"wall_s": res["wall_s"],
                                      "images_per_s": [r["images_per_s"] for r in rows]})
        summary = {side: {
            # every epoch of every repetition: the loop's speed, evaluation excluded
            "images_per_s": statistics.median(v for s in runs for v in s["images_per_s"]),
            "wall_s": med([s["wall_s"] for s in runs]),
        } for side, runs in samples.items()}
        on, off = summary["tensorboard"], summary["off"]
        out["recipes"][name] = {
            "runs": samples, "summary": summary,
            "speed_cost": 1 - on["images_per_s"] / off["images_per_s"],
            "wall_cost_s": on["wall_s"] - off["wall_s"],
        }
        out["commands"] += [shlex.join(train_cmd(*flags, *SIDES[side], "--out", "TMP"))
                            for side in SIDES]
    return out


def rows(result: dict[str, Any]) -> list[tuple[str, ...]]:
    lines = []
    for name, r in result["recipes"].items():
        on, off = r["summary"]["tensorboard"], r["summary"]["off"]
        lines += [
            (f"tensorboard ({name})", "training images/s (median epoch)",
             f"{on['images_per_s']:,.0f}", f"{off['images_per_s']:,.0f} (--no-tensorboard)",
             f"{100 * r['speed_cost']:+.1f} % cost"),
            (f"tensorboard ({name})", "process wall time", sec(on["wall_s"]),
             f"{sec(off['wall_s'])} (--no-tensorboard)",
             f"{ratio(on['wall_s'], off['wall_s'])} (+{r['wall_cost_s']:.1f} s)"),
        ]
    return lines
