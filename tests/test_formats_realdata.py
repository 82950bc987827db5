"""csv: and folder: sources on the real Fashion-MNIST (skipped when it is not installed)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from fmnist import datasets
from fmnist.cli import main
from fmnist.errors import DatasetError

pytestmark = pytest.mark.realdata


@pytest.fixture(scope="module")
def test_split() -> tuple[np.ndarray, np.ndarray]:
    try:
        return datasets.load_arrays("fashion-mnist", "test", download=False)
    except DatasetError as e:
        pytest.skip(f"Fashion-MNIST not available: {e}")


def test_a_csv_made_from_the_idx_files_gives_identical_arrays(tmp_path, test_split):
    images, labels = test_split
    header = "label," + ",".join(f"pixel{i}" for i in range(1, 785))
    # "%d" of every value: the text Kaggle's files hold
    table = np.concatenate([labels[:, None], images.reshape(len(images), -1)], axis=1)
    lines = [",".join(map(str, row)) for row in table.tolist()]
    path = tmp_path / "fashion-mnist_test.csv"
    path.write_text("\n".join([header, *lines]) + "\n")
    got_images, got_labels = datasets.load_arrays(f"csv:{path}", "test")
    assert got_images.dtype == images.dtype and got_labels.dtype == labels.dtype
    assert np.array_equal(got_images, images) and np.array_equal(got_labels, labels)
    # the decoded CSV passes the published IDX hashes
    spec = datasets.get_spec("fashion-mnist")
    assert datasets.content_sha256(got_images) == spec.file("test", "images").sha256
    assert datasets.content_sha256(got_labels.astype(np.uint8)) == spec.file("test", "labels").sha256


@pytest.mark.slow
def test_a_folder_of_exported_pngs_trains_evaluates_and_is_served(tmp_path, test_split):
    from fastapi.testclient import TestClient

    from fmnist.predict import Predictor
    from fmnist.serve import create_app

    images, labels = test_split
    names = [c.replace("/", "-") for c in datasets.class_names("fashion-mnist")]
    root = tmp_path / "exported"
    for c, name in enumerate(names):  # 40 of each class: a few seconds, not minutes
        (root / name).mkdir(parents=True)
        for i in np.flatnonzero(labels == c)[:40]:
            Image.fromarray(images[i]).save(root / name / f"{i:05d}.png")
    run = tmp_path / "run"
    # the default recipe as a user runs it: 320 images to train on are sized to 100 steps
    assert main(["train", "--dataset", f"folder:{root}", "--out", str(run)]) == 0
    meta = json.loads((run / "model.json").read_text())
    assert meta["classes"] == sorted(names) and meta["dataset"] == f"folder:{root}"
    assert main(["evaluate", str(run), "--json"]) == 0
    with TestClient(create_app(Predictor.from_checkpoint(run), warmup=False)) as client:
        assert client.get("/v1/model").json()["classes"] == sorted(names)
        samples = client.get("/v1/samples?n=5").json()["samples"]
        assert len(samples) == 5 and all(s["label"] in names for s in samples)
