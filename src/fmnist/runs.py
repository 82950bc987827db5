"""Looking across runs: every run folder's status, recipe and results in one table
(`fmnist runs`), and two runs side by side (`fmnist runs compare A B`).

A run folder (its files: fmnist.rundir) says how it ended in status.json (written by `fit`): running,
finished, interrupted (Ctrl-C) or failed, with the epoch last saved and the machine it ran on.
A folder whose process vanished without a word (killed, power cut) still says "running"; its
claim (an OS lock the kernel drops with the process) tells that apart from a run still going.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import socket
import struct
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fmnist.errors import FmnistError
from fmnist.rundir import CLAIM, CONFIG, METRICS, RESUME, STATUS, WEIGHTS, owner


class RunError(FmnistError):
    """A runs folder or run folder that is missing or cannot be read."""


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _alive(path: Path, status: dict[str, Any]) -> bool:
    """Whether the process that trains in `path` still runs: its claim (an OS lock) is held,
    or, for a folder from before claims, its pid still runs on this host."""
    if (path / CLAIM).exists():
        return owner(path) is not None
    pid, host = status.get("pid"), status.get("host")
    if host != socket.gethostname() or not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


# ---- one run -------------------------------------------------------------------------------------


@dataclass
class Run:
    """What the table shows of one run folder. `problem` is set for a damaged folder."""

    name: str
    path: str
    status: str  # finished | running | interrupted | failed | diverged | pruned | damaged
    resumable: bool = False
    date: str | None = None
    recipe: str | None = None
    model: str | None = None
    parameters: int | None = None
    epochs: int = 0  # finished epochs
    planned_epochs: int | None = None
    final_accuracy: float | None = None
    best_accuracy: float | None = None
    train_seconds: float | None = None
    evaluated_on: str = "test"  # "validation": a sweep trial's accuracy, not a test figure
    images_per_s: float | None = None
    hardware: str | None = None
    problem: str | None = None
    config: dict[str, Any] = field(default_factory=dict, repr=False)
    rows: list[dict[str, Any]] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k not in ("config", "rows")}

    @property
    def status_text(self) -> str:
        if self.status == "damaged":
            return f"damaged: {self.problem}"
        if self.status in ("interrupted", "failed") and self.resumable:
            return f"{self.status}, resumable"
        return self.status


def read_run(path: str | Path) -> Run:
    """The summary of the run in `path`; a damaged folder gives status "damaged" and says why,
    rather than raising."""
    path = Path(path)
    run = Run(name=path.name, path=str(path), status="damaged")
    try:
        _fill(run, path)
    except _Damaged as e:
        run.status, run.problem = "damaged", str(e)
    return run


class _Damaged(Exception):
    pass


def _load(path: Path, what: str) -> Any:
    try:
        return _read_json(path)
    except FileNotFoundError:
        raise _Damaged(f"no {path.name}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise _Damaged(f"{path.name} is not readable {what}") from None


def _fill(run: Run, path: Path) -> None:
    config = _load(path / CONFIG, "JSON")
    if not isinstance(config, dict) or "model" not in config:
        raise _Damaged(f"{CONFIG} is not an fmnist recipe")
    run.config = config
    run.recipe, run.model = config.get("name"), config.get("model")
    run.planned_epochs = config.get("epochs") if not config.get("steps") else None
    run.rows = _read_rows(path / METRICS)
    status = _load(path / STATUS, "JSON") if (path / STATUS).is_file() else {}
    if not isinstance(status, dict):
        raise _Damaged(f"{STATUS} is not a status record")
    run.planned_epochs = status.get("epochs", run.planned_epochs)
    run.hardware = status.get("hardware")
    run.evaluated_on = str(status.get("evaluated_on", "test"))
    run.date = status.get("started") or _mtime(path / CONFIG)
    run.resumable = (path / RESUME).is_file()
    run.status = _status(status, run, path)
    if status.get("status") == "failed":
        run.problem = status.get("error")
    run.parameters = _parameters(path / WEIGHTS)
    # A Ctrl-C between saving an epoch and logging it leaves metrics.jsonl one epoch behind
    # (resume rewrites it from resume.pt); status.json knows the epoch saved.
    saved = status.get("epoch")
    run.epochs = max(run.rows[-1]["epoch"] if run.rows else 0, saved if isinstance(saved, int) else 0)
    if run.rows:
        accs = [r["test_accuracy"] for r in run.rows if "test_accuracy" in r]  # --eval-every
        last = run.rows[-1]
        # a run stopped after an epoch --eval-every skipped has no final figure yet
        run.final_accuracy = last.get("test_accuracy")
        run.best_accuracy = max(accs) if accs else None
        run.train_seconds = last.get("train_seconds")
        speeds = sorted(r["images_per_s"] for r in run.rows if "images_per_s" in r)
        run.images_per_s = speeds[len(speeds) // 2] if speeds else None  # the median epoch


def _status(status: dict[str, Any], run: Run, path: Path) -> str:
    said = status.get("status")
    if said == "running" and not _alive(path, status):
        return "failed"  # the process went away without saying why (killed, crashed)
    if said in ("running", "finished", "interrupted", "failed", "diverged", "pruned"):
        return str(said)
    # a folder from before status.json: finished when it has all its epochs
    done = run.rows[-1]["epoch"] if run.rows else 0
    return "finished" if run.planned_epochs and done >= run.planned_epochs else "interrupted"


def _read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        raise _Damaged(f"{METRICS} is not readable") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise _Damaged(f"{METRICS} line {n} is not JSON") from None
        if not isinstance(row, dict) or not {"epoch", "train_loss"} <= set(row):
            raise _Damaged(f"{METRICS} line {n} is not an epoch's metrics")
        rows.append(row)
    return rows


def _parameters(weights: Path) -> int | None:
    """Parameter count from the safetensors header alone (8-byte length, then JSON shapes)."""
    try:
        with weights.open("rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(min(n, 10_000_000)))
        return sum(math.prod(t["shape"]) for k, t in header.items()
                   if k != "__metadata__" and not k.endswith(("running_mean", "running_var",
                                                              "num_batches_tracked")))
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        return None


def _mtime(path: Path) -> str | None:
    try:
        stamp = path.stat().st_mtime
    except OSError:
        return None
    return _dt.datetime.fromtimestamp(stamp).astimezone().isoformat(timespec="seconds")


# ---- the table ---------------------------------------------------------------------------------

SORT_KEYS = {
    "date": lambda r: r.date or "",
    "name": lambda r: r.name,
    "accuracy": lambda r: r.final_accuracy if r.final_accuracy is not None else -1.0,
    "best": lambda r: r.best_accuracy if r.best_accuracy is not None else -1.0,
    "time": lambda r: r.train_seconds if r.train_seconds is not None else -1.0,
    "speed": lambda r: r.images_per_s if r.images_per_s is not None else -1.0,
    "status": lambda r: r.status,
}


def list_runs(root: str | Path = "runs", sort: str = "date", reverse: bool = False) -> list[Run]:
    """Every run folder directly under `root` (the `latest` link is not a run of its own)."""
    root = Path(root)
    if not root.is_dir():
        raise RunError(f"Runs folder {root} does not exist: train a run first (`fmnist train`), "
                       "or name the folder that holds them.")
    if sort not in SORT_KEYS:
        raise RunError(f"Unknown sort key '{sort}'. Valid: {', '.join(SORT_KEYS)}.")
    folders = [p for p in root.iterdir()
               if p.is_dir() and not p.is_symlink() and not p.name.startswith(".")]
    return sorted((read_run(p) for p in folders), key=SORT_KEYS[sort], reverse=reverse)


COLUMNS = ("run", "date", "recipe", "model", "params", "epochs", "final", "best", "train time",
           "img/s", "hardware", "status")


def _cells(run: Run) -> tuple[str, ...]:
    planned = f"/{run.planned_epochs}" if run.planned_epochs else ""
    return (
        run.name, (run.date or "")[:16].replace("T", " "), run.recipe or "", run.model or "",
        _count(run.parameters), f"{run.epochs}{planned}", _pct(run.final_accuracy, run),
        _pct(run.best_accuracy, run), _secs(run.train_seconds),
        "" if run.images_per_s is None else f"{run.images_per_s:,.0f}", run.hardware or "",
        run.status_text,
    )


def format_table(runs: list[Run]) -> str:
    rows = [COLUMNS, *(_cells(r) for r in runs)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                     for row in rows)


def _pct(x: float | None, run: Run | None = None) -> str:
    mark = " (val)" if run is not None and run.evaluated_on == "validation" else ""
    return "" if x is None else f"{100 * x:.2f}%{mark}"


def _secs(x: float | None) -> str:
    return "" if x is None else f"{x:.1f}s"


def _count(n: int | None) -> str:
    if n is None:
        return ""
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else str(n)


# ---- two runs side by side -----------------------------------------------------------------------


def find_run(name: str | Path, root: str | Path = "runs") -> Run:
    """The run `name` means: a run folder, or the name of one under `root`; damaged or missing
    is a RunError."""
    path = Path(name)
    if not path.is_dir():
        path = Path(root) / name
    if not path.is_dir():
        raise RunError(f"No run '{name}': it is neither a folder nor a run under {root} "
                       "(`fmnist runs` lists them).")
    run = read_run(path)
    if run.status == "damaged":
        raise RunError(f"Run {path} is damaged ({run.problem}): nothing to compare.")
    return run


def recipe_differences(a: Run, b: Run) -> list[tuple[str, Any, Any]]:
    """(field, a's value, b's value) for every recipe field the two runs set differently."""
    keys = list(dict.fromkeys([*a.config, *b.config]))
    return [(k, a.config.get(k), b.config.get(k)) for k in keys
            if k != "name" and a.config.get(k) != b.config.get(k)]


def format_comparison(a: Run, b: Run) -> str:
    """The recipes' differences, then the results side by side."""
    def side_by_side(title: str, rows: Sequence[tuple[str, ...]]) -> list[str]:
        table = [(title, a.name, b.name), *rows]
        widths = [max(len(r[i]) for r in table) for i in range(3)]
        return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                for r in table]

    diffs = [(k, json.dumps(x), json.dumps(y)) for k, x, y in recipe_differences(a, b)]
    recipe = [("recipe", a.recipe or "", b.recipe or ""), *diffs]
    results = [
        ("epochs", f"{a.epochs}", f"{b.epochs}"),
        ("final test accuracy", _pct(a.final_accuracy, a), _pct(b.final_accuracy, b)),
        ("best test accuracy", _pct(a.best_accuracy, a), _pct(b.best_accuracy, b)),
        ("final test loss", *(_loss(r) for r in (a, b))),
        ("training time", _secs(a.train_seconds), _secs(b.train_seconds)),
        ("images/s", *("" if r.images_per_s is None else f"{r.images_per_s:,.0f}" for r in (a, b))),
        ("parameters", _count(a.parameters), _count(b.parameters)),
        ("hardware", a.hardware or "", b.hardware or ""),
        ("status", a.status_text, b.status_text),
    ]
    same = "" if diffs else "(the recipes are the same apart from their names)\n"
    return "\n".join([*side_by_side("recipe field", recipe), "", *side_by_side("result", results)]
                     ) + ("\n" + same if same else "")


def _loss(run: Run) -> str:
    return f"{run.rows[-1]['test_loss']:.4f}" if run.rows and "test_loss" in run.rows[-1] else ""
