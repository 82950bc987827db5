"""`fmnist predict`: the seed's one-line prediction for a dataset image, or classify image files.

    fmnist predict RUN|CKPT --index N [--split test]      Predicted: "Ankle boot", Actual: "..."
    fmnist predict RUN|CKPT FILE_OR_DIR... [--top-k 3] [--coverage 0.9] [--json]

Each file's line also gives its set of likely classes at --coverage ("Shirt or T-shirt/top")
and marks an input unlike the training images as not recognised (its top class still given);
a model trained without held-out images has neither (see fmnist.trust).

Folders are expanded to the image files directly inside them (sorted; not recursive). A bad file
never stops the others: its error is printed on stderr (and listed in --json output) and the
exit code is 0 when every file was classified, 1 when some failed and 2 when none could be.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fmnist.cli.common import (
    add_command,
    add_device,
    add_model_arguments,
    dataset_for,
    load_checkpoint,
)
from fmnist.errors import ConfigError, ImageError

if TYPE_CHECKING:  # numpy only in an annotation: every --help builds this parser
    import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp")


def add_parser(sub: Any) -> None:
    p = add_command(sub, "predict", "classify a dataset image (--index) or image files")
    add_model_arguments(p)
    p.add_argument("inputs", nargs="*", metavar="FILE_OR_DIR",
                   help="image files (PNG, JPEG, WebP, GIF, BMP) or folders of them")
    p.add_argument("--index", type=int, metavar="N", help="predict image N of the dataset split")
    p.add_argument("--split", default="test", choices=("test", "train"),
                   help="split for --index (default test)")
    p.add_argument("--dataset", metavar="NAME", help="dataset, csv:PATH or folder:DIR for --index (default: the model's)")
    p.add_argument("--data-dir", metavar="DIR", help="folder holding the dataset files")
    p.add_argument("--top-k", type=int, default=3, metavar="K",
                   help="classes to show per file (default 3)")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="average with the mirrored image (default: as the run was evaluated)")
    add_device(p)
    p.add_argument("--coverage", type=float, default=None, metavar="P",
                   help="how often the set of likely classes holds the true one (default 0.9)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.index is not None and args.inputs:
        raise ConfigError("Pass either --index N or image files, not both.")
    if args.index is None and not args.inputs:
        raise ConfigError(
            "Nothing to predict: pass --index N for a dataset image, or image files or folders."
        )
    if args.top_k < 1:
        raise ConfigError(f"--top-k must be at least 1, got {args.top_k}.")

    from fmnist.predict import Predictor

    model, meta = load_checkpoint(args.checkpoint, args.model, args.device)
    device = next(model.parameters()).device
    predictor = Predictor(model, meta, device, tta=args.tta, coverage=args.coverage)
    code = _predict_index(predictor, args) if args.index is not None else _predict_files(predictor, args)
    if not predictor.trust.calibrated:  # after the answers: stdout stays the seed's line
        from fmnist.trust import UNCALIBRATED, say_once

        say_once(UNCALIBRATED)
    return code


def _predict_index(predictor: Any, args: argparse.Namespace) -> int:
    from fmnist.datasets import load_arrays
    from fmnist.predict import seed_line

    dataset = dataset_for(predictor.meta, args.dataset)
    images, labels = load_arrays(dataset, args.split, args.data_dir)
    n = len(images)
    if not 0 <= args.index < n:
        raise ConfigError(
            f"--index {args.index} is out of range: the {dataset} {args.split} split has "
            f"{n} images (0..{n - 1})."
        )
    prediction = predictor.predict([images[args.index]])[0]
    actual = predictor.classes[int(labels[args.index])]
    if args.json:
        k = min(args.top_k, len(predictor.classes))
        print(json.dumps({"image": args.index, "split": args.split, "actual": actual,
                          **prediction.to_dict(k)}))
    else:
        print(seed_line(prediction.label, actual))
        extra = trust_words(prediction)
        if extra:
            print(extra)
    return 0


def set_words(prediction: Any) -> str:
    """The set of likely classes in words: "Shirt or T-shirt/top"; "" without sets."""
    if prediction.set is None:
        return ""
    if not prediction.set:
        return "no class likely enough"
    return " or ".join(prediction.set)


def trust_words(prediction: Any) -> str:
    """What a prediction says beyond its top class: its set, and the not-recognised mark."""
    words = []
    if prediction.set is not None:
        words.append(f"set: {set_words(prediction)}")
    if prediction.recognised is False:
        words.append("NOT RECOGNISED: this does not look like any of the classes")
    return "; ".join(words)


def expand_inputs(inputs: list[str]) -> list[tuple[str, str | None]]:
    """(file, error) pairs: folders become their image files (sorted), in argument order."""
    out: list[tuple[str, str | None]] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files = sorted(
                f for f in path.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
            )
            if not files:
                out.append((item, f"Folder {item} has no image files ({', '.join(IMAGE_SUFFIXES)})."))
            out.extend((str(f), None) for f in files)
        else:
            out.append((item, None))
    return out


def _predict_files(predictor: Any, args: argparse.Namespace) -> int:
    from fmnist.images import open_image

    entries = expand_inputs(args.inputs)
    arrays: list[np.ndarray] = []
    ok: list[str] = []
    errors: dict[str, str] = {}
    for name, error in entries:
        if error is None:
            try:
                arrays.append(predictor.preprocess(open_image(name)))
                ok.append(name)
                continue
            except ImageError as e:
                error = str(e)
        if len(entries) == 1:
            raise ImageError(error)  # a lone bad input is an ordinary user error (exit 2)
        errors[name] = error
        print(f"fmnist: error: {error}", file=sys.stderr)

    predictions = dict(zip(ok, predictor.predict(arrays), strict=True)) if arrays else {}
    k = min(args.top_k, len(predictor.classes))
    if args.json:
        rows = []
        for name, _ in entries:
            if name in predictions:
                rows.append({"file": name, **predictions[name].to_dict(k)})
            else:
                rows.append({"file": name, "error": errors[name]})
        print(json.dumps(rows, indent=2))
    elif predictions:
        _print_table(predictions, k, predictor.trust.coverage)

    if not errors:
        return 0
    if predictions:
        print(f"fmnist: {len(errors)} of {len(entries)} inputs could not be classified.",
              file=sys.stderr)
        return 1
    return 2


def _print_table(predictions: dict[str, Any], k: int, coverage: float) -> None:
    file_w = max(len("file"), *(len(n) for n in predictions))
    label_w = max(len("prediction"), *(len(_label(p)) for p in predictions.values()))
    with_sets = any(p.set is not None for p in predictions.values())
    set_head = f"set ({100 * coverage:g} %)"
    set_w = max(len(set_head), *(len(set_words(p)) for p in predictions.values()))
    sets = f"  {set_head:<{set_w}}" if with_sets else ""
    print(f"{'file':<{file_w}}  {'prediction':<{label_w}}{sets}  top-{k}")
    for name, p in predictions.items():
        top = "  ".join(f"{c} {prob:.3f}" for c, prob in p.top(k))
        sets = f"  {set_words(p):<{set_w}}" if with_sets else ""
        print(f"{name:<{file_w}}  {_label(p):<{label_w}}{sets}  {top}")
    strange = sum(p.recognised is False for p in predictions.values())
    if strange:
        print(f"* not recognised: {strange} of {len(predictions)} do not look like any of the "
              "classes (the top class is still given)")


def _label(prediction: Any) -> str:
    """The top class, marked * when the input was not recognised."""
    return prediction.label + (" *" if prediction.recognised is False else "")

