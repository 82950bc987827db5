"""Setting a run up: threads, device, process group and data (`set_up`), then the model,
optimiser, schedule and batches it trains (`build`), and the one training step."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch
from torch import nn

from fmnist import distributed, hardware
from fmnist.checkpoint import ResumeState
from fmnist.inference import autocast_for
from fmnist.loader import Augment, Batches
from fmnist.models import build_model
from fmnist.recipes import Recipe, holdout_for, sized_for
from fmnist.train import whitening
from fmnist.train.data import Data, check_same_data, load_data, pixel_stats, split_holdout
from fmnist.train.optim import Schedule, make_optimizer, make_scheduler


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

    @property
    def schedule(self) -> Schedule:
        return cast(Schedule, self.scheduler.lr_lambdas[0])

    @property
    def total_steps(self) -> int:
        """The schedule's length: recipe.steps, or epochs x steps per epoch (re-planned by a
        time budget while the run goes)."""
        return self.schedule.total

    @property
    def epochs(self) -> int:
        """Epochs the run takes (the last may be partial when the recipe sets steps)."""
        return -(-self.total_steps // len(self.batches))


def set_up(recipe: Recipe, info: distributed.DistInfo, data: Data | None,
           data_dir: str | Path | None, resumed: ResumeState | None) -> Setup:
    """Threads, device, the process group, the data and its statistics."""
    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    device = distributed.device_for(info, hardware.resolve_device(recipe.device))  # cuda:LOCAL_RANK under DDP
    distributed.init(info, device)
    data = data or load_data(recipe, data_dir)
    data = split_holdout(data, holdout_for(recipe, len(data.train_images)))
    mean, std = pixel_stats(recipe, data)
    if resumed is not None:
        check_same_data(resumed, data, mean, std)
    recipe = sized_for(recipe, len(data.train_images) // info.world_size)
    return Setup(recipe, info, device, hardware.use_bf16(recipe.bf16, device), data, mean, std)


def build(setup: Setup, resumed: ResumeState | None) -> Parts:
    """Model, optimiser, schedule and batches, from the recipe or from the resume state."""
    recipe, info, device, data = setup.recipe, setup.info, setup.device, setup.data
    torch.manual_seed(recipe.seed)
    model = build_model(recipe.model, {**recipe.model_config, "num_classes": len(data.classes)})
    if recipe.whiten:
        if resumed is None:  # a resumed run's first conv comes from its checkpoint
            whitening.whiten(model, data.train_images, setup.mean, setup.std)
        whitening.freeze(model)
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
    scheduler = make_scheduler(recipe, optimizer, total_steps)
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
    return Parts(model, train_model, optimizer, scheduler, batches, loss_fn)


def train_step(parts: Parts, setup: Setup, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One optimiser step (and one step of the schedule) on the batch; returns its loss."""
    with autocast_for(setup.device, setup.bf16):
        loss = parts.loss_fn(parts.train_model(x), y)
    parts.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    parts.optimizer.step()
    parts.scheduler.step()
    return loss


def endless(batches: Batches) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches epoch after epoch, for the measurements that take more steps than a small
    dataset holds (the lr finder, the time budget's throughput)."""
    epoch = 0
    while True:
        epoch += 1
        batches.set_epoch(epoch)
        yield from batches
