"""The IDX format of the MNIST family: (gunzip,) parse and check against a spec, and encode.

Encoding (`idx_bytes`) is what makes other formats comparable: an array's fingerprint is the
sha256 of its IDX bytes, so a CSV or image folder holding the same pixels as the IDX files
gets the same fingerprint as they do.
"""

from __future__ import annotations

import gzip
import hashlib
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from fmnist.datasets.specs import DatasetSpec
from fmnist.errors import DatasetError

_GZIP_MAGIC = b"\x1f\x8b"
# IDX element type codes -> big-endian numpy dtypes.
_IDX_DTYPES: dict[int, np.dtype[Any]] = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _corrupt(path: Path, problem: str) -> DatasetError:
    return DatasetError(
        f"Dataset file {path} {problem}; delete or replace it "
        "(`fmnist data fetch` gets a fresh verified copy)."
    )


def read_payload(path: str | Path) -> bytes:
    """The file's IDX bytes, gunzipped when it is a `.gz` (by name or by content)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DatasetError(f"Cannot read dataset file {path}: {e.strerror or e}.") from e
    return gunzip(raw, path)


def gunzip(raw: bytes, path: Path) -> bytes:
    if raw[:2] != _GZIP_MAGIC:
        if path.suffix == ".gz":
            raise _corrupt(path, "is named .gz but is not gzip data")
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise _corrupt(path, f"is a corrupt gzip file ({e})") from e


def parse_idx(data: bytes, path: str | Path) -> np.ndarray:
    """Parse IDX bytes into an array, checking the header against the bytes present.

    `path` is only used to name the file in errors.
    """
    path = Path(path)
    if len(data) < 4:
        raise _corrupt(path, f"is too short for an IDX header ({len(data)} bytes)")
    zero, code, ndim = int.from_bytes(data[:2], "big"), data[2], data[3]
    if zero != 0:
        magic = int.from_bytes(data[:4], "big")
        raise _corrupt(path, f"has a bad magic number 0x{magic:08X} (not an IDX file)")
    if code not in _IDX_DTYPES:
        raise _corrupt(path, f"has an unknown IDX element type code 0x{code:02X}")
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise _corrupt(path, f"has a truncated IDX header ({ndim} dimensions, {len(data)} bytes)")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = _IDX_DTYPES[code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    present = len(data) - header
    if present < expected:
        raise _corrupt(
            path,
            f"is truncated: its header declares shape {dims} ({expected} bytes) "
            f"but only {present} bytes follow",
        )
    if present > expected:
        raise _corrupt(
            path,
            f"has {present - expected} unexpected bytes after the {expected} bytes "
            f"its header declares (shape {dims})",
        )
    arr = np.frombuffer(data, dtype=dtype, count=expected // dtype.itemsize, offset=header)
    return arr.reshape(dims).astype(dtype.newbyteorder("="), copy=False)


def check_array(arr: np.ndarray, kind: str, spec: DatasetSpec, path: Path) -> np.ndarray:
    """Check a parsed images/labels array against what the spec says it must be."""
    if arr.dtype != np.uint8:
        raise _corrupt(path, f"has element type {arr.dtype}, expected unsigned bytes (code 0x08)")
    want_ndim = 3 if kind == "images" else 1
    if arr.ndim != want_ndim:
        raise _corrupt(path, f"has {arr.ndim} dimensions, expected {want_ndim} for {kind}")
    if kind == "images" and arr.shape[1:] != spec.image_shape:
        h, w = spec.image_shape
        raise _corrupt(path, f"holds {arr.shape[1]}x{arr.shape[2]} images, expected {h}x{w}")
    if kind == "labels" and arr.size and int(arr.max()) >= len(spec.classes):
        raise _corrupt(
            path,
            f"has label {int(arr.max())}, out of range for {len(spec.classes)} classes",
        )
    return arr


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (plain or gzipped) into a native-endian array."""
    return parse_idx(read_payload(path), path)


def idx_bytes(arr: np.ndarray) -> bytes:
    """The IDX file holding `arr` (uint8): the bytes the spec's sha256 are of."""
    if arr.dtype != np.uint8:
        raise ValueError(f"idx_bytes encodes uint8 arrays, got {arr.dtype}")
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(d.to_bytes(4, "big") for d in arr.shape)
    return header + np.ascontiguousarray(arr).tobytes()


def content_sha256(arr: np.ndarray) -> str:
    """sha256 of `arr` as an IDX file: equal to the spec's hash when the pixels are the same."""
    return hashlib.sha256(idx_bytes(arr)).hexdigest()


def fingerprint_of(hashes: dict[str, str]) -> str:
    """sha256 over "<key> <sha256>" lines ("train-images", "train-labels", "test-images",
    "test-labels", in that order, those present): the fingerprint of every format."""
    order = [f"{split}-{kind}" for split in ("train", "test") for kind in ("images", "labels")]
    lines = "".join(f"{k} {hashes[k]}\n" for k in order if k in hashes)
    return hashlib.sha256(lines.encode()).hexdigest()
