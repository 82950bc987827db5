"""Kaggle's Fashion-MNIST CSV: a header `label,pixel1,...,pixel784`, then one image per line.

`--dataset csv:DIR` takes the `*train*.csv` and `*test*.csv` in DIR (Kaggle's names are
`fashion-mnist_train.csv` / `fashion-mnist_test.csv`); `--dataset csv:FILE` takes that file and
its sibling with "train" and "test" swapped. `.csv.gz` works too. The classes are those of the
MNIST-family dataset the file name starts with (`mnist_train.csv` -> MNIST), else Fashion-MNIST's.

Parsing is numpy 2's `np.loadtxt` (a C parser, about 1 s for the 60,000 training rows; it was
faster than a hand-rolled `np.fromstring` with vectorised checks). Only when it refuses a file
does a line-by-line scan find the first bad line and name it and its column. The decoded arrays
are cached by the file's content, so a second load is an `np.load`.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import numpy as np

from fmnist.datasets.cache import (
    decoded_path,
    file_digest,
    load_decoded,
    load_record,
    save_decoded,
    save_record,
)
from fmnist.datasets.idx import content_sha256, fingerprint_of, gunzip
from fmnist.datasets.report import summary
from fmnist.datasets.specs import DEFAULT_DATASET, SPECS, SPLITS, DatasetSpec
from fmnist.errors import ConfigError, DatasetError

PIXELS = 28 * 28


def _bad(path: Path, problem: str) -> DatasetError:
    return DatasetError(f"CSV file {path} {problem}.")


# ---- which files ---------------------------------------------------------------------------


def split_files(path: Path) -> dict[str, Path]:
    """{"train": FILE, "test": FILE} for `csv:PATH` (a split is missing when its file is)."""
    if path.is_dir():
        files: dict[str, Path] = {}
        for split in SPLITS:
            found = sorted(p for p in path.iterdir() if p.is_file() and _split_of(p.name) == split
                           and p.name.lower().endswith((".csv", ".csv.gz")))
            if len(found) > 1:
                names = ", ".join(p.name for p in found)
                raise ConfigError(f"Folder {path} holds several {split} CSV files ({names}): "
                                  "name one with --dataset csv:FILE.")
            files.update({split: found[0]} if found else {})
        if not files:
            raise ConfigError(
                f"Folder {path} holds no CSV file with 'train' or 'test' in its name "
                "(Kaggle's are fashion-mnist_train.csv and fashion-mnist_test.csv)."
            )
        return files
    if not path.is_file():
        raise ConfigError(f"CSV path {path} does not exist: pass a CSV file or its folder.")
    named = _split_of(path.name)
    if named is None:
        raise ConfigError(
            f"CSV file {path} does not have exactly one of 'train' and 'test' in its name, so "
            "its split is unknown: rename it (e.g. fashion-mnist_train.csv)."
        )
    other = "test" if named == "train" else "train"
    sibling = path.with_name(re.sub(named, other, path.name, count=1, flags=re.IGNORECASE))
    return {named: path, **({other: sibling} if sibling.is_file() else {})}


def _split_of(name: str) -> str | None:
    """"train" or "test" when the file name holds exactly one of them."""
    named = [s for s in SPLITS if s in name.lower()]
    return named[0] if len(named) == 1 else None


def _file(path: Path, split: str) -> Path:
    files = split_files(path)
    if split not in files:
        where = path if path.is_dir() else path.parent
        raise ConfigError(f"No {split} CSV file in {where}: add one with '{split}' in its name.")
    return files[split]


def spec_for(path: Path) -> DatasetSpec:
    """The dataset whose classes the labels are: the one the file names start with."""
    names = [p.name.lower() for p in split_files(path).values()]
    # the longest matching name: "fashion-mnist_train.csv" is Fashion-MNIST, not MNIST
    for spec in sorted(SPECS.values(), key=lambda s: -len(s.name)):
        if all(n.startswith(spec.name) for n in names):
            return spec
    return SPECS[DEFAULT_DATASET]


# ---- parsing -------------------------------------------------------------------------------


def parse_csv(data: bytes, path: Path, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 (N, 28, 28) and labels int64 (N,) from the CSV's bytes; a DatasetError
    naming the line (and column) for anything else. `path` only names the file in errors."""
    end = data.find(b"\n")
    header = (data if end < 0 else data[:end]).decode("utf-8", "replace").strip().lstrip("\ufeff")
    fields = header.split(",")
    if fields[0].strip().strip('"').lower() != "label":
        if re.fullmatch(r"[\d,\s]*", header):
            raise _bad(path, "has no header: its first line is data; add the line "
                             "'label,pixel1,...,pixel784' at the top (Kaggle's files have it)")
        raise _bad(path, f"does not start with the header 'label,pixel1,...' (line 1 is "
                         f"{header[:40]!r}); is it Kaggle's Fashion-MNIST CSV?")
    if len(fields) != 1 + PIXELS:
        raise _bad(path, f"has {len(fields) - 1} pixel columns, expected {PIXELS} (28x28 images)")
    body = b"" if end < 0 else data[end + 1 :]
    if not body or body.isspace():
        raise _bad(path, "has a header but no rows")
    try:
        # numpy 2's loadtxt is a C parser: ~1 s for Kaggle's 60,000 rows on 2 cores. Blank
        # lines are skipped, as every CSV reader does.
        rows = np.loadtxt(io.StringIO(body.decode("latin-1")), delimiter=",", dtype=np.int32,
                          comments=None, ndmin=2)
    except ValueError:
        raise _bad(path, _first_bad_line(body)) from None
    if rows.shape[1] != 1 + PIXELS:  # every row alike, but not 785 values
        raise _bad(path, _first_bad_line(body))
    labels, pixels = rows[:, 0], rows[:, 1:]
    # two reductions on the good path; the masks only when something is out of range
    if min(pixels.min(), labels.min()) < 0 or pixels.max() > 255 or labels.max() >= n_classes:
        bad_pixel = (pixels < 0) | (pixels > 255)
        bad_label = (labels < 0) | (labels >= n_classes)
        r = int(np.argmax(bad_pixel.any(axis=1) | bad_label))  # the first bad row
        line = _data_lines(body)[r] + 2
        if bad_label[r]:
            raise _bad(path, f"has label {int(labels[r])} at line {line}, out of range for "
                             f"{n_classes} classes (0 to {n_classes - 1}); fix or remove that "
                             "line")
        c = int(np.argmax(bad_pixel[r]))
        raise _bad(path, f"has pixel value {int(pixels[r, c])} at line {line}, column {c + 2} "
                         f"(pixel{c + 1}), outside 0 to 255; fix or remove that line")
    return pixels.astype(np.uint8).reshape(-1, 28, 28), labels.astype(np.int64)


def _data_lines(body: bytes) -> list[int]:
    """0-based indices (after the header) of the non-blank lines: loadtxt's rows."""
    return [i for i, line in enumerate(body.split(b"\n")) if line.strip()]


# A well-formed data line: 785 whole numbers of at most 3 digits (longer ones can overflow the
# parser; the range 0-255 is checked on the parsed array).
_GOOD_LINE = re.compile(rb"\s*\d{1,3}\s*(?:,\s*\d{1,3}\s*){%d}" % PIXELS)


def _first_bad_line(body: bytes) -> str:
    """What is wrong with the first malformed line: only run once loadtxt has refused the file,
    so a good file never pays for it."""
    for i, line in enumerate(body.split(b"\n")):
        if not line.strip() or _GOOD_LINE.fullmatch(line):
            continue
        number, values = i + 2, line.rstrip(b"\r").split(b",")
        for col, value in enumerate(values[: 1 + PIXELS], start=1):
            if not value.strip().isdigit() or len(value.strip()) > 3:
                name = "label" if col == 1 else f"pixel{col - 1}"
                what = f"{value.decode('utf-8', 'replace')!r}" if value else "an empty value"
                return (f"has {what} at line {number}, column {col} ({name}), not a whole "
                        "number from 0 to 255; fix or remove that line")
        return (f"has {len(values)} values on line {number}, expected {1 + PIXELS} (a label and "
                f"{PIXELS} pixels); fix or remove that line")
    return "could not be parsed as CSV; check it holds only numbers and commas after the header"


# ---- loading through the cache -------------------------------------------------------------


def _decoded(path: Path, spec: DatasetSpec) -> dict[str, Any]:
    """{"images", "labels", "images_sha256", "labels_sha256"} of one CSV file, cached by the
    sha256 of its content (the verification record spares hashing an unchanged file)."""
    record = load_record()
    digest, changed = file_digest(path, record, md5=False)
    if changed:
        save_record(record)
    if digest.error or not digest.sha256:
        raise _bad(path, digest.error or "cannot be read")
    cached = decoded_path(f"csv-{digest.sha256}", ".npz")
    entry = load_decoded(cached)
    # the same bytes under another dataset's file name may have fewer classes: check again
    if entry is not None and int(entry["labels"].max(initial=0)) < len(spec.classes):
        return {k: (str(v) if v.ndim == 0 else v) for k, v in entry.items()}
    try:
        data = gunzip(path.read_bytes(), path)
    except OSError as e:
        raise _bad(path, f"cannot be read ({e.strerror or e})") from e
    images, labels = parse_csv(data, path, len(spec.classes))
    entry = {
        "images": images,
        "labels": labels,
        "images_sha256": content_sha256(images),
        "labels_sha256": content_sha256(labels.astype(np.uint8)),
    }
    save_decoded(cached, {k: np.asarray(v) for k, v in entry.items()})
    return entry


def classes(path: Path) -> tuple[str, ...]:
    return spec_for(path).classes


def load(path: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    entry = _decoded(_file(path, split), spec_for(path))
    return entry["images"], entry["labels"]


def _hashes(path: Path) -> dict[str, str]:
    spec, out = spec_for(path), {}
    for part in SPLITS:
        entry = _decoded(_file(path, part), spec)
        out.update({f"{part}-images": entry["images_sha256"],
                    f"{part}-labels": entry["labels_sha256"]})
    return out


def fingerprint(path: Path) -> str:
    """The same as the IDX files' fingerprint when the CSV holds the same images and labels."""
    return fingerprint_of(_hashes(path))


def describe(path: Path) -> dict[str, Any]:
    spec, files = spec_for(path), {}
    hashes = _hashes(path)
    for split, file in split_files(path).items():
        for kind in ("images", "labels"):
            key = f"{split}-{kind}"
            # verified: the CSV decodes to exactly the pixels of the published IDX files
            want = dict(spec.files)[key].sha256
            files[key] = {"path": str(file), "source": "csv", "sha256": hashes[key],
                          "verified": want == hashes[key]}
    splits = {split: load(path, split) for split in SPLITS}
    return summary(f"csv:{path.resolve()}", f"{spec.display} (CSV)", "csv", spec.classes, splits,
                   files, [], fingerprint_of(hashes))
