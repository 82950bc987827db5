"""Predictions you can trust, over HTTP: the calibrated probabilities, the set and the
not-recognised mark in every answer, the calibration in /v1/model, and the drift counters."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from test_serve import png, wait_ready

from fmnist import trust
from fmnist.predict import Predictor
from fmnist.serve import create_app

PNG = {"Content-Type": "image/png"}


def calibrate(folder: Path) -> dict:
    """Give the checkpoint in `folder` a fitted `trust` (from made-up held-out logits)."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 2000)
    logits = rng.normal(0, 1, (2000, 10))
    logits[np.arange(2000), labels] += 3.0  # right about 70 % of the time, over-confident x3
    meta = json.loads((folder / "model.json").read_text())
    meta["trust"] = trust.fit(logits * 3, labels)
    (folder / "model.json").write_text(json.dumps(meta))
    return meta["trust"]


def drift(client: TestClient) -> dict[tuple[str, str], float]:
    text = client.get("/metrics").text
    return {(s.labels["recognised"], s.labels["set_size"]): s.value
            for f in text_string_to_metric_families(text) for s in f.samples
            if s.name == "fmnist_predictions_total"}  # fmt: skip


def test_answers_carry_the_set_and_the_mark_and_metrics_count_them(make_checkpoint) -> None:
    folder = make_checkpoint("mlp")
    fitted = calibrate(folder)
    predictor = Predictor.from_checkpoint(folder)
    with TestClient(create_app(predictor)) as client:
        wait_ready(client)
        info = client.get("/v1/model").json()["trust"]
        assert info["temperature"] == fitted["temperature"] and info["coverage"] == 0.9
        files = [("file", (f"{i}.png", png(seed=i), "image/png")) for i in range(4)]
        answers = client.post("/v1/predict", files=files).json()["predictions"]
        counted = drift(client)
    expected: dict[tuple[str, str], float] = {}
    for a in answers:
        want = predictor.prediction(np.array([a["probabilities"][c] for c in predictor.classes]))
        assert a["set"] == want.set and a["recognised"] is want.recognised
        assert set(a["set"]) <= set(predictor.classes) and isinstance(a["recognised"], bool)
        key = (str(a["recognised"]).lower(), str(len(a["set"])) if len(a["set"]) < 3 else "3+")
        expected[key] = expected.get(key, 0) + 1
    assert {k: v for k, v in counted.items() if v} == expected


def test_coverage_widens_the_sets(make_checkpoint) -> None:
    folder = make_checkpoint("mlp")
    calibrate(folder)
    sizes = {}
    for coverage in (0.6, 0.99):
        with TestClient(create_app(Predictor.from_checkpoint(folder, coverage=coverage))) as client:
            wait_ready(client)
            assert client.get("/v1/model").json()["trust"]["coverage"] == coverage
            files = [("file", (f"{i}.png", png(seed=i), "image/png")) for i in range(8)]
            sizes[coverage] = [len(p["set"]) for p in client.post("/v1/predict", files=files).json()["predictions"]]
    assert all(a <= b for a, b in zip(sizes[0.6], sizes[0.99], strict=True)) and sizes[0.6] != sizes[0.99]


def test_an_uncalibrated_model_says_so_in_its_answers(make_checkpoint) -> None:
    with TestClient(create_app(Predictor.from_checkpoint(make_checkpoint("mlp")))) as client:
        wait_ready(client)
        p = client.post("/v1/predict", content=png(), headers=PNG).json()["predictions"][0]
        assert p["set"] is None and p["recognised"] is None and p["ood_score"] >= 0
        assert drift(client) == {("unknown", "none"): 1.0}


def test_fmnist_serve_coverage_reaches_every_backend(make_checkpoint) -> None:
    from fmnist.serve.backends import load_predictor

    folder = make_checkpoint("mlp")
    calibrate(folder)
    for backend in ("torch", "onnxruntime"):
        assert load_predictor(folder, backend=backend, coverage=0.99).trust.coverage == 0.99
        assert load_predictor(folder, backend=backend).trust.coverage == 0.9


def test_a_device_other_than_the_cpu_runs_on_pytorch(make_checkpoint) -> None:
    from fmnist.errors import ConfigError
    from fmnist.serve.backends import OnnxPredictor, load_predictor

    folder = make_checkpoint("mlp")
    assert isinstance(load_predictor(folder, backend="auto", device="cpu"), OnnxPredictor)
    with pytest.raises(ConfigError, match="onnxruntime runs the model on the CPU"):
        load_predictor(folder, backend="onnxruntime", device="meta")
    # any torch device name reaches the Predictor (the meta device: no GPU needed to see it)
    predictor = load_predictor(folder, backend="auto", device="meta")
    assert not isinstance(predictor, OnnxPredictor) and predictor.device.type == "meta"
