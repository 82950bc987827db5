"""What `--time-budget` plans with: the recipe's training throughput and evaluation time on this
machine, measured from a few real steps (the planning itself is fmnist.budget)."""

from __future__ import annotations

import time
from dataclasses import replace

from fmnist import budget
from fmnist.recipes import Recipe
from fmnist.train.evaluation import evaluate_split
from fmnist.train.setup import Setup, build, endless, train_step


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

    batches = endless(parts.batches)
    for _ in range(budget.WARMUP_STEPS):
        train_step(parts, setup, *next(batches)).item()  # .item(): wait for the step to finish
    steps, images, t0 = 0, 0, time.perf_counter()
    while steps < budget.MIN_STEPS or time.perf_counter() - t0 < budget.MEASURE_SECONDS:
        x, y = next(batches)
        train_step(parts, setup, x, y).item()
        steps, images = steps + 1, images + len(y)
    images_per_s = images / (time.perf_counter() - t0)
    data, n = setup.data, min(2048, len(setup.data.test_images))
    t0 = time.perf_counter()
    evaluate_split(parts.model, data.test_images[:n], data.test_labels[:n], setup)
    per_image = (time.perf_counter() - t0) / max(1, n)
    evaluated = len(data.test_images) + (0 if data.holdout_images is None else len(data.holdout_images))
    return budget.Measured(images_per_s, parts.batches.samples_per_rank, per_image * evaluated)
