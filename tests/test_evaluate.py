"""Metrics checked against values computed by hand on tiny synthetic logits."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from fmnist.checkpoint import load_model
from fmnist.evaluate import (
    evaluate,
    expected_calibration_error,
    metrics_from_logits,
    save_report_pictures,
)

CLASSES = ["a", "b", "c"]
# Probabilities chosen away from the 15 ECE bin edges (multiples of 1/15).
PROBS = np.array([
    [0.90, 0.05, 0.05],  # true a, predicted a
    [0.28, 0.62, 0.10],  # true a, predicted b  (wrong, confidence 0.62)
    [0.20, 0.70, 0.10],  # true b, predicted b
    [0.09, 0.09, 0.82],  # true c, predicted c
    [0.05, 0.05, 0.90],  # true c, predicted c
    [0.50, 0.10, 0.40],  # true c, predicted a  (wrong, confidence 0.50)
])
LABELS = np.array([0, 0, 1, 2, 2, 2])


@pytest.fixture
def report():
    return metrics_from_logits(np.log(PROBS), LABELS, CLASSES)


def test_accuracy_loss_confusion(report):
    assert report.n == 6
    assert report.accuracy == pytest.approx(4 / 6)
    expected_loss = -np.mean(np.log([0.90, 0.28, 0.70, 0.82, 0.90, 0.40]))
    assert report.loss == pytest.approx(expected_loss, rel=1e-12)
    assert report.confusion_matrix == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]


def test_per_class_precision_recall_f1(report):
    pc = report.per_class
    assert list(pc) == CLASSES
    assert pc["a"] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2})
    assert pc["b"] == pytest.approx({"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 1})
    assert pc["c"] == pytest.approx({"precision": 1.0, "recall": 2 / 3, "f1": 0.8, "support": 3})
    assert report.macro_avg["f1"] == pytest.approx((0.5 + 2 / 3 + 0.8) / 3)
    assert report.weighted_avg["recall"] == pytest.approx(4 / 6)  # weighted recall == accuracy
    assert report.weighted_avg["support"] == 6


def test_ece_by_hand(report):
    # bins: {0.9, 0.9} both right -> 0.1*2; {0.62} wrong -> 0.62; {0.70} right -> 0.30;
    # {0.82} right -> 0.18; {0.50} wrong -> 0.50; all / 6
    assert report.ece == pytest.approx((0.2 + 0.62 + 0.30 + 0.18 + 0.50) / 6)


def test_confident_errors_most_confident_first(report):
    assert [(e["index"], e["true"], e["predicted"]) for e in report.confident_errors] == [
        (1, 0, 1),
        (5, 2, 0),
    ]
    assert report.confident_errors[0]["confidence"] == pytest.approx(0.62)


def test_never_predicted_class_scores_zero_not_nan():
    r = metrics_from_logits(np.log(np.array([[0.9, 0.1], [0.8, 0.2]])), np.array([0, 1]), ["x", "y"])
    assert r.per_class["y"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert r.per_class["x"]["precision"] == pytest.approx(0.5)


def test_against_brute_force_on_random_logits():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(500, 4, generator=gen) * 3
    labels = torch.randint(0, 4, (500,), generator=gen)
    r = metrics_from_logits(logits, labels, ["w", "x", "y", "z"])
    pred = logits.argmax(1)
    for k, name in enumerate(["w", "x", "y", "z"]):
        tp = int(((pred == k) & (labels == k)).sum())
        assert r.per_class[name]["precision"] == pytest.approx(tp / int((pred == k).sum()))
        assert r.per_class[name]["recall"] == pytest.approx(tp / int((labels == k).sum()))
    probs = torch.softmax(logits.double(), 1)
    conf = probs.max(1).values.numpy()
    correct = (pred == labels).numpy()
    ece = 0.0
    for b in range(15):
        lo, hi = b / 15, (b + 1) / 15
        m = (conf > lo) & (conf <= hi)
        if m.any():
            ece += abs(correct[m].mean() - conf[m].mean()) * m.sum() / 500
    assert r.ece == pytest.approx(ece)
    assert r.loss == pytest.approx(torch.nn.functional.cross_entropy(logits, labels).item(), rel=1e-5)


def test_ece_perfectly_calibrated_is_zero():
    assert expected_calibration_error(np.array([1.0, 1.0]), np.array([1.0, 1.0])) == 0.0
    assert expected_calibration_error(np.array([]), np.array([])) == 0.0


def test_text_and_dict(report):
    text = report.to_text()
    assert "precision    recall  f1-score   support" in text
    assert "weighted avg" in text and "Confusion matrix" in text
    assert "Accuracy: 66.67%" in text
    d = json.loads(json.dumps(report.to_dict()))
    assert {"accuracy", "loss", "per_class", "confusion_matrix", "ece"} <= set(d)


def test_evaluate_on_a_checkpoint_matches_the_model(make_checkpoint, tmp_path):
    model, meta = load_model(make_checkpoint("cnn"))
    gen = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (64, 28, 28), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, 10, (64,), generator=gen)
    report = evaluate(model, images.numpy(), labels.numpy(), meta, batch_size=16)
    mean, std = meta["normalize"]["mean"], meta["normalize"]["std"]
    with torch.no_grad():
        logits = model((images.unsqueeze(1).float() / 255 - mean) / std)
    assert report.accuracy == pytest.approx((logits.argmax(1) == labels).float().mean().item())
    assert report.loss == pytest.approx(
        torch.nn.functional.cross_entropy(logits, labels).item(), rel=1e-4
    )
    assert not math.isnan(report.ece)
    paths = save_report_pictures(report, images.numpy(), tmp_path / "pics")
    assert [p.name for p in paths] == ["confusion.png", "reliability.png", "confident_errors.png"]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in paths)


# ---- fmnist evaluate (CLI, in-process, synthetic data in place of the real files) -------------


def test_cli_json_and_pictures_in_the_run_folder(make_checkpoint, fake_data, capsys):
    from fmnist.cli import main

    folder = make_checkpoint("cnn")
    model, meta = load_model(folder)
    expected = evaluate(model, *fake_data, meta)
    assert main(["evaluate", str(folder), "--json"]) == 0
    out, err = capsys.readouterr()
    d = json.loads(out)  # stdout is exactly one JSON object
    assert d["accuracy"] == pytest.approx(expected.accuracy)
    assert d["loss"] == pytest.approx(expected.loss, rel=1e-5)
    assert d["confusion_matrix"] == expected.confusion_matrix
    assert set(d["per_class"]) == set(meta["classes"]) and 0 <= d["ece"] <= 1
    assert (folder / "confusion.png").is_file() and (folder / "confident_errors.png").is_file()
    assert "confusion.png" in err


def test_cli_ood_reports_auroc_and_the_not_recognised_share(make_checkpoint, fake_data,
                                                           capsys, tmp_path):
    from fmnist.cli import main

    folder = make_checkpoint("cnn")
    assert main(["evaluate", str(folder), "--json", "--ood", "blank", "--out",
                 str(tmp_path)]) == 0
    trust = json.loads(capsys.readouterr().out)["trust"]
    assert trust["calibrated"] is False and trust["temperature"] == 1.0  # an old checkpoint
    assert trust["ood"]["source"] == "blank" and trust["ood"]["n"] == 200
    assert 0 <= trust["ood"]["auroc"] <= 1 and trust["ood"]["not_recognised_rate"] is None
    assert (tmp_path / "reliability.png").is_file()


def test_cli_text_for_a_pth_writes_eval_folder(tmp_path, fake_data, monkeypatch, capsys):
    from fmnist.cli import main
    from fmnist.models import build_model

    torch.save(build_model("mlp").state_dict(), tmp_path / "model.pth")
    monkeypatch.chdir(tmp_path)
    assert main(["evaluate", "model.pth", "--split", "train", "--tta"]) == 0
    out, _ = capsys.readouterr()
    assert "precision    recall  f1-score   support" in out and "Confusion matrix" in out
    assert (tmp_path / "eval-model" / "confusion-train.png").is_file()
    assert "eval-model" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "vgg"], "Unknown model 'vgg'"),
        (["--model", "mlp"], "holds a 'cnn' model, not 'mlp'"),
        (["--dataset", "nope"], "Unknown dataset 'nope'"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
        (["--coverage", "1.5"], "Coverage must be between"),
        (["--ood", "nothing-like-this"], "Unknown dataset 'nothing-like-this'"),
    ],
)
def test_cli_errors_are_one_line(make_checkpoint, fake_data, capsys, argv, message):
    from fmnist.cli import main

    code = main(["evaluate", str(make_checkpoint("cnn")), *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


def test_cli_missing_checkpoint(tmp_path, capsys):
    from fmnist.cli import main

    assert main(["evaluate", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("loss_per_batch", [0, 64])
def test_a_rank_with_no_images_adds_zeros(loss_per_batch):
    """Under torchrun each rank scores a slice; with more ranks than images a slice is empty."""
    from fmnist.inference import score

    totals = score(torch.empty(0, 10), torch.empty(0, dtype=torch.long), loss_per_batch=loss_per_batch)
    assert totals.dtype == torch.float64 and totals.tolist() == [0.0, 0.0, 0.0, 0.0]
