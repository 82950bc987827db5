"""What hangs off the loop: the `Callback` hooks, the state they read, and the built-in ones
(the on-screen display, curves.png, status.json; metrics.jsonl is saved with each epoch)."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from fmnist import hardware, rundir
from fmnist.recipes import Recipe

if TYPE_CHECKING:
    from fmnist.budget import Plan
    from fmnist.train.setup import Parts, Setup


@dataclass
class EpochProgress:
    """How far the current epoch is: steps and images done, and its running loss and time
    (saved with a mid-epoch checkpoint, so a resumed epoch reports what an unbroken one would)."""

    step: int = 0
    images: int = 0
    loss_sum: float = 0.0
    seconds: float = 0.0
    start_loss: float | None = None  # the run's first step's loss, in epoch 1 (the guard's start)


@dataclass
class RunState:
    """What callbacks may read: the recipe, progress, and where the run is written."""

    recipe: Recipe
    run_dir: Path | None
    is_main: bool
    steps_per_epoch: int
    samples_per_epoch: int
    epochs: int  # how many the run takes
    epoch: int = 0  # 1-based, the epoch being trained or just finished
    rows: list[dict[str, Any]] = field(default_factory=list)
    saved_epoch: int = 0  # the last epoch whose checkpoint is in run_dir
    progress: EpochProgress = field(default_factory=EpochProgress)
    # What a logger samples from (lr, the model's graph, test predictions): read, never change.
    setup: Setup | None = None
    parts: Parts | None = None
    # The last evaluation's test logits (this rank's slice under torchrun); at on_fit_end, the
    # final model's, with the recipe's TTA: what end-of-run reports reuse instead of a new pass.
    test_logits: torch.Tensor | None = None
    holdout_logits: torch.Tensor | None = None  # the same evaluation's, of the held-out images
    # model.json's `trust` once fitted on the held-out images at the end (fmnist.trust)
    trust: dict[str, Any] | None = None
    finished: bool = False  # every step is done: what is left is the final bookkeeping
    plan: Plan | None = None  # a time budget's plan (fmnist.budget), when the run has one

    @property
    def global_step(self) -> int:
        """Optimiser steps finished before the current epoch's (0-based) step 0."""
        return (self.epoch - 1) * self.steps_per_epoch


class Callback:
    # Seconds its on_fit_end takes on a slow machine (a 2-core avx2 EPYC): a time budget keeps
    # them free, since the budget ends with the run's last file.
    end_seconds = 0.0

    def on_fit_start(self, state: RunState) -> None: ...
    def on_epoch_start(self, state: RunState) -> None: ...
    def on_step(self, state: RunState, step: int, loss: torch.Tensor, batch: int) -> None: ...
    def on_epoch_end(self, state: RunState, row: dict[str, Any]) -> None: ...
    def on_fit_end(self, state: RunState) -> None: ...


class QuickstartLog(Callback):
    """The seed's exact lines: `loss: 2.303494  [   64/60000]` every 100 batches, then the
    `Test Error` block after each epoch and `Done!` at the end."""

    def on_epoch_start(self, state: RunState) -> None:
        print(f"Epoch {state.epoch}\n-------------------------------")

    def on_step(self, state: RunState, step: int, loss: torch.Tensor, batch: int) -> None:
        if step % 100 == 0:
            seen = state.progress.images
            print(f"loss: {loss.item():>7f}  [{seen:>5d}/{state.samples_per_epoch:>5d}]")

    def on_epoch_end(self, state: RunState, row: dict[str, Any]) -> None:
        if "test_accuracy" in row:  # not an epoch that --eval-every skips
            acc, loss = 100 * row["test_accuracy"], row["test_loss"]
            print(f"Test Error: \n Accuracy: {acc:>0.1f}%, Avg loss: {loss:>8f} \n")

    def on_fit_end(self, state: RunState) -> None:
        print("Done!")


class ProgressBar(Callback):
    """A tqdm bar per epoch with loss, images/s and ETA; a one-line summary per epoch when the
    output is not a terminal."""

    def __init__(self, every: int = 10) -> None:
        self.every = every  # reading the loss forces a sync; don't do it on every step

    def on_epoch_start(self, state: RunState) -> None:
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=state.samples_per_epoch, initial=state.progress.images,
                            unit="img", unit_scale=True,
                            desc=f"epoch {state.epoch}/{state.epochs}", leave=False)

    def on_step(self, state: RunState, step: int, loss: torch.Tensor, batch: int) -> None:
        if self.bar is not None:
            self.bar.update(batch)
            if step % self.every == 0:
                self.bar.set_postfix(loss=f"{loss.item():.4f}")

    def on_epoch_end(self, state: RunState, row: dict[str, Any]) -> None:
        if self.bar is not None:
            self.bar.close()
        if "test_accuracy" in row:
            test = f"test loss {row['test_loss']:.4f}  test acc {100 * row['test_accuracy']:.2f}%"
        else:
            every = state.recipe.eval_every  # --eval-every skipped this epoch
            test = "test set: after the last epoch" if every == 0 else f"test set: every {every} epochs"
        if "holdout_accuracy" in row:
            test += f"  holdout {100 * row['holdout_accuracy']:.2f}%"
        print(
            f"epoch {row['epoch']:>3}/{state.epochs}  train loss {row['train_loss']:.4f}  "
            f"{test}  {row['seconds']:.1f}s  {row['images_per_s']:,.0f} img/s",
            flush=True,
        )


class Curves(Callback):
    end_seconds = 0.5  # curves.png: 0.4-0.5 s measured

    def on_fit_end(self, state: RunState) -> None:
        if state.run_dir is not None and state.rows:
            from fmnist.plots import save_training_curves

            save_training_curves(state.rows, state.run_dir / rundir.CURVES)


class Status(Callback):
    """status.json: running / finished (interrupted and failed are written by `fit`), with the
    machine the run trains on, so `fmnist runs` can tell runs apart."""

    def on_fit_start(self, state: RunState) -> None:
        if state.run_dir is not None and state.setup is not None:
            rundir.note_status(state.run_dir, "running", epoch=len(state.rows), epochs=state.epochs,
                        device=str(state.setup.device),
                        hardware=hardware.device_name(state.setup.device),
                        world_size=state.setup.info.world_size,
                        evaluated_on=state.setup.data.evaluated_on)

    def on_epoch_end(self, state: RunState, row: dict[str, Any]) -> None:
        if state.run_dir is not None:
            rundir.note_status(state.run_dir, "running", epoch=row["epoch"])

    def on_fit_end(self, state: RunState) -> None:
        if state.run_dir is not None:
            rundir.note_status(state.run_dir, "finished", epoch=len(state.rows))


def display_callback(recipe: Recipe) -> Callback:
    return QuickstartLog() if recipe.log == "quickstart" else ProgressBar()
