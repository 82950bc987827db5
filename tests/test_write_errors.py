"""A full, read-only or failing disk: every write is atomic and fails as one sentence saying
what was being written and where; training also says which epoch it can resume from."""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from synthetic import make_data
from test_train import SMALL, weights

from fmnist import atomic, datasets, plots
from fmnist.checkpoint import ResumeState, load_model, save_model
from fmnist.cli import main
from fmnist.errors import WriteError
from fmnist.export import export_onnx, export_pth
from fmnist.models import build_model
from fmnist.recipes import apply_overrides
from fmnist.train import Callback, fit

PAGE = 4096  # tmpfs hands out space a page at a time


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*.tmp"))


def fill(disk: Path, leave: int = 0) -> Path:
    """Take every free byte of `disk` but `leave` (whole pages); returns the file to delete to
    free it again. A file longer than `leave` then fails part-way, as on a real disk."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError as e:
            assert e.errno == errno.ENOSPC
    os.truncate(filler, filler.stat().st_size - leave)
    return filler


def pages(size: int) -> int:
    return -(-size // PAGE) * PAGE


def read_only(disk: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)


class FillDiskAt(Callback):
    """Fill the disk when epoch `epoch` starts, so that epoch's checkpoint cannot be written."""

    def __init__(self, disk: Path, epoch: int) -> None:
        self.disk, self.epoch, self.filler = disk, epoch, None

    def on_epoch_start(self, state) -> None:
        if state.epoch == self.epoch:
            self.filler = fill(self.disk)


def test_disk_full_during_training_is_one_sentence_and_resumes(small_disk, tmp_path):
    run = small_disk / "run"
    filler = FillDiskAt(small_disk, epoch=2)
    with pytest.raises(WriteError) as caught:
        fit(SMALL, data=make_data(), out=run, callbacks=[filler], display=False)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("Could not write the ")
    assert f"{run}" in message and "the disk is full." in message
    assert f"The last complete checkpoint is epoch 1 in {run}" in message
    assert f"`fmnist train --resume {run}`" in message
    # epoch 1's files are whole and load; no half-written temp file is left behind
    assert leftovers(run) == []
    assert load_model(run)[1]["epoch"] == 1
    assert ResumeState.load(run).epoch == 1

    # still full: resuming fails the same way, and loses nothing
    with pytest.raises(WriteError, match="last complete checkpoint is epoch 1"):
        fit(resume=run, data=make_data(), display=False)
    assert ResumeState.load(run).epoch == 1 and leftovers(run) == []

    filler.filler.unlink()  # space is back: the run ends exactly where an unbroken one does
    resumed = fit(resume=run, data=make_data(), display=False)
    straight = fit(SMALL, data=make_data(), out=tmp_path / "straight", display=False)
    wr, ws = weights(resumed.model), weights(straight.model)
    assert all(torch.equal(wr[k], ws[k]) for k in ws)
    assert [r["epoch"] for r in resumed.rows] == [1, 2, 3]


def test_a_read_only_run_folder_is_one_sentence(small_disk):
    run = small_disk / "run"
    fit(apply_overrides(SMALL, {"epochs": 1}), data=make_data(), out=run, display=False)
    read_only(small_disk)
    with pytest.raises(WriteError) as caught:
        fit(resume=run, data=make_data(), display=False)
    message = str(caught.value)
    assert "\n" not in message
    assert message == (f"Could not write the run claim {run / '.claim'}: the filesystem is "
                       f"read-only. Fix the folder, then continue with `fmnist train --resume "
                       f"{run}`.")
    assert load_model(run)[1]["epoch"] == 1 and leftovers(run) == []


# ---- every write site, with the disk filling up half way through the new file ----------------


def _model():
    torch.manual_seed(0)
    return build_model("cnn", {"widths": [4, 4, 8]})


META = {"classes": [f"c{i}" for i in range(10)], "normalize": {"mean": 0.0, "std": 1.0}}
SITES = {
    "checkpoint": (lambda d: save_model(d, _model(), META), "model.safetensors"),
    "picture": (lambda d: plots.save_training_curves(
        [{"epoch": 1, "train_loss": 1.0, "test_loss": 1.0, "test_accuracy": 0.5}], d / "curves.png"),
        "curves.png"),
    "exported model": (lambda d: export_pth(_model(), d / "model.pth"), "model.pth"),
}


@pytest.mark.parametrize("what", list(SITES))
def test_each_write_site_keeps_the_old_file_and_says_what_failed(what, small_disk):
    write, name = SITES[what]
    folder = small_disk / "site"
    folder.mkdir()
    old = b"the user's previous file"
    (folder / name).write_bytes(old)
    fill(small_disk, leave=PAGE)  # the new file's first page fits, the rest does not
    with pytest.raises(WriteError) as caught:
        write(folder)
    assert str(caught.value) == f"Could not write the {what} {folder / name}: the disk is full."
    assert (folder / name).read_bytes() == old
    assert sorted(p.name for p in folder.iterdir()) == [name]  # no temp file, nothing else


def test_onnx_export_on_a_full_disk(small_disk):
    pytest.importorskip("onnxscript")
    fill(small_disk, leave=PAGE)
    with pytest.raises(WriteError, match=r"^Could not write the exported model .*model\.onnx: the disk is full\.$"):
        export_onnx(_model(), META, small_disk / "model.onnx")
    assert not (small_disk / "model.onnx").exists() and leftovers(small_disk) == []


def test_export_cli_on_a_full_disk_is_one_line(make_checkpoint, small_disk, capsys):
    ckpt = make_checkpoint()
    fill(small_disk)
    code = main(["export", str(ckpt), "--format", "pth", "--out", str(small_disk / "m.pth")])
    err = capsys.readouterr().err
    assert code == 2
    assert err == f"fmnist: error: Could not write the exported model {small_disk / 'm.pth'}: the disk is full.\n"


def test_a_full_cache_disk_only_costs_the_cache(tmp_path, monkeypatch, small_disk, caplog):
    """The decoded-array cache saves time; a disk too full for it must not fail the load."""
    from idx_helpers import make_payloads, make_spec, write_files

    monkeypatch.setenv("FMNIST_CACHE_DIR", str(small_disk / "cache"))  # nothing decoded yet
    payloads = make_payloads()
    spec = make_spec("synthetic-full-cache", payloads)
    monkeypatch.setitem(datasets.SPECS, spec.name, spec)
    monkeypatch.setattr(datasets.finding, "DEBIAN_ROOT", tmp_path / "no-debian")
    write_files(tmp_path / "data", payloads)
    fill(small_disk, leave=PAGE)  # the decoded array is longer than a page
    images, labels = datasets.load_arrays(spec.name, "test", tmp_path / "data")
    assert images.shape == (10, 28, 28) and len(labels) == 10
    assert "decoded-array cache" in caplog.text and "the disk is full" in caplog.text
    assert not list((datasets.cache_dir() / "decoded").glob("*.npy"))
    assert leftovers(small_disk) == []
    np.testing.assert_array_equal(images, datasets.load_arrays(spec.name, "test", tmp_path / "data")[0])


def test_a_download_onto_a_full_disk_says_so_and_tries_no_other_mirror(tmp_path, monkeypatch):
    import pooch
    from idx_helpers import make_payloads, make_spec

    monkeypatch.setenv("FMNIST_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(datasets.finding, "DEBIAN_ROOT", tmp_path / "no-debian")
    spec = make_spec("synthetic-download", make_payloads(),
                     mirrors=("http://127.0.0.1:9/a/", "http://127.0.0.1:9/b/"))
    monkeypatch.setitem(datasets.SPECS, spec.name, spec)
    tried = []

    def retrieve(url, **kwargs):  # pooch writing its file when the disk fills up
        tried.append(url)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pooch, "retrieve", retrieve)
    with pytest.raises(WriteError, match=r"^Could not write the download .*: the disk is full\.$"):
        datasets.load_arrays(spec.name, "test")
    assert len(tried) == 1  # the second mirror would fill the same disk


def test_write_bytes_makes_folders_and_gives_the_usual_file_mode(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        path = atomic.write_bytes(tmp_path / "a" / "b" / "f.json", b"{}")
    finally:
        os.umask(old)
    assert path.read_bytes() == b"{}" and (path.stat().st_mode & 0o777) == 0o644
    assert leftovers(tmp_path) == []


def test_the_message_names_the_file_that_did_not_fit(small_disk, tmp_path):
    # the disk fills up between the weights and their metadata: room for the weights only
    weights = save_model(tmp_path / "same-model", _model(), META).stat().st_size
    fill(small_disk, leave=pages(weights))
    with pytest.raises(WriteError, match=r"^Could not write the checkpoint metadata .*model\.json: the disk is full\.$"):
        save_model(small_disk / "ckpt", _model(), META)
    with pytest.raises(WriteError, match=r"^Could not write the file .*x\.json: the disk is full\.$"):
        atomic.write_text(small_disk / "x.json", "x")


def test_a_save_on_a_full_disk_names_the_file_and_keeps_the_last_save_whole(small_disk):
    from fmnist import rundir

    run = small_disk / "run"
    fit(apply_overrides(SMALL, {"epochs": 1}), data=make_data(), out=run, display=False)
    fill(small_disk)
    files = {"model.safetensors": os.urandom(200_000), "model.json": b"{}", "resume.pt": b"x"}
    with pytest.raises(WriteError) as caught:
        rundir.commit(run, files, "epoch-0002")
    assert str(caught.value) == (f"Could not write the checkpoint {run / 'model.safetensors'}: "
                                 "the disk is full.")
    assert load_model(run)[1]["epoch"] == 1 and ResumeState.load(run).epoch == 1
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["epoch-0001"]  # no temp
