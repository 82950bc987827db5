"""Shared fixtures. Unit tests use small synthetic data; `realdata` tests use Fashion-MNIST."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from fmnist.checkpoint import FASHION_CLASSES, save_model
from fmnist.models import build_model


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Never write into the user's real cache; tests that need the real data still find it in
    Debian's copy (or wherever FMNIST_DATA_DIR points)."""
    monkeypatch.setenv("FMNIST_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "fmnist-cache"))


@pytest.fixture
def make_checkpoint(tmp_path: Path) -> Callable[..., Path]:
    """Save an (untrained, seeded) registered model as an fmnist checkpoint; returns its folder."""

    def make(model: str = "mlp", config: dict | None = None, name: str = "ckpt") -> Path:
        torch.manual_seed(0)
        net = build_model(model, config)
        folder = tmp_path / name
        save_model(folder, net, {
            "classes": FASHION_CLASSES,
            "normalize": {"mean": 0.286, "std": 0.353},
            "dataset": "fashion-mnist",
            "metrics": {"test_accuracy": 0.1, "test_loss": 2.3},
            "epoch": 0,
        })
        return folder

    return make


FAKE_SPLIT_SIZE = 50


@pytest.fixture
def fake_data(monkeypatch: pytest.MonkeyPatch) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic splits in place of the real files, for commands that call load_arrays."""
    import fmnist.datasets

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(FAKE_SPLIT_SIZE, 28, 28), dtype=np.uint8)
    labels = np.arange(FAKE_SPLIT_SIZE, dtype=np.int64) % 10

    def load_arrays(name="fashion-mnist", split="train", data_dir=None, **kwargs):
        fmnist.datasets.get_spec(name)  # unknown names still fail as they would
        return images, labels

    monkeypatch.setattr(fmnist.datasets, "load_arrays", load_arrays)
    return images, labels


@pytest.fixture
def quiet_optuna():
    """Optuna's INFO lines off for a test (sweep tests name it), put back after."""
    import optuna

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    yield
    optuna.logging.set_verbosity(verbosity)


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 2 MiB tmpfs: a filesystem that really fills up (needs root, as here and in CI)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
                          capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)
