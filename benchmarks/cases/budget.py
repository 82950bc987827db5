"""`fmnist train --time-budget` at 30 s, 60 s, 120 s, 300 s and 10 min, `--seeds` seeds each:
the accuracy reached (mean, lowest, highest), the plan chosen (widths, steps), and the process
wall time against the budget it was given (the target: within 10 %). About an hour at 3
seeds; runs only when named (`--only budget`)."""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
from pathlib import Path
from typing import Any

from benchmarks.common import pct, run_child, sec, train_cmd

BUDGETS = (30, 60, 120, 300, 600)


def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    chosen = tuple(int(b) for b in args.budgets.split(",") if b) or BUDGETS
    budgets, seeds = ((30,), 1) if args.quick else (chosen, args.seeds)
    runs = []
    # seed outermost: a run stopped part-way still has whole seeds of every budget
    for seed in range(seeds):
        for seconds in budgets:
            out = tmp / f"budget-{seconds}-seed-{seed}"
            res = run_child(train_cmd("--time-budget", f"{seconds}s", "--seed", str(seed),
                                      "--out", str(out)))
            rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()
                    if x.strip()]
            config = json.loads((out / "config.json").read_text())
            plan = next((line for line in res.pop("stdout").splitlines()
                         if line.startswith("Plan")), "")
            runs.append({
                "budget_s": seconds, "seed": seed, "wall_s": res["wall_s"],
                "peak_rss_mib": res["peak_rss_mib"],
                "train_s": rows[-1]["train_seconds"],  # the optimiser steps alone
                "accuracy": rows[-1]["test_accuracy"], "plan": plan,
                "widths": config.get("model_config", {}).get("widths"),
                "steps": config.get("steps"),
            })  # fmt: skip
    return {"commands": [shlex.join(train_cmd("--time-budget", "Ns", "--seed", "S",
                                              "--out", "TMP"))], "runs": runs}


def rows(result: dict[str, Any]) -> list[tuple[str, ...]]:
    by_budget: dict[int, list[dict[str, Any]]] = {}
    for r in result["runs"]:
        by_budget.setdefault(r["budget_s"], []).append(r)
    return [summary(seconds, runs) for seconds, runs in sorted(by_budget.items())]


def summary(seconds: int, runs: list[dict[str, Any]]) -> tuple[str, ...]:
    """One budget's line: one run as it is; several as their mean accuracy (lowest to
    highest), the plans they chose, and median wall and training times."""
    acc = [r["accuracy"] for r in runs]
    plans = sorted({f"widths {r['widths']}" for r in runs})
    steps = [r["steps"] for r in runs]
    wall = statistics.median(r["wall_s"] for r in runs)
    train = statistics.median(r["train_s"] for r in runs)
    if len(runs) == 1:
        metric = f"{seconds} s budget: test accuracy ({plans[0]}, {steps[0]} steps)"
        reached = pct(acc[0])
    else:
        metric = (f"{seconds} s budget: test accuracy, mean of {len(runs)} seeds "
                  f"({', '.join(plans)}, {min(steps)}-{max(steps)} steps)")
        reached = f"{pct(statistics.fmean(acc))} ({pct(min(acc))}-{pct(max(acc))})"
    median = "" if len(runs) == 1 else "median "
    return ("time budget", metric, reached,
            f"{median}wall {sec(wall)}, training {sec(train)}", f"{wall / seconds:.2f}x the budget")
