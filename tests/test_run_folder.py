"""The run folder in the real world: one owner at a time, epochs committed whole, and runs
stopped by a signal that resume exactly where they stopped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
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
