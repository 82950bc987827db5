"""The run folder in the real world: one owner at a time, epochs committed whole, and runs
stopped by a signal that resume exactly where they stopped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from synthetic import make_data

from fmnist import rundir
from fmnist.errors import ConfigError
from fmnist.recipes import Recipe
from fmnist.runs import read_run
from fmnist.train import Callback, fit

SMALL = Recipe(name="t", model="cnn", model_config={"widths": [8, 8, 16]}, epochs=2,
               batch_size=32, lr=0.05, bf16="off", eval_batch_size=64, channels_last=False,
               flip=False, tta_flip=False, device="cpu")


# ---- one owner ----------------------------------------------------------------------------------


def hold_claim(run: Path) -> subprocess.Popen:
    """Another process that claims `run` and keeps it until killed."""
    code = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from fmnist.rundir import Claim
        Claim(Path({str(run)!r}))
        print("claimed", flush=True)
        time.sleep(120)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "claimed\n"
    return proc


def test_a_second_process_is_refused_while_the_owner_lives_then_takes_over(tmp_path, capsys):
    run = tmp_path / "run"
    fit(SMALL, data=make_data(), out=run, display=False)
    rundir.write_status(run, "running")  # as the owner would say while it trains
    owner = hold_claim(run)
    try:
        with pytest.raises(ConfigError, match=rf"^Run folder {run} is being trained by process "
                                              rf"{owner.pid} on \S+ \(since "):
            fit(resume=run, data=make_data(), display=False)
        assert rundir.owner(run)["pid"] == owner.pid
        assert read_run(run).status == "running"
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait()
    assert rundir.owner(run) is None and read_run(run).status == "failed"  # died mid-run
    capsys.readouterr()
    fit(resume=run, data=make_data(), display=False)
    err = capsys.readouterr().err
    assert f"Taking over run folder {run} from process {owner.pid}" in err
    assert rundir.owner(run) is None  # let go at the end
    assert json.loads((run / "status.json").read_text())["status"] == "finished"


class LookAtOwner(Callback):
    def __init__(self) -> None:
        self.seen: list[dict | None] = []

    def on_epoch_end(self, state, row):
        self.seen.append(rundir.owner(state.run_dir))


def test_a_run_in_progress_holds_its_folder(tmp_path):
    look = LookAtOwner()
    fit(SMALL, data=make_data(), out=tmp_path / "run", display=False, callbacks=[look])
    assert [o and o["pid"] for o in look.seen] == [os.getpid()] * 2
    assert rundir.owner(tmp_path / "run") is None


def test_a_folder_has_one_claim_even_within_a_process(tmp_path):
    first = rundir.Claim(tmp_path)
    try:
        with pytest.raises(ConfigError, match="is being trained by process"):
            rundir.Claim(tmp_path)
    finally:
        first.release()
    rundir.Claim(tmp_path).release()  # free again


# ---- an epoch is committed whole ------------------------------------------------------------------


class Crash(BaseException):
    """A process dying at this point (BaseException: nothing in fmnist catches it)."""


class CrashAt(Callback):
    """From the start of epoch 2, count the filesystem changes (file creations, writes, fsyncs,
    renames, links) and die at the `at`-th: every point a crash can hit while an epoch is saved."""

    CALLS = ("open", "write", "fsync", "rename", "replace", "symlink", "mkdir")

    def __init__(self, monkeypatch: pytest.MonkeyPatch, at: int) -> None:
        self.monkeypatch, self.at, self.count = monkeypatch, at, 0

    def on_epoch_start(self, state):
        if state.epoch != 2:
            return
        for name in self.CALLS:
            real = getattr(os, name)

            def counted(*args, _real=real, **kwargs):
                self.count += 1
                if self.count == self.at:
                    raise Crash
                return _real(*args, **kwargs)

            self.monkeypatch.setattr(os, name, counted)


class CtrlCAt(Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_start(self, state):
        if state.epoch == self.epoch:
            raise KeyboardInterrupt


def saved_state(run: Path) -> tuple[int, int, int]:
    """The epoch of the weights' metadata, of resume.pt, and metrics.jsonl's line count."""
    from fmnist.checkpoint import ResumeState, load_model

    _, meta = load_model(run)
    rows = (run / "metrics.jsonl").read_text().splitlines()
    return meta["epoch"], ResumeState.load(run).epoch, len(rows)


def test_a_crash_anywhere_in_a_save_leaves_one_consistent_epoch(tmp_path, monkeypatch):
    import shutil

    data = make_data(n_train=64, n_test=32)
    whole = fit(SMALL, data=data, out=tmp_path / "whole", display=False)
    first = tmp_path / "first"  # the run stopped after epoch 1 (Ctrl-C), copied for each crash
    with pytest.raises(KeyboardInterrupt):
        fit(SMALL, data=data, out=first, display=False, callbacks=[CtrlCAt(2)])
    points = 0
    for at in range(1, 200):
        run = tmp_path / f"crash-{at}"
        shutil.copytree(first, run, symlinks=True)
        with monkeypatch.context() as m:
            try:
                fit(resume=run, data=data, display=False, callbacks=[CrashAt(m, at)])
            except Crash:
                pass
            else:  # the save of epoch 2 has fewer changes than `at`: every point was tried
                points = at - 1
                break
        epoch = saved_state(run)[0]
        assert saved_state(run) == (epoch, epoch, epoch)
        assert epoch in (1, 2)
        if epoch == 1:  # resumes from epoch 1 to the same weights as the run never stopped
            resumed = fit(resume=run, data=data, display=False)
            for k, v in whole.model.state_dict().items():
                assert torch.equal(resumed.model.state_dict()[k], v), (at, k)
            assert saved_state(run) == (2, 2, 2)
    assert points >= 8  # the save did go through several changes


# ---- stopped by a signal, resumed exactly ---------------------------------------------------------


class Draws(Callback):
    """Draws from the global RNG at every step, as dropout would: a resume that did not restore
    the RNG state would draw other numbers."""

    def __init__(self) -> None:
        self.draws: list[float] = []

    def on_step(self, state, step, loss, batch):
        self.draws.append(torch.rand(1).item())


class SignalAt(Callback):
    def __init__(self, epoch: int, step: int, signum: int = signal.SIGTERM) -> None:
        self.at, self.signum = (epoch, step), signum

    def on_step(self, state, step, loss, batch):
        if (state.epoch, step) == self.at:
            os.kill(os.getpid(), self.signum)  # delivered to this process, as `kill` would


@pytest.mark.parametrize("epoch, step", [(1, 0), (1, 2), (1, 3), (2, 1), (2, 2)])
def test_a_signal_saves_the_step_and_the_resume_is_exact(tmp_path, epoch, step):
    from fmnist.train.stops import Interrupted

    data = make_data(n_train=128, n_test=32)  # 4 steps an epoch, 2 epochs
    whole_draws = Draws()
    whole = fit(SMALL, data=data, out=tmp_path / "whole", display=False, callbacks=[whole_draws])
    after_whole = torch.rand(3)

    run, draws = tmp_path / "stopped", Draws()
    with pytest.raises(Interrupted) as stopped:
        fit(SMALL, data=data, out=run, display=False, callbacks=[draws, SignalAt(epoch, step)])
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "interrupted" and stopped.value.resume_from == run
    resumed = fit(resume=run, data=data, display=False, callbacks=[draws])
    after_resumed = torch.rand(3)

    for k, v in whole.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[k], v), k
    assert draws.draws == whole_draws.draws  # the global RNG went on where it stopped
    assert torch.equal(after_resumed, after_whole)
    strip = ("seconds", "train_seconds", "images_per_s")
    assert [{k: v for k, v in r.items() if k not in strip} for r in resumed.rows] == \
        [{k: v for k, v in r.items() if k not in strip} for r in whole.rows]


def test_sigterm_ends_the_command_with_its_resume_line(tmp_path):
    from synthetic import write_csv

    config = tmp_path / "r.json"
    config.write_text(json.dumps({"model": "cnn", "model_config": {"widths": [8, 8, 16]},
                                  "epochs": 200, "batch_size": 32, "bf16": "off",
                                  "channels_last": False, "flip": False, "tta_flip": False,
                                  "dataset": write_csv(tmp_path / "data")}))
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "fmnist", "train", "--config", str(config),
                             "--out", str(run), "--no-tensorboard"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:  # the first epoch's line: training is under way
        if line.startswith("epoch   1/200"):
            break
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM
    assert "Stopped by SIGTERM" in err and f"fmnist train --resume {run}" in err
    assert json.loads((run / "status.json").read_text())["status"] == "interrupted"
    assert rundir.owner(run) is None


def test_checkpoint_every_saves_part_way_without_stopping(tmp_path):
    seen = []

    class Watch(Callback):
        def on_step(self, state, step, loss, batch):
            if (state.run_dir / "resume.pt").exists():
                from fmnist.checkpoint import ResumeState

                r = ResumeState.load(state.run_dir)
                seen.append((r.epoch, r.step))

    data = make_data(n_train=128, n_test=32)
    result = fit(SMALL, data=data, out=tmp_path / "run", display=False, callbacks=[Watch()],
                 checkpoint_every=1e-9)  # due after every step
    assert len(result.rows) == 2  # it did not stop
    assert (0, 1) in seen and (1, 2) in seen  # saved part-way through epochs 1 and 2
    assert len(list((tmp_path / "run" / "checkpoints").iterdir())) <= 2  # older saves deleted


def test_the_previous_save_is_kept_and_older_ones_deleted(tmp_path):
    run = tmp_path / "run"
    fit(replace(SMALL, epochs=3), data=make_data(n_train=64, n_test=32), out=run, display=False)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["epoch-0002", "epoch-0003"]
    assert os.readlink(run / "current") == "checkpoints/epoch-0003"
    assert all(os.readlink(run / name) == f"current/{name}"
               for name in ("model.safetensors", "model.json", "resume.pt", "metrics.jsonl"))
