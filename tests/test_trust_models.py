"""The checkpoint's trust where models are used: Predictor, evaluate, the ONNX export, and an old
checkpoint without any (tiny untrained models and synthetic logits made here)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from fmnist import trust
from fmnist.checkpoint import FASHION_CLASSES, load_model, save_model
from fmnist.evaluate import evaluate
from fmnist.models import build_model
from fmnist.predict import Predictor


def fitted_trust(temperature: float = 3.0, n: int = 2000, seed: int = 0) -> dict:
    """model.json's `trust` fitted on synthetic logits of a model `temperature` times too sure."""
    rng = np.random.default_rng(seed)
    mild = rng.normal(0, 1.0, (n, 10))
    mild[np.arange(n), rng.integers(0, 10, n)] += 3.0
    labels = (trust.softmax(mild).cumsum(1) > rng.random((n, 1))).argmax(1)
    return trust.fit(mild * temperature, labels)


def save(tmp_path, meta_extra: dict, model: str = "mlp", config: dict | None = None):
    torch.manual_seed(0)
    net = build_model(model, config)
    with torch.no_grad():  # an untrained net's logits are near 0: make them spread
        for p in net.parameters():
            p.mul_(1.5)
    folder = tmp_path / "ckpt"
    save_model(folder, net, {"classes": FASHION_CLASSES, "normalize": {"mean": 0.286, "std": 0.353},
                             "dataset": "fashion-mnist", "tta_flip": False, **meta_extra})
    return folder


def images(n: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 28, 28), dtype=np.uint8)


def test_the_predictor_divides_the_logits_by_the_checkpoints_temperature(tmp_path):
    fitted = fitted_trust()
    predictor = Predictor.from_checkpoint(save(tmp_path, {"trust": fitted}))
    x = images()
    logits = predictor.logits(torch.from_numpy(x)).double().numpy()
    got = predictor.predict_arrays(x)
    np.testing.assert_allclose(got, trust.softmax(logits, fitted["temperature"]), atol=1e-6)
    assert not np.allclose(got, trust.softmax(logits), atol=1e-3)  # T matters here


def test_predictions_carry_their_set_and_recognised_mark_at_the_coverage_asked(tmp_path):
    folder = save(tmp_path, {"trust": fitted_trust()})
    x = images(32)
    narrow = Predictor.from_checkpoint(folder, coverage=0.6).predict(list(x))
    wide = Predictor.from_checkpoint(folder, coverage=0.99).predict(list(x))
    for a, b in zip(narrow, wide, strict=True):
        assert a.set is not None and set(a.set) <= set(b.set)
        assert b.set[0] == b.label  # most probable first
        assert isinstance(a.recognised, bool) and isinstance(a.ood_score, float)
        assert a.to_dict()["set"] == a.set
    assert sum(map(len, (p.set for p in wide))) > sum(map(len, (p.set for p in narrow)))


def test_an_old_checkpoint_without_a_temperature_loads_and_says_so_once(tmp_path, capsys):
    folder = save(tmp_path, {})
    net, meta = load_model(folder)
    assert "trust" not in meta
    first = Predictor(net, meta)
    Predictor(net, meta)
    notes = capsys.readouterr().err
    assert notes.count("no fitted temperature") <= 1  # once per process (maybe said earlier)
    x = images(4)
    logits = first.logits(torch.from_numpy(x)).double().numpy()
    np.testing.assert_allclose(first.predict_arrays(x), trust.softmax(logits), atol=1e-6)
    p = first.predict(list(x))[0]
    assert p.set is None and p.recognised is None and p.ood_score is not None


def test_evaluate_reports_calibration_before_and_after_and_the_sets(tmp_path):
    folder = save(tmp_path, {"trust": fitted_trust()})
    net, meta = load_model(folder)
    x, y = images(200, 1), np.arange(200) % 10
    report = evaluate(net, x, y, meta, coverage=0.9, ood=("noise", images(50, 2)))
    tr = report.trust
    assert tr is not None and tr.calibrated
    assert tr.temperature == pytest.approx(meta["trust"]["temperature"])
    assert tr.ece_interval["after"][0] <= tr.ece["after"] <= tr.ece_interval["after"][1]
    assert 0 <= tr.set_coverage <= 1 and 1 <= tr.set_mean_size <= 10
    assert tr.ood is not None and 0 <= tr.ood["auroc"] <= 1
    assert "Calibration: temperature" in report.to_text()
    assert report.to_dict()["trust"]["set_mean_size"] == tr.set_mean_size


@pytest.mark.skipif(
    not all(importlib.util.find_spec(m) for m in ("onnx", "onnxscript", "onnxruntime")),
    reason="needs onnx, onnxscript and onnxruntime",
)
def test_onnx_gives_the_calibrated_probabilities_fmnist_predict_gives(tmp_path, capsys):
    import onnxruntime as ort

    from fmnist.export import export_onnx

    folder = save(tmp_path, {"trust": fitted_trust()}, "cnn", {"widths": [4, 8, 8]})
    net, meta = load_model(folder)
    path = tmp_path / "model.onnx"
    export_onnx(net, meta, path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    t = float(session.get_modelmeta().custom_metadata_map["temperature"])
    x = images(8, 3)
    pixels = x[:, None].astype(np.float32) / 255
    plain = session.run(["probabilities"], {"image": pixels})[0]
    # with flip TTA, as the export's docs say: the image and its mirror, logits averaged, / T
    logits = session.run(["logits"], {"image": np.concatenate([pixels, pixels[..., ::-1]])})[0]
    flipped = trust.softmax((logits[:8] + logits[8:]) / 2, t)
    for tta, got in ((False, plain), (True, flipped)):
        want = Predictor(net, meta, tta=tta).predict_arrays(x)
        diff = float(np.abs(got - want).max())
        with capsys.disabled():
            print(f"\nONNX vs Predictor (tta={tta}): max |difference| of probabilities {diff:.2e}")
        assert diff < 1e-5
    uncalibrated = Predictor(net, {**meta, "trust": None}, tta=False).predict_arrays(x)
    assert not np.allclose(plain, uncalibrated, atol=1e-3)  # the temperature is in both
