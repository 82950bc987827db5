"""Atomic file writes: every file fmnist writes goes through `write_bytes` (or `write_text`).

The bytes are written beside the target, flushed to the disk (fsync), then `os.replace`d into
place and the folder flushed too, so a reader, a crash or a power cut never leaves half a file
(or an empty one: without the fsync a rename can reach the disk before the data does), and a
failed write leaves the old file untouched. Serialisers (safetensors, torch.save, savefig, ONNX,
np.save) produce bytes in memory first: our files are a few MB, and then every disk error
surfaces here, as an OSError we can name, rather than as each library's own exception type. A
disk that is full, read-only, failing or forbidden becomes a `WriteError`: one sentence saying
what was being written, where, and why.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from pathlib import Path

from fmnist.errors import WriteError

# The errors a user fixes on their side (space, permissions, a read-only or failing disk).
_WHY = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is used up",
    errno.EROFS: "the filesystem is read-only",
    errno.EIO: "the disk reported an I/O error",
    errno.EACCES: "permission was denied",
    errno.EPERM: "the operation is not permitted",
    errno.ENOTDIR: "a file stands where a folder is needed",
    errno.EISDIR: "a folder stands where the file should go",
}


def _write_file(path: Path, data: bytes) -> None:
    # O_EXCL: never reuse someone else's file; 0o666 minus the umask is what open() would give
    # (mkstemp's 0600 would leave checkpoints unreadable to others).
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries (a rename into it, a new file) to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes(path: str | Path, data: bytes, what: str = "file") -> Path:
    """Write `data` to `path` atomically; `what` names the file in errors ("checkpoint")."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_file(tmp, data)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException as e:
        # The temp file may not exist, and a read-only disk refuses even its removal (EROFS):
        # the error to report is the first one.
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and (error := as_write_error(e, what, path)) is not None:
            raise error from e
        raise
    return path


def as_write_error(e: OSError, what: str, path: str | Path) -> WriteError | None:
    """The `WriteError` for a disk-side OSError (full, read-only, ...), else None."""
    if e.errno not in _WHY:
        return None
    return WriteError(f"Could not write the {what} {path}: {_WHY[e.errno]}.")


def write_text(path: str | Path, text: str, what: str = "file") -> Path:
    return write_bytes(path, text.encode("utf-8"), what)
