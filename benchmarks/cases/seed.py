"""The Quickstart program itself (benchmarks/quickstart_seed.py) vs `fmnist train --recipe
quickstart`: process wall time, peak RSS, final accuracy; the same recipe against its floor, a
plain PyTorch script of the same computation on in-memory tensors (benchmarks/quickstart_plain.py,
target: within 1.10x in every run); and plain `fmnist train` (the default recipe) against the
same Quickstart runs, whose time it should stay within 2x of."""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
from pathlib import Path
from typing import Any

from benchmarks.common import HERE, PY, med, pct, ratio, run_child, sec, train, train_cmd

SEED_CMD = [PY, str(HERE / "quickstart_seed.py")]
PLAIN_CMD = [PY, str(HERE / "quickstart_plain.py")]


def last_accuracy(stdout: str) -> float | None:
    found = re.findall(r"Accuracy: ([\d.]+)%", stdout)
    return float(found[-1]) / 100 if found else None


def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    reps = 1 if args.quick else args.reps
    epochs = ["--epochs", "1"] if args.quick else []
    env = dict(os.environ)
    if args.quick:
        env["QUICKSTART_EPOCHS"] = "1"
    ours: list[dict[str, Any]] = []
    ref: list[dict[str, Any]] = []
    plain: list[dict[str, Any]] = []
    default: list[dict[str, Any]] = []
    for i in range(reps):  # alternate, so load from other users hits all sides alike
        ref.append(run_child([*SEED_CMD, str(tmp)], env=env, cwd=str(tmp)))
        ours.append(run_child(train_cmd("--recipe", "quickstart", *epochs, "--out",
                                        str(tmp / f"seed-{i}")), env=env))
        plain.append(run_child([*PLAIN_CMD, str(tmp)], env=env, cwd=str(tmp)))
        res, metrics = train(tmp / f"default-{i}", *epochs)
        recipe = json.loads((tmp / f"default-{i}" / "config.json").read_text())
        default.append({**res, "accuracy": metrics[-1]["test_accuracy"], "recipe": recipe})
    for r in ours + ref + plain:
        r["accuracy"] = last_accuracy(r.pop("stdout"))
    for r in default:
        r.pop("stdout")
    summary = {
        key: {"fmnist": med([r[key] for r in ours]), "reference": med([r[key] for r in ref]),
              "default": med([r[key] for r in default]), "plain": med([r[key] for r in plain])}
        for key in ("wall_s", "peak_rss_mib", "accuracy")
    }  # fmt: skip
    return {
        "commands": [shlex.join([*SEED_CMD, "TMP"]),
                     shlex.join(train_cmd("--recipe", "quickstart", *epochs, "--out", "TMP")),
                     shlex.join(train_cmd(*epochs, "--out", "TMP")),
                     shlex.join([*PLAIN_CMD, "TMP"])],
        "runs": {"fmnist": ours, "reference": ref, "default": default, "plain": plain},
        "summary": summary,
        "speedup": summary["wall_s"]["reference"] / summary["wall_s"]["fmnist"],
        # the default recipe's time in Quickstarts (issue 9's target: at most 2)
        "default_vs_quickstart": summary["wall_s"]["default"] / summary["wall_s"]["reference"],
        # the quickstart recipe's time over the plain script's, pair by pair (target: each <= 1.10)
        "quickstart_vs_plain": [a["wall_s"] / b["wall_s"] for a, b in zip(ours, plain, strict=True)],
    }


def rows(result: dict[str, Any]) -> list[tuple[str, ...]]:
    wall, rss, acc = (result["summary"][k] for k in ("wall_s", "peak_rss_mib", "accuracy"))
    return [
        ("seed replay", "wall time, process start to exit", sec(wall["fmnist"]),
         f"{sec(wall['reference'])} (Quickstart)",
         f"{ratio(wall['reference'], wall['fmnist'])} faster"),
        ("seed replay", "peak RSS", f"{rss['fmnist']:.0f} MiB", f"{rss['reference']:.0f} MiB",
         f"{ratio(rss['fmnist'], rss['reference'])} the memory"),
        ("seed replay", "final test accuracy", pct(acc["fmnist"]), pct(acc["reference"]), "—"),
    ] + ([  # results saved before the default recipe was measured here have no such rows
        ("`fmnist train` (default recipe)", "wall time, process start to exit; test accuracy",
         f"{sec(wall['default'])}; {pct(acc['default'])}", f"{sec(wall['reference'])} (Quickstart)",
         f"{ratio(wall['default'], wall['reference'])} the time (target ≤ 2x)"),
    ] if "default" in wall else []) + ([  # and before the plain script was
        ("`--recipe quickstart` vs a plain script (benchmarks/quickstart_plain.py)",
         "wall time, process start to exit: median (each run)",
         f"{sec(wall['fmnist'])} ({runs(result, 'fmnist')})",
         f"{sec(wall['plain'])} ({runs(result, 'plain')})",
         f"{ratio(wall['fmnist'], wall['plain'])} the time; each pair "
         + ", ".join(f"{r:.2f}x" for r in result["quickstart_vs_plain"]) + " (target ≤ 1.10x)"),
    ] if "plain" in wall else [])  # fmt: skip


def runs(result: dict[str, Any], side: str) -> str:
    return ", ".join(f"{r['wall_s']:.1f}" for r in result["runs"][side])
