"""A sweep's trials are scored on images they never trained on, and a study keeps the one
validation split it started with: a rerun that asks for another is refused."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("optuna")

from test_sweep import TWO_LRS, small  # noqa: E402

import fmnist.sweep.trial  # noqa: E402
from fmnist.errors import ConfigError  # noqa: E402
from fmnist.sweep import parse_space, sweep  # noqa: E402


def pixels(images) -> set[bytes]:
    return {bytes(memoryview(np.ascontiguousarray(image))) for image in images}


def test_a_trial_trains_on_the_training_split_less_its_validation_images(
        tmp_path, fake_data, monkeypatch):
    """fake_data: 50 distinct training images; the test split is never asked for."""
    trained, validated = [], []
    real_fit = fmnist.sweep.trial.fit

    def watched_fit(recipe, *, data, **kwargs):  # what `fit` is handed: what the trial sees
        trained.append(pixels(data.train_images))
        validated.append(pixels(data.test_images))
        return real_fit(recipe, data=data, **kwargs)

    monkeypatch.setattr(fmnist.sweep.trial, "fit", watched_fit)
    recipe = small("fashion-mnist")
    space = parse_space(TWO_LRS, recipe)
    sweep(recipe, space, out=tmp_path / "sweep", trials=2, validation=0.2, seed=0, final=False,
          pruner="none", show=lambda line: None)
    split = pixels(fake_data[0])
    assert len(split) == 50 and len(trained) == 2
    for train, validation in zip(trained, validated, strict=True):
        assert len(validation) == 10 and not train & validation
        assert train | validation == split
    assert validated[0] == validated[1]  # every trial is judged on the same images


def test_a_rerun_of_a_study_with_another_validation_split_is_refused(tmp_path, fake_data):
    recipe = small("fashion-mnist")
    space = parse_space(TWO_LRS, recipe)
    out = tmp_path / "sweep"
    sweep(recipe, space, out=out, trials=1, validation=0.2, seed=0, final=False, pruner="none",
          show=lambda line: None)
    with pytest.raises(ConfigError, match=r"^Study 'sweep' was started with another validation"):
        sweep(recipe, space, out=out, trials=2, validation=0.3, seed=0, final=False,
              pruner="none", show=lambda line: None)
    again = sweep(recipe, space, out=out, trials=2, validation=0.2, seed=0, final=False,
                  pruner="none", show=lambda line: None)  # the same split: it goes on
    assert len(again.study.trials) == 2
