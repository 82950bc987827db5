"""What stopping a run leaves behind for the process and the folder: the process's own signal
handlers back once `fit` returns, a timed checkpoint that waits its interval again after each
save, and a claim let go so cleanly that the next resume has nobody to take over from."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from dataclasses import replace

import pytest
from synthetic import make_data

from fmnist import rundir
from fmnist.recipes import Recipe
from fmnist.train import Callback, fit
from fmnist.train.stops import SIGNALS, Interrupted, Stops

TINY = Recipe(name="t", model="cnn", model_config={"widths": [4, 4, 8]}, epochs=2, batch_size=32,
              lr=0.05, bf16="off", eval_batch_size=64, channels_last=False, flip=False,
              tta_flip=False, device="cpu", min_steps=0)


def tiny_data():
    return make_data(n_train=96, n_test=32)  # 3 steps an epoch


class SignalAt(Callback):
    """Sends `signum` to this process (as `kill` or Ctrl-C would) at `(epoch, step)`."""

    def __init__(self, epoch: int, step: int, signum: int) -> None:
        self.at, self.signum = (epoch, step), signum

    def on_step(self, state, step, loss, batch):
        if (state.epoch, step) == self.at:
            os.kill(os.getpid(), self.signum)


def test_after_fit_returns_the_process_has_its_own_signal_handlers_again():
    def mine(signum, frame):
        seen.append(signum)

    seen: list[int] = []
    before = {s: signal.signal(s, mine) for s in SIGNALS}
    try:
        fit(TINY, data=tiny_data(), save=False, display=False)
        assert {s: signal.getsignal(s) for s in SIGNALS} == {s: mine for s in SIGNALS}
        os.kill(os.getpid(), signal.SIGHUP)  # a real signal now reaches the program's handler
        deadline = time.monotonic() + 5
        while not seen and time.monotonic() < deadline:
            time.sleep(0.01)
        assert seen == [signal.SIGHUP]
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def test_ctrl_c_interrupts_the_program_again_once_an_interrupted_fit_has_returned(tmp_path):
    # Python's own Ctrl-C handler, whatever this process was started with (a background job
    # starts with SIGINT ignored)
    started_with = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(Interrupted):
            fit(TINY, data=tiny_data(), out=tmp_path / "run", display=False,
                callbacks=[SignalAt(1, 1, signal.SIGINT)])
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        with pytest.raises(KeyboardInterrupt):  # not a note for a run that has ended
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
    finally:
        signal.signal(signal.SIGINT, started_with)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_timed_checkpoint_waits_its_whole_interval_again_after_each_save():
    """--checkpoint-every 10m over an hour of one-minute steps saves 6 times, not at every step
    once the first ten minutes are up. The loop asks `due()` after each step and restarts the
    timer after it saved (fmnist.train.loop)."""
    clock = FakeClock()
    stops = Stops(checkpoint_every=600, clock=clock)
    saved_at = []
    for minute in range(1, 61):
        clock.now += 60
        if stops.due():
            saved_at.append(minute)
            stops.restart_timer()
            stops.raise_if_asked()  # no signal came: goes on
    assert saved_at == [10, 20, 30, 40, 50, 60]


def test_stops_catches_the_signals_while_entered():
    with Stops() as stops:
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.monotonic() + 5
        while stops.signum is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert stops.signum == signal.SIGTERM and stops.due()
        with pytest.raises(Interrupted) as stopped:
            stops.raise_if_asked()
    # the bare stop: where the run stopped is for the loop's caller to say
    assert str(stopped.value) == "Stopped by SIGTERM"
    assert (stopped.value.signum, stopped.value.finished) == (signal.SIGTERM, False)
    assert stopped.value.resume_from is None


def test_no_timed_checkpoint_before_its_interval_and_none_without_one():
    clock = FakeClock()
    every_ten, never = Stops(checkpoint_every=600, clock=clock), Stops(clock=clock)
    clock.now += 599
    assert not every_ten.due() and not never.due()
    clock.now += 1
    assert every_ten.due() and not never.due()


def test_a_run_with_an_hourly_checkpoint_saves_only_at_its_epochs(tmp_path):
    seen = []

    class Watch(Callback):
        def on_step(self, state, step, loss, batch):
            seen.append(os.path.realpath(state.run_dir / rundir.CURRENT))

    fit(TINY, data=tiny_data(), out=tmp_path / "run", display=False, callbacks=[Watch()],
        checkpoint_every="1h")
    names = {os.path.basename(p) for p in seen}
    assert names <= {rundir.CURRENT, "epoch-0001"}  # no part-epoch save: "epoch-0001-step-..."


def test_a_run_stopped_by_ctrl_c_lets_go_so_its_resume_takes_over_from_nobody(tmp_path, capsys):
    run = tmp_path / "run"
    with pytest.raises(Interrupted) as stopped:
        fit(TINY, data=tiny_data(), out=run, display=False,
            callbacks=[SignalAt(2, 1, signal.SIGINT)])
    assert stopped.value.signum == signal.SIGINT and stopped.value.resume_from == run
    assert str(stopped.value) == f"Stopped by SIGINT: saved at epoch 2, step 2 in {run}."
    assert json.loads((run / rundir.STATUS).read_text())["step"] == 2  # the step, not the epoch
    claim = (run / rundir.CLAIM).read_text()
    assert "pid" not in claim and "host" not in claim, claim
    assert rundir.owner(run) is None
    capsys.readouterr()
    fit(resume=run, data=tiny_data(), display=False)
    err = capsys.readouterr().err
    assert "Taking over" not in err and "no longer running" not in err, err
    assert (run / rundir.CLAIM).read_text() == ""  # and let go again at the end


def test_a_run_that_fails_lets_go_of_its_folder_too(tmp_path, capsys):
    class Boom(Callback):
        def on_epoch_end(self, state, row):
            raise RuntimeError("boom")

    run = tmp_path / "run"
    with pytest.raises(RuntimeError, match="boom"):
        fit(replace(TINY, epochs=1), data=tiny_data(), out=run, display=False,
            callbacks=[Boom()])
    assert (run / rundir.CLAIM).read_text() == ""


def test_a_second_ctrl_c_stops_at_once_without_saving_the_step(tmp_path, capsys):
    class CtrlCTwice(Callback):
        def on_step(self, state, step, loss, batch):
            if (state.epoch, step) == (2, 1):
                os.kill(os.getpid(), signal.SIGINT)
                os.kill(os.getpid(), signal.SIGINT)

    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt) as stopped:
        fit(TINY, data=tiny_data(), out=run, display=False, callbacks=[CtrlCTwice()])
    assert not isinstance(stopped.value, Interrupted)  # it did not wait to save the step
    assert os.readlink(run / rundir.CURRENT) == "checkpoints/epoch-0001"
    assert f"Epoch 1 is the last saved in {run}" in capsys.readouterr().err


def test_a_callback_that_ends_the_run_leaves_its_status_and_reason(tmp_path):
    from fmnist.train import EndRun

    class Prune(Callback):
        def on_epoch_start(self, state):
            if state.epoch == 2:
                raise EndRun("pruned", "below the median")

    run = tmp_path / "run"
    with pytest.raises(EndRun, match="below the median") as ended:
        fit(TINY, data=tiny_data(), out=run, display=False, callbacks=[Prune()])
    assert ended.value.status == "pruned"
    status = json.loads((run / rundir.STATUS).read_text())
    assert (status["status"], status["reason"], status["epoch"]) == ("pruned", "below the median", 1)


def test_fit_runs_in_a_thread_where_signals_cannot_be_handled():
    """A notebook's or a server's worker thread: Python allows signal handlers only in the main
    thread, so there the run simply does not catch them."""
    outcome: list = []
    before = signal.getsignal(signal.SIGINT)
    worker = threading.Thread(target=lambda: outcome.append(
        fit(TINY, data=tiny_data(), save=False, display=False)))
    worker.start()
    worker.join(120)
    assert len(outcome) == 1 and len(outcome[0].rows) == TINY.epochs
    assert signal.getsignal(signal.SIGINT) is before
