"""The `quickstart` recipe is the PyTorch Quickstart: its settings, pinned field by field, and its
behaviour, checked against the Quickstart's own code (DataLoader, CrossEntropyLoss, SGD, and its
train/test loops) on small synthetic data."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from quickstart_net import NeuralNetwork
from synthetic import make_images
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fmnist.distributed import DistInfo
from fmnist.recipes import get_recipe
from fmnist.train import Data, Parts, build, fit, set_up

QUICKSTART = {
    "model": "mlp",
    "model_config": {},
    "epochs": 5,
    "batch_size": 64,
    "optimizer": "sgd",
    "lr": 1e-3,
    "momentum": 0.0,
    "nesterov": False,
    "weight_decay": 0.0,
    "schedule": "constant",
    "warmup": 0.0,
    "label_smoothing": 0.0,
    "shuffle": False,
    "normalize": False,
    "shift": 0,
    "flip": False,
    "tta_flip": False,
    "eval_batch_size": 64,
    "eval_loss": "batches",
    "bf16": "off",
    "channels_last": False,
    "log": "quickstart",
}


def test_quickstart_recipe_has_the_quickstart_settings():
    recipe = get_recipe("quickstart")
    assert recipe.name == "quickstart"
    assert {k: getattr(recipe, k) for k in QUICKSTART} == QUICKSTART


# ---- behaviour, against the Quickstart's own code ---------------------------------------------


def _data(n_train: int = 200, n_test: int = 100) -> Data:
    xs, ys = make_images(n_train, 1)  # uint8 (N, 28, 28), int64 (N,)
    xt, yt = make_images(n_test, 2)
    return Data(xs, ys, xt, yt, [f"c{i}" for i in range(10)])


def _loader(images: torch.Tensor, labels: torch.Tensor) -> DataLoader:
    """The Quickstart's loader: ToTensor's /255, batches of 64, no shuffling."""
    return DataLoader(TensorDataset(images.unsqueeze(1).float() / 255, labels), batch_size=64)


def _quickstart_model() -> nn.Module:
    torch.manual_seed(0)  # the seed `build` uses for the recipe (seed 0)
    return NeuralNetwork()


def _built(data: Data) -> Parts:
    """Model, optimiser, loss and batches exactly as `fit` builds them for the recipe."""
    recipe = replace(get_recipe("quickstart"), device="cpu")
    return build(set_up(recipe, DistInfo(), data, None, None), None)


def _assert_same_weights(ours: nn.Module, theirs: nn.Module) -> None:
    a, b = ours.state_dict(), theirs.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_quickstart_first_batch_loss_and_sgd_step_match_the_quickstart():
    data = _data()
    parts = _built(data)
    qs = _quickstart_model()
    _assert_same_weights(parts.model, qs)

    x, y = next(iter(parts.batches))
    X, Y = next(iter(_loader(data.train_images, data.train_labels)))
    assert torch.equal(x, X) and torch.equal(y, Y)

    loss = parts.loss_fn(parts.model(x), y)
    qs_loss = nn.CrossEntropyLoss()(qs(X), Y)
    assert loss.item() == qs_loss.item()

    # One step, in train_one_epoch's order, against the Quickstart's SGD(lr=1e-3).
    parts.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    parts.optimizer.step()
    parts.scheduler.step()
    qs_opt = torch.optim.SGD(qs.parameters(), lr=1e-3)
    qs_loss.backward()
    qs_opt.step()
    qs_opt.zero_grad()
    _assert_same_weights(parts.model, qs)
    assert set(parts.scheduler.get_last_lr()) == {1e-3}  # constant: still the Quickstart's lr


def test_one_quickstart_epoch_equals_the_quickstart_train_and_test_loops():
    data = _data()
    result = fit(replace(get_recipe("quickstart"), epochs=1, device="cpu"), data=data,
                 display=False, save=False)

    # The Quickstart's train() and test(), verbatim but for device and printing.
    model, loss_fn = _quickstart_model(), nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    model.train()
    for X, y in _loader(data.train_images, data.train_labels):
        loss = loss_fn(model(X), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    test_loader = _loader(data.test_images, data.test_labels)
    model.eval()
    test_loss, correct = 0.0, 0.0
    with torch.no_grad():
        for X, y in test_loader:
            pred = model(X)
            test_loss += loss_fn(pred, y).item()
            correct += (pred.argmax(1) == y).type(torch.float).sum().item()
    test_loss /= len(test_loader)
    correct /= len(test_loader.dataset)

    torch.testing.assert_close(result.model.state_dict(), model.state_dict(), rtol=1e-6, atol=1e-7)
    row = result.rows[-1]
    assert row["test_loss"] == pytest.approx(test_loss, rel=1e-5)
    assert row["test_accuracy"] == pytest.approx(correct)
