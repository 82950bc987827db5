"""The whitened first conv (recipe field `whiten`): what it computes, that training keeps it
fixed (and a resumed run too: test_train's resume test) and its one-line errors."""

import json
from dataclasses import asdict

import pytest
import torch
import torch.nn.functional as F
from synthetic import make_data
from test_train import SMALL, weights

from fmnist.errors import ConfigError
from fmnist.loader import to_input
from fmnist.models import build_model
from fmnist.recipes import apply_overrides, get_recipe, read_config_file
from fmnist.train import fit, whitening
from fmnist.train.data import pixel_stats
from fmnist.train.optim import make_optimizer

WHITE = apply_overrides(SMALL, {"whiten": True})  # first conv: 8 channels = 4 directions x 2 signs


def patch_covariance(images, mean, std):
    x = to_input(images, mean, std)
    patches = F.unfold(x, 3, padding=1).transpose(1, 2).reshape(-1, 9).double()
    return torch.cov(patches.T)


def test_the_filters_whiten_the_leading_directions_of_the_patches():
    data = make_data(n_train=200)
    mean, std = 0.2, 0.3
    conv = torch.nn.Conv2d(1, 12, 3, padding=1, bias=False)
    filters = whitening.patch_whitening(data.train_images, mean, std, conv).double()
    assert filters.shape == (12, 1, 3, 3)
    k = 6
    top, negatives = filters[:k].reshape(k, 9), filters[k:].reshape(k, 9)
    assert torch.equal(negatives, -top)
    cov = patch_covariance(data.train_images, mean, std)
    eigenvalues = torch.linalg.eigvalsh(cov)[-k:]
    # each filter's output over the patches: uncorrelated, variance lambda / (lambda + eps)
    out = top @ cov @ top.T
    expected = torch.diag(eigenvalues / (eigenvalues + whitening.EPS))
    assert torch.allclose(out, expected, atol=1e-4)


def test_a_whitened_run_keeps_its_first_conv_and_trains_the_rest():
    data = make_data()
    initial = weights(build_model(WHITE.model, {**WHITE.model_config, "num_classes": 10}))
    result = fit(apply_overrides(WHITE, {"epochs": 1}), data=data, display=False)
    mean, std = pixel_stats(WHITE, data)
    conv = whitening.first_conv(result.model)
    expected = whitening.patch_whitening(data.train_images, mean, std, conv)
    assert torch.equal(conv.weight, expected)
    after = weights(result.model)
    others = [k for k in after if k.endswith("weight") and k != "features.0.0.weight"]
    assert all(not torch.equal(initial[k], after[k]) for k in others)  # the rest trained


def test_the_optimizer_leaves_a_frozen_first_conv_out():
    model = build_model(WHITE.model, WHITE.model_config)
    whitening.freeze(model)
    trained = {id(p) for g in make_optimizer(WHITE, model, 0.1).param_groups for p in g["params"]}
    assert id(whitening.first_conv(model).weight) not in trained
    assert len(trained) == len(list(model.parameters())) - 1


def test_a_model_without_a_first_conv_cannot_be_whitened():
    with pytest.raises(ConfigError, match="the mlp has none"):
        apply_overrides(get_recipe("quickstart"), {"whiten": True})
    with pytest.raises(ConfigError, match="first layer is a convolution"):
        whitening.first_conv(build_model("mlp"))


@pytest.mark.parametrize("channels", [1, 19, 64])  # a 3x3 grey patch has 9 directions x 2 signs
def test_a_first_conv_whitening_cannot_fill_is_one_clear_error(channels):
    conv = torch.nn.Conv2d(1, channels, 3, padding=1, bias=False)
    with pytest.raises(ConfigError, match=f"2 to 18 channels .* has {channels}"):
        whitening.patch_whitening(make_data().train_images, 0.0, 1.0, conv)


def test_an_old_runs_config_json_repeats_it_unwhitened(tmp_path):
    old = {k: v for k, v in asdict(get_recipe("default")).items() if k != "whiten"}
    (tmp_path / "config.json").write_text(json.dumps(old))
    recipe = apply_overrides(get_recipe("default"), read_config_file(tmp_path / "config.json"))
    assert not recipe.whiten
    (tmp_path / "mine.toml").write_text("lr = 0.05\n")  # a user's partial file: the recipe's rest
    assert apply_overrides(get_recipe("default"), read_config_file(tmp_path / "mine.toml")).whiten


def test_another_model_asked_of_a_whitened_recipe_is_not_whitened():
    recipe = get_recipe("default")
    assert recipe.whiten
    assert not apply_overrides(recipe, {"model": "mlp"}).whiten
    assert apply_overrides(recipe, {"model": "resnet", "whiten": True}).whiten
