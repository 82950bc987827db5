"""The final run: the best trial's settings trained on all training images and evaluated once on
the test set, by exactly one worker of a study.

Which worker is decided in the study's storage, by Optuna's public API only (so SQLite and
PostgreSQL alike): each worker that would train it adds a claim, a bookkeeping trial of its own
(state failed, never sampled from, counted or shown), in one insert; the storage numbers trials
in the order they were added, and the lowest-numbered claim wins. The others say who trains it.

A claim whose worker died (same host, its process gone: a kill -9, a stopped final run) is
taken over by a later claim that names it (`replaces`); the lowest such wins in turn, and
continues the final run in the dead worker's folder (from its resume.pt; or just reads it, if
it had finished). From another host nobody can tell a worker is
gone: that host says who holds the claim.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from fmnist import rundir
from fmnist.recipes import Recipe
from fmnist.sweep.report import CLAIM
from fmnist.sweep.space import to_recipe
from fmnist.sweep.storage import optuna
from fmnist.sweep.trial import PassOn, worker
from fmnist.train import fit
from fmnist.train.stops import Stops

DONE = "final_run"  # the study's user attribute for a finished final run: trial, dir, accuracy


def claims(study: Any, trial: int) -> list[Any]:
    """The claims to train trial `trial`'s settings, oldest first."""
    return sorted((t for t in study.get_trials(deepcopy=False)
                   if CLAIM in t.user_attrs and t.user_attrs.get("final_of") == trial),
                  key=lambda t: t.number)


def holder(study: Any, trial: int) -> Any | None:
    """The claim that trains trial `trial`'s final run: the oldest, or its oldest taker-over
    (and so on)."""
    found = claims(study, trial)
    winner = found[0] if found else None
    while winner is not None:
        taken = [c for c in found if c.user_attrs.get("replaces") == winner.number]
        if not taken:
            return winner
        winner = taken[0]
    return None


def gone(claimant: str) -> bool:
    """Whether the worker host:pid is known to have ended (only a process on this host can be
    looked at)."""
    host, _, pid = claimant.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def claim(study: Any, trial: int, final_dir: Path) -> Any:
    """Claim the final run of trial `trial` for this worker; returns the winning claim."""
    op = optuna()

    def add(**extra: Any) -> None:
        study.add_trial(op.trial.create_trial(state=op.trial.TrialState.FAIL, user_attrs={
            CLAIM: worker(), "final_of": trial, "final_dir": str(final_dir.resolve()), **extra}))

    if holder(study, trial) is None:
        add()
    winner = holder(study, trial)
    assert winner is not None  # ours, if no other
    if winner.user_attrs[CLAIM] != worker() and gone(winner.user_attrs[CLAIM]):
        # its folder is on this host: continue (or just read) the final run there
        add(replaces=winner.number, final_dir=winner.user_attrs["final_dir"])
        winner = holder(study, trial)
    return winner


def final_run(study: Any, best: Any, recipe: Recipe, sweep_dir: Path, per_trial: float | None,
              data_dir: str | Path | None, stops: Stops,
              show: Callable[[str], None]) -> tuple[Path | None, float | None]:
    """The final run of `best` (a trial), trained here if this worker holds its claim; its
    folder and test accuracy (None, None when another worker trains it). `stops`: the sweep's,
    whose signal, if one came as the run began, the run is stopped by."""
    winner = claim(study, best.number, sweep_dir / f"final-{best.number:04d}")
    final_dir = Path(winner.user_attrs["final_dir"])
    if winner.user_attrs[CLAIM] != worker():
        done = study.user_attrs.get(DONE) or {}
        if done.get("trial") == best.number:
            show(f"Worker {done['worker']} trained the final run in {done['dir']}: "
                 f"{100 * done['accuracy']:.2f} % test accuracy.")
        else:
            show(f"Worker {winner.user_attrs[CLAIM]} trains the final run in "
                 f"{winner.user_attrs['final_dir']}.")
        return None, None
    accuracy = train_final(best, recipe, final_dir, per_trial, data_dir, stops, show)
    study.set_user_attr(DONE, {"trial": best.number, "dir": str(final_dir.resolve()),
                               "accuracy": accuracy, "worker": worker()})
    return final_dir, accuracy


def train_final(best: Any, recipe: Recipe, final_dir: Path, per_trial: float | None,
                data_dir: str | Path | None, stops: Stops, show: Callable[[str], None]) -> float:
    """Train (or continue, or just read) the final run in `final_dir`; its test accuracy."""
    if rundir.read_status(final_dir).get("status") != "finished":
        if final_dir.is_dir() and not (final_dir / rundir.RESUME).is_file() and not (
                final_dir / rundir.WEIGHTS).exists() and rundir.owner(final_dir) is None:
            shutil.rmtree(final_dir)  # a start that saved nothing (stopped in its set-up)
        if (final_dir / rundir.RESUME).is_file():
            show(f"Continuing the final run in {final_dir}.")
            fit(resume=final_dir, data_dir=data_dir, callbacks=[PassOn(stops)])
        else:
            show(f"Training trial {best.number}'s settings on all training images into "
                 f"{final_dir}; the test set is read now, once.")
            final = replace(to_recipe(recipe, best.user_attrs["values"]), name=f"{recipe.name}-sweep")
            fit(final, out=final_dir, data_dir=data_dir, time_budget=per_trial,
                callbacks=[PassOn(stops)])
    rows = [json.loads(line) for line in
            (final_dir / rundir.METRICS).read_text(encoding="utf-8").splitlines() if line]
    return float(rows[-1]["test_accuracy"])
