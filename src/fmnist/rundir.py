"""The run folder: what `fit` writes into it, how a new one is claimed, and its status.

    config.json        the effective recipe (reusable as --config)
    metrics.jsonl      one JSON line per finished epoch
    curves.png         loss and accuracy per epoch
    model.safetensors  the weights, with model.json beside them (fmnist.checkpoint)
    resume.pt          everything needed to continue exactly
    status.json        running / finished / interrupted / failed / diverged, the epoch last saved
    .claim             who trains in the folder now: an OS lock, and its owner's pid, host, start

The saved state (weights, model.json, resume.pt, metrics.jsonl) is committed whole: each save
writes a new folder checkpoints/<label>/, then switches the `current` link to it with one atomic
rename; the four names at the top are links through `current`. Whatever the crash point, the
folder holds one consistent save: the new one or the one before (see `commit`).

Every name a run folder holds is defined here, once; this module needs no torch, so listing
runs (fmnist.runs) stays cheap.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import os
import secrets
import shutil
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fmnist.atomic import as_write_error, fsync_dir, write_text
from fmnist.errors import ConfigError, WriteError

CONFIG = "config.json"
METRICS = "metrics.jsonl"
CURVES = "curves.png"
WEIGHTS = "model.safetensors"
META = "model.json"
RESUME = "resume.pt"
STATUS = "status.json"
CLAIM = ".claim"
CHECKPOINTS = "checkpoints"
CURRENT = "current"


# ---- claiming a new folder ----------------------------------------------------------------------


def refuse_taken(run_dir: Path) -> None:
    """ConfigError when `run_dir` holds a run or anything else (it must be new or empty). Reads
    only: `fit` asks before it loads data or builds anything, `new_run_dir` again as it claims."""
    if (run_dir / WEIGHTS).exists() or (run_dir / RESUME).exists():
        raise ConfigError(
            f"Run folder {run_dir} already holds a run: use --resume {run_dir} to continue it, "
            "or pick another --out."
        )
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise _taken(run_dir)


def _taken(run_dir: Path) -> ConfigError:
    return ConfigError(f"--out {run_dir} exists and is not an empty folder: pick a new folder, so "
                       "nothing in it is overwritten.")


def new_run_dir(out: str | Path | None, name: str) -> Path:
    """A fresh run folder, claimed atomically (two runs never share one): `out`, which must be
    new or empty, or runs/<time>-<name>.

    The claim is the creation of the folder (mkdir fails if it exists) or, for an empty `out`
    that already exists, of its config.json (O_EXCL); `start` then writes the real config over it.
    """
    if out is None:
        base = Path("runs") / f"{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}-{name}"
        base.parent.mkdir(parents=True, exist_ok=True)
        run_dir, n = base, 1
        while True:
            try:
                run_dir.mkdir()
                break
            except FileExistsError:
                n += 1
                run_dir = base.with_name(f"{base.name}-{n}")
        point_latest(run_dir)
        return run_dir
    run_dir = Path(out)
    refuse_taken(run_dir)
    try:
        run_dir.mkdir(parents=True)
    except FileExistsError:
        refuse_taken(run_dir)  # made between our look and now
    try:
        os.close(os.open(run_dir / CONFIG, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    except FileExistsError:  # another run claimed it between our look and now
        raise _taken(run_dir) from None
    if run_dir.resolve().parent.name == "runs":
        point_latest(run_dir)
    return run_dir


def point_latest(run_dir: Path) -> None:
    """runs/latest -> the newest run (a relative symlink, replaced atomically). Anything
    called `latest` that is not our symlink is left alone."""
    latest = run_dir.parent / "latest"
    if latest.exists() and not latest.is_symlink():
        return
    tmp = run_dir.parent / f".latest.{os.getpid()}"
    try:
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(run_dir.name)
        os.replace(tmp, latest)
    except OSError:  # symlinks unavailable (some filesystems): the run itself is unaffected
        tmp.unlink(missing_ok=True)


def start(out: str | Path | None, name: str, config: dict[str, Any]) -> Path:
    """Claim a new run folder and write its config.json."""
    run_dir = new_run_dir(out, name)
    try:
        write_text(run_dir / CONFIG, json.dumps(config, indent=2) + "\n", "run config")
    except WriteError as e:
        raise WriteError(f"{e} {resume_hint(run_dir, 0)}") from e
    return run_dir


def resume_hint(run_dir: Path, saved_epoch: int, interrupted: bool = False) -> str:
    """The sentence that says what a stopped run left and how to go on."""
    if saved_epoch == 0:
        if interrupted:
            return f"No epoch was finished, so {run_dir} holds nothing to resume."
        return f"No epoch was saved yet; start again once {run_dir} can be written."
    if interrupted:
        return (f"Epoch {saved_epoch} is the last saved in {run_dir}; continue with "
                f"`fmnist train --resume {run_dir}`.")
    return (f"The last complete checkpoint is epoch {saved_epoch} in {run_dir}: free space (or fix "
            f"the folder), then continue with `fmnist train --resume {run_dir}`.")


# ---- committing a save whole ---------------------------------------------------------------------


def commit(run_dir: Path, files: dict[str, bytes], label: str,
           keep: Sequence[str] = ()) -> Path:
    """Save `files` (name -> bytes), and the current save's files named in `keep` (hard links,
    where they exist), as the run folder's state, all or nothing.

    They go into a fresh checkpoints/<label>/ (each file fsync'd, then the folder), which the
    `current` link is switched to by a rename, and the folder fsync'd: a crash before that rename
    leaves the previous save in place, after it the new one. The top-level names link through
    `current`; the previous save's folder is kept (a reader may have just resolved it), older
    ones are deleted. Returns the new folder.
    """
    store = run_dir / CHECKPOINTS
    tmp = store / f".{label}.{secrets.token_hex(4)}.tmp"
    where = run_dir  # what an error names: the file being written, else the folder
    try:
        tmp.mkdir(parents=True)
        for name, data in files.items():
            where = run_dir / name
            fd = os.open(tmp / name, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
            try:
                _write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
        for name in keep:
            if (run_dir / name).exists():
                os.link((run_dir / name).resolve(), tmp / name)
        fsync_dir(tmp)
        where = run_dir
        final = store / label
        n = 1
        while final.exists():  # the same epoch saved again (a resumed run): keep both apart
            n += 1
            final = store / f"{label}-{n}"
        os.rename(tmp, final)
        fsync_dir(store)
        previous = (run_dir / CURRENT).resolve() if (run_dir / CURRENT).is_symlink() else None
        _link(run_dir / CURRENT, f"{CHECKPOINTS}/{final.name}")
        for name in [*files, *keep]:  # once per folder (and over the plain files of older versions)
            link = run_dir / name
            if not (link.is_symlink() and os.readlink(link) == f"{CURRENT}/{name}"):
                _link(link, f"{CURRENT}/{name}")
        fsync_dir(run_dir)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        error = as_write_error(e, "checkpoint", where)
        if error is not None:
            raise error from e
        raise
    for old in store.iterdir():  # the owner's claim means no other save is under way
        if old != final and old.resolve() != previous:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)  # os.write may write less than it was given
    while view:
        view = view[os.write(fd, view):]


def _link(path: Path, target: str) -> None:
    """Point the symlink `path` at `target`, atomically (replacing a file of the same name)."""
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.link"
    os.symlink(target, tmp)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# ---- status.json ----------------------------------------------------------------------------------


def now() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


def write_status(run_dir: str | Path, status: str, **fields: Any) -> Path:
    """Set the run's status (and `fields`) in status.json, keeping what it said before
    (when the run started, on what machine)."""
    path = Path(run_dir) / STATUS
    old = read_status(run_dir)
    new = {"started": now(), **old, **fields, "status": status, "updated": now(),
           "pid": os.getpid(), "host": socket.gethostname()}
    if status != "failed":
        new.pop("error", None)
    return write_text(path, json.dumps(new, indent=2) + "\n", "run status")


def read_status(run_dir: str | Path) -> dict[str, Any]:
    """What status.json says; {} when it is missing or damaged (a crash of an older version, a
    full disk): the next update then writes it whole again."""
    try:
        found = json.loads((Path(run_dir) / STATUS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def note_status(run_dir: Path, status: str, **fields: Any) -> None:
    """Update status.json, best effort: it only describes the run, and a disk that cannot take
    it fails the checkpoint next, with the message that says how to resume."""
    with contextlib.suppress(WriteError, OSError, ValueError):
        write_status(run_dir, status, **fields)


# ---- the owner: one process trains in a folder at a time ----------------------------------------


class Claim:
    """This process's claim on a run folder: an exclusive flock on its .claim file, which the
    kernel drops when the process ends however it ends (kill -9 included), with the owner's pid,
    host and start time written inside so that others can name it. (flock holds between the
    processes of one machine; over NFS from several machines it may not.)"""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / CLAIM
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:  # a read-only or full disk: nothing can be trained into it
            error = as_write_error(e, "run claim", self.path)
            if error is None:
                raise
            raise WriteError(f"{error} Fix the folder, then continue with `fmnist train "
                             f"--resume {run_dir}`.") from e
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_owner(self.fd)
            os.close(self.fd)
            raise ConfigError(
                f"Run folder {run_dir} is being trained by {_who(holder)}: wait for it to end, "
                "or stop it first."
            ) from None
        earlier = _read_owner(self.fd)
        if earlier:  # its process ended without letting go: it was killed or crashed
            print(f"Taking over run folder {run_dir} from {_who(earlier)}, which is no longer "
                  "running.", file=sys.stderr, flush=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": now()}
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, json.dumps(me).encode(), 0)

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def release(self) -> None:
        """Let go: empty the file (nothing to take over), then drop the lock."""
        if self.fd < 0:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self.fd, 0)
        os.close(self.fd)  # closing the descriptor drops the flock
        self.fd = -1


def owner(run_dir: str | Path) -> dict[str, Any] | None:
    """The live owner of `run_dir` (pid, host, started), or None when nobody trains in it."""
    path = Path(run_dir) / CLAIM
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _read_owner(fd) or {}
    finally:
        os.close(fd)  # also drops the shared lock, if it was taken
    return None


def _read_owner(fd: int) -> dict[str, Any]:
    try:
        found = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}


def _who(holder: dict[str, Any]) -> str:
    if not holder:
        return "another process"
    return (f"process {holder.get('pid')} on {holder.get('host')} (since "
            f"{holder.get('started')})")
