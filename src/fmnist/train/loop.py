"""The training loop: `fit(recipe)` trains, evaluates after every epoch, and (on rank 0) writes
the run folder (fmnist.rundir). Progress, logging, metrics and status are callbacks hung off
the loop (fmnist.train.callbacks); setting up and building what it trains is fmnist.train.setup.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fmnist import budget, checkpoint, datasets, distributed, rundir
from fmnist.checkpoint import ResumeState
from fmnist.errors import ConfigError, DivergedError, WriteError
from fmnist.models import unwrap
from fmnist.recipes import Recipe, apply_overrides, get_recipe, to_dict, validate
from fmnist.train.callbacks import Callback, Curves, RunState, Status, display_callback
from fmnist.train.data import Data
from fmnist.train.evaluation import evaluate_epoch, reduce_device
from fmnist.train.guard import check_learning
from fmnist.train.setup import Parts, Setup, build, set_up, train_step
from fmnist.train.throughput import plan_for


@dataclass
class FitResult:
    model: nn.Module
    meta: dict[str, Any]  # the checkpoint's model.json, as `checkpoint.save_model` writes it
    rows: list[dict[str, Any]]
    run_dir: Path | None


@distributed.clear_errors
def fit(
    recipe: Recipe | None = None,
    *,
    out: str | Path | None = None,
    resume: str | Path | None = None,
    data: Data | None = None,
    data_dir: str | Path | None = None,
    callbacks: Sequence[Callback] = (),
    display: bool = True,
    save: bool = True,
    time_budget: float | str | None = None,
) -> FitResult:
    """Train `recipe` (default: the `default` recipe); returns the trained model, its checkpoint
    metadata and per-epoch metrics.

    `resume` continues the run in that folder from its last finished epoch, exactly: model,
    optimiser, schedule and RNG states come from its resume.pt, the recipe from it too (so
    `recipe` and `out` must not be given). `callbacks` are added to the on-screen display (a
    progress bar, or the Quickstart's lines; `display=False` hides it) and the run-folder
    writers. With `save=False` nothing is written.

    `time_budget` (seconds, or "90s", "5m") replaces the recipe's epochs (and, if one epoch does
    not fit, its cnn widths) by a plan measured on this machine (see fmnist.budget); the run
    folder's config.json holds the planned recipe, which reproduces the run without planning.
    """
    info = distributed.from_env()
    recipe, resumed, seconds = checked_inputs(recipe, out, resume, time_budget, info)
    parts: Parts | None = None
    claim: rundir.Claim | None = None
    try:
        if save and info.is_main and resume is not None:  # before anything is written to it
            claim = rundir.Claim(Path(resume))
        setup = set_up(recipe, info, data, data_dir, resumed)
        if display and setup.recipe != recipe:
            print(resized(recipe, setup.recipe, len(setup.data.train_images)), flush=True)
        if seconds is not None:
            setup = replace(setup, recipe=plan_for(setup, seconds, display))
        recipe, parts = setup.recipe, build(setup, resumed)
        run_dir = None
        if save and info.is_main:  # a resumed run keeps its folder and config.json
            run_dir = Path(resume) if resume else rundir.start(out, recipe.name, to_dict(recipe))
            claim = claim or rundir.Claim(run_dir)
        rows = list(resumed.rows) if resumed else []
        state = RunState(recipe, run_dir, info.is_main, len(parts.batches),
                         parts.batches.samples_per_rank, parts.epochs, rows=rows,
                         saved_epoch=rows[-1]["epoch"] if rows else 0, setup=setup, parts=parts)
        shown = [display_callback(recipe)] if display else []
        cbs = [*shown, *callbacks, Curves(), Status()] if info.is_main else []
        for cb in cbs:
            cb.on_fit_start(state)
        if resumed is not None:
            checkpoint.set_rng_state(distributed.rank_rng_state(resumed, info))
        else:
            torch.manual_seed(recipe.seed + info.rank)  # dropout etc. differ per rank; data does not
        with stops_recorded(state):
            for epoch in range(state.saved_epoch + 1, parts.epochs + 1):
                state.epoch = epoch
                parts.batches.set_epoch(epoch)
                for cb in cbs:
                    cb.on_epoch_start(state)
                row = train_epoch(parts, setup, state, cbs) | evaluate_epoch(parts.model, setup)
                check_learning(row, len(setup.data.classes), recipe, epoch == parts.epochs)
                state.rows.append(row)
                if save:
                    save_epoch(run_dir, setup, parts, state.rows)
                    state.saved_epoch = epoch
                for cb in cbs:
                    cb.on_epoch_end(state, row)
            for cb in cbs:
                cb.on_fit_end(state)
        # Finish together: a rank that tears gloo down while rank 0 is still writing the run
        # folder could abort at exit (seen here, about 1 run in 4, before this barrier).
        distributed.barrier(info)
    finally:
        if claim is not None:
            claim.release()
        # DDP must be released before the process group goes, or the process can abort at exit.
        parts = None if parts is None else replace(parts, train_model=parts.model)
        distributed.shutdown()
    model = unwrap(parts.model).eval()
    return FitResult(model, checkpoint.model_meta(model, run_meta(setup, rows)), rows, run_dir)


def checked_inputs(
    recipe: Recipe | None, out: str | Path | None, resume: str | Path | None,
    time_budget: float | str | None, info: distributed.DistInfo,
) -> tuple[Recipe, ResumeState | None, float | None]:
    """The recipe to run (a resumed run's own), its resume state, and the time budget in
    seconds; refuses combinations that cannot work."""
    resumed: ResumeState | None = None
    if resume is not None:
        if recipe is not None or out is not None:
            raise ConfigError(
                "fit(resume=...) continues a run with the recipe and folder it saved: "
                "do not pass recipe or out with it."
            )
        resumed = ResumeState.load(resume)
        recipe = apply_overrides(Recipe(), resumed.recipe)  # checked like any config
        distributed.check_resume(resumed.world_size, info, resume)
    recipe = recipe or get_recipe("default")
    validate(recipe)
    # csv:/folder: paths made absolute, so the checkpoint finds its data from anywhere
    recipe = replace(recipe, dataset=datasets.canonical_name(recipe.dataset))
    seconds = None if time_budget is None else budget.parse_duration(time_budget)
    if seconds is not None and (resume is not None or info.enabled):
        raise ConfigError("A time budget plans a new run in one process: it cannot be combined "
                          "with resume or torchrun (pass the planned config.json instead).")
    return recipe, resumed, seconds


@contextlib.contextmanager
def stops_recorded(state: RunState) -> Iterator[None]:
    """A run that stops early says why in status.json, and its error says how to go on."""
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
    except KeyboardInterrupt:
        if run_dir is not None:  # Ctrl-C: the folder says so, and how to go on
            mark_stopped(run_dir, "interrupted", state.saved_epoch)
            hint = rundir.resume_hint(run_dir, state.saved_epoch, interrupted=True)
            print(f"\nInterrupted. {hint}", file=sys.stderr, flush=True)
        raise
    except Exception as e:
        if run_dir is not None:
            mark_stopped(run_dir, "failed", state.saved_epoch, f"{type(e).__name__}: {e}")
        raise


def mark_stopped(run_dir: Path, status: str, saved_epoch: int, error: str | None = None) -> None:
    """status.json says why the run stopped (best effort: the disk may be what failed)."""
    rundir.note_status(run_dir, status, epoch=saved_epoch,
                       **({"error": error[:500]} if error else {}))


def train_epoch(parts: Parts, setup: Setup, state: RunState, callbacks: Sequence[Callback]) -> dict[str, Any]:
    """One pass over the batches (the first few, when the recipe's steps end part-way): the
    row's training figures (mean loss over batches, lr, time, images/s)."""
    t0 = time.perf_counter()
    steps = min(len(parts.batches), parts.total_steps - (state.epoch - 1) * len(parts.batches))
    parts.train_model.train()
    total = torch.zeros((), device=setup.device)
    done = images = 0
    for step, (x, y) in enumerate(parts.batches):
        if step == steps:
            break
        loss = train_step(parts, setup, x, y)
        total += loss.detach()
        done, images = done + 1, images + len(y)
        for cb in callbacks:
            cb.on_step(state, step, loss, len(y))
    mean_loss = (total / max(1, done)).item()  # waits for the last step
    if setup.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    info = setup.info
    loss_sum = distributed.all_reduce_sum(
        torch.tensor([mean_loss, 1.0], device=reduce_device(setup.device)), info)
    previous = state.rows[-1]["train_seconds"] if state.rows else 0.0
    return {
        "epoch": state.epoch,
        "train_loss": (loss_sum[0] / loss_sum[1]).item(),
        "lr": parts.scheduler.get_last_lr()[0],
        "seconds": seconds,
        "train_seconds": previous + seconds,
        "images_per_s": images * info.world_size / seconds,
    }


def save_epoch(run_dir: Path | None, setup: Setup, parts: Parts, rows: list[dict[str, Any]]) -> None:
    """Commit the epoch just finished (rank 0 writes): weights, model.json, resume state and
    metrics.jsonl together, so a crash leaves this epoch or the one before, never a mix."""
    # Every rank's RNG state, for exact resume of per-rank randomness: a collective, so every
    # rank takes part whether or not it writes.
    rng = checkpoint.rng_state()
    rngs = distributed.gather_objects(rng, setup.info)
    if run_dir is None:
        return
    resume = ResumeState(
        epoch=rows[-1]["epoch"], rows=rows, recipe=to_dict(setup.recipe), model=parts.model.state_dict(),
        optimizer=parts.optimizer.state_dict(), scheduler=parts.scheduler.state_dict(),
        rng=rng, rng_ranks=rngs, world_size=setup.info.world_size,
        mean=setup.mean, std=setup.std, fingerprint=setup.data.fingerprint,
    )
    metrics = "".join(json.dumps(r) + "\n" for r in rows).encode()
    files = checkpoint.model_files(parts.model, run_meta(setup, rows))
    files |= {rundir.RESUME: resume.to_bytes(), rundir.METRICS: metrics}
    rundir.commit(run_dir, files, f"epoch-{rows[-1]['epoch']:04d}")


def run_meta(setup: Setup, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """What the checkpoint says besides the model itself (`checkpoint.model_meta` adds that):
    the data, its normalisation, the recipe, the epoch and its metrics."""
    return {
        "classes": setup.data.classes,
        "normalize": {"mean": setup.mean, "std": setup.std},
        "dataset": setup.recipe.dataset,
        "dataset_sha256": setup.data.fingerprint,
        "recipe": setup.recipe.name,
        "tta_flip": setup.recipe.tta_flip,
        "epoch": rows[-1]["epoch"] if rows else 0,
        "metrics": rows[-1] if rows else {},
    }


def resized(asked: Recipe, runs: Recipe, images: int) -> str:
    """The line that says a small dataset changed the batch size and epochs (`--min-steps`)."""
    return (f"{images:,} training images: batch {asked.batch_size} -> {runs.batch_size} (lr "
            f"{asked.lr:g} -> {runs.lr:g}), epochs {asked.epochs} -> {runs.epochs}, so the run "
            f"takes at least {runs.min_steps} optimiser steps (--min-steps 0 keeps the recipe's).")
