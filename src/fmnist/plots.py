"""Pictures a user looks at: training curves, confusion matrices, labelled image grids.
matplotlib with the Agg backend (no display needed); every PNG is written atomically."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from fmnist.atomic import write_bytes  # noqa: E402


def _save(fig: Any, path: str | Path) -> Path:
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)
    return write_bytes(path, buf.getvalue(), "picture")


def save_image_grid(
    images: np.ndarray, titles: Sequence[str], path: str | Path, ncols: int = 10,
    suptitle: str | None = None,
) -> Path:
    """uint8 images (N, 28, 28) in a grid, each with its title underneath."""
    n = len(images)
    nrows = max(1, -(-n // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * 1.25, nrows * 1.45), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(images[i], cmap="gray", vmin=0, vmax=255)
            ax.set_title(titles[i], fontsize=7)
    if suptitle:
        fig.suptitle(suptitle)
    return _save(fig, path)


def save_training_curves(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Loss (train and test) and test accuracy per epoch, from metrics.jsonl rows."""
    epochs = [r["epoch"] for r in rows]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
    # the training loss includes label smoothing, so it sits above the test loss
    ax_loss.plot(epochs, [r["train_loss"] for r in rows], "o-", label="train (as optimised)")
    ax_loss.plot(epochs, [r["test_loss"] for r in rows], "o-", label="test")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="Loss")
    ax_loss.legend()
    ax_acc.plot(epochs, [100 * r["test_accuracy"] for r in rows], "o-", color="C2", label="test")
    if rows and "holdout_accuracy" in rows[0]:
        ax_acc.plot(epochs, [100 * r["holdout_accuracy"] for r in rows], "o-", color="C1",
                    label="held-out train slice")
        ax_acc.legend()
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="Test accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    return _save(fig, path)


def save_confusion_matrix(matrix: np.ndarray, classes: Sequence[str], path: str | Path) -> Path:
    """Counts (true x predicted) as a heat map with the numbers written in."""
    n = len(classes)
    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * n, 0.6 + 0.6 * n))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(n), classes, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), classes, fontsize=8)
    ax.set(xlabel="predicted", ylabel="true", title="Confusion matrix")
    top = matrix.max() if matrix.size else 0
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center", fontsize=7,
                    color="white" if matrix[i, j] > top / 2 else "black")
    return _save(fig, path)
