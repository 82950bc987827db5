"""The training loop: `fit(recipe)` trains, evaluates after every epoch, and (on rank 0) writes
the run folder. Progress, logging, metrics and checkpoints are callbacks hung off the loop.

Run folder: config.json (effective recipe), metrics.jsonl (one line per epoch), curves.png,
model.safetensors + model.json, resume.pt (everything needed to continue exactly).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from fmnist import checkpoint, distributed
from fmnist.atomic import write_text
from fmnist.errors import ConfigError
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


def cpu_has_fast_bf16() -> bool:
    """AMX or AVX512-BF16: the CPU features that make bf16 autocast faster than fp32."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def use_bf16(setting: str, device: torch.device) -> bool:
    if setting != "auto":
        return setting == "on"
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_fast_bf16()


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
    epoch: int = 0  # 1-based, the epoch being trained or just finished
    rows: list[dict[str, Any]] = field(default_factory=list)


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
                            desc=f"epoch {state.epoch}/{state.recipe.epochs}", leave=False)

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
            f"epoch {row['epoch']:>3}/{state.recipe.epochs}  train loss {row['train_loss']:.4f}  "
            f"test loss {row['test_loss']:.4f}  test acc {100 * row['test_accuracy']:.2f}%{extra}  "
            f"{row['seconds']:.1f}s  {row['images_per_s']:,.0f} img/s",
            flush=True,
        )


class MetricsLog(Callback):
    """metrics.jsonl, one JSON line per epoch, rewritten atomically (so resume can trust it)."""

    def on_epoch_end(self, state: RunState, row: dict[str, Any]) -> None:
        if state.run_dir is not None:
            lines = "".join(json.dumps(r) + "\n" for r in state.rows)
            write_text(state.run_dir / "metrics.jsonl", lines)


class Curves(Callback):
    def on_fit_end(self, state: RunState) -> None:
        if state.run_dir is not None and state.rows:
            from fmnist.plots import save_training_curves

            save_training_curves(state.rows, state.run_dir / "curves.png")


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

    spec = datasets.get_spec(recipe.dataset)
    xs, ys = datasets.load_arrays(recipe.dataset, "train", data_dir)
    xt, yt = datasets.load_arrays(recipe.dataset, "test", data_dir)
    data = Data(torch.from_numpy(xs), torch.from_numpy(ys), torch.from_numpy(xt),
                torch.from_numpy(yt), list(spec.classes),
                fingerprint=datasets.dataset_fingerprint(recipe.dataset, data_dir))
    return data


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


@dataclass
class FitResult:
    model: nn.Module
    meta: dict[str, Any]
    rows: list[dict[str, Any]]
    run_dir: Path | None


def evaluate_split(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, recipe: Recipe, mean: float,
    std: float, bf16: bool, info: distributed.DistInfo,
) -> tuple[float, float]:
    """(accuracy, mean loss) over all of `images`; each rank does a 1/world slice, then sum."""
    part = slice(info.rank, None, info.world_size)
    x, y = images[part], labels[part]
    logits = predict_logits(model, x, mean, std, batch_size=recipe.eval_batch_size,
                            tta_flip=recipe.tta_flip, bf16=bf16)
    y = y.to(logits.device)
    if recipe.log == "quickstart":  # the seed averages per-batch mean losses
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
    totals = distributed.all_reduce_sum(totals.to(_reduce_device(logits)), info).cpu()
    return (totals[0] / totals[3]).item(), (totals[1] / totals[2]).item()


def _reduce_device(t: torch.Tensor) -> torch.device:
    # NCCL reduces CUDA tensors only; gloo takes CPU tensors.
    return t.device if t.device.type == "cuda" else torch.device("cpu")


def new_run_dir(out: str | Path | None, recipe: Recipe) -> Path:
    """A fresh run folder: `out`, which must be new or empty, or runs/<time>-<recipe>."""
    if out is not None:
        run_dir = Path(out)
        if (run_dir / checkpoint.WEIGHTS).exists() or (run_dir / checkpoint.RESUME).exists():
            raise ConfigError(
                f"Run folder {run_dir} already holds a run: use --resume {run_dir} to continue it, "
                "or pick another --out."
            )
        if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
            raise ConfigError(
                f"--out {run_dir} exists and is not an empty folder: pick a new folder, so nothing "
                "in it is overwritten."
            )
    else:
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        run_dir = Path("runs") / f"{stamp}-{recipe.name}"
        n = 1
        while run_dir.exists():
            n += 1
            run_dir = Path("runs") / f"{stamp}-{recipe.name}-{n}"
    run_dir.mkdir(parents=True, exist_ok=True)
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


@distributed.clear_errors
def fit(
    recipe: Recipe | None = None,
    *,
    out: str | Path | None = None,
    resume: str | Path | None = None,
    data: Data | None = None,
    data_dir: str | Path | None = None,
    callbacks: Sequence[Callback] | None = None,
    save: bool = True,
) -> FitResult:
    """Train `recipe` (default: the `default` recipe); returns the trained model, its checkpoint metadata and per-epoch metrics.

    `resume` continues the run in that folder from its last finished epoch, exactly: model,
    optimiser, schedule and RNG states come from its resume.pt, the recipe from its config.json.
    `callbacks` replace the on-screen log (progress bar, or the Quickstart's lines); the
    run-folder writers always run. With `save=False` nothing is written.
    """
    info = distributed.from_env()
    resumed: dict[str, Any] | None = None
    if resume is not None:
        resumed = checkpoint.load_resume(resume)
        recipe = apply_overrides(Recipe(), resumed["recipe"])  # checked like any config
        distributed.check_resume(resumed, info, resume)
    recipe = recipe or get_recipe("default")
    validate(recipe)
    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    device = resolve_device(recipe.device)
    device = distributed.device_for(info, device)  # cuda:LOCAL_RANK under DDP
    distributed.init(info, device)
    bf16 = use_bf16(recipe.bf16, device)

    data = split_holdout(data or load_data(recipe, data_dir), recipe.holdout)
    if recipe.normalize:
        pixels = data.train_images.float().div_(255)
        mean, std = pixels.mean().item(), pixels.std().item()
        del pixels
    else:
        mean, std = 0.0, 1.0

    torch.manual_seed(recipe.seed)
    model = build_model(recipe.model, {**recipe.model_config, "num_classes": len(data.classes)})
    model.to(device)
    if recipe.channels_last:
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]

    lr = recipe.lr * (info.world_size if recipe.lr_scaling == "linear" else 1)
    optimizer = make_optimizer(recipe, model, lr)
    batches = Batches(
        data.train_images.to(device), data.train_labels.to(device), recipe.batch_size,
        mean=mean, std=std, shuffle=recipe.shuffle, augment=Augment(recipe.shift, recipe.flip),
        seed=recipe.seed, rank=info.rank, world_size=info.world_size,
        channels_last=recipe.channels_last,
    )
    total_steps = recipe.epochs * len(batches)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(recipe.schedule, recipe.warmup, step, total_steps)
    )

    start_epoch, rows = 1, []
    if resumed is not None:
        model.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        scheduler.load_state_dict(resumed["scheduler"])
        start_epoch, rows = resumed["epoch"] + 1, list(resumed["rows"])

    run_dir: Path | None = None
    if save and info.is_main:
        run_dir = Path(resume) if resume is not None else new_run_dir(out, recipe)
        write_text(run_dir / "config.json", json.dumps(to_dict(recipe), indent=2) + "\n")

    train_model: nn.Module = model
    if info.enabled:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if recipe.compile:
        train_model = cast(nn.Module, torch.compile(train_model))

    loss_fn = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    meta_base = {
        "classes": data.classes,
        "normalize": {"mean": mean, "std": std},
        "dataset": recipe.dataset,
        "dataset_sha256": data.fingerprint,
        "recipe": recipe.name,
        "tta_flip": recipe.tta_flip,
    }
    state = RunState(recipe, run_dir, info.is_main, len(batches),
                     len(batches.images) if info.world_size == 1 else batches.samples_per_rank,
                     rows=rows)
    # The run-folder writers always run; `callbacks` replaces only what is shown on screen.
    shown = [display_callback(recipe)] if callbacks is None else list(callbacks)
    cbs = [*shown, MetricsLog(), Curves()] if info.is_main else []
    for cb in cbs:
        cb.on_fit_start(state)

    if resumed is not None:
        checkpoint.set_rng_state(distributed.rank_rng_state(resumed, info))
    else:
        torch.manual_seed(recipe.seed + info.rank)  # dropout etc. differ per rank; data does not

    train_seconds = rows[-1]["train_seconds"] if rows else 0.0
    try:
        for epoch in range(start_epoch, recipe.epochs + 1):
            state.epoch = epoch
            batches.set_epoch(epoch)
            for cb in cbs:
                cb.on_epoch_start(state)
            t0 = time.perf_counter()
            train_loss = train_one_epoch(train_model, batches, optimizer, scheduler, loss_fn,
                                         device, bf16, state, cbs)
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - t0
            train_seconds += seconds
            loss_sum = distributed.all_reduce_sum(
                torch.tensor([train_loss, 1.0], device=_reduce_device(torch.empty(0, device=device))),
                info,
            )
            row = {
                "epoch": epoch,
                "train_loss": (loss_sum[0] / loss_sum[1]).item(),
                "lr": scheduler.get_last_lr()[0],
            }
            distributed.broadcast_buffers(model, info)  # evaluate the model rank 0 saves
            row["test_accuracy"], row["test_loss"] = evaluate_split(
                model, data.test_images, data.test_labels, recipe, mean, std, bf16, info)
            if data.holdout_images is not None and data.holdout_labels is not None:
                row["holdout_accuracy"], row["holdout_loss"] = evaluate_split(
                    model, data.holdout_images, data.holdout_labels, recipe, mean, std, bf16, info)
            row["seconds"] = seconds
            row["train_seconds"] = train_seconds
            row["images_per_s"] = batches.samples_per_rank * info.world_size / seconds
            rows.append(row)
            meta = {**meta_base, "epoch": epoch, "metrics": row}
            # Every rank's RNG state, for exact resume of per-rank randomness (a collective).
            rngs = distributed.gather_objects(checkpoint.rng_state(), info) if save else None
            if run_dir is not None:
                checkpoint.save_model(run_dir, model, meta)
                checkpoint.save_resume(run_dir, {
                    "epoch": epoch, "rows": rows, "recipe": to_dict(recipe),
                    "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "rng": checkpoint.rng_state(),
                    "rng_ranks": rngs, "world_size": info.world_size,
                })
            for cb in cbs:
                cb.on_epoch_end(state, row)
        for cb in cbs:
            cb.on_fit_end(state)
        # Finish together: a rank that tears gloo down while rank 0 is still writing the run
        # folder could abort at exit (seen here, about 1 run in 4, before this barrier).
        distributed.barrier(info)
    finally:
        # DDP must be released before the process group goes, or the process can abort at exit.
        del train_model
        distributed.shutdown()
    meta = {**meta_base, "epoch": rows[-1]["epoch"] if rows else 0,
            "metrics": rows[-1] if rows else {}}
    return FitResult(unwrap(model).eval(), meta, rows, run_dir)


def train_one_epoch(
    model: nn.Module, batches: Batches, optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler, loss_fn: nn.Module, device: torch.device,
    bf16: bool, state: RunState, callbacks: Sequence[Callback],
) -> float:
    """One pass over `batches`; returns the mean training loss (over batches)."""
    model.train()
    total = torch.zeros((), device=device)
    for step, (x, y) in enumerate(batches):
        with autocast_for(device, bf16):
            loss = loss_fn(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total += loss.detach()
        for cb in callbacks:
            cb.on_step(state, step, loss, len(y))
    return (total / max(1, len(batches))).item()
