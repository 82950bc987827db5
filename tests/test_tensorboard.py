"""TensorBoard logging: the event files a run writes, read back with TensorBoard's own reader."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from synthetic import make_data, write_csv

from fmnist.cli import main
from fmnist.recipes import Recipe, apply_overrides, to_dict
from fmnist.train import Callback, fit

pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
from tensorboard.backend.event_processing.event_accumulator import (  # noqa: E402
    EventAccumulator,
)

from fmnist import tensorboard  # noqa: E402
from fmnist.tensorboard import TensorBoardLog  # noqa: E402

# The tiny CNN of test_train (BatchNorm included: tracing the graph must not touch its stats).
SMALL = Recipe(name="t", model="cnn", model_config={"widths": [8, 8, 16]}, epochs=2,
               batch_size=32, lr=0.05, bf16="off", eval_batch_size=64, channels_last=False,
               flip=False, tta_flip=False)
STEPS_PER_EPOCH = 256 // 32  # make_data(): 256 training images


def events(run_dir) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0, "images": 0})
    acc.Reload()
    return acc


def event_files(run_dir) -> list:
    return sorted(run_dir.glob("events.out.tfevents.*"))


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("tb") / "run"
    result = fit(SMALL, data=make_data(), out=run_dir, display=False,
                 callbacks=[TensorBoardLog(every=2)])
    return run_dir, result


def test_a_run_writes_the_expected_tags(logged_run):
    run_dir, result = logged_run
    assert len(event_files(run_dir)) == 1
    acc = events(run_dir)
    tags = acc.Tags()
    assert set(tensorboard.STEP_TAGS + tensorboard.EPOCH_TAGS + tensorboard.HPARAM_METRICS) <= set(
        tags["scalars"])
    assert {"images/train_inputs", "test/confusion_matrix"} <= set(tags["images"])
    assert tags["graph"]
    assert set(acc.PluginTagToContent("pr_curves")) == {f"pr/c{k}" for k in range(10)}
    assert "_hparams_/session_start_info" in acc.PluginTagToContent("hparams")
    # the loss and lr every 2nd step of both epochs, on one step axis
    assert [e.step for e in acc.Scalars("train/loss")] == list(range(0, 2 * STEPS_PER_EPOCH, 2))
    lrs = [e.value for e in acc.Scalars("train/lr")]
    assert max(lrs) == pytest.approx(SMALL.lr, rel=0.2) and min(lrs) < SMALL.lr / 2  # onecycle
    # per epoch: what metrics.jsonl says
    test_acc = acc.Scalars("test/accuracy")
    assert [e.step for e in test_acc] == [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]
    assert [e.value for e in test_acc] == pytest.approx([r["test_accuracy"] for r in result.rows])
    assert acc.Scalars("hparam/test_accuracy")[-1].value == pytest.approx(
        result.rows[-1]["test_accuracy"])


def test_logging_does_not_change_training(logged_run):
    _, logged = logged_run
    plain = fit(SMALL, data=make_data(), save=False, display=False)
    a, b = logged.model.state_dict(), plain.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # BatchNorm statistics included


def test_nothing_is_written_without_a_run_folder_or_off_rank_0(tmp_path):
    class Keep(Callback):
        def on_fit_start(self, state):
            self.state = state

    keep = Keep()
    fit(apply_overrides(SMALL, {"epochs": 1}), data=make_data(), save=False, display=False,
        callbacks=[TensorBoardLog(), keep])
    assert not list(tmp_path.rglob("events.out.tfevents.*"))
    # The same run as rank 1 sees it, with a folder (under torchrun fit hangs no callback on
    # other ranks at all, and gives them no folder: this is the third guard).
    log = TensorBoardLog()
    log.on_fit_start(replace(keep.state, run_dir=tmp_path, is_main=False))
    assert log.writer is None and not event_files(tmp_path)
    log.on_fit_start(replace(keep.state, run_dir=tmp_path))  # and as rank 0 it would write
    log.on_fit_end(replace(keep.state, run_dir=tmp_path))
    assert len(event_files(tmp_path)) == 1


def config(tmp_path):
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps({k: v for k, v in to_dict(SMALL).items() if k != "name"}
                               | {"epochs": 1, "device": "cpu",
                                  "dataset": write_csv(tmp_path / "data")}))
    return str(path)


def test_the_cli_logs_by_default_and_not_with_no_tensorboard(tmp_path, capsys):
    assert main(["train", "--config", config(tmp_path), "--out", str(tmp_path / "on")]) == 0
    assert main(["train", "--config", config(tmp_path), "--out", str(tmp_path / "off"),
                 "--no-tensorboard"]) == 0
    assert len(event_files(tmp_path / "on")) == 1
    assert (tmp_path / "off" / "model.safetensors").exists() and not event_files(tmp_path / "off")
    assert "TensorBoard events" in capsys.readouterr().out


def test_training_works_without_tensorboard_installed(monkeypatch):
    import importlib.util

    from fmnist.cli.train import tensorboard_callbacks

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "tensorboard" else real(name, *a))
    assert not tensorboard.available()
    assert tensorboard_callbacks(True) == []  # on by default only when importable


def test_a_resumed_run_continues_its_curves_without_repeating_steps(tmp_path, monkeypatch):
    monkeypatch.setattr(tensorboard, "FLUSH_SAMPLES", 1)  # each step's loss written at once

    class InterruptInEpoch2(TensorBoardLog):
        """Ctrl-C in epoch 2 after its first steps reached the event file (epoch 1 is saved)."""

        def on_step(self, state, step, loss, batch):
            super().on_step(state, step, loss, batch)
            if state.epoch == 2 and step == 5:
                self.writer.flush()
                raise KeyboardInterrupt

    run_dir = tmp_path / "r"
    with pytest.raises(KeyboardInterrupt):
        fit(SMALL, data=make_data(), out=run_dir, display=False,
            callbacks=[InterruptInEpoch2(every=1)])
    assert max(e.step for e in events(run_dir).Scalars("train/loss")) == STEPS_PER_EPOCH + 5
    fit(resume=run_dir, data=make_data(), display=False, callbacks=[TensorBoardLog(every=1)])
    steps = [e.step for e in events(run_dir).Scalars("train/loss")]
    assert steps == list(range(2 * STEPS_PER_EPOCH))  # epoch 2's first try is dropped


def test_the_tensorboard_command_refuses_a_missing_folder(tmp_path, capsys):
    assert main(["tensorboard", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fmnist: error: Runs folder") and err.count("\n") == 1


def test_tensorboard_is_not_shown_the_latest_link_as_a_run(tmp_path):
    from fmnist.cli.tensorboard import logdir_args

    assert logdir_args(tmp_path) == ["--logdir", str(tmp_path)]
    (tmp_path / "b").mkdir()
    (tmp_path / "a").mkdir()
    (tmp_path / "latest").symlink_to("b")
    assert logdir_args(tmp_path) == ["--logdir_spec", f"a:{tmp_path / 'a'},b:{tmp_path / 'b'}"]


def test_the_pr_curves_reuse_the_final_evaluation_and_pass_over_nothing_again(tmp_path):
    """The end of a run makes no forward pass for its figures: the PR curves are those of the
    final (TTA) evaluation's logits, which are the final model's."""
    from tensorboard.util.tensor_util import make_ndarray
    from torch.utils.tensorboard.summary import compute_curve

    from fmnist.inference import predict_logits

    class Watch(Callback):  # before TensorBoardLog in the list: its on_fit_end runs first
        forwards, at_end = 0, None

        def on_fit_start(self, state):
            state.parts.model.register_forward_hook(lambda *_: setattr(self, "forwards",
                                                                       self.forwards + 1))

        def on_fit_end(self, state):
            self.at_end, self.logits = self.forwards, state.test_logits

    watch, data, run_dir = Watch(), make_data(), tmp_path / "r"
    recipe = replace(SMALL, tta_flip=True)
    result = fit(recipe, data=data, out=run_dir, display=False,
                 callbacks=[watch, TensorBoardLog(graph=False)])
    assert watch.forwards == watch.at_end  # nothing after the run's own last evaluation
    assert result.rows[-1]["tta"] is True
    norm = result.meta["normalize"]  # the final model's TTA logits, passed over afresh
    expected = predict_logits(result.model, data.test_images, norm["mean"], norm["std"],
                              tta_flip=True)
    assert torch.equal(watch.logits, expected)
    probs = torch.softmax(expected.double(), dim=1)
    acc = events(run_dir)
    for k in range(10):
        (event,) = acc.Tensors(f"pr/c{k}")
        want = compute_curve(data.test_labels.numpy() == k, probs[:, k].numpy(), num_thresholds=127)
        assert make_ndarray(event.tensor_proto) == pytest.approx(want)


def test_epochs_that_eval_every_skips_have_no_test_scalars(tmp_path):
    run_dir = tmp_path / "run"
    result = fit(apply_overrides(SMALL, {"epochs": 3, "eval_every": 2}), data=make_data(),
                 out=run_dir, display=False, callbacks=[TensorBoardLog()])
    acc = events(run_dir)
    assert [e.step for e in acc.Scalars("test/accuracy")] == [2 * STEPS_PER_EPOCH,
                                                              3 * STEPS_PER_EPOCH]
    assert len(acc.Scalars("train/epoch_loss")) == 3
    tested = [r["test_accuracy"] for r in result.rows if "test_accuracy" in r]
    assert acc.Scalars("hparam/best_test_accuracy")[-1].value == pytest.approx(max(tested))
    assert acc.Scalars("hparam/test_accuracy")[-1].step == 3 * STEPS_PER_EPOCH
