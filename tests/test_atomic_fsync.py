"""Writes that survive a power cut: each file's bytes are flushed to the disk (fsync) before the
rename that puts it in place, and its folder after it.

A power cut cannot be staged in a test (a crash raised inside Python leaves unflushed data in the
page cache, where the next read finds it): these tests watch the calls instead, recording which
file or folder each `os.fsync` and `os.replace`/`os.rename` reached, in order."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fmnist import atomic, rundir


@pytest.fixture
def disk_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """("fsync", path) and ("rename", target) in the order they happen."""
    calls: list[tuple[str, str]] = []
    fsync, replace, rename = os.fsync, os.replace, os.rename

    def watched_fsync(fd: int) -> None:
        calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        fsync(fd)

    def watched_replace(src, dst, **kwargs) -> None:
        replace(src, dst, **kwargs)
        calls.append(("rename", os.path.realpath(dst)))

    def watched_rename(src, dst, **kwargs) -> None:
        rename(src, dst, **kwargs)
        calls.append(("rename", os.path.realpath(dst)))

    monkeypatch.setattr(os, "fsync", watched_fsync)
    monkeypatch.setattr(os, "replace", watched_replace)
    monkeypatch.setattr(os, "rename", watched_rename)
    return calls


def test_a_file_is_flushed_before_it_is_renamed_into_place_and_its_folder_after(
        tmp_path: Path, disk_calls: list[tuple[str, str]]) -> None:
    target = tmp_path / "status.json"
    atomic.write_text(target, "{}\n")
    assert target.read_text() == "{}\n"
    kinds = [kind for kind, _ in disk_calls]
    assert kinds == ["fsync", "rename", "fsync"], disk_calls
    flushed_file, renamed, flushed_folder = (path for _, path in disk_calls)
    assert Path(flushed_file).parent == tmp_path and Path(flushed_file).name.startswith(".status.json.")
    assert renamed == str(target.resolve())
    assert flushed_folder == str(tmp_path.resolve())


def test_a_save_flushes_every_file_and_folder_before_and_after_its_switch(
        tmp_path: Path, disk_calls: list[tuple[str, str]]) -> None:
    run = tmp_path / "run"
    run.mkdir()
    final = rundir.commit(run, {"model.safetensors": b"w" * 100, "resume.pt": b"r" * 10},
                          "epoch-0001")
    flushed = [path for kind, path in disk_calls if kind == "fsync"]
    first_rename = next(i for i, (kind, _) in enumerate(disk_calls) if kind == "rename")
    before = [path for kind, path in disk_calls[:first_rename] if kind == "fsync"]
    # both files, then their folder, flushed before the folder is renamed to its final name
    assert {Path(p).name for p in before} >= {"model.safetensors", "resume.pt"}
    assert any(Path(p).name.startswith(".epoch-0001.") for p in before), before
    # after the switch: the checkpoints folder (the rename) and the run folder (the links)
    assert str((run / rundir.CHECKPOINTS).resolve()) in flushed[len(before):]
    assert flushed[-1] == str(run.resolve())
    assert final.name == "epoch-0001"
