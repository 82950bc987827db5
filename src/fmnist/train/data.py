"""The arrays a run trains on: loaded once, a holdout split off, their pixel statistics, and the
check that a resumed run sees the same data it started on."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from fmnist import datasets
from fmnist.checkpoint import ResumeState
from fmnist.errors import ConfigError
from fmnist.recipes import Recipe


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
    # what the test slots hold: "test", or "validation" when a sweep's trial is scored on a split
    # of the training images (its metrics' test_* figures are then validation figures)
    evaluated_on: str = "test"


def load_data(recipe: Recipe, data_dir: str | Path | None = None) -> Data:
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
