"""The model card: written at the end of a run and by `fmnist card`, from what was measured (a
tiny model trained on synthetic data made here)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from synthetic import make_data

from fmnist.card import CARD, ModelCard, main_confusions
from fmnist.checkpoint import load_model
from fmnist.cli import main
from fmnist.evaluate import evaluate
from fmnist.recipes import Recipe
from fmnist.train import fit

SMALL = Recipe(name="t", model="cnn", model_config={"widths": [8, 8, 16]}, epochs=3,
               batch_size=32, lr=0.05, holdout=64, bf16="off", eval_batch_size=64,
               channels_last=False, flip=False, tta_flip=False)


@pytest.fixture(autouse=True, scope="module")
def _few_pictures():
    """A few out-of-distribution pictures are enough here (each is drawn and preprocessed)."""
    import fmnist.card

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fmnist.card, "DRAWN_PER_KIND", 6)
        mp.setattr(fmnist.card, "DIGITS", 20)
        yield


@pytest.fixture(scope="module")
def run(tmp_path_factory, _few_pictures):
    """A run folder with its card, written by fit's ModelCard callback."""
    folder = tmp_path_factory.mktemp("card") / "run"
    data = make_data(512, 100)
    fit(SMALL, data=data, out=folder, display=False, callbacks=[ModelCard()])
    return folder, data


def figure(card: str, pattern: str) -> float:
    found = re.search(pattern, card)
    assert found, pattern
    return float(found.group(1))


def test_the_card_written_at_the_end_of_a_run_says_what_evaluate_measures(run):
    folder, data = run
    card = (folder / CARD).read_text()
    model, meta = load_model(folder)
    report = evaluate(model, data.test_images.numpy(), data.test_labels.numpy(), meta)
    tr = report.trust
    assert tr is not None and tr.calibrated
    assert figure(card, r"Accuracy ([\d.]+) %") == pytest.approx(100 * report.accuracy, abs=0.005)
    assert figure(card, r"Temperature ([\d.]+)") == pytest.approx(tr.temperature, abs=5e-5)
    assert figure(card, r"\| before \| ([\d.]+) \|") == pytest.approx(tr.ece["before"], abs=5e-5)
    assert figure(card, r"\| after \| ([\d.]+) \|") == pytest.approx(tr.ece["after"], abs=5e-5)
    assert figure(card, r"\| 90 % \| ([\d.]+) % \|") == pytest.approx(100 * tr.set_coverage,
                                                                       abs=0.005)
    assert f"`{meta['dataset_sha256']}`" in card
    assert "held out of training for calibration: 64 images" in card.lower()
    for name in meta["classes"]:
        assert f"| {name} | " in card
    assert "## Out-of-distribution check" in card and "| noise | " in card
    assert "Limits:" in card and "## Intended use" in card


def test_fmnist_card_writes_the_same_card_again(run, capsys, monkeypatch):
    import fmnist.datasets

    folder, data = run
    before = (folder / CARD).read_text()
    (folder / CARD).unlink()
    monkeypatch.setattr(fmnist.datasets, "load_arrays",
                        lambda *a, **k: (data.test_images.numpy(), data.test_labels.numpy()))
    assert main(["card", str(folder)]) == 0
    assert (folder / CARD).read_text() == before
    assert "Wrote" in capsys.readouterr().out


def test_fmnist_card_on_a_folder_that_is_not_a_run_is_one_sentence(tmp_path, capsys):
    assert main(["card", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not a run folder" in err


def test_main_confusions_are_the_largest_off_diagonal_cells_first():
    matrix = [[50, 3, 0], [9, 40, 1], [0, 3, 47]]
    assert main_confusions(matrix) == [(9, 1, 0), (3, 0, 1), (3, 2, 1), (1, 1, 2)]


def test_a_run_without_held_out_images_gets_its_card_from_fmnist_card_only(tmp_path,
                                                                         monkeypatch):
    from dataclasses import replace

    import fmnist.datasets

    folder = tmp_path / "run"
    data = make_data(256, 60)
    fit(replace(SMALL, holdout=0, epochs=1), data=data, out=folder, display=False,
        callbacks=[ModelCard()])
    assert not (folder / CARD).exists()  # the end of an uncalibrated run is not slowed
    monkeypatch.setattr(fmnist.datasets, "load_arrays",
                        lambda *a, **k: (data.test_images.numpy(), data.test_labels.numpy()))
    assert main(["card", str(folder)]) == 0
    card = (folder / CARD).read_text()
    assert "No temperature was fitted" in card and "## Prediction sets\n\nNone" in card
    assert json.loads((folder / "model.json").read_text()).get("trust") is None
    assert np.isfinite(figure(card, r"Accuracy ([\d.]+) %"))
