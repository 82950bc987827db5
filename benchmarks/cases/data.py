"""Full-dataset load (train + test arrays) with a fresh cache dir (cold) and again (warm), each
in a fresh process; reference: parsing the IDX .gz files directly."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from benchmarks.common import PY, med, ratio, run_child, sec

FMNIST_SNIPPET = """
import time, sys
from fmnist import datasets
t0 = time.perf_counter()
for split in ("train", "test"):
    datasets.load_arrays("fashion-mnist", split)
print("LOAD", time.perf_counter() - t0)
"""

REF_SNIPPET = """
import gzip, time, sys
import numpy as np
import torch  # imported on both sides, so neither pays for it inside the timing
t0 = time.perf_counter()
for path in sys.argv[1:]:
    raw = gzip.open(path).read()
    np.frombuffer(raw, np.uint8, offset=16 if "images" in path else 8)
print("LOAD", time.perf_counter() - t0)
"""


def timed_load(cmd: list[str], env: dict[str, str] | None = None) -> dict[str, float]:
    res = run_child(cmd, env=env)
    return {"wall_s": res["wall_s"], "load_s": float(res["stdout"].split("LOAD")[-1])}


def summarize(runs: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, float | None]]:
    """Medians of load and wall time per side (cold, warm, reference)."""
    return {k: {"load_s": med([r["load_s"] for r in v]), "wall_s": med([r["wall_s"] for r in v])}
            for k, v in runs.items() if v}  # fmt: skip


def measure(tmp: Path, reps: int, fmnist_cmd: list[str],
            ref_cmd: list[str] | None) -> dict[str, list[dict[str, float]]]:
    """`reps` rounds of: fmnist's load with a fresh cache dir (cold), the same dir again (warm),
    and the reference (skipped when `ref_cmd` is None)."""
    runs: dict[str, list[dict[str, float]]] = {"cold": [], "warm": [], "reference": []}
    for i in range(reps):
        env = {**os.environ, "FMNIST_CACHE_DIR": str(tmp / f"cache-{i}")}
        for bucket in ("cold", "warm"):  # the same fresh cache dir twice
            runs[bucket].append(timed_load(fmnist_cmd, env))
        if ref_cmd:
            runs["reference"].append(timed_load(ref_cmd))
    return runs


def cold_warm_rows(case: str, what: str, cache: str, ref_name: str,
                   result: dict[str, Any]) -> list[tuple[str, ...]]:
    """The cold and warm rows of a load case, each against the reference's median."""
    s = result["summary"]
    ref = s.get("reference", {}).get("load_s")
    return [
        (case, f"{what}, cold (fresh cache)", sec(s["cold"]["load_s"]),
         f"{sec(ref)} ({ref_name} only)", f"{ratio(s['cold']['load_s'], ref)} the time"),
        (case, f"{what}, warm ({cache} cache)", f"{s['warm']['load_s']:.3f} s", sec(ref),
         f"{ratio(ref, s['warm']['load_s'])} faster"),
    ]


def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from fmnist import datasets

    loc = datasets.fetch("fashion-mnist")
    files = [str(f.path) for f in loc.files.values()] if hasattr(loc, "files") else []
    runs = measure(tmp, 1 if args.quick else args.reps, [PY, "-c", FMNIST_SNIPPET],
                   [PY, "-c", REF_SNIPPET, *files] if files else None)
    return {
        "commands": [f"FMNIST_CACHE_DIR=FRESH {PY} -c '<load_arrays train+test>' (twice)",
                     f"{PY} -c '<gzip + np.frombuffer on the 4 .gz files>'"],
        "note": "cold: new cache dir (verify hashes, decode IDX, write .npy cache); warm: "
                "same dir again; reference: bare gunzip + frombuffer, no verification",
        "files": files,
        "runs": runs,
        "summary": summarize(runs),
    }


def rows(result: dict[str, Any]) -> list[tuple[str, ...]]:
    return cold_warm_rows("data", "full dataset load", ".npy", "gunzip", result)
