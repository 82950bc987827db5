"""The training loop: `fit(recipe)` trains, evaluates after every epoch, and (on rank 0) writes
the run folder. Progress, logging, metrics and checkpoints are callbacks hung off the loop.

Run folder: config.json (effective recipe), metrics.jsonl (one line per epoch), curves.png,
model.safetensors + model.json, resume.pt (everything needed to continue exactly), status.json
(running / finished / interrupted / failed: see fmnist.runs).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from fmnist import budget, checkpoint, distributed, hardware, runs
from fmnist.atomic import write_text
from fmnist.checkpoint import ResumeState
from fmnist.errors import ConfigError, WriteError
from fmnist.inference import autocast_for, predict_logits
from fmnist.loader import Augment, Batches
from fmnist.models import build_model, unwrap
from fmnist.recipes import Recipe, apply_overrides, get_recipe, to_dict, validate

# ---- devices and speed switches --------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for, but no CUDA GPU is available: use --device cpu.")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("--device mps was asked for, but MPS is not available: use --device cpu.")
    return torch.device(name)


def use_bf16(setting: str, device: torch.device) -> bool:
    if setting != "auto":
        return setting == "on"
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and hardware.fast_bf16()


# ---- optimiser and schedule -------------------------------------------------------------------


def make_optimizer(recipe: Recipe, model: nn.Module, lr: float) -> torch.optim.Optimizer:
    # No weight decay on biases and BatchNorm parameters: decaying them only hurts.
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [
        {"params": decay, "weight_decay": recipe.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    return torch.optim.SGD(groups, lr=lr, momentum=recipe.momentum, nesterov=recipe.nesterov)


def lr_factor(schedule: str, warmup: float, step: int, total: int) -> float:
    """Multiplier of the peak lr at `step` (0-based) of `total` steps."""
    if schedule == "constant":
        return 1.0
    t = step / max(1, total)
    if t < warmup:
        return (t / warmup) if schedule == "onecycle" else (step + 1) / max(1, warmup * total)
    rest = (t - warmup) / max(1e-12, 1 - warmup)
    if schedule == "onecycle":  # linear up, linear down to zero
        return max(0.0, 1.0 - rest)
    return 0.5 * (1 + math.cos(math.pi * rest))  # cosine


# ---- callbacks -------------------------------------------------------------------------------


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
    # What a logger samples from (lr, the model's graph, test predictions): read, never change.
    setup: Setup | None = None
    parts: Parts | None = None

    @property
    def global_step(self) -> int:
        """Optimiser steps finished before the current epoch's (0-based) step 0."""
        return (self.epoch - 1) * self.steps_per_epoch


class Callback:
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
        self.seen = 0

    def on_step(self, state: RunState, step: int, loss: torch.Tensor, batch: int) -> None:
        self.seen += batch
        if step % 100 == 0:
            print(f"loss: {loss.item():>7f}  [{self.seen:>5d}/{state.samples_per_epoch:>5d}]")

    def on_epoch_end(self, state: RunState, row: dict[str, Any]) -> None:
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

            self.bar = tqdm(total=state.samples_per_epoch, unit="img", unit_scale=True,
                            desc=f"epoch {state.epoch}/{state.epochs}", leave=False)

    def on_step(self, state: RunState, step: int, loss: torch.Tensor, batch: int) -> None:
        if self.bar is not None:
            self.bar.update(batch)
            if step % self.every == 0:
                self.bar.set_postfix(loss=f"{loss.item():.4f}")

    def on_epoch_end(self, state: RunState, row: dict[str, Any]) -> None:
        if self.bar is not None:
            self.bar.close()
        extra = f"  holdout {100 * row['holdout_accuracy']:.2f}%" if "holdout_accuracy" in row else ""
        print(
            f"epoch {row['epoch']:>3}/{state.epochs}  train loss {row['train_loss']:.4f}  "
            f"test loss {row['test_loss']:.4f}  test acc {100 * row['test_accuracy']:.2f}%{extra}  "
            f"{row['seconds']:.1f}s  {row['images_per_s']:,.0f} img/s",
            flush=True,
        )


class MetricsLog(Callback):
    """metrics.jsonl, one JSON line per epoch, rewritten atomically (so resume can trust it)."""

    def on_epoch_end(self, state: RunState, row: dict[str, Any]) -> None:
        if state.run_dir is not None:
            lines = "".join(json.dumps(r) + "\n" for r in state.rows)
            write_text(state.run_dir / "metrics.jsonl", lines, "metrics log")


class Curves(Callback):
    def on_fit_end(self, state: RunState) -> None:
        if state.run_dir is not None and state.rows:
            from fmnist.plots import save_training_curves

            save_training_curves(state.rows, state.run_dir / "curves.png")


class Status(Callback):
    """status.json: running / finished (interrupted and failed are written by `fit`), with the
    machine the run trains on, so `fmnist runs` can tell runs apart."""

    def on_fit_start(self, state: RunState) -> None:
        if state.run_dir is not None and state.setup is not None:
            note_status(state.run_dir, "running", epoch=len(state.rows), epochs=state.epochs,
                        device=str(state.setup.device),
                        hardware=hardware_name(state.setup.device),
                        world_size=state.setup.info.world_size)

    def on_epoch_end(self, state: RunState, row: dict[str, Any]) -> None:
        if state.run_dir is not None:
            note_status(state.run_dir, "running", epoch=row["epoch"])

    def on_fit_end(self, state: RunState) -> None:
        if state.run_dir is not None:
            note_status(state.run_dir, "finished", epoch=len(state.rows))


def note_status(run_dir: Path, status: str, **fields: Any) -> None:
    """Update status.json, best effort: it only describes the run, and a disk that cannot take
    it fails the checkpoint next, with the message that says how to resume."""
    with contextlib.suppress(WriteError, OSError):
        runs.write_status(run_dir, status, **fields)


def hardware_name(device: torch.device) -> str:
    """`NVIDIA H100 80GB HBM3` or `AMD EPYC (avx2)`: what a run's speed is comparable with."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return hardware.describe() if device.type == "cpu" else device.type


def display_callback(recipe: Recipe) -> Callback:
    return QuickstartLog() if recipe.log == "quickstart" else ProgressBar()


# ---- the loop ----------------------------------------------------------------------------------


@dataclass
class Data:
    train_images: torch.Tensor  # uint8 (N, 28, 28)
    train_labels: torch.Tensor  # int64 (N,)
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: list[str]
    holdout_images: torch.Tensor | None = None
    holdout_labels: torch.Tensor | None = None
    fingerprint: str | None = None


def load_data(recipe: Recipe, data_dir: str | Path | None = None) -> Data:
    from fmnist import datasets

    classes = datasets.class_names(recipe.dataset)  # a folder's own, or the spec's
    xs, ys = datasets.load_arrays(recipe.dataset, "train", data_dir)
    xt, yt = datasets.load_arrays(recipe.dataset, "test", data_dir)
    return Data(torch.from_numpy(xs), torch.from_numpy(ys), torch.from_numpy(xt),
                torch.from_numpy(yt), classes,
                fingerprint=datasets.dataset_fingerprint(recipe.dataset, data_dir))


def split_holdout(data: Data, n: int) -> Data:
    """Hold out `n` training images, picked by a fixed permutation (the same for every seed)."""
    if n <= 0:
        return data
    if n >= len(data.train_images):
        raise ConfigError(f"holdout {n} leaves no training images (the set has {len(data.train_images)}).")
    perm = torch.randperm(len(data.train_images), generator=torch.Generator().manual_seed(20171))
    keep, held = perm[:-n].sort().values, perm[-n:].sort().values
    return Data(data.train_images[keep], data.train_labels[keep], data.test_images,
                data.test_labels, data.classes, data.train_images[held], data.train_labels[held],
                data.fingerprint)


def pixel_stats(recipe: Recipe, data: Data) -> tuple[float, float]:
    """(mean, std) the inputs are standardised with: the training images', or (0, 1) = just /255."""
    if not recipe.normalize:
        return 0.0, 1.0
    pixels = data.train_images.float().div_(255)
    return pixels.mean().item(), pixels.std().item()


@dataclass
class FitResult:
    model: nn.Module
    meta: dict[str, Any]  # the checkpoint's model.json, as `checkpoint.save_model` writes it
    rows: list[dict[str, Any]]
    run_dir: Path | None


@dataclass
class Setup:
    """Where and on what a run trains: resolved once, read by everything after."""

    recipe: Recipe
    info: distributed.DistInfo
    device: torch.device
    bf16: bool
    data: Data
    mean: float
    std: float


@dataclass
class Parts:
    """What one run trains: the model (and its DDP/compiled wrapper), optimiser, schedule, data."""

    model: nn.Module
    train_model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    batches: Batches
    loss_fn: nn.Module
    total_steps: int  # the schedule's length: recipe.steps, or epochs x steps per epoch

    @property
    def epochs(self) -> int:
        """Epochs the run takes (the last may be partial when the recipe sets steps)."""
        return -(-self.total_steps // len(self.batches))


def set_up(recipe: Recipe, info: distributed.DistInfo, data: Data | None,
           data_dir: str | Path | None, resumed: ResumeState | None) -> Setup:
    """Threads, device, the process group, the data and its statistics."""
    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    device = distributed.device_for(info, resolve_device(recipe.device))  # cuda:LOCAL_RANK under DDP
    distributed.init(info, device)
    data = split_holdout(data or load_data(recipe, data_dir), recipe.holdout)
    mean, std = pixel_stats(recipe, data)
    if resumed is not None:
        check_same_data(resumed, data, mean, std)
    return Setup(recipe, info, device, use_bf16(recipe.bf16, device), data, mean, std)


def check_same_data(resumed: ResumeState, data: Data, mean: float, std: float) -> None:
    """A run continues only on the data it started on: other data would silently mix two runs."""
    if resumed.fingerprint and data.fingerprint and resumed.fingerprint != data.fingerprint:
        raise ConfigError(
            f"This run was trained on data with fingerprint {resumed.fingerprint[:12]}..., but the "
            f"data found now has {data.fingerprint[:12]}...: resume with the same dataset and "
            "--data-dir it started with."
        )
    if resumed.mean is not None and resumed.std is not None and not (
        math.isclose(resumed.mean, mean, rel_tol=1e-5, abs_tol=1e-7)
        and math.isclose(resumed.std, std, rel_tol=1e-5, abs_tol=1e-7)
    ):
        raise ConfigError(
            f"This run normalised its inputs with mean {resumed.mean:.4f} and std "
            f"{resumed.std:.4f}, but the training images found now give {mean:.4f} and {std:.4f}: "
            "resume with the data it started with."
        )


def build(setup: Setup, resumed: ResumeState | None) -> Parts:
    """Model, optimiser, schedule and batches, from the recipe or from the resume state."""
    recipe, info, device, data = setup.recipe, setup.info, setup.device, setup.data
    torch.manual_seed(recipe.seed)
    model = build_model(recipe.model, {**recipe.model_config, "num_classes": len(data.classes)})
    model.to(device)
    if recipe.channels_last:
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    lr = recipe.lr * (info.world_size if recipe.lr_scaling == "linear" else 1)
    optimizer = make_optimizer(recipe, model, lr)
    batches = Batches(
        data.train_images.to(device), data.train_labels.to(device), recipe.batch_size,
        mean=setup.mean, std=setup.std, shuffle=recipe.shuffle,
        augment=Augment(recipe.shift, recipe.flip), seed=recipe.seed, rank=info.rank,
        world_size=info.world_size, channels_last=recipe.channels_last,
    )
    total_steps = recipe.steps or recipe.epochs * len(batches)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(recipe.schedule, recipe.warmup, step, total_steps)
    )
    if resumed is not None:
        model.load_state_dict(resumed.model)
        optimizer.load_state_dict(resumed.optimizer)
        scheduler.load_state_dict(resumed.scheduler)
    train_model: nn.Module = model
    if info.enabled:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if recipe.compile:
        train_model = cast(nn.Module, torch.compile(train_model))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    return Parts(model, train_model, optimizer, scheduler, batches, loss_fn, total_steps)


def evaluate_split(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, setup: Setup,
) -> tuple[float, float]:
    """(accuracy, mean loss) over all of `images`; each rank does a 1/world slice, then sum."""
    recipe, info = setup.recipe, setup.info
    part = slice(info.rank, None, info.world_size)
    x, y = images[part], labels[part]
    # fp32 even when training in bf16: the accuracy a run reports must be the accuracy its
    # checkpoint serves, and Predictor, evaluate and the server all run fp32.
    logits = predict_logits(model, x, setup.mean, setup.std, batch_size=recipe.eval_batch_size,
                            tta_flip=recipe.tta_flip)
    y = y.to(logits.device)
    if recipe.eval_loss == "batches":  # the Quickstart's: the mean of per-batch mean losses
        b = recipe.eval_batch_size
        means = [nn.functional.cross_entropy(logits[i : i + b], y[i : i + b])
                 for i in range(0, len(y), b)]
        loss_sum = torch.stack(means).sum() if means else torch.tensor(0.0)
        count = torch.tensor(float(len(means)))
    else:
        loss_sum = nn.functional.cross_entropy(logits, y, reduction="sum")
        count = torch.tensor(float(len(y)))
    correct = (logits.argmax(1) == y).sum().float()
    totals = torch.stack([correct.cpu(), loss_sum.cpu(), count, torch.tensor(float(len(y)))])
    totals = distributed.all_reduce_sum(totals.to(_reduce_device(logits.device)), info).cpu()
    return (totals[0] / totals[3]).item(), (totals[1] / totals[2]).item()


def evaluate_epoch(model: nn.Module, setup: Setup) -> dict[str, float]:
    """The test (and holdout) accuracy and loss of the model rank 0 saves."""
    distributed.broadcast_buffers(model, setup.info)
    data = setup.data
    row = dict(zip(("test_accuracy", "test_loss"),
                   evaluate_split(model, data.test_images, data.test_labels, setup), strict=True))
    if data.holdout_images is not None and data.holdout_labels is not None:
        row["holdout_accuracy"], row["holdout_loss"] = evaluate_split(
            model, data.holdout_images, data.holdout_labels, setup)
    return row


def _reduce_device(device: torch.device) -> torch.device:
    # NCCL reduces CUDA tensors only; gloo takes CPU tensors.
    return device if device.type == "cuda" else torch.device("cpu")


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


def save_epoch(run_dir: Path | None, setup: Setup, parts: Parts, rows: list[dict[str, Any]]) -> None:
    """The checkpoint and the resume state of the epoch just finished (rank 0 writes)."""
    # Every rank's RNG state, for exact resume of per-rank randomness: a collective, so every
    # rank takes part whether or not it writes.
    rng = checkpoint.rng_state()
    rngs = distributed.gather_objects(rng, setup.info)
    if run_dir is None:
        return
    checkpoint.save_model(run_dir, parts.model, run_meta(setup, rows))
    ResumeState(
        epoch=rows[-1]["epoch"], rows=rows, recipe=to_dict(setup.recipe), model=parts.model.state_dict(),
        optimizer=parts.optimizer.state_dict(), scheduler=parts.scheduler.state_dict(),
        rng=rng, rng_ranks=rngs, world_size=setup.info.world_size,
        mean=setup.mean, std=setup.std, fingerprint=setup.data.fingerprint,
    ).save(run_dir)


def _stamp() -> str:
    return _dt.datetime.now().strftime("%Y%m%d-%H%M%S")


def new_run_dir(out: str | Path | None, recipe: Recipe) -> Path:
    """A fresh run folder, claimed atomically (two runs never share one): `out`, which must be
    new or empty, or runs/<time>-<recipe>.

    The claim is the creation of the folder (mkdir fails if it exists) or, for an empty `out`
    that already exists, of its config.json (O_EXCL); `fit` then writes the real config over it.
    """
    if out is None:
        base = Path("runs") / f"{_stamp()}-{recipe.name}"
        base.parent.mkdir(parents=True, exist_ok=True)
        run_dir, n = base, 1
        while True:
            try:
                run_dir.mkdir()
                break
            except FileExistsError:
                n += 1
                run_dir = base.with_name(f"{base.name}-{n}")
        _point_latest(run_dir)
        return run_dir
    run_dir = Path(out)
    if (run_dir / checkpoint.WEIGHTS).exists() or (run_dir / checkpoint.RESUME).exists():
        raise ConfigError(
            f"Run folder {run_dir} already holds a run: use --resume {run_dir} to continue it, "
            "or pick another --out."
        )
    taken = ConfigError(
        f"--out {run_dir} exists and is not an empty folder: pick a new folder, so nothing in it "
        "is overwritten."
    )
    try:
        run_dir.mkdir(parents=True)
    except FileExistsError:
        if not run_dir.is_dir() or any(run_dir.iterdir()):
            raise taken from None
    try:
        os.close(os.open(run_dir / "config.json", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    except FileExistsError:  # another run claimed it between our look and now
        raise taken from None
    if run_dir.resolve().parent.name == "runs":
        _point_latest(run_dir)
    return run_dir


def _point_latest(run_dir: Path) -> None:
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


def start_run_dir(recipe: Recipe, out: str | Path | None) -> Path:
    run_dir = new_run_dir(out, recipe)
    try:
        write_text(run_dir / "config.json", json.dumps(to_dict(recipe), indent=2) + "\n",
                   "run config")
    except WriteError as e:
        raise WriteError(f"{e} {_resume_hint(run_dir, 0)}") from e
    return run_dir


def _resume_hint(run_dir: Path, saved_epoch: int, interrupted: bool = False) -> str:
    if saved_epoch == 0:
        if interrupted:
            return f"No epoch was finished, so {run_dir} holds nothing to resume."
        return f"No epoch was saved yet; start again once {run_dir} can be written."
    if interrupted:
        return (f"Epoch {saved_epoch} is the last saved in {run_dir}; continue with "
                f"`fmnist train --resume {run_dir}`.")
    return (f"The last complete checkpoint is epoch {saved_epoch} in {run_dir}: free space (or fix "
            f"the folder), then continue with `fmnist train --resume {run_dir}`.")


def _mark_stopped(run_dir: Path, status: str, saved_epoch: int, error: str | None = None) -> None:
    """status.json says why the run stopped (best effort: the disk may be what failed)."""
    note_status(run_dir, status, epoch=saved_epoch, **({"error": error[:500]} if error else {}))


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
    from fmnist import datasets

    recipe = replace(recipe, dataset=datasets.canonical_name(recipe.dataset))
    seconds = None if time_budget is None else budget.parse_duration(time_budget)
    if seconds is not None and (resume is not None or info.enabled):
        raise ConfigError("A time budget plans a new run in one process: it cannot be combined "
                          "with resume or torchrun (pass the planned config.json instead).")

    parts: Parts | None = None
    try:
        setup = set_up(recipe, info, data, data_dir, resumed)
        if seconds is not None:
            setup = replace(setup, recipe=plan_for(setup, seconds, display))
            recipe = setup.recipe
        parts = build(setup, resumed)
        rows = list(resumed.rows) if resumed is not None else []
        run_dir = None
        if save and info.is_main:  # a resumed run keeps its folder and config.json
            run_dir = Path(resume) if resume is not None else start_run_dir(recipe, out)
        saved_epoch = rows[-1]["epoch"] if rows else 0
        state = RunState(recipe, run_dir, info.is_main, len(parts.batches),
                         len(parts.batches.images) if info.world_size == 1
                         else parts.batches.samples_per_rank, parts.epochs, rows=rows,
                         setup=setup, parts=parts)
        shown = [display_callback(recipe)] if display else []
        cbs = [*shown, *callbacks, MetricsLog(), Curves(), Status()] if info.is_main else []
        for cb in cbs:
            cb.on_fit_start(state)
        if resumed is not None:
            checkpoint.set_rng_state(distributed.rank_rng_state(resumed, info))
        else:
            torch.manual_seed(recipe.seed + info.rank)  # dropout etc. differ per rank; data does not

        try:
            for epoch in range(saved_epoch + 1, parts.epochs + 1):
                state.epoch = epoch
                parts.batches.set_epoch(epoch)
                for cb in cbs:
                    cb.on_epoch_start(state)
                row = train_epoch(parts, setup, state, cbs)
                row.update(evaluate_epoch(parts.model, setup))
                rows.append(row)
                if save:
                    save_epoch(run_dir, setup, parts, rows)
                    saved_epoch = epoch
                for cb in cbs:
                    cb.on_epoch_end(state, row)
            for cb in cbs:
                cb.on_fit_end(state)
        except WriteError as e:
            if run_dir is None:  # a callback's own file, outside any run folder
                raise
            _mark_stopped(run_dir, "failed", saved_epoch, str(e))
            raise WriteError(f"{e} {_resume_hint(run_dir, saved_epoch)}") from e
        except KeyboardInterrupt:
            if run_dir is not None:  # Ctrl-C: the folder says so, and how to go on
                _mark_stopped(run_dir, "interrupted", saved_epoch)
                print(f"\nInterrupted. {_resume_hint(run_dir, saved_epoch, interrupted=True)}",
                      file=sys.stderr, flush=True)
            raise
        except Exception as e:
            if run_dir is not None:
                _mark_stopped(run_dir, "failed", saved_epoch, f"{type(e).__name__}: {e}")
            raise
        # Finish together: a rank that tears gloo down while rank 0 is still writing the run
        # folder could abort at exit (seen here, about 1 run in 4, before this barrier).
        distributed.barrier(info)
    finally:
        # DDP must be released before the process group goes, or the process can abort at exit.
        parts = None if parts is None else replace(parts, train_model=parts.model)
        distributed.shutdown()
    assert parts is not None  # set when the loop ran
    model = unwrap(parts.model).eval()
    return FitResult(model, checkpoint.model_meta(model, run_meta(setup, rows)), rows, run_dir)


def train_epoch(parts: Parts, setup: Setup, state: RunState, callbacks: Sequence[Callback]) -> dict[str, Any]:
    """One pass over the batches: the row's training figures (loss, lr, time, images/s)."""
    t0 = time.perf_counter()
    steps = min(len(parts.batches), parts.total_steps - (state.epoch - 1) * len(parts.batches))
    loss, images = train_one_epoch(parts.train_model, parts.batches, parts.optimizer,
                                   parts.scheduler, parts.loss_fn, setup.device, setup.bf16, state,
                                   callbacks, steps)
    if setup.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    info = setup.info
    loss_sum = distributed.all_reduce_sum(
        torch.tensor([loss, 1.0], device=_reduce_device(setup.device)), info)
    previous = state.rows[-1]["train_seconds"] if state.rows else 0.0
    return {
        "epoch": state.epoch,
        "train_loss": (loss_sum[0] / loss_sum[1]).item(),
        "lr": parts.scheduler.get_last_lr()[0],
        "seconds": seconds,
        "train_seconds": previous + seconds,
        "images_per_s": images * info.world_size / seconds,
    }


def train_one_epoch(
    model: nn.Module, batches: Batches, optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler, loss_fn: nn.Module, device: torch.device,
    bf16: bool, state: RunState, callbacks: Sequence[Callback], steps: int | None = None,
) -> tuple[float, int]:
    """One pass over `batches` (its first `steps` batches, when given); returns the mean
    training loss (over batches) and the number of images trained."""
    model.train()
    total = torch.zeros((), device=device)
    done = images = 0
    for step, (x, y) in enumerate(batches):
        if step == steps:
            break
        loss = train_step(model, x, y, optimizer, scheduler, loss_fn, device, bf16)
        total += loss.detach()
        done, images = done + 1, images + len(y)
        for cb in callbacks:
            cb.on_step(state, step, loss, len(y))
    return (total / max(1, done)).item(), images


def train_step(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler, loss_fn: nn.Module, device: torch.device,
    bf16: bool,
) -> torch.Tensor:
    with autocast_for(device, bf16):
        loss = loss_fn(model(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    scheduler.step()
    return loss


def plan_for(setup: Setup, seconds: float, show: bool) -> Recipe:
    """`setup.recipe` fitted to `seconds` on this machine (printed when `show`)."""
    plan = budget.plan(setup.recipe, seconds, lambda r: measure(replace(setup, recipe=r)))
    if show:
        print(plan.describe(), flush=True)
    return plan.recipe


def measure(setup: Setup) -> budget.Measured:
    """Training throughput and per-epoch evaluation time of `setup.recipe` on this machine,
    from a few real steps on a throw-away model (what `--time-budget` plans with)."""
    parts = build(setup, None)
    parts.train_model.train()

    def stream() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:  # a tiny dataset may hold fewer batches than the measurement takes
            yield from parts.batches

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        train_step(parts.train_model, x, y, parts.optimizer, parts.scheduler, parts.loss_fn,
                   setup.device, setup.bf16).item()  # .item(): wait for the step to finish

    batches = stream()
    for _ in range(budget.WARMUP_STEPS):
        step(*next(batches))
    steps, images, t0 = 0, 0, time.perf_counter()
    while steps < budget.MIN_STEPS or time.perf_counter() - t0 < budget.MEASURE_SECONDS:
        x, y = next(batches)
        step(x, y)
        steps, images = steps + 1, images + len(y)
    images_per_s = images / (time.perf_counter() - t0)
    data, n = setup.data, min(2048, len(setup.data.test_images))
    t0 = time.perf_counter()
    evaluate_split(parts.model, data.test_images[:n], data.test_labels[:n], setup)
    per_image = (time.perf_counter() - t0) / max(1, n)
    evaluated = len(data.test_images) + (0 if data.holdout_images is None else len(data.holdout_images))
    return budget.Measured(images_per_s, parts.batches.samples_per_rank, per_image * evaluated)
