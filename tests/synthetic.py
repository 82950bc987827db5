"""Learnable synthetic image data for the training tests: class k is a bright square at a
class-specific place, plus noise — small, fast, and separable."""

from __future__ import annotations

from pathlib import Path

import torch

from fmnist.train import Data


def make_images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 10
    images = torch.randint(0, 60, (n, 28, 28), generator=g, dtype=torch.uint8)
    for k in range(10):
        r, c = 3 + 2 * (k // 5) * 5, 2 + 5 * (k % 5)
        images[labels == k, r : r + 6, c : c + 4] = 220
    return images, labels


def make_data(n_train: int = 256, n_test: int = 64) -> Data:
    xs, ys = make_images(n_train, 1)
    xt, yt = make_images(n_test, 2)
    return Data(xs, ys, xt, yt, [f"c{i}" for i in range(10)], fingerprint="synthetic")


def write_csv(folder: Path, data: Data | None = None) -> str:
    """`data` (default: `make_data()`) as Kaggle-style CSV files in `folder`; returns the
    `--dataset` name that reads them, so commands load it the way a user's data is loaded."""
    data = data or make_data()
    folder.mkdir(parents=True, exist_ok=True)
    header = "label," + ",".join(f"pixel{i}" for i in range(1, 785))
    for split, images, labels in (("train", data.train_images, data.train_labels),
                                  ("test", data.test_images, data.test_labels)):
        rows = torch.cat([labels[:, None], images.reshape(len(images), -1).long()], 1).tolist()
        lines = [header, *(",".join(map(str, r)) for r in rows)]
        (folder / f"fashion-mnist_{split}.csv").write_text("\n".join(lines) + "\n")
    return f"csv:{folder}"
