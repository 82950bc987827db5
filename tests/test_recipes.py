"""The `quickstart` recipe is the PyTorch Quickstart: its behaviour, checked against the
Quickstart's own code (DataLoader, CrossEntropyLoss, SGD, its train/test loops and its printed
lines) on small synthetic data."""

from __future__ import annotations

from dataclasses import replace

import torch
from quickstart_net import NeuralNetwork
from synthetic import make_images
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fmnist.distributed import DistInfo
from fmnist.recipes import get_recipe
from fmnist.train import Data, fit
from fmnist.train.setup import Parts, Setup, build, set_up, train_step

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


def _built(data: Data) -> tuple[Setup, Parts]:
    """Model, optimiser, loss and batches exactly as `fit` builds them for the recipe."""
    recipe = replace(get_recipe("quickstart"), device="cpu")
    setup = set_up(recipe, DistInfo(), data, None, None)
    return setup, build(setup, None)


def _assert_same_weights(ours: nn.Module, theirs: nn.Module) -> None:
    a, b = ours.state_dict(), theirs.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_quickstart_first_batch_loss_and_sgd_step_match_the_quickstart():
    data = _data()
    setup, parts = _built(data)
    qs = _quickstart_model()
    _assert_same_weights(parts.model, qs)

    x, y = next(iter(parts.batches))
    X, Y = next(iter(_loader(data.train_images, data.train_labels)))
    assert torch.equal(x, X) and torch.equal(y, Y)

    loss = train_step(parts, setup, x, y)  # the step fit takes
    qs_opt = torch.optim.SGD(qs.parameters(), lr=1e-3)
    qs_loss = nn.CrossEntropyLoss()(qs(X), Y)
    qs_loss.backward()
    qs_opt.step()
    assert loss.item() == qs_loss.item()
    _assert_same_weights(parts.model, qs)
    assert set(parts.scheduler.get_last_lr()) == {1e-3}  # constant: still the Quickstart's lr


def _quickstart_program(data: Data) -> tuple[nn.Module, str]:
    """The Quickstart's train() and test() over its 5 epochs, verbatim but for device: the
    model it trains and what it prints."""
    model, loss_fn = _quickstart_model(), nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    train_loader = _loader(data.train_images, data.train_labels)
    test_loader = _loader(data.test_images, data.test_labels)
    lines = []
    for t in range(5):
        lines.append(f"Epoch {t+1}\n-------------------------------")
        size = len(train_loader.dataset)
        model.train()
        for batch, (X, y) in enumerate(train_loader):
            pred = model(X)
            loss = loss_fn(pred, y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            if batch % 100 == 0:
                loss, current = loss.item(), (batch + 1) * len(X)
                lines.append(f"loss: {loss:>7f}  [{current:>5d}/{size:>5d}]")
        size, num_batches = len(test_loader.dataset), len(test_loader)
        model.eval()
        test_loss, correct = 0.0, 0.0
        with torch.no_grad():
            for X, y in test_loader:
                pred = model(X)
                test_loss += loss_fn(pred, y).item()
                correct += (pred.argmax(1) == y).type(torch.float).sum().item()
        test_loss /= num_batches
        correct /= size
        lines.append(f"Test Error: \n Accuracy: {(100*correct):>0.1f}%, Avg loss: {test_loss:>8f} \n")
    lines.append("Done!")
    return model, "\n".join(lines) + "\n"


def test_the_quickstart_recipe_trains_and_prints_what_the_quickstart_does(capsys):
    data = _data(n_train=6500)  # more than 100 batches, so the second loss line shows too
    result = fit(replace(get_recipe("quickstart"), device="cpu"), data=data, save=False)
    printed = capsys.readouterr().out
    model, expected = _quickstart_program(data)
    torch.testing.assert_close(result.model.state_dict(), model.state_dict(), rtol=1e-5, atol=1e-6)
    assert printed == expected
