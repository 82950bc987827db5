"""The data layer: every source a `--dataset` string can name, read into the same arrays.

    --dataset fashion-mnist | mnist | kmnist   IDX files, found or fetched and verified (finding)
    --dataset csv:PATH                         Kaggle's CSV files (csvfile)
    --dataset folder:DIR                       a folder of images per class (folder)

Whatever the source, a split is images uint8 (N, 28, 28) and labels int64 (N,), with class
names and a fingerprint of the content; decoded arrays are cached by content (cache), so a
second load is an `np.load`. The modules, in the order the data flows:

    specs          the MNIST family: files, hashes, classes, mirrors
    idx            the IDX format: parse, check, encode (the encoding names content everywhere)
    cache          the verification record and the decoded-array cache
    finding        find / fetch / verify the IDX files, decode them through the cache
    csvfile        Kaggle's `label,pixel1,...,pixel784` CSV
    folder         `root/<class>/*.png|jpg`, preprocessed like the predictor's photos
    torch_dataset  torchvision-compatible `FashionMNIST` & co. and `ToTensor`

This module is the front: `load_arrays`, `class_names`, `dataset_fingerprint`, `fetch` and
`describe` take any `--dataset` string, and the names other modules import live on here.
Patch points (`finding.DEBIAN_ROOT`, `finding._download`) are not copied here: a copy would
take a test's monkeypatch and silently change nothing.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from fmnist.datasets import csvfile, folder
from fmnist.datasets.cache import Digest
from fmnist.datasets.finding import FoundFile, Location, idx_arrays, locate
from fmnist.datasets.idx import content_sha256, idx_bytes, parse_idx, read_idx, read_payload
from fmnist.datasets.report import summary
from fmnist.datasets.specs import (
    DEFAULT_DATASET,
    KINDS,
    SPECS,
    SPLITS,
    DataFile,
    DatasetSpec,
    cache_dir,
    get_spec,
)
from fmnist.datasets.torch_dataset import KMNIST, MNIST, FashionMNIST, ToTensor, _IdxDataset
from fmnist.errors import ConfigError

__all__ = [
    "DEFAULT_DATASET", "FORMATS", "KINDS", "KMNIST", "MNIST", "SPECS", "SPLITS",
    "DataFile", "DatasetSpec", "Digest", "FashionMNIST", "FoundFile", "Location", "ToTensor",
    "_IdxDataset", "cache_dir", "canonical_name", "class_names",
    "content_sha256", "dataset_fingerprint", "describe", "fetch", "get_spec", "idx_arrays",
    "idx_bytes", "load_arrays", "locate", "parse_idx", "read_idx", "read_payload", "summary", "title",
]  # fmt: skip

# `--dataset PREFIX:PATH` -> the module reading that format. Each has the same four functions:
# classes(path), load(path, split), fingerprint(path), describe(path).
FORMATS: dict[str, ModuleType] = {"csv": csvfile, "folder": folder}


def _format(name: str) -> tuple[ModuleType, Path] | None:
    """The format module and path a `csv:PATH` / `folder:DIR` name gives; None for IDX names."""
    prefix, colon, path = name.partition(":")
    if not colon or prefix not in FORMATS:
        return None
    if not path:
        raise ConfigError(f"--dataset {name} names no path: write {prefix}:PATH.")
    return FORMATS[prefix], Path(path).expanduser()


def canonical_name(name: str) -> str:
    """`name` with a format's path made absolute, as checkpoints store it (a model trained on
    `folder:photos` must find that folder when served from another directory)."""
    fmt = _format(name)
    return name if fmt is None else f"{name.partition(':')[0]}:{fmt[1].resolve()}"


def _no_data_dir(name: str, data_dir: str | Path | None) -> None:
    if data_dir is not None:
        raise ConfigError(
            f"--data-dir is where IDX files are looked for; --dataset {name} already names its "
            "files: drop --data-dir."
        )


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ConfigError(f"Unknown split {split!r}; valid splits are: train, test.")


def load_arrays(
    name: str = DEFAULT_DATASET,
    split: str = "train",
    data_dir: str | Path | None = None,
    *,
    download: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 [N, 28, 28] (C-contiguous) and labels int64 [N] for one split."""
    _check_split(split)
    fmt = _format(name)
    if fmt is not None:
        _no_data_dir(name, data_dir)
        module, path = fmt
        return module.load(path, split)  # type: ignore[no-any-return]
    loc = locate(name, data_dir, download=download, keys=(f"{split}-images", f"{split}-labels"))
    return idx_arrays(loc, split)


def title(name: str) -> str:
    """How to name the data in a heading: "Fashion-MNIST", or the `--dataset` string."""
    return name if _format(name) is not None else get_spec(name).display


def class_names(name: str = DEFAULT_DATASET) -> list[str]:
    fmt = _format(name)
    return list(fmt[0].classes(fmt[1]) if fmt is not None else get_spec(name).classes)


def dataset_fingerprint(name: str = DEFAULT_DATASET, data_dir: str | Path | None = None) -> str:
    """sha256 over the content hashes of the four arrays' IDX encodings (see
    `Location.fingerprint`): the same pixels and labels give the same fingerprint whether they
    came as IDX, `.gz`, CSV or PNG files."""
    fmt = _format(name)
    if fmt is not None:
        _no_data_dir(name, data_dir)
        return str(fmt[0].fingerprint(fmt[1]))
    return locate(name, data_dir).fingerprint


def fetch(name: str = DEFAULT_DATASET, data_dir: str | Path | None = None) -> Location:
    """Make sure all four IDX files are present and verified, and warm the decoded-array cache.
    (A `csv:` or `folder:` source is on disk already: `describe` decodes and caches it.)"""
    if _format(name) is not None:
        raise ConfigError(f"Nothing to fetch for --dataset {name}: its files are yours; "
                          "`fmnist data info` decodes and caches them.")
    loc = locate(name, data_dir)
    for split in SPLITS:
        idx_arrays(loc, split)
    return loc


def describe(name: str = DEFAULT_DATASET, data_dir: str | Path | None = None) -> dict[str, Any]:
    """What `fmnist data info` shows, as plain data."""
    fmt = _format(name)
    if fmt is not None:
        _no_data_dir(name, data_dir)
        return fmt[0].describe(fmt[1])  # type: ignore[no-any-return]
    loc = locate(name, data_dir, download=False)
    spec = loc.spec
    files = {
        k: {"path": str(f.path), "source": f.source, "sha256": f.sha256, "verified": f.verified}
        for k, f in loc.files.items()
    }
    splits = {split: idx_arrays(loc, split) for split in SPLITS}
    return summary(spec.name, spec.display, loc.source, spec.classes, splits, files, loc.notes,
                   loc.fingerprint)  # fmt: skip

