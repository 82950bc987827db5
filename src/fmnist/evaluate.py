"""Metrics and reports for a trained model: accuracy, loss, per-class precision/recall/F1, the
confusion matrix, expected calibration error, and the most confidently wrong images.

Everything is computed by hand from the logits with torch/numpy (no sklearn), in float64 so the
numbers do not depend on batch order. `metrics_from_logits` is the pure part and is what the
tests check against hand-computed values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fmnist.checkpoint import normalization
from fmnist.inference import predict_logits, prepare_for_inference, score

ECE_BINS = 15
CONFIDENT_ERRORS = 20


@dataclass
class Report:
    classes: list[str]
    n: int
    accuracy: float
    loss: float  # mean cross-entropy (nats)
    per_class: dict[str, dict[str, float]]  # class -> precision, recall, f1, support
    confusion_matrix: list[list[int]]  # [true][predicted] counts
    ece: float
    # the most confidently wrong images, most confident first: index into the evaluated
    # images, true and predicted class indices, and the predicted class's probability
    confident_errors: list[dict[str, Any]] = field(default_factory=list)

    @property
    def macro_avg(self) -> dict[str, float]:
        return _average(self.per_class, weighted=False)

    @property
    def weighted_avg(self) -> dict[str, float]:
        return _average(self.per_class, weighted=True)

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "accuracy": self.accuracy,
            "loss": self.loss,
            "ece": self.ece,
            "classes": self.classes,
            "per_class": self.per_class,
            "macro_avg": self.macro_avg,
            "weighted_avg": self.weighted_avg,
            "confusion_matrix": self.confusion_matrix,
            "confident_errors": self.confident_errors,
        }

    def to_text(self) -> str:
        """sklearn-style classification report, then the confusion matrix as a table."""
        width = max(len("weighted avg"), *(len(c) for c in self.classes))
        head = f"{'':>{width}}  precision    recall  f1-score   support"
        lines = [
            f"Accuracy: {100 * self.accuracy:.2f}%, Avg loss: {self.loss:.6f}, "
            f"ECE: {self.ece:.4f} ({self.n} images)",
            "",
            head,
            "",
        ]
        for name, m in self.per_class.items():
            lines.append(_row(name, m, width))
        lines.append("")
        lines.append(
            f"{'accuracy':>{width}}  {'':>9} {'':>9} {self.accuracy:>9.4f} {self.n:>9}"
        )
        lines.append(_row("macro avg", self.macro_avg, width))
        lines.append(_row("weighted avg", self.weighted_avg, width))
        lines.append("")
        lines.append("Confusion matrix (rows: true class, columns: predicted class index)")
        cm = self.confusion_matrix
        cell = max(4, *(len(str(v)) + 1 for row in cm for v in row))
        label_w = max(len(c) for c in self.classes) + 4
        lines.append(" " * label_w + "".join(f"{j:>{cell}}" for j in range(len(self.classes))))
        for i, row in enumerate(cm):
            label = f"{i:>2} {self.classes[i]}"
            lines.append(f"{label:<{label_w}}" + "".join(f"{v:>{cell}}" for v in row))
        return "\n".join(lines)


def _row(name: str, m: dict[str, float], width: int) -> str:
    return (
        f"{name:>{width}}  {m['precision']:>9.4f} {m['recall']:>9.4f} {m['f1']:>9.4f} "
        f"{int(m['support']):>9}"
    )


def _average(per_class: dict[str, dict[str, float]], *, weighted: bool) -> dict[str, float]:
    rows = list(per_class.values())
    support = np.array([r["support"] for r in rows], dtype=np.float64)
    total = float(support.sum())
    weights = support / total if weighted and total > 0 else np.full(len(rows), 1 / len(rows))
    out = {k: float(sum(w * r[k] for w, r in zip(weights, rows, strict=True)))
           for k in ("precision", "recall", "f1")}
    out["support"] = int(total)
    return out


def expected_calibration_error(
    confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS
) -> float:
    """ECE with equal-width bins over (0, 1]: sum_b |acc_b - conf_b| * n_b / n (Guo et al. 2017)."""
    n = len(confidence)
    if n == 0:
        return 0.0
    edges = np.linspace(0.0, 1.0, bins + 1)
    # bin b holds (edges[b], edges[b+1]]; confidence is >= 1/C > 0, so nothing falls below
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        in_bin = which == b
        count = int(in_bin.sum())
        if count:
            ece += abs(correct[in_bin].mean() - confidence[in_bin].mean()) * count / n
    return float(ece)


def metrics_from_logits(
    logits: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray,
    classes: list[str],
    *,
    top_errors: int = CONFIDENT_ERRORS,
) -> Report:
    """A Report from logits (N, C) and true labels (N,)."""
    logits_t = torch.as_tensor(logits).double().cpu()
    labels_t = torch.as_tensor(labels).long().cpu()
    n, c = logits_t.shape if logits_t.ndim == 2 else (0, len(classes))
    if c != len(classes):
        raise ValueError(f"logits have {c} classes but {len(classes)} class names were given")
    if len(labels_t) != n:
        raise ValueError(f"{n} logits but {len(labels_t)} labels")

    probs = torch.softmax(logits_t, dim=1)
    confidence, pred = probs.max(dim=1)
    right, loss_sum, _, _ = score(logits_t, labels_t).tolist()
    correct = (pred == labels_t).numpy()

    cm = torch.bincount(labels_t * c + pred, minlength=c * c).reshape(c, c).numpy()
    tp = np.diag(cm).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)
    support = cm.sum(axis=1).astype(np.float64)
    # like sklearn's zero_division=0: a class never predicted (or never present) scores 0
    precision = np.divide(tp, predicted, out=np.zeros(c), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(c), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros(c), where=denom > 0)
    per_class = {
        name: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(classes)
    }

    wrong = np.flatnonzero(~correct)
    conf_np = confidence.numpy()
    # stable sort: ties keep dataset order, so the grid is reproducible
    order = wrong[np.argsort(-conf_np[wrong], kind="stable")][:top_errors]
    errors = [
        {
            "index": int(i),
            "true": int(labels_t[i]),
            "predicted": int(pred[i]),
            "confidence": float(conf_np[i]),
        }
        for i in order
    ]
    return Report(
        classes=list(classes),
        n=int(n),
        accuracy=right / n if n else math.nan,
        loss=loss_sum / n if n else math.nan,
        per_class=per_class,
        confusion_matrix=cm.astype(int).tolist(),
        ece=expected_calibration_error(conf_np, correct.astype(np.float64)),
        confident_errors=errors,
    )


def evaluate(
    model: nn.Module,
    images: np.ndarray | torch.Tensor,
    labels: np.ndarray | torch.Tensor,
    meta: dict[str, Any],
    *,
    batch_size: int = 1024,
    tta_flip: bool | None = None,
) -> Report:
    """Run `model` over uint8 images (N, 28, 28) and report against `labels` (N,).

    `meta` is the checkpoint metadata: its `classes`, `normalize` and `tta_flip` are used.
    `tta_flip=None` evaluates the way the run was trained to predict (and the way `Predictor`
    serves it). `model` itself is not changed (an inference copy runs).
    """
    mean, std = normalization(meta)
    tta = bool(meta.get("tta_flip")) if tta_flip is None else tta_flip
    logits = predict_logits(
        prepare_for_inference(model),
        torch.as_tensor(images),
        mean,
        std,
        batch_size=batch_size,
        tta_flip=tta,
    )
    return metrics_from_logits(logits, labels, list(meta["classes"]))


def save_report_pictures(
    report: Report, images: np.ndarray | torch.Tensor, out_dir: str | Path, *, suffix: str = ""
) -> list[Path]:
    """Write `confusion{suffix}.png` and, when the model made mistakes,
    `confident_errors{suffix}.png` (the most confidently wrong images) into `out_dir`."""
    from fmnist.plots import save_confusion_matrix, save_image_grid

    out_dir = Path(out_dir)
    paths = [
        save_confusion_matrix(
            np.array(report.confusion_matrix), report.classes, out_dir / f"confusion{suffix}.png"
        )
    ]
    errors_png = out_dir / f"confident_errors{suffix}.png"
    errors_png.unlink(missing_ok=True)  # a picture from an earlier evaluation would mislead
    if report.confident_errors:
        images_np = np.asarray(images)
        picked = images_np[[e["index"] for e in report.confident_errors]]
        titles = [
            f"{report.classes[e['true']]} →\n{report.classes[e['predicted']]} "
            f"({e['confidence']:.2f})"
            for e in report.confident_errors
        ]
        paths.append(
            save_image_grid(
                picked, titles, errors_png, ncols=5,
                suptitle="Most confidently wrong: true → predicted (probability)",
            )
        )
    return paths
