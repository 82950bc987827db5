"""What fmnist keeps in its cache folder besides downloads: the verification record and decoded
arrays.

Hashing 30 MB (or a 130 MB CSV) on every load would be slow, so the record remembers each
file's digest keyed by (path, size, mtime): an unchanged file is trusted, a changed one is
hashed again. Decoded arrays are stored as `.npy` (one array) or `.npz` (a format's splits)
named by a key derived from the source's content, so a changed source is a new key and a warm
load is an `np.load`. Everything here only saves time: a damaged entry is a miss, and a cache
that cannot be written is warned about and done without.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fmnist.atomic import write_bytes, write_text
from fmnist.datasets.idx import gunzip
from fmnist.datasets.report import warn_once
from fmnist.datasets.specs import cache_dir
from fmnist.errors import DatasetError, WriteError


@dataclass(frozen=True)
class Digest:
    sha256: str | None  # of the decompressed bytes; None when unreadable
    md5: str | None  # of the bytes on disk
    error: str | None = None


def _record_path() -> Path:
    return cache_dir() / "verified.json"


def load_record() -> dict[str, Any]:
    try:
        return json.loads(_record_path().read_text())
    except (OSError, ValueError):
        return {}


def save_record(record: dict[str, Any]) -> None:
    # The record only saves time; failing to write it (read-only cache) must not fail a load.
    with contextlib.suppress(WriteError, OSError):
        write_text(_record_path(), json.dumps(record, indent=0, sort_keys=True), "record")


def file_digest(path: Path, record: dict[str, Any], md5: bool = True) -> tuple[Digest, bool]:
    """Digest of `path`, from the record when size and mtime are unchanged. `md5` (of the bytes
    on disk) is only needed against a published `.gz` md5: a 130 MB CSV skips it.

    Returns (digest, record_changed).
    """
    try:
        st = path.stat()
    except OSError as e:
        return Digest(None, None, error=f"cannot be read ({e.strerror or e})"), False
    key = str(path.resolve())
    entry = record.get(key)
    if entry and entry.get("size") == st.st_size and entry.get("mtime_ns") == st.st_mtime_ns:
        return Digest(entry.get("sha256"), entry.get("md5"), entry.get("error")), False
    try:
        raw = path.read_bytes()
    except OSError as e:
        return Digest(None, None, error=f"cannot be read ({e.strerror or e})"), False
    raw_md5 = hashlib.md5(raw, usedforsecurity=False).hexdigest() if md5 else None
    try:
        digest = Digest(hashlib.sha256(gunzip(raw, path)).hexdigest(), raw_md5)
    except DatasetError as e:
        digest = Digest(None, raw_md5, error=str(e))
    record[key] = {
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "sha256": digest.sha256,
        "md5": digest.md5,
        "error": digest.error,
    }
    return digest, True


def decoded_path(key: str, suffix: str = ".npy") -> Path:
    return cache_dir() / "decoded" / f"{key}{suffix}"


def load_decoded(path: Path) -> Any:
    """The array (`.npy`) or dict of arrays (`.npz`) at `path`, or None on a miss."""
    if not path.is_file():
        return None
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                return {k: npz[k] for k in npz.files}
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        # A damaged entry is just a miss; the source is the truth.
        with contextlib.suppress(OSError):
            path.unlink()
        return None


def save_decoded(path: Path, arrays: np.ndarray | dict[str, np.ndarray]) -> None:
    """Store `arrays` at `path` atomically; a failure is warned about, never raised."""
    buf = io.BytesIO()
    if isinstance(arrays, dict):
        np.savez(buf, allow_pickle=False, **arrays)
    else:
        np.save(buf, arrays, allow_pickle=False)
    try:
        write_bytes(path, buf.getvalue(), "decoded-array cache")
    except (WriteError, OSError) as e:  # the cache only saves time: load on without it
        warn_once(f"{e} Loading goes on without the cache.")
