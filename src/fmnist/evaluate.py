"""Metrics and reports for a trained model: accuracy, loss, per-class precision/recall/F1, the
confusion matrix, expected calibration error, and the most confidently wrong images; and how far
its answers can be trusted (`TrustReport`): calibration before and after the checkpoint's
temperature (ECE with a bootstrap interval, a reliability diagram), the coverage and size of its
prediction sets, and how often it says "not recognised".

Everything is computed by hand from the logits with torch/numpy (no sklearn), in float64 so the
numbers do not depend on batch order. `metrics_from_logits` is the pure part and is what the
tests check against hand-computed values.

One job: measuring a model from its logits. The trust half reads the same logits and the same
calibration error as the metrics half, and `evaluate` returns both in one `Report`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fmnist import trust as trust_fit
from fmnist.checkpoint import normalization
from fmnist.inference import predict_logits, prepare_for_inference, score
from fmnist.trust import Trust

ECE_BINS = 15
CONFIDENT_ERRORS = 20
BOOTSTRAP = 1000  # resamples for the ECE's 95 % interval


@dataclass
class Report:
    classes: list[str]
    n: int
    accuracy: float
    loss: float  # mean cross-entropy (nats) of the logits as the model gives them
    per_class: dict[str, dict[str, float]]  # class -> precision, recall, f1, support
    confusion_matrix: list[list[int]]  # [true][predicted] counts
    ece: float  # of the calibrated probabilities (the checkpoint's temperature)
    # the most confidently wrong images, most confident first: index into the evaluated
    # images, true and predicted class indices, and the predicted class's probability
    confident_errors: list[dict[str, Any]] = field(default_factory=list)
    trust: TrustReport | None = None  # `evaluate` fills it in

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
            **({"trust": self.trust.to_dict()} if self.trust is not None else {}),
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
        if self.trust is not None:
            lines += ["", *self.trust.to_lines()]
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
    temperature: float = 1.0,
) -> Report:
    """A Report from logits (N, C) and true labels (N,); its ECE and confidences are those of
    softmax(logits / temperature)."""
    logits_t = torch.as_tensor(logits).double().cpu()
    labels_t = torch.as_tensor(labels).long().cpu()
    n, c = logits_t.shape if logits_t.ndim == 2 else (0, len(classes))
    if c != len(classes):
        raise ValueError(f"logits have {c} classes but {len(classes)} class names were given")
    if len(labels_t) != n:
        raise ValueError(f"{n} logits but {len(labels_t)} labels")

    probs = torch.softmax(logits_t / temperature, dim=1)
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
    coverage: float | None = None,
    ood: tuple[str, np.ndarray] | None = None,
) -> Report:
    """Run `model` over uint8 images (N, 28, 28) and report against `labels` (N,), with its
    trust report (`Report.trust`): calibration, prediction sets at `coverage` (default 90 %),
    and, given `ood` (a name and uint8 images that are not of any class), how well it tells
    those apart.

    `meta` is the checkpoint metadata: its `classes`, `normalize`, `tta_flip` and `trust` are
    used. `tta_flip=None` evaluates the way the run was trained to predict (and the way
    `Predictor` serves it). `model` itself is not changed (an inference copy runs).
    """
    mean, std = normalization(meta)
    tta = bool(meta.get("tta_flip")) if tta_flip is None else tta_flip
    net = prepare_for_inference(model)

    def logits_of(x: np.ndarray | torch.Tensor) -> torch.Tensor:
        return predict_logits(net, torch.as_tensor(x), mean, std, batch_size=batch_size,
                              tta_flip=tta)

    logits = logits_of(images)
    trust = Trust.from_meta(meta, coverage)
    report = metrics_from_logits(logits, labels, list(meta["classes"]),
                                 temperature=trust.temperature)
    ood_logits = None if ood is None else (ood[0], logits_of(ood[1]).double().numpy())
    report.trust = trust_report(logits.double().cpu().numpy(), np.asarray(labels), trust,
                                ood=ood_logits)
    return report


def save_report_pictures(
    report: Report, images: np.ndarray | torch.Tensor, out_dir: str | Path, *, suffix: str = ""
) -> list[Path]:
    """Write `confusion{suffix}.png`, `reliability{suffix}.png` (with a trust report) and, when
    the model made mistakes, `confident_errors{suffix}.png` (the most confidently wrong images)
    into `out_dir`."""
    from fmnist.plots import save_confusion_matrix, save_image_grid, save_reliability_diagram

    out_dir = Path(out_dir)
    paths = [
        save_confusion_matrix(
            np.array(report.confusion_matrix), report.classes, out_dir / f"confusion{suffix}.png"
        )
    ]
    if report.trust is not None:
        paths.append(save_reliability_diagram(
            {"before": report.trust.reliability["before"], "after": report.trust.reliability["after"]}
            if report.trust.calibrated else {"model": report.trust.reliability["before"]},
            out_dir / f"reliability{suffix}.png",
            ece={"before": report.trust.ece["before"], "after": report.trust.ece["after"],
                 "model": report.trust.ece["before"]},
        ))
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


# ---- how far the answers can be trusted --------------------------------------------------------


@dataclass
class TrustReport:
    """Calibration, prediction sets and the not-recognised mark, measured on labelled images
    (and, when given, on images of none of the classes)."""

    temperature: float
    calibrated: bool  # whether the checkpoint has a fitted temperature (else T = 1, no sets)
    n: int
    nll: dict[str, float]  # "before" / "after" the temperature
    ece: dict[str, float]
    ece_interval: dict[str, list[float]]  # 95 % bootstrap interval, before / after
    reliability: dict[str, list[dict[str, float]]]  # per bin: confidence, accuracy, count
    coverage: float | None = None  # the sets' nominal coverage
    set_coverage: float | None = None  # how often the true class was in the set
    set_mean_size: float | None = None
    recognised_rate: float | None = None  # of these (in-distribution) images
    ood: dict[str, Any] | None = None  # source, n, auroc, not_recognised_rate

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def to_lines(self) -> list[str]:
        lo_b, hi_b = self.ece_interval["before"]
        lo_a, hi_a = self.ece_interval["after"]
        if not self.calibrated:
            lines = ["Calibration: none fitted (the model has no temperature: trained before "
                     f"calibration or without held-out images). ECE {self.ece['before']:.4f} "
                     f"(95 % interval {lo_b:.4f}-{hi_b:.4f})."]
        else:
            lines = [f"Calibration: temperature {self.temperature:.3f}; ECE "
                     f"{self.ece['before']:.4f} ({lo_b:.4f}-{hi_b:.4f}) before, "
                     f"{self.ece['after']:.4f} ({lo_a:.4f}-{hi_a:.4f}) after (95 % bootstrap "
                     f"intervals); NLL {self.nll['before']:.4f} -> {self.nll['after']:.4f}"]
        if self.set_coverage is not None and self.coverage is not None:
            lines.append(f"Prediction sets at {100 * self.coverage:g} % coverage: the true class "
                         f"was in the set for {100 * self.set_coverage:.2f} % of images, mean set "
                         f"size {self.set_mean_size:.3f}")
        if self.recognised_rate is not None:
            lines.append(f"Recognised (not marked out of distribution): "
                         f"{100 * self.recognised_rate:.2f} % of these images")
        if self.ood is not None:
            o = self.ood
            rate = ("no threshold in this model" if o["not_recognised_rate"] is None
                    else f"{100 * o['not_recognised_rate']:.2f} % answered not recognised")
            lines.append(f"Out of distribution ({o['source']}, {o['n']} images): AUROC "
                         f"{o['auroc']:.4f} against these images; {rate}")
        return lines


def reliability_bins(
    confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS
) -> list[dict[str, float]]:
    """The reliability diagram's bars: per equal-width confidence bin with images in it, its
    mean confidence, accuracy and count."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    out = []
    for b in range(bins):
        in_bin = which == b
        if in_bin.any():
            out.append({"low": float(edges[b]), "high": float(edges[b + 1]),
                        "confidence": float(confidence[in_bin].mean()),
                        "accuracy": float(correct[in_bin].mean()), "count": int(in_bin.sum())})
    return out


def ece_interval(
    confidence: np.ndarray, correct: np.ndarray, *, resamples: int = BOOTSTRAP, seed: int = 0,
    bins: int = ECE_BINS,
) -> list[float]:
    """95 % bootstrap interval (percentiles) of the ECE: images resampled with replacement."""
    n = len(confidence)
    if n == 0:
        return [0.0, 0.0]
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    rng = np.random.default_rng(seed)
    values = np.empty(resamples)
    for r in range(resamples):
        pick = rng.integers(0, n, n)
        w = which[pick]
        conf_sum = np.bincount(w, weights=confidence[pick], minlength=bins)
        right_sum = np.bincount(w, weights=correct[pick], minlength=bins)
        values[r] = np.abs(right_sum - conf_sum).sum() / n
    lo, hi = np.percentile(values, [2.5, 97.5])
    return [float(lo), float(hi)]


def trust_report(
    logits: np.ndarray, labels: np.ndarray, trust: Trust,
    *, ood: tuple[str, np.ndarray] | None = None,
) -> TrustReport:
    """The TrustReport of logits (N, C) against labels (N,), with `trust`'s temperature, sets
    and threshold; `ood` is a name and the logits of images of none of the classes."""
    labels = np.asarray(labels)
    parts: dict[str, dict[str, Any]] = {}
    for when, t in (("before", 1.0), ("after", trust.temperature)):
        probs = trust_fit.softmax(logits, t)
        confidence = probs.max(axis=1)
        correct = (probs.argmax(axis=1) == labels).astype(np.float64)
        parts[when] = {"nll": trust_fit.nll(logits, labels, t),
                       "ece": expected_calibration_error(confidence, correct),
                       "interval": ece_interval(confidence, correct),
                       "bins": reliability_bins(confidence, correct)}
    calibrated = trust_fit.softmax(logits, trust.temperature)
    report = TrustReport(
        temperature=trust.temperature, calibrated=trust.calibrated, n=len(labels),
        nll={k: v["nll"] for k, v in parts.items()}, ece={k: v["ece"] for k, v in parts.items()},
        ece_interval={k: v["interval"] for k, v in parts.items()},
        reliability={k: v["bins"] for k, v in parts.items()},
    )
    sets = trust.sets(calibrated)
    if sets is not None:
        report.coverage = trust.coverage
        report.set_coverage = float(sets[np.arange(len(labels)), labels].mean()) if len(labels) else None
        report.set_mean_size = float(sets.sum(axis=1).mean()) if len(labels) else None
    in_scores = trust_fit.ood_scores(calibrated, trust.ood_score)
    if trust.ood_threshold is not None and len(labels):
        report.recognised_rate = float((in_scores <= trust.ood_threshold).mean())
    if ood is not None:
        name, out_logits = ood
        out_scores = trust_fit.ood_scores(trust_fit.softmax(out_logits, trust.temperature),
                                          trust.ood_score)
        report.ood = {
            "source": name, "n": int(len(out_logits)), "score": trust.ood_score,
            "auroc": trust_fit.auroc(in_scores, out_scores),
            "not_recognised_rate": None if trust.ood_threshold is None
            else float((out_scores > trust.ood_threshold).mean()),
        }
    return report
