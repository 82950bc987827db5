"""Small synthetic IDX datasets for the data-layer tests: bytes, files, and matching specs."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import numpy as np

from fmnist.datasets import DataFile, DatasetSpec

NAMES = {
    "train-images": "train-images-idx3-ubyte",
    "train-labels": "train-labels-idx1-ubyte",
    "test-images": "t10k-images-idx3-ubyte",
    "test-labels": "t10k-labels-idx1-ubyte",
}
CLASSES = tuple(f"class{i}" for i in range(10))


def idx_bytes(arr: np.ndarray, code: int = 0x08) -> bytes:
    """IDX encoding of `arr` (big-endian header, then the raw elements)."""
    header = bytes([0, 0, code, arr.ndim]) + b"".join(d.to_bytes(4, "big") for d in arr.shape)
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def make_payloads(n_train: int = 20, n_test: int = 10, seed: int = 0) -> dict[str, bytes]:
    """Decompressed bytes of the four files; every class appears, label 0 of test is 9."""
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        labels = (np.arange(n) % 10)[::-1].astype(np.uint8)
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        out[f"{split}-images"] = idx_bytes(images)
        out[f"{split}-labels"] = idx_bytes(labels)
    return out


def write_files(
    folder: Path, payloads: dict[str, bytes], gz: bool = True, keys: tuple[str, ...] | None = None
) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for key in keys or tuple(payloads):
        name = NAMES[key] + (".gz" if gz else "")
        data = gzip.compress(payloads[key], mtime=0) if gz else payloads[key]
        (folder / name).write_bytes(data)
        paths[key] = folder / name
    return paths


def make_spec(
    name: str,
    payloads: dict[str, bytes],
    mirrors: tuple[str, ...] = (),
    md5_only: bool = False,
    debian_package: str | None = None,
) -> DatasetSpec:
    """A spec whose hashes match `payloads` (md5_only: md5 of their `gzip.compress(mtime=0)`)."""
    files = []
    for key, name_ in NAMES.items():
        if md5_only:
            gz_md5 = hashlib.md5(gzip.compress(payloads[key], mtime=0)).hexdigest()
            files.append((key, DataFile(name_, gz_md5=gz_md5)))
        else:
            files.append((key, DataFile(name_, sha256=hashlib.sha256(payloads[key]).hexdigest())))
    return DatasetSpec(
        name=name,
        title=name.upper(),
        folder="Synth",
        classes=CLASSES,
        files=tuple(files),
        mirrors=mirrors,
        debian_package=debian_package,
    )
