import json
import re

import pytest
import torch
from synthetic import make_data

from fmnist.checkpoint import load_model
from fmnist.errors import ConfigError
from fmnist.models import build_model
from fmnist.recipes import Recipe, apply_overrides, get_recipe
from fmnist.rundir import new_run_dir
from fmnist.train import Callback, fit
from fmnist.train.optim import lr_factor

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


# whitened: its first conv, set from the data and frozen, must stay frozen after a resume
@pytest.mark.parametrize("recipe", [SMALL, apply_overrides(SMALL, {"whiten": True})],
                         ids=["plain", "whitened"])
def test_interrupted_then_resumed_run_ends_with_the_same_weights(tmp_path, recipe):
    full = fit(recipe, data=make_data(), out=tmp_path / "full", display=False)
    with pytest.raises(KeyboardInterrupt):
        fit(recipe, data=make_data(), out=tmp_path / "cut", callbacks=[Interrupt(after=1)])
    resumed = fit(resume=tmp_path / "cut", data=make_data(), display=False)
    wf, wr = weights(full.model), weights(resumed.model)
    assert all(torch.equal(wf[k], wr[k]) for k in wf)
    first = next(resumed.model.parameters())
    assert first.requires_grad is not recipe.whiten and (first.grad is None) is recipe.whiten
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
        new_run_dir(tmp_path / "r", SMALL.name)
    assert (tmp_path / "r" / "model.safetensors").read_bytes() == before
    # fit says so before it looks for data or builds anything (here there is no data to find)
    for taken, says in ((tmp_path / "r", "already holds a run"), (tmp_path, "not an empty folder")):
        with pytest.raises(ConfigError, match=says):
            fit(apply_overrides(SMALL, {"dataset": "mnist"}), out=taken,
                data_dir=tmp_path / "no-data-here", display=False)


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


@pytest.mark.parametrize("steps, warmup", [(7, 0.1), (33, 0.05), (10, 0.25), (30, 0.1)])
@pytest.mark.parametrize("schedule", ["onecycle", "cosine"])
def test_a_warm_up_of_a_fraction_of_a_step_never_overshoots_the_peak(schedule, steps, warmup):
    f = [lr_factor(schedule, warmup, s, steps) for s in range(steps)]
    assert max(f) <= 1.0
    assert f == sorted(f[: f.index(max(f)) + 1]) + f[f.index(max(f)) + 1 :]  # up, then down
    assert max(f) >= 0.5  # it does reach (or near) the peak


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
    with pytest.raises(ConfigError, match="Only sgd, adamw, muon are supported"):
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
        new_run_dir(mine, SMALL.name)
    assert (mine / "config.json").read_text() == "my own notes"
    # a user's own file called `latest` beside runs is left alone
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "latest").write_text("keep me")
    new_run_dir(runs / "a", SMALL.name)
    assert (runs / "latest").read_text() == "keep me"
    # outside a runs/ folder no `latest` appears at all
    new_run_dir(tmp_path / "elsewhere" / "r", SMALL.name)
    assert not (tmp_path / "elsewhere" / "latest").exists()


def test_holdout_images_are_not_trained_on():
    from fmnist.train.data import split_holdout

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


# ---- the seams: what fit returns, what resume accepts, run folders, the process group ---------


def test_fit_result_meta_is_the_checkpoint_metadata(tmp_path):
    result = fit(apply_overrides(SMALL, {"epochs": 1}), data=make_data(), out=tmp_path / "r",
                 display=False)
    saved = json.loads((tmp_path / "r" / "model.json").read_text())
    assert json.loads(json.dumps(result.meta)) == saved
    assert saved["model"] == "cnn" and saved["model_config"]["widths"] == [8, 8, 16]
    assert set(saved["versions"]) == {"fmnist", "torch"}
    unsaved = fit(apply_overrides(SMALL, {"epochs": 1}), data=make_data(), save=False, display=False)
    assert {"model", "model_config", "versions", "normalize", "classes"} <= set(unsaved.meta)


def test_resume_takes_no_recipe_or_out(tmp_path):
    run = tmp_path / "r"
    fit(apply_overrides(SMALL, {"epochs": 1}), data=make_data(), out=run, display=False)
    with pytest.raises(ConfigError, match="do not pass recipe or out"):
        fit(SMALL, resume=run, data=make_data(), display=False)
    with pytest.raises(ConfigError, match="do not pass recipe or out"):
        fit(resume=run, out=tmp_path / "elsewhere", data=make_data(), display=False)


def test_resume_refuses_other_data(tmp_path):
    run = tmp_path / "r"
    fit(apply_overrides(SMALL, {"epochs": 1}), data=make_data(), out=run, display=False)
    other = make_data()
    other.fingerprint = "another dataset"
    with pytest.raises(ConfigError, match="fingerprint"):
        fit(resume=run, data=other, display=False)
    brighter = make_data()  # same fingerprint claimed, but not the same pixels
    brighter.train_images = brighter.train_images // 2
    with pytest.raises(ConfigError, match="normalised its inputs with mean"):
        fit(resume=run, data=brighter, display=False)
    assert fit(resume=run, data=make_data(), display=False).rows[-1]["epoch"] == 1  # accepted


def _claim_new(barrier, results):
    barrier.wait()
    results.put(str(new_run_dir(None, SMALL.name)))


def test_two_runs_never_share_a_folder(tmp_path, monkeypatch):
    """Runs started together (in the same second, so with the same name): the folder is
    claimed by creating it, not by looking first, so each gets its own."""
    import multiprocessing

    monkeypatch.chdir(tmp_path)
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_claim_new, args=(barrier, results)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    got = {results.get(timeout=5) for _ in procs}
    assert len(got) == 4 and all((tmp_path / g).is_dir() for g in got)


def _claim(out, barrier, results):
    from fmnist.errors import ConfigError

    barrier.wait()
    try:
        new_run_dir(out, SMALL.name)
        results.put("won")
    except ConfigError:
        results.put("refused")


def test_two_processes_cannot_both_claim_one_out_folder(tmp_path):
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    out = tmp_path / "shared"
    out.mkdir()  # an empty folder: acceptable to one run
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_claim, args=(out, barrier, results)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    assert sorted(results.get(timeout=5) for _ in procs) == ["refused", "won"]


def test_a_failure_before_training_still_leaves_the_process_group(tmp_path, monkeypatch):
    from fmnist import distributed
    from fmnist.errors import DatasetError

    calls = []
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(distributed, "init", lambda info, device: calls.append("init"))
    monkeypatch.setattr(distributed, "shutdown", lambda: calls.append("shutdown"))
    broken = tmp_path / "data"  # the data fails to load after the process group is up
    broken.mkdir()
    for split in ("train", "test"):
        (broken / f"fashion-mnist_{split}.csv").write_text("label,pixel1\n3,oops\n")
    with pytest.raises(DatasetError, match=r"^rank 0 of 2: CSV file .*fashion-mnist_train\.csv"):
        fit(apply_overrides(SMALL, {"dataset": f"csv:{broken}"}), save=False, display=False)
    assert calls == ["init", "shutdown"]


class Recorder(Callback):
    def __init__(self) -> None:
        self.epochs: list[int] = []

    def on_epoch_end(self, state, row):
        self.epochs.append(row["epoch"])


def test_callbacks_are_added_to_the_display(capsys):
    recorder = Recorder()
    fit(apply_overrides(SMALL, {"epochs": 2}), data=make_data(), save=False, callbacks=[recorder])
    out = capsys.readouterr().out
    assert recorder.epochs == [1, 2]
    assert re.search(r"^epoch   1/2  train loss ", out, re.M)  # the progress display stayed
    fit(apply_overrides(SMALL, {"epochs": 1}), data=make_data(), save=False, display=False)
    assert capsys.readouterr().out == ""


def test_test_loss_is_averaged_as_the_recipe_says():
    """`eval_loss`: mean over images (ours), or the mean of per-batch means (the Quickstart's);
    they differ when the last batch is short. The display setting (`log`) plays no part."""
    from fmnist.distributed import DistInfo
    from fmnist.train.evaluation import evaluate_split
    from fmnist.train.setup import Setup

    torch.manual_seed(0)
    model = build_model("mlp").eval()
    data = make_data(n_test=70)
    x = data.test_images.unsqueeze(1).float() / 255
    with torch.no_grad():
        losses = torch.nn.functional.cross_entropy(model(x), data.test_labels, reduction="none")
    per_image = losses.mean().item()
    per_batch = (losses[:64].mean() + losses[64:].mean()).item() / 2
    assert abs(per_image - per_batch) > 1e-4
    for eval_loss, log, want in (("images", "quickstart", per_image),
                                 ("batches", "progress", per_batch)):
        recipe = apply_overrides(SMALL, {"eval_batch_size": 64, "eval_loss": eval_loss, "log": log})
        setup = Setup(recipe, DistInfo(), torch.device("cpu"), False, data, 0.0, 1.0)
        _, loss = evaluate_split(model, data.test_images, data.test_labels, setup)
        assert loss == pytest.approx(want, rel=1e-5)


def test_a_trained_runs_metadata_names_its_data_recipe_and_tta(tmp_path):
    data = make_data()
    recipe = apply_overrides(SMALL, {"epochs": 1, "tta_flip": True})
    fit(recipe, data=data, out=tmp_path / "r", display=False)
    meta = json.loads((tmp_path / "r" / "model.json").read_text())
    pixels = data.train_images.float() / 255
    assert meta["normalize"] == pytest.approx({"mean": pixels.mean().item(),
                                               "std": pixels.std().item()})
    assert (meta["dataset"], meta["dataset_sha256"], meta["recipe"], meta["tta_flip"]) == (
        "fashion-mnist", "synthetic", "t", True)
    assert meta["epoch"] == 1 and meta["classes"] == data.classes


def test_pixel_stats():
    from fmnist.train.data import pixel_stats

    data = make_data()
    assert pixel_stats(apply_overrides(SMALL, {"normalize": False}), data) == (0.0, 1.0)
    mean, std = pixel_stats(SMALL, data)
    x = data.train_images.double() / 255
    assert mean == pytest.approx(x.mean().item(), rel=1e-6)
    assert std == pytest.approx(x.std().item(), rel=1e-6)


def test_same_data_check_tolerates_rounding_only():
    from fmnist.checkpoint import ResumeState
    from fmnist.train.data import check_same_data

    data = make_data()

    def saved(mean, std):
        return ResumeState(1, [], {}, {}, {}, {}, {}, mean=mean, std=std, fingerprint="synthetic")

    check_same_data(saved(0.3, 0.4), data, 0.3 * (1 + 1e-7), 0.4)  # float noise: accepted
    for mean, std in ((0.3, 0.41), (0.303, 0.4), (0.3, 0.404)):  # other data: refused
        with pytest.raises(ConfigError, match="normalised its inputs"):
            check_same_data(saved(mean, std), data, 0.3, 0.4)


def test_out_folder_rules(tmp_path, monkeypatch):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not an empty folder"):
        new_run_dir(notes, SMALL.name)
    assert sorted(p.name for p in notes.iterdir()) == ["notes.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert new_run_dir(empty, SMALL.name) == empty  # an existing empty folder is fine
    half = tmp_path / "half"
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"")
    with pytest.raises(ConfigError, match="already holds a run: use --resume"):
        new_run_dir(half, SMALL.name)
    # a run folder named inside a runs/ folder becomes runs/latest
    run = new_run_dir(tmp_path / "runs" / "x", SMALL.name)
    assert (tmp_path / "runs" / "latest").resolve() == run.resolve()


def test_the_accuracy_a_run_reports_is_what_its_checkpoint_gives(tmp_path):
    """Trained in bf16, evaluated as served (fp32, the run's TTA): model.json's metrics equal a
    fresh `evaluate` of the saved checkpoint."""
    from fmnist.evaluate import evaluate

    data = make_data()
    recipe = apply_overrides(SMALL, {"epochs": 1, "bf16": "on", "tta_flip": True})
    fit(recipe, data=data, out=tmp_path / "r", display=False)
    model, meta = load_model(tmp_path / "r")
    report = evaluate(model, data.test_images, data.test_labels, meta)
    assert report.accuracy == meta["metrics"]["test_accuracy"]
    assert report.loss == pytest.approx(meta["metrics"]["test_loss"], rel=1e-6)


# ---- found by mutation testing (train/optim.py, data.py, evaluation.py) -------------------------


@pytest.mark.parametrize("name, kind", [("sgd", torch.optim.SGD), ("adamw", torch.optim.AdamW)])
def test_the_optimizer_trains_every_parameter_and_decays_only_weights(name, kind):
    from fmnist.train.optim import make_optimizer

    recipe = apply_overrides(SMALL, {"optimizer": name, "weight_decay": 5e-4})
    model = build_model(SMALL.model, SMALL.model_config)
    opt = make_optimizer(recipe, model, lr=0.01)
    assert isinstance(opt, kind)
    trained = [p for g in opt.param_groups for p in g["params"]]
    assert len(trained) == len(list(model.parameters()))
    assert {id(p) for p in trained} == {id(p) for p in model.parameters()}
    decay = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    # weights decay; biases and BatchNorm parameters (1-d) do not
    assert all(decay[id(p)] == (5e-4 if p.ndim > 1 else 0.0) for p in model.parameters())
    assert all(g["lr"] == 0.01 for g in opt.param_groups)


@pytest.mark.parametrize("schedule", ["constant", "onecycle", "cosine"])
def test_the_scheduler_follows_the_recipes_schedule(schedule):
    from fmnist.train.optim import make_optimizer, make_scheduler

    recipe = apply_overrides(SMALL, {"schedule": schedule, "warmup": 0.2})
    opt = make_optimizer(recipe, build_model(SMALL.model, SMALL.model_config), lr=0.1)
    scheduler = make_scheduler(recipe, opt, total_steps=10)
    seen = []
    for _ in range(10):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    assert seen == pytest.approx([0.1 * lr_factor(schedule, 0.2, s, 10) for s in range(10)])


def test_a_holdout_reports_its_loss_too():
    row = fit(apply_overrides(SMALL, {"epochs": 1, "holdout": 56}), data=make_data(), save=False,
              display=False).rows[0]
    assert 0 <= row["holdout_accuracy"] <= 1 and 0 < row["holdout_loss"] < 10


def test_other_data_is_named_by_both_fingerprints_and_the_flag_to_fix():
    from fmnist.checkpoint import ResumeState
    from fmnist.train.data import check_same_data

    data = make_data()
    data.fingerprint = "fedcba9876543210" * 4
    saved = ResumeState(1, [], {}, {}, {}, {}, {}, fingerprint="0123456789abcdef" * 4)
    with pytest.raises(ConfigError) as caught:
        check_same_data(saved, data, 0.3, 0.4)
    message = str(caught.value)
    assert "0123456789ab..." in message and "fedcba987654..." in message
    assert "--data-dir" in message


@pytest.mark.parametrize("saved, now", [
    ((0.3, 0.4), (0.3 * (1 + 5e-6), 0.4 * (1 - 5e-6))),  # summed in another order elsewhere
    ((1e-9, 0.4), (0.0, 0.4)),  # near zero, relative differences mean nothing
    ((0.3, 1e-9), (0.3, 0.0)),
])
def test_same_data_check_accepts_float_noise_relative_or_near_zero(saved, now):
    from fmnist.checkpoint import ResumeState
    from fmnist.train.data import check_same_data

    state = ResumeState(1, [], {}, {}, {}, {}, {}, mean=saved[0], std=saved[1],
                        fingerprint="synthetic")
    check_same_data(state, make_data(), *now)


@pytest.mark.parametrize("total, warmup, warm", [(10, 0.23, 3), (10, 0.25, 3), (30, 0.1, 3), (7, 0.1, 1)])
def test_a_cosine_warm_up_lasts_its_fraction_of_the_steps_rounded_up(total, warmup, warm):
    ramp = [lr_factor("cosine", warmup, s, total) for s in range(warm)]
    assert ramp == pytest.approx([(s + 1) / warm for s in range(warm)])  # the peak on its last step


def test_a_holdout_of_one_image_takes_one_image_out():
    from fmnist.train.data import split_holdout

    data = make_data()
    held = split_holdout(data, 1)
    assert len(held.holdout_images) == 1 and len(held.train_images) == len(data.train_images) - 1


def test_a_run_with_a_holdout_still_refuses_other_data_on_resume():
    from fmnist.checkpoint import ResumeState
    from fmnist.train.data import check_same_data, split_holdout

    saved = ResumeState(1, [], {}, {}, {}, {}, {}, fingerprint="another dataset")
    with pytest.raises(ConfigError, match="fingerprint"):
        check_same_data(saved, split_holdout(make_data(), 56), 0.3, 0.4)


# ---- per-epoch evaluation: plain, then the recipe's TTA at the end ------------------------------

TTA = apply_overrides(SMALL, {"tta_flip": True})
STEPS = 256 // 32  # make_data()'s training images at SMALL's batch; its 64 test images: 1 batch


class Evaluations(Callback):
    """Each epoch's test logits as the loop kept them, beside a fresh plain and TTA pass; and the
    model's forward calls (a TTA pass over the test set makes 2, a plain one 1)."""

    def __init__(self) -> None:
        self.kept, self.plain, self.tta, self.forwards = [], [], [], 0

    def on_fit_start(self, state):
        def count(*_):
            self.forwards += 1

        state.parts.model.register_forward_hook(count)

    def on_epoch_end(self, state, row):
        from fmnist.inference import predict_logits

        before, setup = self.forwards, state.setup
        test = setup.data.test_images
        self.kept.append(state.test_logits.clone())
        self.plain.append(predict_logits(state.parts.model, test, setup.mean, setup.std))
        self.tta.append(predict_logits(state.parts.model, test, setup.mean, setup.std,
                                       tta_flip=True))
        state.parts.model.train()
        self.forwards = before  # this callback's own passes are not the run's

    def on_fit_end(self, state):
        self.final = state.test_logits


def test_intermediate_epochs_are_evaluated_plain_and_the_last_with_the_recipes_tta(tmp_path):
    evals = Evaluations()
    result = fit(TTA, data=make_data(), out=tmp_path / "r", display=False, callbacks=[evals])
    assert [r["tta"] for r in result.rows] == [False, False, True]
    for kept, plain in zip(evals.kept[:2], evals.plain[:2], strict=True):
        assert torch.equal(kept, plain)
    assert torch.equal(evals.kept[2], evals.tta[2])
    assert evals.forwards == 3 * STEPS + 1 + 1 + 2  # steps, two plain passes, one TTA pass
    saved = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert saved == result.rows
    _, meta = load_model(tmp_path / "r")
    assert meta["metrics"]["tta"] is True and meta["metrics"] == result.rows[-1]
    # a recipe without TTA says so on every row
    assert [r["tta"] for r in fit(SMALL, data=make_data(), save=False, display=False).rows] == [
        False] * 3


class EndAfterEpoch1(Callback):
    """A time budget that runs out at the end of epoch 1, after its (plain) evaluation: the
    re-plan BudgetKeeper makes there, ending the run now."""

    def on_epoch_end(self, state, row):
        if state.epoch == 1:
            done = state.epoch * state.steps_per_epoch
            state.parts.schedule.retarget(done, done)


def test_a_run_that_turns_out_to_end_early_is_evaluated_with_tta_once(tmp_path):
    evals = Evaluations()
    result = fit(TTA, data=make_data(), out=tmp_path / "r", display=False,
                 callbacks=[evals, EndAfterEpoch1()])
    assert [r["epoch"] for r in result.rows] == [1] and result.rows[0]["tta"] is True
    assert evals.forwards == STEPS + 1 + 2  # the plain pass, then one TTA pass at the end
    from fmnist.inference import score

    data = make_data()
    totals = score(evals.tta[0], data.test_labels)
    assert result.rows[0]["test_accuracy"] == (totals[0] / totals[3]).item()
    assert torch.equal(evals.final, evals.tta[0])  # what the end-of-run figures are drawn from
    saved = json.loads((tmp_path / "r" / "metrics.jsonl").read_text())
    assert saved == result.rows[0]
    _, meta = load_model(tmp_path / "r")
    assert meta["metrics"] == result.rows[0]


def test_a_resumed_run_evaluates_as_an_unbroken_one(tmp_path):
    full = fit(TTA, data=make_data(), save=False, display=False)
    with pytest.raises(KeyboardInterrupt):
        fit(TTA, data=make_data(), out=tmp_path / "cut", callbacks=[Interrupt(after=1)])
    resumed = fit(resume=tmp_path / "cut", data=make_data(), display=False)
    timing = ("seconds", "train_seconds", "images_per_s")
    assert [{k: v for k, v in r.items() if k not in timing} for r in resumed.rows] == [
        {k: v for k, v in r.items() if k not in timing} for r in full.rows]
    assert [r["tta"] for r in resumed.rows] == [False, False, True]


class Forwards(Evaluations):
    """The model's forward calls alone."""

    def on_epoch_end(self, state, row):
        pass


@pytest.mark.parametrize(("every", "tested"), [(0, [3]), (2, [2, 3]), (1, [1, 2, 3])])
def test_eval_every_evaluates_those_epochs_and_always_the_last(tmp_path, capsys, every, tested):
    evals = Forwards()
    recipe = apply_overrides(TTA, {"eval_every": every})
    result = fit(recipe, data=make_data(), out=tmp_path / "r", callbacks=[evals])
    assert [r["epoch"] for r in result.rows if "test_accuracy" in r] == tested
    assert [r.get("tta") for r in result.rows] == [
        None if e not in tested else e == 3 for e in (1, 2, 3)]
    assert evals.forwards == 3 * STEPS + len(tested) - 1 + 2  # plain passes, then one TTA pass
    assert all("train_loss" in r for r in result.rows)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch")]
    assert ["test acc" in line for line in lines] == [e in tested for e in (1, 2, 3)]
    # what reads the rows takes the ones without a test pass
    from fmnist.runs import read_run

    run = read_run(tmp_path / "r")
    assert run.final_accuracy == result.rows[-1]["test_accuracy"]
    assert run.best_accuracy == max(r["test_accuracy"] for r in result.rows if "test_accuracy" in r)
    assert (tmp_path / "r" / "curves.png").stat().st_size > 0


def test_an_old_runs_config_json_evaluates_every_epoch_as_it_did(tmp_path):
    from fmnist.recipes import read_config_file

    old = {k: v for k, v in vars(get_recipe("default")).items() if k != "eval_every"}
    (tmp_path / "config.json").write_text(json.dumps(old))
    assert get_recipe("default").eval_every == 0
    assert apply_overrides(get_recipe("default"), read_config_file(tmp_path / "config.json")
                           ).eval_every == 1


def test_a_run_with_held_out_images_saves_its_fitted_trust_and_predicts_with_it(tmp_path):
    from fmnist import trust
    from fmnist.inference import predict_logits
    from fmnist.predict import Predictor
    from fmnist.train.data import split_holdout

    recipe = apply_overrides(SMALL, {"holdout": 64})
    data = make_data(512, 64)
    result = fit(recipe, data=data, out=tmp_path / "r", display=False)
    saved = json.loads((tmp_path / "r" / "model.json").read_text())
    fitted = saved["trust"]
    assert result.meta["trust"] == fitted and fitted["held_out"] == 64
    # fitted on exactly the images held out of training, with the logits the model predicts
    held = split_holdout(data, 64)
    model, meta = load_model(tmp_path / "r")
    logits = predict_logits(model, held.holdout_images, *meta["normalize"].values())
    expect = trust.fit(logits.double().numpy(), held.holdout_labels.numpy())
    assert fitted["temperature"] == pytest.approx(expect["temperature"], rel=1e-6)
    assert fitted["ood"]["threshold"] == pytest.approx(expect["ood"]["threshold"], rel=1e-6)
    probs = Predictor(model, meta).predict_arrays(held.holdout_images.numpy())
    np_logits = logits.double().numpy()
    assert probs == pytest.approx(trust.softmax(np_logits, fitted["temperature"]), abs=1e-5)


def test_a_run_without_held_out_images_fits_no_trust(tmp_path):
    fit(apply_overrides(SMALL, {"epochs": 1}), data=make_data(), out=tmp_path / "r", display=False)
    assert "trust" not in json.loads((tmp_path / "r" / "model.json").read_text())
    assert get_recipe("quickstart").holdout == 0  # the Quickstart stays the Quickstart


def test_the_default_recipe_holds_out_a_twelfth_at_most_unless_a_holdout_is_asked_for():
    from fmnist.recipes import holdout_for

    default = get_recipe("default")
    assert holdout_for(default, 60000) == 5000
    assert holdout_for(default, 1200) == 100  # a small dataset keeps most of its images
    asked = apply_overrides(default, {"holdout": 600})
    assert holdout_for(asked, 1200) == 600
