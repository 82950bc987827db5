"""A run folder's life as its user meets it: where a run lands when no --out is given (a dated
folder under runs/, `runs/latest` pointing at the newest), which --out folders are taken and
what the refusal says, who a refused resume is told holds the folder, the file modes of a save,
and a save on a disk that runs out of room, at each stage of the save."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
from test_run_folder import hold_claim
from test_stops_behaviour import TINY, tiny_data

from fmnist import rundir
from fmnist.errors import ConfigError, WriteError
from fmnist.train import Callback, fit
from fmnist.train.stops import Interrupted

ONE_EPOCH = replace(TINY, epochs=1)


class StopAfterEpoch(Callback):
    """Ctrl-C (SIGINT to this process) as epoch `epoch` ends: the run stops with that epoch saved."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_end(self, state, row):
        if state.epoch == self.epoch:
            os.kill(os.getpid(), signal.SIGINT)


# ---- no --out: a dated folder under runs/ -------------------------------------------------------


def test_a_run_without_out_lands_in_a_dated_folder_under_runs_and_latest_follows_it(
        tmp_path, monkeypatch):
    """Two runs started in the same second get `-2`, `-3`: the folders of the next minute are
    made beforehand, so whichever second the run starts in, its plain name is taken."""
    monkeypatch.chdir(tmp_path)
    start = dt.datetime.now()
    taken = {(start + dt.timedelta(seconds=s)).strftime("%Y%m%d-%H%M%S") for s in range(-1, 60)}
    for stamp in taken:
        (tmp_path / "runs" / f"{stamp}-t").mkdir(parents=True)

    first = fit(ONE_EPOCH, data=tiny_data(), display=False).run_dir
    assert first is not None and first.parent == Path("runs")
    found = re.fullmatch(r"(\d{8}-\d{6})-t-2", first.name)
    assert found and found[1] in taken, first.name
    assert (first / rundir.WEIGHTS).is_file()
    assert (tmp_path / "runs" / "latest").resolve() == (tmp_path / first).resolve()

    (tmp_path / "runs" / f"{found[1]}-t-2-x").mkdir()  # a name that only starts like it
    second = fit(ONE_EPOCH, data=tiny_data(), display=False).run_dir
    assert second is not None and second != first
    assert re.fullmatch(r"\d{8}-\d{6}-t-[23]", second.name), second.name
    assert (tmp_path / "runs" / "latest").resolve() == (tmp_path / second).resolve()
    assert os.readlink(tmp_path / "runs" / "latest") == second.name  # relative: the tree can move


# ---- which --out folders are taken --------------------------------------------------------------


def test_an_existing_empty_folder_can_be_the_out_folder(tmp_path):
    out = tmp_path / "made-for-it"
    out.mkdir()
    fit(ONE_EPOCH, data=tiny_data(), out=out, display=False)
    assert (out / rundir.WEIGHTS).is_file() and rundir.read_status(out)["status"] == "finished"
    for name in (rundir.CONFIG, rundir.STATUS):  # one field a line, as the docs show them
        text = (out / name).read_text()
        assert text == json.dumps(json.loads(text), indent=2) + "\n", name
    assert json.loads((out / rundir.CONFIG).read_text())["name"] == "t"


def _only_weights(out: Path) -> None:  # a model copied out of a run folder
    out.mkdir()
    (out / rundir.WEIGHTS).write_bytes(b"weights")


def _only_resume(out: Path) -> None:  # a run whose weights were deleted
    out.mkdir()
    (out / rundir.RESUME).write_bytes(b"state")


def _notes(out: Path) -> None:
    out.mkdir()
    (out / "notes.txt").write_text("mine")


def _a_file(out: Path) -> None:
    out.write_text("not a folder")


@pytest.mark.parametrize("make, says", [
    (_only_weights, "holds a run"), (_only_resume, "holds a run"),
    (_notes, "not empty"), (_a_file, "not empty"),
])
def test_an_out_folder_with_something_in_it_is_refused_with_what_to_do(tmp_path, make, says):
    out = tmp_path / "out"
    make(out)
    before = sorted(os.listdir(out)) if out.is_dir() else out.read_text()
    with pytest.raises(ConfigError) as refused:
        fit(ONE_EPOCH, data=tiny_data(), out=out, display=False)
    if says == "holds a run":
        assert str(refused.value) == (f"Run folder {out} already holds a run: use --resume {out} "
                                      "to continue it, or pick another --out.")
    else:
        assert str(refused.value) == (f"--out {out} exists and is not an empty folder: pick a new "
                                      "folder, so nothing in it is overwritten.")
    assert (sorted(os.listdir(out)) if out.is_dir() else out.read_text()) == before


# ---- who holds the folder -----------------------------------------------------------------------


def test_a_refused_resume_names_the_owner_its_host_and_since_when_and_then_takes_over(
        tmp_path, capsys):
    run = tmp_path / "run"
    fit(ONE_EPOCH, data=tiny_data(), out=run, display=False)
    owner = hold_claim(run)
    try:
        since = rundir.owner(run)["started"]
        with pytest.raises(ConfigError) as refused:
            fit(resume=run, data=tiny_data(), display=False)
    finally:
        owner.send_signal(signal.SIGKILL)  # kill -9: its claim is left with its details in it
        owner.wait()
    host = socket.gethostname()
    assert str(refused.value) == (
        f"Run folder {run} is being trained by process {owner.pid} on {host} (since {since}): "
        "wait for it to end, or stop it first.")
    capsys.readouterr()
    fit(resume=run, data=tiny_data(), display=False)
    assert (f"Taking over run folder {run} from process {owner.pid} on {host} (since {since}), "
            "which is no longer running.\n") in capsys.readouterr().err


def test_a_claim_file_holding_something_else_is_taken_over_quietly(tmp_path, capsys):
    run = tmp_path / "run"
    fit(ONE_EPOCH, data=tiny_data(), out=run, display=False)
    (run / rundir.CLAIM).write_text("[1]")  # JSON, but not the owner's record
    capsys.readouterr()
    fit(resume=run, data=tiny_data(), display=False)
    assert "Taking over" not in capsys.readouterr().err
    assert rundir.owner(run) is None


def test_an_owner_that_wrote_no_details_is_another_process(tmp_path):
    """A process that holds the lock but has not written who it is (an older version's claim)."""
    run = tmp_path / "run"
    fit(ONE_EPOCH, data=tiny_data(), out=run, display=False)
    code = textwrap.dedent(f"""
        import fcntl, os, time
        fd = os.open({str(run / rundir.CLAIM)!r}, os.O_RDWR | os.O_CREAT)
        os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_EX)
        print("locked", flush=True)
        time.sleep(120)
    """)
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        with pytest.raises(ConfigError) as refused:
            fit(resume=run, data=tiny_data(), display=False)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert str(refused.value) == (f"Run folder {run} is being trained by another process: wait "
                                  "for it to end, or stop it first.")


# ---- what a save leaves -------------------------------------------------------------------------


def test_a_saves_files_get_the_usual_file_mode(tmp_path):
    """rw for whoever the umask allows, never executable (as `open(..., "w")` would make them)."""
    umask = os.umask(0)
    os.umask(umask)
    run = tmp_path / "run"
    fit(ONE_EPOCH, data=tiny_data(), out=run, display=False)
    for name in (rundir.WEIGHTS, rundir.META, rundir.RESUME, rundir.METRICS, rundir.CLAIM):
        assert stat.S_IMODE((run / name).stat().st_mode) == 0o666 & ~umask, name


# ---- a disk that fills up -----------------------------------------------------------------------


@pytest.fixture
def tiny_disk(tmp_path: Path):
    """A tmpfs of 4 MiB and 64 inodes: a filesystem that really fills up, with space or with files
    (needs root, as here and in CI)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,nr_inodes=64", "tmpfs",
                           str(mount)], capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def take_every_inode(disk: Path) -> Path:
    """Make empty files until the disk can hold no more: no new file or folder fits, though
    there is space. Returns the folder to delete to free them."""
    fillers = disk / "fillers"
    fillers.mkdir()
    with contextlib.suppress(OSError):
        for i in range(10_000):
            (fillers / str(i)).touch()
    return fillers


class TakeInodesAt(Callback):
    """As epoch `epoch` starts, leave `free` inodes on the disk: its save gets that far."""

    def __init__(self, disk: Path, epoch: int, free: int) -> None:
        self.disk, self.epoch, self.free = disk, epoch, free

    def on_epoch_start(self, state) -> None:
        if state.epoch == self.epoch:
            fillers = take_every_inode(self.disk)
            for name in sorted(os.listdir(fillers), key=int)[-self.free:] if self.free else []:
                (fillers / name).unlink()


# A save of a finished epoch takes 5 inodes (its folder and 4 files), then one more for a moment
# to switch `current`: with 0 free it cannot make its folder, with 1 it makes the folder and
# not its first file, with 5 it has renamed the folder into place but cannot switch to it (as a
# kill -9 at that point would leave it).
@pytest.mark.parametrize("free, names, saves_then, saves_after_resume", [
    (0, "", ["epoch-0001"], ["epoch-0001", "epoch-0002"]),
    (1, "/resume.pt", ["epoch-0001"], ["epoch-0001", "epoch-0002"]),
    (5, "", ["epoch-0001", "epoch-0002"], ["epoch-0001", "epoch-0002-2"]),
])
def test_a_save_on_a_disk_out_of_inodes_says_where_keeps_epoch_1_and_resumes(
        tiny_disk, free, names, saves_then, saves_after_resume):
    run = tiny_disk / "run"
    with pytest.raises(WriteError) as caught:
        fit(TINY, data=tiny_data(), out=run, display=False,
            callbacks=[TakeInodesAt(tiny_disk, 2, free)])
    assert str(caught.value) == (
        f"Could not write the checkpoint {run}{names}: the disk is full. The last complete "
        f"checkpoint is epoch 1 in {run}: free space (or fix the folder), then continue with "
        f"`fmnist train --resume {run}`.")
    store = run / rundir.CHECKPOINTS
    assert sorted(os.listdir(store)) == saves_then  # no temporary folder left
    assert os.readlink(run / rundir.CURRENT) == f"{rundir.CHECKPOINTS}/epoch-0001"
    shutil.rmtree(tiny_disk / "fillers")
    fit(resume=run, data=tiny_data(), display=False)
    assert rundir.read_status(run)["status"] == "finished"
    # the resumed epoch 2 is saved beside a stray epoch-0002/, not into it
    assert sorted(os.listdir(store)) == saves_after_resume
    assert os.readlink(run / rundir.CURRENT) == f"{rundir.CHECKPOINTS}/{saves_after_resume[-1]}"
    assert "error" not in rundir.read_status(run)


def test_a_run_whose_config_does_not_fit_says_nothing_was_saved(tiny_disk):
    from test_write_errors import fill

    out = tiny_disk / "run"
    fill(tiny_disk)
    with pytest.raises(WriteError) as caught:
        fit(ONE_EPOCH, data=tiny_data(), out=out, display=False)
    assert str(caught.value) == (f"Could not write the run config {out / rundir.CONFIG}: the disk "
                                 f"is full. No epoch was saved yet; start again once {out} can be "
                                 "written.")


# ---- status.json --------------------------------------------------------------------------------


class CopyWhileRunning(Callback):
    """Copies the run folder, but not its .claim, as epoch 1 ends: a folder as a version of
    fmnist from before claims left it, its trainer (this process) still alive."""

    def __init__(self, to: Path) -> None:
        self.to = to

    def on_epoch_end(self, state, row):
        if state.epoch == 1:
            shutil.copytree(state.run_dir, self.to, symlinks=True,
                            ignore=shutil.ignore_patterns(rundir.CLAIM))


def test_status_names_the_process_and_host_so_a_folder_without_a_claim_lists_as_running(
        tmp_path):
    from fmnist.runs import read_run

    copy = tmp_path / "older"
    fit(TINY, data=tiny_data(), out=tmp_path / "run", display=False,
        callbacks=[CopyWhileRunning(copy)])
    said = rundir.read_status(copy)
    assert (said["status"], said["pid"], said["host"]) == ("running", os.getpid(),
                                                          socket.gethostname())
    assert read_run(copy).status == "running"


class Bug(Callback):
    def on_epoch_start(self, state):
        if state.epoch == 2:
            raise RuntimeError("a bug in a callback")


def test_a_failed_run_resumed_to_its_end_no_longer_carries_the_error(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(RuntimeError):
        fit(TINY, data=tiny_data(), out=run, display=False, callbacks=[Bug()])
    failed = rundir.read_status(run)
    assert (failed["status"], failed["error"]) == ("failed", "RuntimeError: a bug in a callback")
    fit(resume=run, data=tiny_data(), display=False)
    assert rundir.read_status(run)["status"] == "finished"
    assert "error" not in rundir.read_status(run)


def test_a_status_file_that_is_not_a_record_is_written_whole_again(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(Interrupted):
        fit(TINY, data=tiny_data(), out=run, display=False,
            callbacks=[StopAfterEpoch(1)])
    (run / rundir.STATUS).write_text("[]")  # JSON, but not what fmnist writes
    assert rundir.read_status(run) == {}
    fit(resume=run, data=tiny_data(), display=False)
    assert rundir.read_status(run)["status"] == "finished"


def test_a_run_without_out_on_a_disk_with_one_inode_left_says_its_config_did_not_fit(
        tiny_disk, monkeypatch):
    """The run's folder takes the last inode: runs/latest cannot be made (a run does without it)
    and config.json cannot either, which is the one sentence the user gets."""
    monkeypatch.chdir(tiny_disk)
    (tiny_disk / "runs").mkdir()
    fillers = take_every_inode(tiny_disk)
    (fillers / sorted(os.listdir(fillers), key=int)[-1]).unlink()
    with pytest.raises(WriteError) as caught:
        fit(ONE_EPOCH, data=tiny_data(), display=False)
    made = [p for p in os.listdir(tiny_disk / "runs")]
    assert len(made) == 1 and not (tiny_disk / "runs" / "latest").exists()
    run = Path("runs") / made[0]
    assert str(caught.value) == (f"Could not write the run config {run / rundir.CONFIG}: the disk "
                                 f"is full. No epoch was saved yet; start again once {run} can be "
                                 "written.")
