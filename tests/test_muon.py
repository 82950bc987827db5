"""The `muon` optimiser (fmnist.train.muon): conv filters stepped along their orthogonalised
momentum, every other parameter exactly as SGD would, one state that resumes both."""

from __future__ import annotations

import pytest
import torch
from synthetic import make_data

from fmnist.models import build_model
from fmnist.recipes import Recipe, apply_overrides
from fmnist.train import fit
from fmnist.train.muon import Muon, orthogonalised
from fmnist.train.optim import make_optimizer

SMALL = Recipe(name="t", model="cnn", model_config={"widths": [8, 8, 16]}, epochs=3,
               batch_size=32, lr=0.05, holdout=0, bf16="off", eval_batch_size=64,
               channels_last=False, flip=False, tta_flip=False, optimizer="muon", muon_lr=0.1)


@pytest.mark.parametrize("shape", [(16, 72), (72, 16), (32, 32)])
def test_orthogonalising_keeps_the_directions_and_evens_out_their_sizes(shape):
    g = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    g[:, 0] *= 30  # one direction far larger than the rest, as a gradient's often is
    u, s, vt = torch.linalg.svd(g, full_matrices=False)
    o = orthogonalised(g)
    assert o.shape == g.shape
    values = torch.linalg.svdvals(o)
    assert values.min() > 0.5 and values.max() < 1.3  # the plain gradient spans ~1000x
    exact = u @ vt  # the same singular vectors, every value one
    assert torch.nn.functional.cosine_similarity(o.flatten(), exact.flatten(), dim=0) > 0.95


def test_the_other_parameters_step_exactly_as_sgd_steps_them():
    torch.manual_seed(0)
    bias, weight = torch.randn(5, requires_grad=True), torch.randn(3, 4, requires_grad=True)
    ours = Muon([{"params": [bias]}, {"params": [weight], "weight_decay": 1e-2}], lr=0.1,
                momentum=0.9, nesterov=True)
    twins = [bias.detach().clone().requires_grad_(), weight.detach().clone().requires_grad_()]
    sgd = torch.optim.SGD([{"params": [twins[0]]}, {"params": [twins[1]], "weight_decay": 1e-2}],
                          lr=0.1, momentum=0.9, nesterov=True)
    for step in range(4):
        grads = [torch.randn(5), torch.randn(3, 4)]
        for p, q, g in zip([bias, weight], twins, grads, strict=True):
            p.grad, q.grad = g.clone(), g.clone()
        ours.step()
        sgd.step()
        assert torch.allclose(bias, twins[0], atol=1e-6), step
        assert torch.allclose(weight, twins[1], atol=1e-6), step


def test_a_filter_bank_moves_by_its_lr_along_the_orthogonalised_gradient_at_a_fixed_norm():
    filters = torch.randn(8, 4, 3, 3) * 5
    p = filters.clone().requires_grad_()
    opt = Muon([{"params": [p], "muon": True}], lr=0.1, momentum=0.0, nesterov=False)
    g = torch.randn(8, 4, 3, 3)
    p.grad = g.clone()
    opt.step()
    before = filters * (8 ** 0.5 / filters.norm())  # the norm is held at sqrt(out channels)
    step = orthogonalised(g.reshape(8, -1)).view_as(g)
    assert torch.allclose(p.detach(), before - 0.1 * step, atol=1e-5)


def test_the_recipe_puts_conv_filters_under_muon_at_muon_lr_and_the_rest_under_sgd():
    recipe = apply_overrides(SMALL, {"weight_decay": 5e-4})
    model = build_model(recipe.model, recipe.model_config)
    opt = make_optimizer(recipe, model, lr=0.05)
    assert isinstance(opt, Muon)
    groups = {id(p): g for g in opt.param_groups for p in g["params"]}
    assert set(groups) == {id(p) for p in model.parameters()}
    for p in model.parameters():
        g = groups[id(p)]
        assert g["muon"] is (p.ndim == 4)
        assert g["lr"] == pytest.approx(0.1 if p.ndim == 4 else 0.05)
        assert g["weight_decay"] == (5e-4 if p.ndim == 2 else 0.0)
    # an lr scaled for the batch (small data, torchrun) scales muon_lr alike
    halved = make_optimizer(recipe, model, lr=0.025)
    assert sorted(g["lr"] for g in halved.param_groups) == pytest.approx([0.025, 0.025, 0.05])


def test_muon_learns_the_synthetic_task_sooner_than_sgd():
    recipe = apply_overrides(SMALL, {"epochs": 4})
    muon = fit(recipe, data=make_data(512), save=False, display=False)
    # SGD at the same lr and length: 0.89; chance is 0.1
    assert muon.rows[-1]["test_accuracy"] >= 0.95
    assert muon.rows[-1]["train_loss"] < muon.rows[0]["train_loss"]


def test_a_resumed_muon_run_ends_with_the_same_weights(tmp_path):
    class Interrupt:
        def __getattr__(self, name):
            return lambda *args: None

        def on_epoch_end(self, state, row):
            if row["epoch"] == 1:
                raise KeyboardInterrupt

    full = fit(SMALL, data=make_data(), out=tmp_path / "full", display=False)
    with pytest.raises(KeyboardInterrupt):
        fit(SMALL, data=make_data(), out=tmp_path / "cut", display=False, callbacks=[Interrupt()])
    resumed = fit(resume=tmp_path / "cut", data=make_data(), display=False)
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values(),
                            strict=True):
        assert torch.equal(a, b), name


def test_the_runs_lr_is_the_first_groups_and_the_lr_finder_keeps_the_filters_ratio(monkeypatch):
    from fmnist.lr_find import lr_find
    from fmnist.train import setup

    model = build_model(SMALL.model, SMALL.model_config)
    assert make_optimizer(SMALL, model, lr=0.05).param_groups[0]["lr"] == 0.05  # TensorBoard's train/lr
    seen: list[list[float]] = []
    step = setup.train_step

    def recording(parts, *args):
        seen.append([g["lr"] for g in parts.optimizer.param_groups if g["params"]])
        return step(parts, *args)

    monkeypatch.setattr(setup, "train_step", recording)
    lr_find(SMALL, data=make_data(), start=1e-3, end=1.0, steps=20)
    assert len(seen) >= 10
    for lrs in seen:  # the filters' muon_lr 0.1 against the recipe's lr 0.05: twice the lr tried
        assert lrs[:-1] == [lrs[0]] * (len(lrs) - 1)
        assert lrs[-1] == pytest.approx(2 * lrs[0])
