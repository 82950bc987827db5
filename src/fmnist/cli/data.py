"""`fmnist data fetch | info | show`: get, check and look at the dataset files."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from fmnist.cli.common import add_command


def add_parser(sub: Any) -> None:
    parser = add_command(sub, "data", "get, check and look at the dataset files")
    leaves = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    fetch = add_command(
        leaves, "fetch", "find or download the dataset, verify it, and warm the array cache"
    )
    _common(fetch)
    fetch.set_defaults(func=cmd_fetch)

    info = add_command(
        leaves, "info", "where the files were found, counts, class balance, verified hashes"
    )
    _common(info)
    info.add_argument("--json", action="store_true", help="print machine-readable JSON")
    info.set_defaults(func=cmd_info)

    show = add_command(leaves, "show", "save a labelled grid of sample images per class")
    _common(show)
    show.add_argument("--split", choices=("train", "test"), default="train")
    show.add_argument("--out", required=True, help="PNG file to write")
    show.add_argument(
        "--per-class", type=_per_class, default=8, metavar="N", help="images per class (8, at most 50)"
    )
    show.set_defaults(func=cmd_show)


def _per_class(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 50:  # a grid past 50 per class is unreadable and takes minutes
        raise argparse.ArgumentTypeError(f"expected a whole number from 1 to 50, got {text!r}")
    return value


def _common(parser: argparse.ArgumentParser) -> None:
    from fmnist.cli.common import DATASET_NAMES, DEFAULT_DATASET

    parser.add_argument(
        "--dataset", default=DEFAULT_DATASET, metavar="NAME",
        help=f"one of: {', '.join(DATASET_NAMES)} (default {DEFAULT_DATASET}); or csv:PATH for Kaggle's "
             "CSV files, folder:DIR for a folder of images per class",
    )  # fmt: skip
    parser.add_argument(
        "--data-dir", default=None, metavar="DIR",
        help="folder holding the IDX files (.gz or not); tried before the cache and Debian's copy",
    )  # fmt: skip


def cmd_fetch(args: argparse.Namespace) -> int:
    from fmnist import datasets

    if args.dataset.partition(":")[0] in datasets.FORMATS:  # csv:/folder: files are on disk
        info = datasets.describe(args.dataset, args.data_dir)
        print(f"{info['title']} ready ({info['source']}, decoded and cached)")
        return 0
    loc = datasets.fetch(args.dataset, args.data_dir)
    folders = sorted({str(f.path.parent) for f in loc.files.values()})
    print(f"{loc.spec.display} ready ({loc.source}: {', '.join(folders)})")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from fmnist import datasets

    info = datasets.describe(args.dataset, args.data_dir)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    # Skipped copies (wrong hash, corrupt) were already logged as warnings by the data layer.
    folders = sorted({f["path"] if os.path.isdir(f["path"]) else os.path.dirname(f["path"])
                      for f in info["files"].values()})
    print(f"{info['title']} ({info['dataset']}), found in {info['source']}: {', '.join(folders)}")
    for split, s in info["splits"].items():
        h, w = s["shape"][1:]
        print(f"  {split:<5} {s['count']:>6,} images {h}x{w}, {_balance(s['class_counts'])}")
    print(f"  test label 0: {info['splits']['test']['label0']}")
    width = max(len(c) for c in info["classes"])
    print(f"  {'class':<{width}}  {'train':>6}  {'test':>6}")
    for i, c in enumerate(info["classes"]):
        train, test = (info["splits"][split]["class_counts"][c] for split in ("train", "test"))
        print(f"  {c:<{width}}  {train:>6,}  {test:>6,}   [{i}]")
    print("  files (sha256 of the decompressed bytes; for csv: and folder: of the decoded arrays "
          "as IDX files):")
    for key, f in info["files"].items():
        status = "verified" if f["verified"] else (
            "your data (no published hash)" if f["source"] in datasets.FORMATS
            else "UNVERIFIED (no published hash for this form)")
        print(f"    {key:<13} {f['sha256']}  {status}  {f['path']}")
    for note in info["notes"]:
        print(f"  note: {note}")
    print(f"  fingerprint: {info['fingerprint']}")
    return 0


def _balance(counts: dict[str, int]) -> str:
    values = set(counts.values())
    if len(values) == 1:
        return f"{len(counts)} classes of {values.pop():,} each"
    return f"{len(counts)} classes, {min(values):,} to {max(values):,} per class (imbalanced)"


def cmd_show(args: argparse.Namespace) -> int:
    import numpy as np

    from fmnist import datasets, plots

    images, labels = datasets.load_arrays(args.dataset, args.split, args.data_dir)
    classes = datasets.class_names(args.dataset)
    # The first N of each class: deterministic, so two runs give the same picture.
    picked = [np.flatnonzero(labels == c)[: args.per_class] for c in range(len(classes))]
    grid = np.zeros((len(classes) * args.per_class, *images.shape[1:]), dtype=np.uint8)
    titles = [""] * len(grid)
    for c, idx in enumerate(picked):
        for j, i in enumerate(idx):
            grid[c * args.per_class + j] = images[i]
            titles[c * args.per_class + j] = classes[c]
    path = plots.save_image_grid(
        grid, titles, args.out, ncols=args.per_class,
        suptitle=f"{datasets.title(args.dataset)} {args.split}: first {args.per_class} images of each class",
    )  # fmt: skip
    print(f"wrote {path}")
    return 0
