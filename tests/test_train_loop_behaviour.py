"""What a user of `fit` sees of its loop: each epoch's row, a run of a set number of steps, a run
stopped or crashed part-way through an epoch and resumed, timed checkpoints, a run that diverges
or never learns, the refusals under torchrun, of other data and of a data folder that is not
there, what a resumed finished run keeps (its rows, its fitted trust), the dataset path it
records, and what `save` and `display` leave behind."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from dataclasses import replace

import pytest
import torch
from synthetic import make_data, write_csv

from fmnist.checkpoint import ResumeState, load_model
from fmnist.errors import ConfigError, DivergedError
from fmnist.recipes import Recipe
from fmnist.train import Callback, fit
from fmnist.train.optim import lr_factor
from fmnist.train.stops import Interrupted

TINY = Recipe(name="t", model="cnn", model_config={"widths": [4, 4, 8]}, epochs=2, batch_size=32,
              lr=0.05, bf16="off", eval_batch_size=64, channels_last=False, flip=False,
              tta_flip=False, device="cpu", min_steps=0, holdout=0)
TIMES = ("seconds", "train_seconds", "images_per_s")


def tiny_data():
    return make_data(n_train=96, n_test=32)  # 3 steps of 32 images an epoch


def untimed(rows):
    return [{k: v for k, v in r.items() if k not in TIMES} for r in rows]


def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


class Record(Callback):
    """What the loop tells its callbacks, in order; at each step it draws from torch's global RNG
    too, as a dropout layer or a user's callback would."""

    def __init__(self) -> None:
        self.events: list[tuple] = []
        self.losses: dict[int, list[float]] = {}
        self.draws: list[float] = []

    def on_fit_start(self, state):
        self.events.append(("fit_start", state.epoch))
        self.run = (state.is_main, state.steps_per_epoch, state.samples_per_epoch)

    def on_epoch_start(self, state):
        self.events.append(("epoch_start", state.epoch))

    def on_step(self, state, step, loss, batch):
        self.events.append(("step", state.epoch, step, batch))
        self.losses.setdefault(state.epoch, []).append(loss.item())
        self.draws.append(torch.rand(1).item())

    def on_epoch_end(self, state, row):
        self.events.append(("epoch_end", row["epoch"]))

    def on_fit_end(self, state):
        self.events.append(("fit_end", len(state.rows)))


class At(Callback):
    """At `(epoch, step)`: sends `signum` to this process (as `kill` would), or raises `error`."""

    def __init__(self, epoch: int, step: int, signum: int | None = None,
                 error: Exception | None = None) -> None:
        self.at, self.signum, self.error = (epoch, step), signum, error

    def on_step(self, state, step, loss, batch):
        if (state.epoch, step) == self.at:
            if self.signum is not None:
                os.kill(os.getpid(), self.signum)
            if self.error is not None:
                raise self.error


def test_each_epochs_row_says_what_that_epoch_did_and_callbacks_see_it_in_order():
    record = Record()
    began = time.perf_counter()
    result = fit(TINY, data=tiny_data(), save=False, display=False, callbacks=[record])
    wall = time.perf_counter() - began
    steps = [("step", e, s, 32) for e in (1, 2) for s in range(3)]
    assert record.run == (True, 3, 96)  # one process: the main one, writing; its epoch's size
    assert record.events == [("fit_start", 0), ("epoch_start", 1), *steps[:3], ("epoch_end", 1),
                             ("epoch_start", 2), *steps[3:], ("epoch_end", 2), ("fit_end", 2)]
    rows = result.rows
    assert [r["epoch"] for r in rows] == [1, 2]
    for row, epoch in zip(rows, (1, 2), strict=True):
        losses = record.losses[epoch]
        assert row["train_loss"] == pytest.approx(sum(losses) / len(losses), rel=1e-5)
        # the schedule's lr after the epoch's last step, of the 6 the run takes
        assert row["lr"] == pytest.approx(TINY.lr * lr_factor(TINY.schedule, TINY.warmup,
                                                              3 * epoch, 6))
        assert row["images_per_s"] * row["seconds"] == pytest.approx(96)
        assert {"test_loss", "test_accuracy"} <= set(row)
    assert rows[0]["start_loss"] == record.losses[1][0] and "start_loss" not in rows[1]
    assert rows[0]["seconds"] > 0 and rows[1]["seconds"] > 0
    assert rows[0]["train_seconds"] == rows[0]["seconds"]
    assert rows[1]["train_seconds"] <= wall  # the epochs' own time, within the call's
    assert rows[1]["train_seconds"] == pytest.approx(rows[0]["train_seconds"] + rows[1]["seconds"])


def test_a_run_of_a_set_number_of_steps_ends_part_way_through_its_last_epoch():
    record = Record()
    result = fit(replace(TINY, steps=4), data=tiny_data(), save=False, display=False,
                 callbacks=[record])
    steps = [e[1:3] for e in record.events if e[0] == "step"]
    assert steps == [(1, 0), (1, 1), (1, 2), (2, 0)]
    assert [r["epoch"] for r in result.rows] == [1, 2]
    last = result.rows[-1]
    assert last["train_loss"] == pytest.approx(record.losses[2][0], rel=1e-5)  # its one step
    assert last["images_per_s"] * last["seconds"] == pytest.approx(32)
    assert last["lr"] == pytest.approx(TINY.lr * lr_factor(TINY.schedule, TINY.warmup, 4, 4))
    assert "test_accuracy" in last


def test_a_run_stopped_part_way_through_an_epoch_resumes_to_what_an_unbroken_run_reports(tmp_path):
    data = tiny_data()
    unbroken = Record()
    whole = fit(TINY, data=data, out=tmp_path / "whole", display=False, callbacks=[unbroken])
    run, stopped = tmp_path / "stopped", Record()
    began = time.perf_counter()
    with pytest.raises(Interrupted, match="saved at epoch 1, step 2"):
        fit(TINY, data=data, out=run, display=False,
            callbacks=[stopped, At(1, 1, signum=signal.SIGTERM)])
    partial = ResumeState.load(run).partial
    assert partial is not None
    record = Record()
    resumed = fit(resume=run, data=data, display=False, callbacks=[record])
    # the epoch's time counts its first two steps, before the stop, too
    assert partial["seconds"] < resumed.rows[0]["seconds"] < time.perf_counter() - began
    # the resumed epoch 1 trains only its last step, yet its row is the whole epoch's
    assert [e[1:3] for e in record.events if e[0] == "step"] == [(1, 2), (2, 0), (2, 1), (2, 2)]
    assert untimed(resumed.rows) == untimed(whole.rows)
    assert resumed.rows[0]["images_per_s"] * resumed.rows[0]["seconds"] == pytest.approx(96)
    assert same_weights(resumed.model, whole.model)
    assert stopped.draws + record.draws == unbroken.draws  # the global RNG went on where it was
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert untimed(json.loads(line) for line in lines) == untimed(whole.rows)


def test_a_signal_at_the_last_step_lets_the_run_finish_before_it_stops(tmp_path):
    record = Record()
    with pytest.raises(Interrupted, match="after the last step; the run finished") as stopped:
        fit(TINY, data=tiny_data(), out=tmp_path / "run", display=False,
            callbacks=[record, At(2, 2, signum=signal.SIGTERM)])
    assert stopped.value.finished and stopped.value.resume_from is None
    assert record.events[-2:] == [("epoch_end", 2), ("fit_end", 2)]
    assert load_model(tmp_path / "run")[1]["epoch"] == 2


def test_a_timed_checkpoint_lets_a_crashed_run_go_on_from_its_last_step(tmp_path):
    data = tiny_data()
    whole = fit(TINY, data=data, out=tmp_path / "whole", display=False, checkpoint_every=1e-9)
    # saved after every step but the run's last, which the epoch's own save covers
    assert sorted(p.name for p in (tmp_path / "whole" / "checkpoints").iterdir()) == \
        ["epoch-0002", "epoch-0002-step-000002"]
    run = tmp_path / "crashed"
    with pytest.raises(RuntimeError, match="power cut"):
        fit(TINY, data=data, out=run, display=False, checkpoint_every=1e-9,
            callbacks=[At(2, 1, error=RuntimeError("power cut"))])
    _, meta = load_model(run)
    assert meta["epoch"] == 1  # the weights on disk are the last finished epoch's
    record = Record()
    resumed = fit(resume=run, data=data, display=False, callbacks=[record])
    assert [e[1:3] for e in record.events if e[0] == "step"] == [(2, 1), (2, 2)]
    assert untimed(resumed.rows) == untimed(whole.rows)
    assert same_weights(resumed.model, whole.model)


def test_a_finished_run_resumed_trains_nothing_more_and_keeps_its_rows_and_trust(tmp_path):
    data = tiny_data()
    done = fit(replace(TINY, epochs=1, holdout=16), data=data, out=tmp_path / "run", display=False)
    record = Record()
    again = fit(resume=tmp_path / "run", data=data, display=False, callbacks=[record])
    assert [e[0] for e in record.events] == ["fit_start", "fit_end"]
    assert again.rows == done.rows and same_weights(again.model, done.model)
    # fitted again from the held-out images (the resume has no logits kept), to the same values
    assert done.meta["trust"]["held_out"] == 16
    assert again.meta["trust"] == done.meta["trust"]
    assert json.loads((tmp_path / "run" / "model.json").read_text())["trust"] == done.meta["trust"]
    with pytest.raises(ConfigError, match="^This run was trained on data with fingerprint synthetic"):
        fit(resume=tmp_path / "run", data=replace(data, fingerprint="other"), display=False)


def test_a_data_folder_that_is_not_there_is_refused_before_anything_is_trained(tmp_path):
    with pytest.raises(ConfigError) as refused:
        fit(TINY, data_dir=tmp_path / "typo", save=False, display=False)
    assert str(refused.value) == f"Data folder {tmp_path / 'typo'} does not exist or is not a folder."


def test_a_run_whose_loss_blows_up_stops_with_that_epoch_saved_and_marked(tmp_path):
    run = tmp_path / "run"
    record = Record()
    far = "the training loss is .*, more than 4x where it started"
    with pytest.raises(DivergedError, match=f"Training diverged in epoch 1: {far}"):
        fit(replace(TINY, lr=1e6, schedule="constant"), data=tiny_data(), out=run,
            display=False, callbacks=[record])
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1] and re.match(far, rows[0]["diverged"])
    assert json.loads((run / "status.json").read_text())["status"] == "diverged"
    assert load_model(run)[1]["epoch"] == 1
    assert ("epoch_start", 2) not in record.events


def test_a_run_that_never_learns_is_judged_on_every_step_it_took(tmp_path):
    # every test image is class 0, so any accuracy is no better than always answering it; a run
    # is judged once it has taken 100 steps: here 8 epochs of 12 and 4 of its 9th
    data = make_data(n_train=96, n_test=16)
    data = replace(data, test_labels=torch.zeros_like(data.test_labels))
    recipe = replace(TINY, batch_size=8, steps=100, eval_every=0)
    with pytest.raises(DivergedError, match="in epoch 9: its test accuracy ends at"):
        fit(recipe, data=data, save=False, display=False)


BUDGET_REFUSED = ("A time budget plans a new run in one process: it cannot be combined with resume "
                  "or torchrun (pass the planned config.json instead).")


def test_under_torchrun_a_timed_checkpoint_or_a_time_budget_is_refused(monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError) as refused:
        fit(TINY, data=tiny_data(), save=False, display=False, checkpoint_every="10m")
    assert str(refused.value) == ("rank 0 of 2: --checkpoint-every saves part-way through an "
                                  "epoch in one process; under torchrun each epoch is saved as it "
                                  "ends.")
    with pytest.raises(ConfigError) as refused:  # the default recipe, as `fmnist train` runs it
        fit(data=tiny_data(), save=False, display=False, time_budget="5m")
    assert str(refused.value) == "rank 0 of 2: " + BUDGET_REFUSED


def test_a_saved_run_continues_with_its_own_recipe_folder_and_process_count_and_no_budget(
        tmp_path, monkeypatch):
    run = tmp_path / "run"
    fit(replace(TINY, epochs=1), data=tiny_data(), out=run, display=False)
    with pytest.raises(ConfigError) as refused:
        fit(resume=run, data=tiny_data(), display=False, time_budget=60)
    assert str(refused.value) == BUDGET_REFUSED
    for given in ({"recipe": TINY}, {"out": tmp_path / "elsewhere"}):
        with pytest.raises(ConfigError) as refused:
            fit(resume=run, data=tiny_data(), display=False, **given)
        assert str(refused.value) == ("fit(resume=...) continues a run with the recipe and folder "
                                      "it saved: do not pass recipe or out with it.")
    monkeypatch.setenv("RANK", "0")  # the process count sets the global batch and the schedule
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match=rf"^rank 0 of 2: Run {re.escape(str(run))} was trained "
                       r"by 1 process\(es\), this launch has 2"):
        fit(resume=run, data=tiny_data(), display=False)


def test_a_run_that_does_not_save_writes_nothing_even_given_a_folder(tmp_path):
    result = fit(replace(TINY, epochs=1), data=tiny_data(), out=tmp_path / "run", save=False,
                 display=False)
    assert result.run_dir is None and not (tmp_path / "run").exists()
    assert list(tmp_path.iterdir()) == []


def test_a_small_dataset_says_how_it_resized_the_run_unless_the_display_is_off(capsys):
    small = replace(TINY, epochs=1, min_steps=6)  # 96 images at batch 32: 3 steps an epoch
    assert len(fit(small, data=tiny_data(), save=False, display=False).rows) == 2
    assert capsys.readouterr().out == ""
    fit(small, data=tiny_data(), save=False)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("96 training images: batch 32 -> 32 (lr 0.05 -> 0.05), epochs 1 -> 2, "
                               "so the run takes at least 6 optimiser steps")
    assert [line[:11] for line in lines[1:]] == ["epoch   1/2", "epoch   2/2"]


def test_the_checkpoint_says_what_data_recipe_and_epoch_its_weights_come_from(tmp_path):
    result = fit(replace(TINY, epochs=1), data=tiny_data(), out=tmp_path / "run", display=False)
    _, meta = load_model(tmp_path / "run")
    assert meta == result.meta
    assert meta["classes"] == [f"c{i}" for i in range(10)]
    assert meta["dataset"] == "fashion-mnist" and meta["dataset_sha256"] == "synthetic"
    assert meta["recipe"] == "t" and meta["tta_flip"] is False
    assert meta["epoch"] == 1 and meta["metrics"] == result.rows[-1]
    assert set(meta["normalize"]) == {"mean", "std"} and meta["normalize"]["std"] > 0
    assert "evaluated_on" in meta and "trust" not in meta


def test_a_run_on_a_relative_csv_path_records_it_absolute_so_it_is_found_from_anywhere(
        tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_csv(tmp_path / "d", tiny_data())
    result = fit(replace(TINY, dataset="csv:d", epochs=1), out=tmp_path / "run", display=False)
    assert result.meta["dataset"] == f"csv:{tmp_path / 'd'}"
    assert json.loads((tmp_path / "run" / "model.json").read_text())["dataset"] == f"csv:{tmp_path / 'd'}"
