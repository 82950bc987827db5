"""`fmnist data fetch | info | show` through `fmnist.cli.main`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from idx_helpers import idx_bytes, make_payloads, make_spec, write_files
from PIL import Image

from fmnist import datasets
from fmnist.cli import main
from fmnist.errors import DatasetError

NAME = "synth"


@pytest.fixture
def synth(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A registered synthetic dataset in a data dir, with cache and Debian root isolated."""
    monkeypatch.setenv("FMNIST_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("FMNIST_DATA_DIR", raising=False)
    monkeypatch.setattr(datasets.finding, "DEBIAN_ROOT", tmp_path / "debian_root")
    payloads = make_payloads(n_train=30, n_test=10)
    monkeypatch.setitem(datasets.SPECS, NAME, make_spec(NAME, payloads))
    write_files(tmp_path / "data", payloads)
    return tmp_path / "data"


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("fmnist: error: ") and "Traceback" not in err
    return lines[0]


def test_info_human(synth, capsys):
    assert main(["data", "info", "--dataset", NAME, "--data-dir", str(synth)]) == 0
    out = capsys.readouterr().out
    assert f"found in data-dir: {synth}" in out
    assert "train     30 images 28x28, 10 classes of 3 each" in out
    assert "test label 0: class9" in out
    assert out.count("verified") == 4


def test_info_json(synth, capsys):
    assert main(["data", "info", "--dataset", NAME, "--data-dir", str(synth), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["source"] == "data-dir"
    assert info["splits"]["train"]["count"] == 30
    assert set(info["splits"]["test"]["class_counts"].values()) == {1}
    assert info["splits"]["test"]["label0"] == "class9"
    spec = datasets.get_spec(NAME)
    for key, f in info["files"].items():
        assert f["verified"] and f["sha256"] == dict(spec.files)[key].sha256
    assert info["fingerprint"] == datasets.dataset_fingerprint(NAME, synth)


def test_corrupt_file_is_one_line_exit_2(synth, monkeypatch, capsys):
    # A truncated images file whose hash the spec accepts: the IDX checks must catch it.
    payloads = make_payloads(n_train=30, n_test=10)
    payloads["train-images"] = payloads["train-images"][:-5]
    monkeypatch.setitem(datasets.SPECS, NAME, make_spec(NAME, payloads))
    paths = write_files(synth, payloads)
    assert main(["data", "info", "--dataset", NAME, "--data-dir", str(synth)]) == 2
    line = _one_line_error(capsys)
    assert str(paths["train-images"]) in line and "is truncated" in line


def test_missing_data_is_one_line_exit_2(synth, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    for p in synth.iterdir():
        p.unlink()
    assert main(["data", "info", "--dataset", NAME, "--data-dir", str(empty)]) == 2
    line = _one_line_error(capsys)
    assert "Tried:" in line and str(empty) in line and "--data-dir" in line


def test_debug_shows_the_traceback(synth):
    for p in synth.iterdir():
        p.write_bytes(b"junk")
    with pytest.raises(DatasetError):
        main(["data", "info", "--dataset", NAME, "--data-dir", str(synth), "--debug"])


def test_unknown_dataset(capsys):
    assert main(["data", "info", "--dataset", "cifar"]) == 2
    assert "fashion-mnist, kmnist, mnist" in _one_line_error(capsys)


def test_fetch(synth, capsys):
    assert main(["data", "fetch", "--dataset", NAME, "--data-dir", str(synth)]) == 0
    assert capsys.readouterr().out.strip() == f"{NAME.upper()} ready (data-dir: {synth})"


def test_show_writes_a_labelled_grid(synth, tmp_path, capsys):
    out = tmp_path / "grid.png"
    args = ["data", "show", "--dataset", NAME, "--data-dir", str(synth), "--out", str(out)]
    assert main([*args, "--per-class", "3"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    with Image.open(out) as img:
        assert img.format == "PNG" and img.width > 200 and img.height > 400
        assert np.asarray(img).std() > 0  # not a blank canvas


def test_show_rejects_bad_per_class(synth, tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["data", "show", "--out", str(tmp_path / "g.png"), "--per-class", "0"])
    assert e.value.code == 2


@pytest.mark.realdata
def test_info_real_fashion_mnist(capsys, monkeypatch):
    monkeypatch.delenv("FMNIST_DATA_DIR", raising=False)
    try:
        datasets.locate("fashion-mnist", download=False)
    except DatasetError as e:
        pytest.skip(f"real Fashion-MNIST not available: {e}")
    assert main(["data", "info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["splits"]["train"]["count"] == 60000 and info["splits"]["test"]["count"] == 10000
    assert set(info["splits"]["train"]["class_counts"].values()) == {6000}
    assert set(info["splits"]["test"]["class_counts"].values()) == {1000}
    assert info["splits"]["test"]["label0"] == "Ankle boot"
    assert all(f["verified"] for f in info["files"].values())


def test_idx_helper_is_big_endian():
    # Guards the helper itself: a wrong header would make every corruption test meaningless.
    assert idx_bytes(np.zeros((2, 3), np.uint8))[:12] == bytes([0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3])
