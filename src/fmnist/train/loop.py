"""The training loop: `fit(recipe)` trains, evaluates the test set when the recipe says, and (on
rank 0) writes the run folder (fmnist.rundir). Progress, logging, metrics and status are
callbacks hung off the loop (fmnist.train.callbacks); setting up and building what it trains is
fmnist.train.setup; why a run ended early is fmnist.train.ending.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fmnist import budget, checkpoint, datasets, distributed, rundir
from fmnist.checkpoint import ResumeState
from fmnist.errors import ConfigError, DivergedError
from fmnist.models import unwrap
from fmnist.recipes import Recipe, apply_overrides, get_recipe, to_dict, validate
from fmnist.train.calibration import fit_trust
from fmnist.train.callbacks import (
    Callback,
    Curves,
    EpochProgress,
    RunState,
    Status,
    display_callback,
)
from fmnist.train.data import Data
from fmnist.train.ending import diverged_message, stops_recorded
from fmnist.train.evaluation import evaluate_epoch, reduce_device
from fmnist.train.guard import diverged
from fmnist.train.setup import Setup, build, set_up, train_step
from fmnist.train.stops import Stops
from fmnist.train.throughput import BudgetKeeper, plan_for


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
    checkpoint_every: float | str | None = None,
) -> FitResult:
    """Train `recipe` (default: the `default` recipe); returns the trained model, its checkpoint
    metadata and per-epoch metrics.

    `resume` continues the run in that folder from where it was saved, exactly: model,
    optimiser, schedule and RNG states come from its resume.pt, the recipe from it too (so
    `recipe` and `out` must not be given). `callbacks` are added to the on-screen display (a
    progress bar, or the Quickstart's lines; `display=False` hides it) and the run-folder
    writers. With `save=False` nothing is written.

    `time_budget` (seconds from this call, or "90s", "5m") replaces the recipe's epochs (and, if
    one epoch does not fit, its cnn widths) by a plan measured on this machine, re-planned while
    the run goes (see fmnist.budget); the run folder's config.json records the steps that ran.

    SIGTERM, SIGINT and SIGHUP save the state of the current step and end the run as
    interrupted (`Interrupted`, saying where; after the last step, once the run has finished);
    `checkpoint_every` (seconds, or "10m") saves it on a timer too.
    """
    info = distributed.from_env()
    recipe, resumed, seconds = checked_inputs(recipe, out, resume, time_budget, info)
    ends = [*callbacks, Curves(), Status()]
    deadline = None
    if seconds is not None:
        # the budget ends with the last file: what the callbacks' ends write is kept free of
        # training (a class attribute: a duck-typed callback without one takes nothing)
        ends_take = sum(getattr(type(cb), "end_seconds", 0.0) for cb in ends) if save else 0.0
        deadline = time.monotonic() + seconds - ends_take
    every = checked_every(checkpoint_every, info)
    if save and out is not None and not info.enabled:
        rundir.refuse_taken(Path(out))  # at once, not after the data and the model (~4 s)

    def folder(planned: Recipe) -> Path | None:  # a resumed run keeps its folder and config.json
        if not (save and info.is_main):
            return None
        return Path(resume) if resume else rundir.start(out, planned.name, to_dict(planned))

    # Signals are caught from the first line (under torchrun every rank would have to stop at
    # the same step: there they end the processes as before).
    with Stops(every, enabled=not info.enabled) as stops, contextlib.ExitStack() as held:
        held.callback(distributed.shutdown)
        if save and info.is_main and resume is not None:  # before anything is written to it
            held.enter_context(rundir.Claim(Path(resume)))
        state = start(recipe, info, data, data_dir, resumed, deadline, display, folder)
        held.callback(release_ddp, state)
        if state.run_dir is not None and resume is None:
            held.enter_context(rundir.Claim(state.run_dir))
        shown = [display_callback(state.recipe)] if display else []
        keeper = [BudgetKeeper(deadline, display)] if deadline is not None else []
        cbs = [*shown, *keeper, *ends] if info.is_main else []
        with stops_recorded(state):
            run_epochs(state, cbs, stops, save)
        # Finish together: a rank that tears gloo down while rank 0 is still writing the run
        # folder could abort at exit (seen here, about 1 run in 4, before this barrier).
        distributed.barrier(info)
    assert state.setup is not None and state.parts is not None
    model = unwrap(state.parts.model).eval()
    meta = run_meta(state.setup, state.rows, state.trust)
    return FitResult(model, checkpoint.model_meta(model, meta), state.rows, state.run_dir)


def start(recipe: Recipe, info: distributed.DistInfo, data: Data | None,
          data_dir: str | Path | None, resumed: ResumeState | None, deadline: float | None,
          display: bool, folder: Callable[[Recipe], Path | None]) -> RunState:
    """Set up the data and device, plan a budgeted run, build the model, optimiser and batches,
    open the run folder (`folder` of the recipe that runs) and restore a resumed run's place."""
    setup = set_up(recipe, info, data, data_dir, resumed)
    if display and setup.recipe != recipe:
        print(resized(recipe, setup.recipe, len(setup.data.train_images)), flush=True)
    plan = None if deadline is None else plan_for(setup, deadline - time.monotonic(), display)
    if plan is not None:
        setup = replace(setup, recipe=plan.recipe)
    parts = build(setup, resumed)
    state = RunState(setup.recipe, folder(setup.recipe), info.is_main, len(parts.batches),
                     parts.batches.samples_per_rank, parts.epochs, setup=setup, parts=parts,
                     plan=plan)
    restore(state, resumed, info)
    return state


def release_ddp(state: RunState) -> None:
    """DDP must be released before the process group goes, or the process can abort at exit."""
    if state.parts is not None:
        state.parts = replace(state.parts, train_model=state.parts.model)


def checked_every(checkpoint_every: float | str | None, info: distributed.DistInfo) -> float | None:
    every = None if checkpoint_every is None else budget.parse_duration(checkpoint_every)
    if every is not None and info.enabled:
        raise ConfigError("--checkpoint-every saves part-way through an epoch in one process; "
                          "under torchrun each epoch is saved as it ends.")
    return every


def restore(state: RunState, resumed: ResumeState | None, info: distributed.DistInfo) -> None:
    """Where a resumed run stopped (its rows, the epoch part-done) and its RNG states; a new
    run seeds the global RNG instead."""
    if resumed is None:
        torch.manual_seed(state.recipe.seed + info.rank)  # dropout etc. differ per rank; data does not
        return
    state.rows = list(resumed.rows)
    state.saved_epoch = resumed.epoch
    if resumed.step and resumed.partial:
        done = resumed.partial
        state.progress = EpochProgress(resumed.step, int(done["images"]), done["loss_sum"],
                                       done["seconds"], done.get("start_loss"))
    checkpoint.set_rng_state(distributed.rank_rng_state(resumed, info))


def run_epochs(state: RunState, callbacks: Sequence[Callback], stops: Stops, save: bool) -> None:
    """The loop: train, evaluate (every `eval_every` epochs and the last), check and save each
    epoch left, calling the callbacks; then the final evaluation and calibration.

    A signal is answered at the next point where the saved state is whole: after set-up (nothing
    new to save), after a step (its state saved), after an epoch's save. One that comes after
    the last step lets the bookkeeping finish first (the run is then finished, not
    interrupted)."""
    setup, parts = state.setup, state.parts
    assert setup is not None and parts is not None
    stops.raise_if_asked()  # it came during set-up
    for cb in callbacks:
        cb.on_fit_start(state)
    epoch = state.saved_epoch
    while epoch < parts.epochs:  # a time budget may re-plan the count as the run goes
        epoch += 1
        state.epoch = epoch
        parts.batches.set_epoch(epoch, start=state.progress.step)
        for cb in callbacks:
            cb.on_epoch_start(state)
        row = train_epoch(state, callbacks, stops, save)
        last = epoch >= parts.epochs
        if last or evaluates(state.recipe, epoch):
            # plain while more epochs follow, the recipe's TTA for the last (see evaluate_final)
            evaluated = evaluate_epoch(parts.model, setup, final=last)
            row |= evaluated.row
            state.test_logits, state.holdout_logits = evaluated.test_logits, evaluated.holdout_logits
        verdict = diverged(row, state.rows, setup.data, last, state.global_step + state.progress.step)
        if verdict:
            row["diverged"] = verdict
        state.rows.append(row)
        state.progress = EpochProgress()
        if save:  # a diverged epoch too: a resume does not replay it
            save_state(state)
            state.saved_epoch = epoch
        if verdict:
            raise DivergedError(diverged_message(state, verdict))
        for cb in callbacks:
            cb.on_epoch_end(state, row)
        if epoch < parts.epochs:  # (the last epoch's end goes on to the bookkeeping)
            stops.raise_if_asked()  # it came during the evaluation or the save: both are done
    state.finished = True
    evaluate_final(state, save)
    calibrate(state, save)
    for cb in callbacks:
        cb.on_fit_end(state)
    stops.raise_if_asked()  # it came after the last step: the run is finished and saved


def evaluates(recipe: Recipe, epoch: int) -> bool:
    """Whether `epoch` (not the last, which always is) has its test set evaluated."""
    return recipe.eval_every > 0 and epoch % recipe.eval_every == 0


def evaluate_final(state: RunState, save: bool) -> None:
    """The last epoch evaluated plain (or not at all) because it became the last only afterwards
    (a time budget re-planned at its end) is evaluated again with the recipe's TTA, once: its
    row and checkpoint then report what the model serves."""
    setup, parts = state.setup, state.parts
    assert setup is not None and parts is not None
    if not state.rows:
        return
    row = state.rows[-1]
    if "test_accuracy" in row and (not setup.recipe.tta_flip or row.get("tta", True)):
        return  # TTA as the recipe says (a row saved before rows said "tta" had it)
    evaluated = evaluate_epoch(parts.model, setup, final=True)
    state.rows[-1] |= evaluated.row
    state.test_logits, state.holdout_logits = evaluated.test_logits, evaluated.holdout_logits
    if save:
        save_state(state)


def calibrate(state: RunState, save: bool) -> None:
    """Fit the checkpoint's temperature, prediction sets and not-recognised threshold on the
    held-out images (fmnist.train.calibration), and save them with the final model."""
    setup, parts = state.setup, state.parts
    assert setup is not None and parts is not None
    # the last evaluation's held-out logits are the final model's, with the recipe's TTA (in one
    # process: under torchrun a rank holds a slice)
    reuse = state.holdout_logits if setup.info.world_size == 1 else None
    state.trust = fit_trust(parts.model, setup, reuse)
    if save and state.trust is not None:
        save_state(state)


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


def train_epoch(state: RunState, callbacks: Sequence[Callback], stops: Stops,
                save: bool) -> dict[str, Any]:
    """One pass over the batches (from where a resumed epoch stopped, to where the recipe's
    steps end): the row's training figures (mean loss over batches, lr, time, images/s).
    Saves part-way when `stops` asks, then stops if that was for a signal."""
    setup, parts, progress = state.setup, state.parts, state.progress
    assert setup is not None and parts is not None
    t0 = time.perf_counter() - progress.seconds
    parts.train_model.train()
    total = torch.tensor(progress.loss_sum, device=setup.device)
    for step, (x, y) in enumerate(parts.batches, start=progress.step):
        if state.global_step + step >= parts.total_steps:  # the last epoch may end part-way
            break
        loss = train_step(parts, setup, x, y)
        total += loss.detach()
        progress.step, progress.images = step + 1, progress.images + len(y)
        for cb in callbacks:
            cb.on_step(state, step, loss, len(y))
        if state.epoch == 1 and step == 0:
            progress.start_loss = loss.item()  # where the guard's "far above its start" starts
        # a stop at the run's last step waits for the epoch's end, which saves and finishes
        if stops.due() and state.global_step + step + 1 < parts.total_steps:
            progress.loss_sum, progress.seconds = total.item(), time.perf_counter() - t0
            if save:
                save_state(state)
            stops.restart_timer()
            stops.raise_if_asked()
    mean_loss = (total / max(1, progress.step)).item()  # waits for the last step
    if setup.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    info = setup.info
    loss_sum = distributed.all_reduce_sum(
        torch.tensor([mean_loss, 1.0], device=reduce_device(setup.device)), info)
    previous = state.rows[-1]["train_seconds"] if state.rows else 0.0
    start = {} if progress.start_loss is None else {"start_loss": progress.start_loss}
    return {
        "epoch": state.epoch,
        "train_loss": (loss_sum[0] / loss_sum[1]).item(),
        **start,
        "lr": parts.scheduler.get_last_lr()[0],
        "seconds": seconds,
        "train_seconds": previous + seconds,
        "images_per_s": progress.images * info.world_size / seconds,
    }


def save_state(state: RunState) -> None:
    """Commit the run's state (rank 0 writes): at the end of an epoch, its weights, model.json,
    resume state and metrics.jsonl together; part-way through one, the resume state of that
    step beside the last finished epoch's weights. A crash leaves this save or the one before."""
    setup, parts, rows, progress = state.setup, state.parts, state.rows, state.progress
    assert setup is not None and parts is not None
    # Every rank's RNG state, for exact resume of per-rank randomness: a collective, so every
    # rank takes part whether or not it writes.
    rng = checkpoint.rng_state()
    rngs = distributed.gather_objects(rng, setup.info)
    if state.run_dir is None:
        return
    epoch = rows[-1]["epoch"] if rows else 0
    resume = ResumeState(
        epoch=epoch, rows=rows, recipe=to_dict(setup.recipe), model=parts.model.state_dict(),
        optimizer=parts.optimizer.state_dict(), scheduler=parts.scheduler.state_dict(),
        rng=rng, rng_ranks=rngs, world_size=setup.info.world_size,
        mean=setup.mean, std=setup.std, fingerprint=setup.data.fingerprint,
        step=progress.step,
        partial={k: v for k, v in asdict(progress).items() if k != "step"} if progress.step else None,
    )
    metrics = "".join(json.dumps(r) + "\n" for r in rows).encode()
    files = {rundir.RESUME: resume.to_bytes(), rundir.METRICS: metrics}
    keep: tuple[str, ...] = ()
    if progress.step:  # the weights stay those of the last finished epoch
        label, keep = f"epoch-{epoch + 1:04d}-step-{progress.step:06d}", (rundir.WEIGHTS, rundir.META)
    else:
        label = f"epoch-{epoch:04d}"
        files |= checkpoint.model_files(parts.model, run_meta(setup, rows, state.trust))
    rundir.commit(state.run_dir, files, label, keep=keep)


def run_meta(setup: Setup, rows: list[dict[str, Any]],
             trust: dict[str, Any] | None = None) -> dict[str, Any]:
    """What the checkpoint says besides the model itself (`checkpoint.model_meta` adds that):
    the data, its normalisation, the recipe, the epoch and its metrics, and once fitted at the
    end, how far to trust its answers (fmnist.trust)."""
    return {
        "classes": setup.data.classes,
        "normalize": {"mean": setup.mean, "std": setup.std},
        "dataset": setup.recipe.dataset,
        "dataset_sha256": setup.data.fingerprint,
        "recipe": setup.recipe.name,
        "tta_flip": setup.recipe.tta_flip,
        "evaluated_on": setup.data.evaluated_on,
        "epoch": rows[-1]["epoch"] if rows else 0,
        "metrics": rows[-1] if rows else {},
        **({"trust": trust} if trust is not None else {}),
    }


def resized(asked: Recipe, runs: Recipe, images: int) -> str:
    """The line that says a small dataset changed the batch size and epochs (`--min-steps`)."""
    return (f"{images:,} training images: batch {asked.batch_size} -> {runs.batch_size} (lr "
            f"{asked.lr:g} -> {runs.lr:g}), epochs {asked.epochs} -> {runs.epochs}, so the run "
            f"takes at least {runs.min_steps} optimiser steps (--min-steps 0 keeps the recipe's).")
