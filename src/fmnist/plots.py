"""Pictures a user looks at: training curves, confusion matrices, labelled image grids.
matplotlib with the Agg backend (no display needed); every PNG is written atomically."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
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
    return save_curves({"": rows}, path)


def save_curves(runs: Mapping[str, Sequence[dict[str, Any]]], path: str | Path) -> Path:
    """The curves of one run, or of several in one picture (`fmnist runs compare`): one colour
    per run, training loss dashed, labels prefixed with the run's name."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
    several = len(runs) > 1
    holdout = False
    for i, (name, rows) in enumerate(runs.items()):
        def colour(alone: str, i: int = i) -> str:
            return f"C{i}" if several else alone

        label = f"{name}: " if several else ""
        # the training loss includes label smoothing, so it sits above the test loss
        ax_loss.plot([r["epoch"] for r in rows], [r["train_loss"] for r in rows],
                     "o--" if several else "o-", color=colour("C0"),
                     label=f"{label}train (as optimised)")
        tested = [r for r in rows if "test_accuracy" in r]  # --eval-every may skip epochs
        epochs = [r["epoch"] for r in tested]
        ax_loss.plot(epochs, [r["test_loss"] for r in tested], "o-", color=colour("C1"),
                     label=f"{label}test")
        ax_acc.plot(epochs, [100 * r["test_accuracy"] for r in tested], "o-", color=colour("C2"),
                    label=f"{label}test")
        if tested and "holdout_accuracy" in tested[0]:
            holdout = True
            ax_acc.plot(epochs, [100 * r["holdout_accuracy"] for r in tested],
                        "o:" if several else "o-", color=colour("C1"),
                        label=f"{label}held-out train slice")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="Loss")
    ax_loss.legend(fontsize=8 if several else None)
    if holdout or several:
        ax_acc.legend(fontsize=8 if several else None)
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="Test accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    return _save(fig, path)


def save_lr_finder(lrs: Sequence[float], losses: Sequence[float], smoothed: Sequence[float],
                   suggestion: float | None, path: str | Path, title: str = "") -> Path:
    """The learning-rate range test: loss against lr (log scale), the suggestion marked."""
    fig, ax = plt.subplots(figsize=(6.4, 4))
    ax.plot(lrs, losses, color="C0", alpha=0.3, lw=1, label="loss per step")
    ax.plot(lrs, smoothed, color="C0", lw=2, label="smoothed (centred mean)")
    if suggestion is not None:
        ax.axvline(suggestion, color="C3", ls="--", label=f"suggested lr {suggestion:.3g}")
    finite = [v for v in smoothed if np.isfinite(v)]
    if finite:  # the divergence at the end would squash the interesting part
        low, first = min(finite), finite[0]
        ax.set_ylim(low - 0.1 * (first - low + 1e-9), max(first, low) * 1.5 + 1e-9)
    ax.set_xscale("log")
    ax.set(xlabel="learning rate", ylabel="training loss",
           title=f"Learning-rate range test{': ' + title if title else ''}")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    return _save(fig, path)


def save_confusion_matrix(matrix: np.ndarray, classes: Sequence[str], path: str | Path) -> Path:
    """Counts (true x predicted) as a heat map with the numbers written in."""
    return _save(confusion_figure(matrix, classes), path)


def confusion_figure(matrix: np.ndarray, classes: Sequence[str]) -> Any:
    """The confusion-matrix figure itself (TensorBoard takes the figure, not a file)."""
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
    return fig


def save_reliability_diagram(
    curves: Mapping[str, Sequence[Mapping[str, float]]], path: str | Path, *,
    ece: Mapping[str, float] | None = None,
) -> Path:
    """Reliability diagram: per confidence bin, accuracy against mean confidence (on the
    diagonal when calibrated), one line per curve ("before" / "after" calibration), with each
    bin's share of images under it. Bins are `fmnist.evaluate.reliability_bins` rows."""
    fig, (ax, ax_count) = plt.subplots(
        2, 1, figsize=(5, 5.6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls=":", label="calibrated")
    for i, (name, bins) in enumerate(curves.items()):
        if not bins:
            continue
        conf = [b["confidence"] for b in bins]
        label = name if ece is None or name not in ece else f"{name} (ECE {ece[name]:.4f})"
        ax.plot(conf, [b["accuracy"] for b in bins], marker="o", ms=3, color=f"C{i}", label=label)
        total = sum(b["count"] for b in bins)
        ax_count.plot(conf, [b["count"] / total for b in bins], marker="o", ms=3, color=f"C{i}")
    ax.set(ylabel="accuracy", title="Reliability: accuracy by confidence", xlim=(0, 1),
           ylim=(0, 1.02))
    ax.legend(loc="upper left", fontsize=8)
    ax_count.set(xlabel="confidence (top probability)", ylabel="share of images")
    ax_count.set_yscale("log")
    return _save(fig, path)
