"""Input normalisation travels with the checkpoint: the mean/std a run trained with are written
into model.json and used again at load time, so a reloaded model serves what it was trained for.

The data here is bright (pixels around 200/255), so standardising changes the inputs a lot and a
checkpoint that lost its normalisation would give visibly different answers.
"""

from __future__ import annotations

import json

import pytest
import torch
from synthetic import make_images

from fmnist.predict import Predictor
from fmnist.recipes import Recipe
from fmnist.train import Data, fit

RECIPE = Recipe(
    name="t", model="cnn", model_config={"widths": [8, 8, 16]}, epochs=1, batch_size=32,
    lr=0.05, bf16="off", channels_last=False, flip=False, tta_flip=False, eval_batch_size=64,
    device="cpu",
)


def _bright(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverted synthetic items: a background of ~195-255 with a dark square per class."""
    images, labels = make_images(n, seed)
    return 255 - images, labels


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    xs, ys = _bright(128, 1)
    xt, yt = _bright(32, 2)
    data = Data(xs, ys, xt, yt, [f"c{i}" for i in range(10)], fingerprint="synthetic")
    run = tmp_path_factory.mktemp("normalize") / "run"
    result = fit(RECIPE, data=data, out=run, display=False)
    return result, run, xs, xt


def _pixel_stats(images: torch.Tensor) -> tuple[float, float]:
    pixels = images.double() / 255
    return pixels.mean().item(), pixels.std().item()


def test_model_json_holds_the_training_images_mean_and_std(trained):
    result, run, xs, _ = trained
    mean, std = _pixel_stats(xs)
    assert 0.7 < mean < 0.9  # the data is what this test needs: far from 0
    saved = json.loads((run / "model.json").read_text())["normalize"]
    assert saved["mean"] == pytest.approx(mean, rel=1e-5)
    assert saved["std"] == pytest.approx(std, rel=1e-5)
    assert result.meta["normalize"] == saved


def test_reloaded_checkpoint_predicts_with_the_training_normalisation(trained):
    result, run, xs, xt = trained
    mean, std = _pixel_stats(xs)
    x = xt.unsqueeze(1).float() / 255  # (B, 1, 28, 28)
    with torch.no_grad():
        want = torch.softmax(result.model((x - mean) / std), dim=1)
        raw = torch.softmax(result.model(x), dim=1)  # what a lost normalisation would give
    got = torch.from_numpy(Predictor.from_checkpoint(run).predict_arrays(xt))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    # A thousand times the tolerance above: the normalisation matters on this data.
    assert (got - raw).abs().max() > 0.01
