"""The `best` recipe: accuracy and time (minutes; only with --best or --only best)."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Any

from benchmarks.common import pct, sec, time_to, train, train_cmd


def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    extra = ["--epochs", "1"] if args.quick else []
    res, metrics = train(tmp / "best", "--recipe", "best", *extra)
    return {
        "commands": [shlex.join(train_cmd("--recipe", "best", *extra, "--out", "TMP"))],
        "wall_s": res["wall_s"], "rows": metrics, "final_accuracy": metrics[-1]["test_accuracy"],
        "train_seconds": metrics[-1]["train_seconds"],
        "time_to": {f"{t:.2f}": time_to(metrics, t) for t in (0.93, 0.94, 0.95)},
        "reference": {"accuracy": 0.945, "train_seconds": 336.0,
                      "target": "95.0 % within 10 minutes on CPU"},
    }


def rows(result: dict[str, Any]) -> list[tuple[str, ...]]:
    out = [("best", "final test accuracy, train time",
            f"{pct(result['final_accuracy'])}, {sec(result['train_seconds'])}",
            "94.50 %, 336 s (issue's probe)", "—")]
    out += [("best", f"train time to {float(k) * 100:.0f} %", sec(v), "—", "—")
            for k, v in result["time_to"].items()]
    return out
