"""`fmnist export`: Quickstart-compatible model.pth and single-file ONNX with dynamic batch."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from quickstart_net import NeuralNetwork

from fmnist.checkpoint import load_model
from fmnist.cli import main


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_pth_loads_into_the_quickstart_class(make_checkpoint, capsys):
    folder = make_checkpoint("mlp")
    code, out, err = run(capsys, "export", folder, "--format", "pth")
    path = folder / "model.pth"
    assert code == 0 and err == "" and str(path) in out
    qs = NeuralNetwork()
    qs.load_state_dict(torch.load(path, weights_only=True))
    ours, _ = load_model(folder)
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(qs.eval()(x), ours(x), rtol=0, atol=0)


def test_pth_round_trips_through_fmnist(make_checkpoint, tmp_path, capsys):
    folder = make_checkpoint("cnn")
    out = tmp_path / "sub" / "cnn.pth"
    assert run(capsys, "export", folder, "--format", "pth", "--out", out)[0] == 0
    again, _ = load_model(out, model="cnn")
    ours, _ = load_model(folder)
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(again(x), ours(x), rtol=0, atol=0)


def test_never_overwrites_the_input(tmp_path, capsys):
    pth = tmp_path / "model.pth"
    torch.save(NeuralNetwork().state_dict(), pth)
    before = pth.read_bytes()
    code, _, err = run(capsys, "export", pth, "--format", "pth")
    assert code == 2 and "would overwrite the input" in err and "Traceback" not in err
    assert pth.read_bytes() == before
    code, _, _ = run(capsys, "export", pth, "--format", "pth", "--out", tmp_path / "copy.pth")
    assert code == 0 and pth.read_bytes() == before


def test_bad_format_and_missing_checkpoint(make_checkpoint, tmp_path, capsys):
    code, _, err = run(capsys, "export", make_checkpoint(), "--format", "tflite")
    assert code == 2 and "Valid formats: pth, onnx" in err and len(err.splitlines()) == 1
    code, _, err = run(capsys, "export", tmp_path / "none", "--format", "pth")
    assert code == 2 and "does not exist" in err and len(err.splitlines()) == 1


def test_onnx_without_the_packages_says_what_to_install(make_checkpoint, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import fails as if not installed
    code, _, err = run(capsys, "export", make_checkpoint(), "--format", "onnx")
    assert code == 2 and "pip install" in err and "Traceback" not in err


def test_onnx_single_file_dynamic_batch(make_checkpoint, capsys):
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    folder = make_checkpoint("cnn")
    code, out, _ = run(capsys, "export", folder, "--format", "onnx")
    path = folder / "model.onnx"
    assert code == 0 and "checked against PyTorch" in out
    # one self-contained file: no external weights beside it, and no temp files left
    assert sorted(p.name for p in folder.iterdir()) == [
        "model.json", "model.onnx", "model.safetensors"
    ]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    props = session.get_modelmeta().custom_metadata_map
    assert json.loads(props["classes"])[9] == "Ankle boot"
    model, meta = load_model(folder)
    mean, std = meta["normalize"]["mean"], meta["normalize"]["std"]
    for batch in (1, 7):
        x = torch.rand(batch, 1, 28, 28)
        got = session.run(["logits"], {"image": x.numpy()})[0]
        with torch.no_grad():
            want = model((x - mean) / std).numpy()
        assert got.shape == (batch, 10)
        np.testing.assert_allclose(got, want, atol=1e-4)
