"""`fmnist evaluate RUN_DIR|CHECKPOINT`: accuracy, loss, per-class metrics, confusion matrix,
calibration before and after the checkpoint's temperature (ECE with a bootstrap interval), the
coverage and mean size of its prediction sets (--coverage), and with `--ood SOURCE` how well it
tells images of none of its classes apart (AUROC, share answered "not recognised"); pictures
(confusion.png, reliability.png, confident_errors.png).

--ood takes `digits` (scikit-learn's), `drawn` (noise, blank pages, shapes, text, gradients,
checkerboards made here; or one of those names), a folder of image files, or a dataset name.

Pictures go to --out; by default into the run folder when given a run folder (or the
model.safetensors inside one), else into ./eval-<checkpoint name>. Pictures of the train split
get a `-train` suffix so they never replace the test-set ones.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from fmnist.cli.common import (
    add_command,
    add_device,
    add_model_arguments,
    dataset_for,
    load_checkpoint,
)


def add_parser(sub: Any) -> None:
    p = add_command(sub, "evaluate", "report a model's accuracy, per-class metrics and errors")
    add_model_arguments(p)
    p.add_argument("--dataset", metavar="NAME", help="dataset, csv:PATH or folder:DIR (default: the model's)")
    p.add_argument("--data-dir", metavar="DIR", help="folder holding the dataset files")
    p.add_argument("--split", default="test", choices=("test", "train"), help="(default test)")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="average with horizontally flipped images (default: as the run trained)")
    p.add_argument("--batch-size", type=int, default=1024, metavar="N", help="(default 1024)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object (accuracy, loss, per_class, confusion_matrix, ece)")
    p.add_argument("--out", metavar="DIR", help="where to write the PNGs (see above)")
    add_device(p)
    p.add_argument("--coverage", type=float, default=None, metavar="P",
                   help="the prediction sets' coverage to check (default 0.9)")
    p.add_argument("--ood", metavar="DATASET_OR_FOLDER",
                   help="images of none of the classes: digits, drawn, noise, shapes, text, "
                        "a folder of images or a dataset name")
    p.set_defaults(func=run)


def default_out_dir(checkpoint: str) -> Path:
    from fmnist.checkpoint import META, WEIGHTS, resolve

    given = Path(checkpoint)
    weights = resolve(given)
    if given.is_dir() or (weights.name == WEIGHTS and (weights.parent / META).is_file()):
        return weights.parent
    return Path.cwd() / f"eval-{weights.stem}"


def run(args: argparse.Namespace) -> int:
    from fmnist.datasets import load_arrays
    from fmnist.errors import ConfigError
    from fmnist.evaluate import evaluate, save_report_pictures
    from fmnist.trust import check_coverage

    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {args.batch_size}.")
    if args.coverage is not None:
        check_coverage(args.coverage)  # before any file is read
    model, meta = load_checkpoint(args.checkpoint, args.model, args.device)
    out_dir = Path(args.out) if args.out else default_out_dir(args.checkpoint)
    dataset = dataset_for(meta, args.dataset)
    tta = bool(meta.get("tta_flip")) if args.tta is None else args.tta
    images, labels = load_arrays(dataset, args.split, args.data_dir)
    ood = None
    if args.ood:
        from fmnist.images import BOX_SIZE, DEFAULT_BOX
        from fmnist.ood import load_ood

        box = BOX_SIZE.get(str(meta.get("dataset", "")), DEFAULT_BOX)
        ood = (args.ood, load_ood(args.ood, box=box, data_dir=args.data_dir))
    report = evaluate(model, images, labels, meta, batch_size=args.batch_size, tta_flip=tta,
                      coverage=args.coverage, ood=ood)
    suffix = "" if args.split == "test" else f"-{args.split}"
    pictures = save_report_pictures(report, images, out_dir, suffix=suffix)

    if args.json:
        print(json.dumps({**report.to_dict(), "dataset": dataset, "split": args.split,
                          "tta": tta, "pictures": [str(p) for p in pictures]}))
        # stdout stays one JSON object; the note goes to stderr
        print(f"Pictures: {', '.join(str(p) for p in pictures)}", file=sys.stderr)
    else:
        print(f"{dataset} {args.split} split, {'with' if tta else 'no'} flip TTA")
        print(report.to_text())
        print(f"\nPictures: {', '.join(str(p) for p in pictures)}")
    return 0
