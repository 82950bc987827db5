"""A model card (Markdown) for a run folder, made only from what is measured: the data and its
hashes, the recipe, the hardware, per-class test results and the main confusions, calibration,
prediction-set coverage, and the out-of-distribution check with its limits.

`fmnist card RUN` writes it for any run; `fmnist train` writes it at the end of a run that held
images out to calibrate on (`ModelCard`): a run without them (the Quickstart recipe) is not
slowed by the few seconds of measuring, which would distort its timing against the Quickstart.
Measuring takes one pass over the test set (or none: the run's final test logits are reused)
and a few hundred out-of-distribution pictures.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fmnist import ood, rundir
from fmnist.atomic import write_bytes
from fmnist.checkpoint import load_model, normalization
from fmnist.evaluate import Report, TrustReport, metrics_from_logits, trust_report
from fmnist.images import BOX_SIZE, DEFAULT_BOX
from fmnist.inference import predict_logits, prepare_for_inference
from fmnist.train.callbacks import Callback, RunState
from fmnist.trust import Trust, auroc, ood_scores, softmax

CARD = "model-card.md"
LEVELS = (0.90, 0.95)
DRAWN_PER_KIND = 40  # pictures of each drawn kind: enough for a rough AUROC, ~2 s in all
DIGITS = 300  # of scikit-learn's 1,797 (each is enlarged and preprocessed like an upload)
CONFUSIONS = 5


@dataclass
class Measured:
    """What the card says, all of it measured on the run's model."""

    meta: dict[str, Any]
    config: dict[str, Any]
    status: dict[str, Any]
    report: Report
    sets: dict[float, TrustReport]
    ood: dict[str, dict[str, Any]] = field(default_factory=dict)
    ood_skipped: list[str] = field(default_factory=list)


def measure(
    run_dir: Path, *, model: nn.Module | None = None, meta: dict[str, Any] | None = None,
    test: tuple[np.ndarray | torch.Tensor, np.ndarray | torch.Tensor] | None = None,
    test_logits: torch.Tensor | None = None, data_dir: str | Path | None = None,
) -> Measured:
    """Measure the run's model (loaded from `run_dir` unless given) on its test set (loaded
    unless given; `test_logits` reused when given) and on the out-of-distribution pictures."""
    if model is None or meta is None:
        model, meta = load_model(run_dir)
    if test is None:
        from fmnist.datasets import load_arrays

        test = load_arrays(str(meta.get("dataset") or "fashion-mnist"), "test", data_dir)
    images, labels = torch.as_tensor(test[0]), np.asarray(test[1])
    net = prepare_for_inference(model)
    mean, std = normalization(meta)
    tta = bool(meta.get("tta_flip"))

    def logits_of(x: np.ndarray | torch.Tensor) -> np.ndarray:
        return predict_logits(net, torch.as_tensor(x), mean, std, tta_flip=tta).double().cpu().numpy()

    logits = test_logits.double().cpu().numpy() if test_logits is not None else logits_of(images)
    trust = Trust.from_meta(meta)
    report = metrics_from_logits(logits, labels, list(meta["classes"]), temperature=trust.temperature)
    sets = {level: trust_report(logits, labels, Trust.from_meta(meta, level)) for level in LEVELS}
    report.trust = sets[LEVELS[0]]
    box = BOX_SIZE.get(str(meta.get("dataset", "")), DEFAULT_BOX)
    sources = {kind: ood.drawn(kind, DRAWN_PER_KIND, box=box) for kind in ood.DRAWN}
    skipped = []
    if importlib.util.find_spec("sklearn") is not None:
        sources["digits (scikit-learn)"] = ood.digits(box=box, limit=DIGITS)
    else:
        skipped.append("scikit-learn's digits (scikit-learn is not installed)")
    in_scores = ood_scores(softmax(logits, trust.temperature), trust.ood_score)
    found = {}
    for name, pictures in sources.items():
        scores = ood_scores(softmax(logits_of(pictures), trust.temperature), trust.ood_score)
        found[name] = {"n": len(pictures), "auroc": auroc(in_scores, scores),
                       "not_recognised_rate": None if trust.ood_threshold is None
                       else float((scores > trust.ood_threshold).mean())}
    return Measured(meta, _read_json(run_dir / rundir.CONFIG), _read_json(run_dir / rundir.STATUS),
                    report, sets, found, skipped)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def render(m: Measured, run_name: str) -> str:
    """The card's Markdown, section by section."""
    sections = (model_section, data_section, results_section, calibration_section, sets_section,
                ood_section, intended_use)
    return "\n".join([f"# Model card: {run_name}", "", *(line for make in sections for line in make(m))])


def model_section(m: Measured) -> list[str]:
    meta, config = m.meta, m.config
    metrics = meta.get("metrics") or {}
    out = ["## Model", "",
           f"- Network: `{meta.get('model')}` {json.dumps(meta.get('model_config', {}))}",
           f"- Recipe: `{meta.get('recipe') or config.get('name')}`, trained {meta.get('epoch')} "
           f"epochs in {metrics.get('train_seconds', float('nan')):.1f} s of training",
           f"- Hardware: {m.status.get('hardware', 'not recorded')} "
           f"({m.status.get('device', 'device not recorded')}, "
           f"{m.status.get('world_size', 1)} process(es))",
           f"- Libraries: {', '.join(f'{k} {v}' for k, v in (meta.get('versions') or {}).items())}",
           f"- Predicts with flip TTA: {'yes' if meta.get('tta_flip') else 'no'}", ""]
    if config:
        keys = ("epochs", "batch_size", "optimizer", "lr", "schedule", "label_smoothing", "flip",
                "shift", "whiten", "holdout", "seed")
        out += ["Recipe fields: " + ", ".join(f"{k} {config[k]}" for k in keys if k in config), ""]
    return out


def data_section(m: Measured) -> list[str]:
    meta, classes = m.meta, m.report.classes
    return ["## Data", "",
            f"- Dataset: `{meta.get('dataset')}`, {len(classes)} classes: {', '.join(classes)}",
            f"- Data hash (sha256 of the decompressed files): `{meta.get('dataset_sha256')}`",
            f"- Held out of training for calibration: {fitted(m).get('held_out', 0)} images",
            f"- Test set: {m.report.n} images "
            f"(what the figures below are measured on, except where said)", ""]


def results_section(m: Measured) -> list[str]:
    report, classes = m.report, m.report.classes
    out = ["## Results on the test set", "",
           f"Accuracy {100 * report.accuracy:.2f} %, mean cross-entropy {report.loss:.4f}.", "",
           "| class | precision | recall | F1 | images |", "| --- | ---: | ---: | ---: | ---: |"]
    for name, row in report.per_class.items():
        out.append(f"| {name} | {row['precision']:.4f} | {row['recall']:.4f} | {row['f1']:.4f} "
                   f"| {int(row['support'])} |")
    out += ["", "Main confusions (true class taken for another):", ""]
    for count, true, pred in main_confusions(report.confusion_matrix)[:CONFUSIONS]:
        share = count / max(1, report.per_class[classes[true]]["support"])
        out.append(f"- {classes[true]} as {classes[pred]}: {count} images "
                   f"({100 * share:.1f} % of {classes[true]})")
    return out


def calibration_section(m: Measured) -> list[str]:
    trust = trust_of(m)
    lo_b, hi_b = trust.ece_interval["before"]
    lo_a, hi_a = trust.ece_interval["after"]
    if not trust.calibrated:
        return ["", "## Calibration", "",
                "No temperature was fitted (the run held no images out): probabilities are the "
                f"model's own. ECE {trust.ece['before']:.4f} ({lo_b:.4f}-{hi_b:.4f})."]
    return ["", "## Calibration", "",
            f"Temperature {trust.temperature:.4f}, fitted on {fitted(m).get('held_out')} held-out "
            "images (minimum NLL).", "",
            "| | ECE (15 bins) | 95 % bootstrap interval | NLL |", "| --- | ---: | ---: | ---: |",
            f"| before | {trust.ece['before']:.4f} | {lo_b:.4f}-{hi_b:.4f} | {trust.nll['before']:.4f} |",
            f"| after | {trust.ece['after']:.4f} | {lo_a:.4f}-{hi_a:.4f} | {trust.nll['after']:.4f} |"]


def sets_section(m: Measured) -> list[str]:
    if not trust_of(m).calibrated:
        return ["", "## Prediction sets", "", "None: the run held no images out to fit them on."]
    out = ["", "## Prediction sets", "",
           "Split-conformal sets (score "
           f"`{(fitted(m).get('sets') or {}).get('score')}`), thresholds from the held-out images:",
           "", "| coverage asked | true class in the set | mean set size |",
           "| ---: | ---: | ---: |"]
    for level, r in m.sets.items():
        out.append(f"| {100 * level:g} % | {100 * (r.set_coverage or 0):.2f} % | "
                   f"{r.set_mean_size or 0:.3f} |")
    return out


def ood_section(m: Measured) -> list[str]:
    trust, ood_fit = trust_of(m), fitted(m).get("ood") or {}
    out = ["", "## Out-of-distribution check", ""]
    if trust.recognised_rate is not None:
        out += [f"Score: `{ood_fit.get('score')}` of the calibrated probabilities; threshold set "
                f"so that {100 * float(ood_fit.get('pass_rate', 0)):g} % of the held-out images "
                f"pass. On the test set {100 * trust.recognised_rate:.2f} % pass (are recognised).",
                "", "| images | count | AUROC vs the test set | answered not recognised |",
                "| --- | ---: | ---: | ---: |"]
    else:
        out += ["No threshold (the run held no images out): every answer is given as "
                "recognised. The separation the score would give:", "",
                "| images | count | AUROC vs the test set |", "| --- | ---: | ---: |"]
    for name, found in m.ood.items():
        rate = found.get("not_recognised_rate")
        cells = [name, str(found.get("n")), f"{found.get('auroc', float('nan')):.4f}"]
        if trust.recognised_rate is not None:
            cells.append("-" if rate is None else f"{100 * rate:.1f} %")
        out.append("| " + " | ".join(cells) + " |")
    out += ["", "Limits: measured only on the pictures above (made by fmnist.ood, and "
            "scikit-learn's digits), not on photographs of other objects, nor on clothing "
            "photographed unlike the dataset; a threshold that passes "
            f"{100 * float(ood_fit.get('pass_rate', 0.95)):g} % of genuine images marks the "
            "rest as not recognised."]
    return out + [f"Not measured: {s}." for s in m.ood_skipped]


def intended_use(m: Measured) -> list[str]:
    classes = m.report.classes
    return ["", "## Intended use", "",
            f"Classifying one image into one of these {len(classes)} classes: {', '.join(classes)}, "
            f"for images prepared like `{m.meta.get('dataset')}`'s (one object, light on a dark "
            "background after `fmnist.images.preprocess`, 28x28 grey). The figures above hold "
            "for images like its test set; the out-of-distribution mark is a screen, not a "
            "guarantee. Not for decisions about people.", ""]


def fitted(m: Measured) -> dict[str, Any]:
    """What calibration fitted on the held-out images (model.json's `trust`), or {}."""
    return m.meta.get("trust") or {}


def trust_of(m: Measured) -> TrustReport:
    assert m.report.trust is not None  # measure() always makes it
    return m.report.trust


def main_confusions(matrix: list[list[int]]) -> list[tuple[int, int, int]]:
    """(count, true, predicted) of the off-diagonal cells, largest first."""
    cells = [(v, i, j) for i, row in enumerate(matrix) for j, v in enumerate(row) if i != j and v]
    return sorted(cells, key=lambda c: (-c[0], c[1], c[2]))


def write_card(run_dir: str | Path, **kwargs: Any) -> Path:
    """Measure (see `measure`) and write `model-card.md` into the run folder, atomically."""
    run_dir = Path(run_dir)
    text = render(measure(run_dir, **kwargs), run_dir.resolve().name)
    return write_bytes(run_dir / CARD, text.encode(), "model card")


class ModelCard(Callback):
    """Writes the run's model card when a calibrated run ends, from the final model and test
    logits."""

    end_seconds = 1.5  # the pictures it scores, drawn and preprocessed: 1.4-1.5 s measured

    def on_fit_end(self, state: RunState) -> None:
        if state.run_dir is None or not state.is_main or state.setup is None or state.trust is None:
            return
        data = state.setup.data
        one_process = state.setup.info.world_size == 1  # else the logits are a rank's slice
        write_card(state.run_dir, test=(data.test_images, data.test_labels),
                   test_logits=state.test_logits if one_process else None)
