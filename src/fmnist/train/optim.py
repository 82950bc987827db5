"""The optimiser and the lr schedule a recipe asks for."""

from __future__ import annotations

import math

import torch
from torch import nn

from fmnist.recipes import Recipe
from fmnist.train.muon import Muon


def make_optimizer(recipe: Recipe, model: nn.Module, lr: float) -> torch.optim.Optimizer:
    # No weight decay on biases and BatchNorm parameters: decaying them only hurts. Frozen
    # parameters (a whitened first conv) are left out.
    trained = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in trained if p.ndim > 1]
    no_decay = [p for p in trained if p.ndim <= 1]
    groups = [
        {"params": decay, "weight_decay": recipe.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    if recipe.optimizer == "muon":  # the conv filters by Muon, at muon_lr scaled as lr is
        # the filters last: the first group's lr is the run's lr (TensorBoard's train/lr)
        groups = [{"params": [p for p in decay if p.ndim != 4], "weight_decay": recipe.weight_decay},
                  {"params": no_decay},
                  {"params": [p for p in decay if p.ndim == 4], "muon": True,
                   "lr": recipe.muon_lr * lr / recipe.lr}]
        return Muon(groups, lr=lr, momentum=recipe.momentum, nesterov=recipe.nesterov)
    return torch.optim.SGD(groups, lr=lr, momentum=recipe.momentum, nesterov=recipe.nesterov)


def lr_factor(schedule: str, warmup: float, step: float, total: int) -> float:
    """Multiplier of the peak lr at `step` (0-based; a fraction between two steps when the
    schedule was re-planned) of `total` steps; never above 1."""
    if schedule == "constant":
        return 1.0
    t = step / max(1, total)
    if schedule == "cosine":
        # linear warm-up over the steps before `warmup * total`, reaching the peak on the last
        # of them: a fraction of a step counts as a whole one, so the factor never overshoots
        # (rounded first: 0.1 * 30 is 3.0000000000000004 in floating point, not 4 steps)
        warm = math.ceil(round(warmup * total, 9))
        if step < warm:
            return (step + 1) / warm
    elif t < warmup:
        return t / warmup
    rest = (t - warmup) / max(1e-12, 1 - warmup)
    if schedule == "onecycle":  # linear up, linear down to zero
        return max(0.0, 1.0 - rest)
    return 0.5 * (1 + math.cos(math.pi * rest))  # cosine


class Schedule:
    """The recipe's lr factor at each optimiser step, over `total` steps, which a time budget may
    change while the run goes (`retarget`): the shape stays the one planned over `planned` steps,
    and the steps left walk the rest of it, so the lr changes smoothly and still ends at the end.

    A callable object, not a lambda: LambdaLR saves and restores its attributes with the
    scheduler's state, so a resumed run continues on the same re-planned schedule.
    """

    def __init__(self, schedule: str, warmup: float, total: int) -> None:
        self.schedule, self.warmup = schedule, warmup
        self.planned = self.total = total
        self.anchor, self.anchor_planned = 0, 0.0  # step `anchor` is planned step `anchor_planned`

    def planned_step(self, step: int) -> float:
        if self.total == self.planned and self.anchor == 0:
            return step
        left, planned_left = self.total - self.anchor, self.planned - self.anchor_planned
        return self.anchor_planned + (step - self.anchor) * planned_left / max(1, left)

    def __call__(self, step: int) -> float:
        return lr_factor(self.schedule, self.warmup, self.planned_step(step), self.planned)

    def retarget(self, step: int, total: int) -> None:
        """From `step` on, end at `total` steps instead (`step` itself: end now)."""
        total = max(total, step)
        self.anchor_planned, self.anchor, self.total = self.planned_step(step), step, total


def make_scheduler(recipe: Recipe, optimizer: torch.optim.Optimizer,
                   total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, Schedule(recipe.schedule, recipe.warmup, total_steps))
