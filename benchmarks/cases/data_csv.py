"""Kaggle's CSV (`--dataset csv:DIR`): all 70,000 rows loaded with a fresh cache dir (cold:
check, parse, cache) and again (warm), each in a fresh process; reference: a bare
`np.loadtxt` of the two files (no checks, no cache). The CSV files are written from the IDX
files first, so both sides read the real Fashion-MNIST."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from benchmarks.cases.data import cold_warm_rows, measure, summarize
from benchmarks.common import PY

FMNIST_SNIPPET = """
import time, sys
from fmnist import datasets
t0 = time.perf_counter()
for split in ("train", "test"):
    datasets.load_arrays("csv:" + sys.argv[1], split)
print("LOAD", time.perf_counter() - t0)
"""

REF_SNIPPET = """
import time, sys
import numpy as np
import torch  # imported on both sides, so neither pays for it inside the timing
t0 = time.perf_counter()
for path in sys.argv[1:]:
    np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.int32)
print("LOAD", time.perf_counter() - t0)
"""


def write_kaggle_csv(folder: Path) -> list[Path]:
    """fashion-mnist_{train,test}.csv as Kaggle ships them, from the IDX files."""
    from fmnist import datasets

    header = "label," + ",".join(f"pixel{i}" for i in range(1, 785))
    paths = []
    for split in ("train", "test"):
        images, labels = datasets.load_arrays("fashion-mnist", split)
        table = [[int(y), *x] for y, x in zip(labels.tolist(), images.reshape(len(images), -1)
                                               .tolist(), strict=True)]
        path = folder / f"fashion-mnist_{split}.csv"
        path.write_text("\n".join([header, *(",".join(map(str, row)) for row in table)]) + "\n")
        paths.append(path)
    return paths


def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    folder = tmp / "kaggle"
    folder.mkdir(exist_ok=True)
    files = write_kaggle_csv(folder)
    runs = measure(tmp, 1 if args.quick else args.reps, [PY, "-c", FMNIST_SNIPPET, str(folder)],
                   [PY, "-c", REF_SNIPPET, *map(str, files)])
    return {
        "commands": [f"FMNIST_CACHE_DIR=FRESH {PY} -c '<load_arrays csv:DIR train+test>' (twice)",
                     f"{PY} -c '<np.loadtxt of the two CSV files>'"],
        "note": "cold: new cache dir (hash, parse, check, write .npz cache); warm: same dir "
                "again; reference: bare np.loadtxt, no checks, no cache",
        "runs": runs,
        "summary": summarize(runs),
    }


def rows(result: dict[str, Any]) -> list[tuple[str, ...]]:
    return cold_warm_rows("data-csv", "70,000 CSV rows", ".npz", "np.loadtxt", result)
