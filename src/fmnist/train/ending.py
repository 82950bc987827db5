"""Why a run ended early, said in its folder and in its error: `stops_recorded` wraps the loop
(fmnist.train.loop) and turns a signal, a failed write, a divergence or a callback's decision
into status.json's status and one sentence saying where the run stopped and how to go on."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

from fmnist import rundir
from fmnist.errors import DivergedError, WriteError
from fmnist.train.callbacks import RunState
from fmnist.train.stops import EndRun, Interrupted


@contextlib.contextmanager
def stops_recorded(state: RunState) -> Iterator[None]:
    """A run that stops early says why in status.json, and its error says where it stopped."""
    run_dir = state.run_dir
    try:
        yield
    except WriteError as e:
        if run_dir is None:  # a callback's own file, outside any run folder
            raise
        mark_stopped(run_dir, "failed", state.saved_epoch, str(e))
        raise WriteError(f"{e} {rundir.resume_hint(run_dir, state.saved_epoch)}") from e
    except DivergedError as e:
        if run_dir is not None:
            mark_stopped(run_dir, "diverged", state.saved_epoch, str(e))
        raise
    except EndRun as e:  # a callback's decision, e.g. a sweep pruning its trial
        if run_dir is not None:
            rundir.note_status(run_dir, e.status, epoch=state.saved_epoch, reason=str(e)[:500])
        raise
    except Interrupted as e:  # a signal: the state of the last step is saved
        step = state.progress.step
        if run_dir is not None and not state.finished:  # (a finished run's status says so)
            mark_stopped(run_dir, "interrupted", state.saved_epoch, step=step)
        where, resumable = where_stopped(state)
        raise Interrupted(e.signum, where, state.finished,
                          run_dir if resumable else None) from None
    except KeyboardInterrupt:
        if run_dir is not None:  # Ctrl-C twice: the folder says so, and how to go on
            mark_stopped(run_dir, "interrupted", state.saved_epoch)
            hint = rundir.resume_hint(run_dir, state.saved_epoch, interrupted=True)
            print(f"\nInterrupted. {hint}", file=sys.stderr, flush=True)
        raise
    except Exception as e:
        if run_dir is not None:
            mark_stopped(run_dir, "failed", state.saved_epoch, f"{type(e).__name__}: {e}")
        raise


def where_stopped(state: RunState) -> tuple[str, bool]:
    """The sentence saying what a stopped run kept, and whether it can be continued."""
    run_dir, step = state.run_dir, state.progress.step
    if state.finished:
        kept = f" in {run_dir}" if run_dir else ""
        return f"after the last step; the run finished{kept}.", False
    if run_dir is None:
        return "nothing was saved (the run was not writing a folder).", False
    if step:
        return f"saved at epoch {state.epoch}, step {step} in {run_dir}.", True
    if state.saved_epoch:
        return f"saved at epoch {state.saved_epoch} in {run_dir}.", True
    return f"before the first step; {run_dir} holds nothing to continue from.", False


def mark_stopped(run_dir: Path, status: str, saved_epoch: int, error: str | None = None,
                 step: int = 0) -> None:
    """status.json says why the run stopped (best effort: the disk may be what failed)."""
    rundir.note_status(run_dir, status, epoch=saved_epoch, step=step,
                       **({"error": error[:500]} if error else {}))


def diverged_message(state: RunState, verdict: str) -> str:
    """What diverged, what was kept, and what a new run should change (a resume would not)."""
    recipe, run_dir = state.recipe, state.run_dir
    lower = f"--lr {recipe.lr / 2:g}"
    kept = f" Epoch {state.epoch} is saved in {run_dir}, marked diverged." if run_dir else ""
    again = (f": `fmnist train --config {run_dir / rundir.CONFIG} {lower} --out NEW_FOLDER` "
             "repeats this run's recipe with it" if run_dir else "")
    return (f"Training diverged in epoch {state.epoch}: {verdict}.{kept} Start a new run with a "
            f"lower learning rate ({lower}) or a longer warm-up (--min-steps, --epochs){again}.")
