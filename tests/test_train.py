import json
import re

import pytest
import torch
from synthetic import make_data

from fmnist.checkpoint import load_model
from fmnist.errors import ConfigError
from fmnist.recipes import Recipe, apply_overrides, get_recipe
from fmnist.train import Callback, fit, lr_factor, new_run_dir

# Small and fast: a tiny CNN (with BatchNorm, so buffers are covered) on synthetic data.
SMALL = Recipe(name="t", model="cnn", model_config={"widths": [8, 8, 16]}, epochs=3,
               batch_size=32, lr=0.05, holdout=0, bf16="off", eval_batch_size=64,
               channels_last=False,  # NHWC is very slow for 8-channel convs on CPU
               flip=False, tta_flip=False)  # the synthetic classes are mirror images


def weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_same_seed_gives_identical_metrics_and_weights():
    a = fit(SMALL, data=make_data(), save=False, display=False)
    b = fit(SMALL, data=make_data(), save=False, display=False)
    strip = [{k: v for k, v in r.items() if k not in ("seconds", "train_seconds", "images_per_s")}
             for r in a.rows]
    assert strip == [{k: v for k, v in r.items() if k not in ("seconds", "train_seconds",
                                                               "images_per_s")} for r in b.rows]
    wa, wb = weights(a.model), weights(b.model)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    c = fit(apply_overrides(SMALL, {"seed": 1}), data=make_data(), save=False, display=False)
    assert not torch.equal(weights(c.model)["head.weight"], wa["head.weight"])


def test_learns_the_synthetic_task():
    result = fit(apply_overrides(SMALL, {"epochs": 4}), data=make_data(512), save=False,
                 display=False)
    assert result.rows[-1]["test_accuracy"] >= 0.8  # chance is 0.1
    assert result.rows[-1]["train_loss"] < result.rows[0]["train_loss"]


class Interrupt(Callback):
    def __init__(self, after: int) -> None:
        self.after = after

    def on_epoch_end(self, state, row):
        if row["epoch"] == self.after:
            raise KeyboardInterrupt


def test_interrupted_then_resumed_run_ends_with_the_same_weights(tmp_path):
    full = fit(SMALL, data=make_data(), out=tmp_path / "full", display=False)
    with pytest.raises(KeyboardInterrupt):
        fit(SMALL, data=make_data(), out=tmp_path / "cut", callbacks=[Interrupt(after=1)])
    resumed = fit(resume=tmp_path / "cut", data=make_data(), display=False)
    wf, wr = weights(full.model), weights(resumed.model)
    assert all(torch.equal(wf[k], wr[k]) for k in wf)
    assert [r["epoch"] for r in resumed.rows] == [1, 2, 3]
    lines = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["test_loss"] for line in lines] == [r["test_loss"] for r in full.rows]


def test_run_folder_has_everything(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = fit(apply_overrides(SMALL, {"epochs": 2}), data=make_data())
    run = result.run_dir
    assert run.resolve().parent == tmp_path / "runs" and run.name.endswith("-t")
    assert (tmp_path / "runs" / "latest").resolve() == run.resolve()
    for name in ("config.json", "metrics.jsonl", "curves.png", "model.safetensors",
                 "model.json", "resume.pt"):
        assert (run / name).is_file(), name
    config = json.loads((run / "config.json").read_text())
    assert config["model"] == "cnn" and config["epochs"] == 2
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert {"train_loss", "test_loss", "test_accuracy", "seconds", "images_per_s"} <= set(rows[0])
    model, meta = load_model(run)
    assert meta["epoch"] == 2 and meta["metrics"]["test_accuracy"] == rows[-1]["test_accuracy"]
    assert meta["classes"] == [f"c{i}" for i in range(10)]
    x = torch.randn(3, 1, 28, 28)
    assert torch.equal(model(x), result.model(x))


def test_refuses_to_overwrite_an_existing_run(tmp_path):
    fit(apply_overrides(SMALL, {"epochs": 1}), data=make_data(), out=tmp_path / "r", display=False)
    before = (tmp_path / "r" / "model.safetensors").read_bytes()
    with pytest.raises(ConfigError, match="already holds a run"):
        new_run_dir(tmp_path / "r", SMALL)
    assert (tmp_path / "r" / "model.safetensors").read_bytes() == before


def test_holdout_is_reported_and_taken_out_of_training():
    recipe = apply_overrides(SMALL, {"epochs": 1, "holdout": 56})
    result = fit(recipe, data=make_data(), save=False, display=False)
    assert "holdout_accuracy" in result.rows[0]
    with pytest.raises(ConfigError, match="holdout"):
        fit(apply_overrides(SMALL, {"holdout": 256}), data=make_data(), save=False, display=False)


def test_quickstart_log_lines(capsys):
    recipe = apply_overrides(get_recipe("quickstart"), {"epochs": 2, "batch_size": 2})
    fit(recipe, data=make_data(n_train=256, n_test=64), save=False)
    out = capsys.readouterr().out
    assert out.startswith("Epoch 1\n-------------------------------\nloss: ")
    losses = re.findall(r"^loss: (\d+\.\d{6})  \[ *(\d+)/  256\]$", out, re.M)
    assert [int(n) for _, n in losses] == [2, 202] * 2  # batches 0 and 100, each epoch
    tests = re.findall(r"^Test Error: \n Accuracy: (\d+\.\d)%, Avg loss: (\d+\.\d{6}) \n$", out,
                       re.M)
    assert len(tests) == 2
    assert out.endswith("Done!\n")


@pytest.mark.parametrize("schedule", ["constant", "onecycle", "cosine"])
def test_schedules(schedule):
    f = [lr_factor(schedule, 0.2, s, 100) for s in range(100)]
    assert max(f) == pytest.approx(1.0, abs=0.02)
    if schedule == "constant":
        assert set(f) == {1.0}
    else:
        assert f[0] < 0.1 and f[-1] < 0.05  # warm up from ~0, anneal to ~0
        peak = f.index(max(f))
        assert 15 <= peak <= 25


def test_recipes_validate_and_name_choices():
    assert get_recipe("quickstart").model == "mlp"
    with pytest.raises(ConfigError, match="Valid recipes: quickstart, default, best"):
        get_recipe("fast")
    with pytest.raises(ConfigError, match="Only sgd, adamw are supported"):
        apply_overrides(SMALL, {"optimizer": "lbfgs"})
    with pytest.raises(ConfigError, match="Unknown recipe field"):
        apply_overrides(SMALL, {"epoch": 3})
    with pytest.raises(ConfigError, match="epochs must be positive"):
        apply_overrides(SMALL, {"epochs": 0})


@pytest.mark.realdata
def test_short_real_data_training_reaches_a_floor():
    recipe = apply_overrides(get_recipe("default"), {
        "model": "mlp", "model_config": {}, "epochs": 1, "optimizer": "adamw", "lr": 2e-3,
        "batch_size": 256, "shift": 0, "flip": False, "tta_flip": False, "bf16": "off",
        "channels_last": False, "holdout": 0})
    result = fit(recipe, save=False, display=False)
    assert result.rows[-1]["test_accuracy"] > 0.80


def test_out_must_be_new_or_empty_and_latest_is_never_clobbered(tmp_path):
    mine = tmp_path / "proj"
    mine.mkdir()
    (mine / "config.json").write_text("my own notes")
    with pytest.raises(ConfigError, match="not an empty folder"):
        new_run_dir(mine, SMALL)
    assert (mine / "config.json").read_text() == "my own notes"
    # a user's own file called `latest` beside runs is left alone
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "latest").write_text("keep me")
    new_run_dir(runs / "a", SMALL)
    assert (runs / "latest").read_text() == "keep me"
    # outside a runs/ folder no `latest` appears at all
    new_run_dir(tmp_path / "elsewhere" / "r", SMALL)
    assert not (tmp_path / "elsewhere" / "latest").exists()


def test_holdout_images_are_not_trained_on():
    from fmnist.train import split_holdout

    data = make_data(n_train=200)
    data.train_labels = torch.arange(200)  # labels as ids, to see which images went where
    split = split_holdout(data, 50)
    kept, held = set(split.train_labels.tolist()), set(split.holdout_labels.tolist())
    assert len(kept) == 150 and len(held) == 50 and not kept & held
    assert split_holdout(make_data(n_train=200), 50).holdout_labels.tolist() == [
        data.train_labels.remainder(10)[i].item() for i in sorted(held)]


def test_a_foreign_or_damaged_resume_state_is_one_clear_error(tmp_path):
    from fmnist.errors import CheckpointError

    run = tmp_path / "run"
    fit(apply_overrides(SMALL, {"epochs": 1}), data=make_data(), out=run, display=False)
    state = torch.load(run / "resume.pt", weights_only=True)
    state["recipe"]["bogus"] = 1
    torch.save(state, run / "resume.pt")
    with pytest.raises(ConfigError, match="Unknown recipe field.*bogus"):
        fit(resume=run, data=make_data(), display=False)
    torch.save({"weight": torch.zeros(1)}, run / "resume.pt")
    with pytest.raises(CheckpointError, match="not an fmnist resume state"):
        fit(resume=run, data=make_data(), display=False)
