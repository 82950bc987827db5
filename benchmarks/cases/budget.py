"""`fmnist train --time-budget` at 30 s, 60 s, 120 s and 300 s: the accuracy reached, the
plan chosen (widths, steps), and the process wall time against the budget it was given
(the target: within 10 %). Minutes; runs only when named (`--only budget`)."""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path
from typing import Any

from benchmarks.common import pct, run_child, sec, train_cmd

BUDGETS = (30, 60, 120, 300)


def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    budgets = (15,) if args.quick else BUDGETS
    runs = []
    for seconds in budgets:
        out = tmp / f"budget-{seconds}"
        res = run_child(train_cmd("--time-budget", f"{seconds}s", "--out", str(out)))
        rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
        config = json.loads((out / "config.json").read_text())
        plan = next((line for line in res.pop("stdout").splitlines() if line.startswith("Plan")), "")
        runs.append({
            "budget_s": seconds, "wall_s": res["wall_s"], "peak_rss_mib": res["peak_rss_mib"],
            "train_s": rows[-1]["train_seconds"],  # the optimiser steps alone
            "accuracy": rows[-1]["test_accuracy"], "plan": plan,
            "widths": config.get("model_config", {}).get("widths"), "steps": config.get("steps"),
        })  # fmt: skip
    return {"commands": [shlex.join(train_cmd("--time-budget", "Ns", "--out", "TMP"))], "runs": runs}


def rows(result: dict[str, Any]) -> list[tuple[str, ...]]:
    return [
        ("time budget", f"{r['budget_s']} s budget: test accuracy (widths {r['widths']}, "
         f"{r['steps']} steps)", pct(r["accuracy"]),
         f"wall {sec(r['wall_s'])}, training {sec(r['train_s'])}",
         f"{r['wall_s'] / r['budget_s']:.2f}x the budget")
        for r in result["runs"]
    ]  # fmt: skip
