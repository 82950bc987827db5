"""A stop means the same at every moment of `fit`: a SIGTERM during set-up, a step, an epoch's
evaluation or its save ends the run as interrupted with the last consistent state saved; one
that comes after the last step (during the last evaluation, its save, the calibration or the
end-of-run callbacks) lets the run finish its bookkeeping and say finished. Either way the
process gets `Interrupted` (exit 128 + signal from the command line)."""

from __future__ import annotations

import json
import os
import signal
from dataclasses import replace

import pytest
from synthetic import write_csv
from test_stops_behaviour import TINY, SignalAt, tiny_data

from fmnist import rundir
from fmnist.cli import main
from fmnist.train import Callback, Interrupted, fit
from fmnist.train import loop as loop_module

RECIPE = replace(TINY, holdout=16)  # held-out images: the run ends with its calibration


def sigterm() -> None:
    os.kill(os.getpid(), signal.SIGTERM)  # delivered to this process, as `kill` would


def signal_during(monkeypatch, name: str, when=lambda *a, **k: True) -> None:
    """Send SIGTERM while the loop's `name` runs (its first call for which `when` holds)."""
    real = getattr(loop_module, name)
    sent = []

    def wrapped(*args, **kwargs):
        if not sent and when(*args, **kwargs):
            sent.append(True)
            sigterm()
        return real(*args, **kwargs)

    monkeypatch.setattr(loop_module, name, wrapped)


class SignalAtEnd(Callback):
    def on_fit_end(self, state):
        sigterm()


def status(run):
    return json.loads((run / rundir.STATUS).read_text())


def stopped_run(tmp_path, callbacks=()):
    run = tmp_path / "run"
    with pytest.raises(Interrupted) as stopped:
        fit(RECIPE, data=tiny_data(), out=run, display=False, callbacks=list(callbacks))
    return run, stopped.value


def test_during_set_up_nothing_is_trained_and_the_folder_says_interrupted(tmp_path, monkeypatch):
    signal_during(monkeypatch, "set_up")
    run, e = stopped_run(tmp_path)
    assert (e.signum, e.finished, e.resume_from) == (signal.SIGTERM, False, None)
    assert str(e) == f"Stopped by SIGTERM: before the first step; {run} holds nothing to continue from."
    assert status(run)["status"] == "interrupted" and not (run / rundir.RESUME).exists()


def test_during_a_step_its_state_is_saved_and_the_run_continues_from_it(tmp_path):
    run, e = stopped_run(tmp_path, [SignalAt(1, 1, signal.SIGTERM)])
    assert not e.finished and e.resume_from == run
    assert (status(run)["status"], status(run)["step"]) == ("interrupted", 2)
    assert len(fit(resume=run, data=tiny_data(), display=False).rows) == 2


@pytest.mark.parametrize("phase", ["evaluate_epoch", "save_state"])
def test_during_an_epochs_evaluation_or_save_the_epoch_is_saved_then_the_run_stops(
        tmp_path, monkeypatch, phase):
    signal_during(monkeypatch, phase, lambda *a, **k: True)  # epoch 1's, not the last
    run, e = stopped_run(tmp_path)
    assert not e.finished and e.resume_from == run
    assert str(e) == f"Stopped by SIGTERM: saved at epoch 1 in {run}."
    assert (status(run)["status"], status(run)["epoch"]) == ("interrupted", 1)
    rows = fit(resume=run, data=tiny_data(), display=False).rows
    assert [r["epoch"] for r in rows] == [1, 2] and status(run)["status"] == "finished"


def last_epochs(*args, **kwargs):
    """The call of `evaluate_epoch` or `save_state` that belongs to the last epoch."""
    state = args[0]
    return kwargs.get("final", False) if not hasattr(state, "epoch") else state.epoch == 2


@pytest.mark.parametrize("phase", [
    ("the last step", None),
    ("the last epoch's evaluation", "evaluate_epoch"),
    ("the last epoch's save", "save_state"),
    ("the calibration", "calibrate"),
    ("the end-of-run callbacks", "callbacks"),
], ids=lambda p: p[0])
def test_after_the_last_step_the_run_finishes_its_bookkeeping_then_stops(
        tmp_path, monkeypatch, phase):
    _, where = phase
    callbacks: list[Callback] = []
    if where is None:
        callbacks = [SignalAt(2, 2, signal.SIGTERM)]  # 3 steps an epoch: the run's last
    elif where == "callbacks":
        callbacks = [SignalAtEnd()]
    else:
        signal_during(monkeypatch, where, last_epochs if where != "calibrate" else lambda *a: True)
    run, e = stopped_run(tmp_path, callbacks)
    assert e.finished and e.resume_from is None
    assert str(e) == f"Stopped by SIGTERM: after the last step; the run finished in {run}."
    assert (status(run)["status"], status(run)["epoch"]) == ("finished", 2)
    meta = json.loads((run / rundir.META).read_text())
    assert meta["epoch"] == 2 and "trust" in meta  # calibrated, as a run never stopped is
    assert (run / rundir.CURVES).is_file()  # the end-of-run callbacks ran


def test_the_command_exits_128_plus_the_signal_in_both_cases_and_says_how_to_go_on(
        tmp_path, monkeypatch, capsys):
    config = tmp_path / "r.json"
    fields = {k: v for k, v in vars(RECIPE).items() if k not in ("name", "dataset")}
    config.write_text(json.dumps({**fields, "dataset": write_csv(tmp_path / "data", tiny_data())}))
    train = ["train", "--config", str(config), "--no-tensorboard", "--out"]

    signal_during(monkeypatch, "calibrate")
    finished = tmp_path / "finished"
    assert main([*train, str(finished)]) == 128 + signal.SIGTERM
    err = capsys.readouterr().err
    assert f"Stopped by SIGTERM: after the last step; the run finished in {finished}." in err
    assert "--resume" not in err and status(finished)["status"] == "finished"

    monkeypatch.undo()
    signal_during(monkeypatch, "evaluate_epoch")
    stopped = tmp_path / "stopped"
    assert main([*train, str(stopped)]) == 128 + signal.SIGTERM
    err = capsys.readouterr().err
    assert (f"Stopped by SIGTERM: saved at epoch 1 in {stopped}. Continue with "
            f"`fmnist train --resume {stopped}`.") in err
    assert err.strip().count("\n") == 0  # one sentence, one line
