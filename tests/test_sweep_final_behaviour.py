"""The final run of a sweep, as a worker meets it: the worker that holds the study's claim
trains the best trial's settings on all training images from `--data-dir`, evaluates once on
the test set and records it in the study; a rerun reads the finished run instead of training
again; a run a signal stopped is continued from its save, one stopped in its set-up (nothing
saved) is started again; a worker that does not hold the claim says who trains it, or who
trained it and how well. Claims pass on only from a worker known to have ended (a process on
this host that is gone), and a chain of such takeovers ends at its latest live taker.

A real in-memory Optuna study; a tiny cnn, one epoch of four steps on 64 synthetic images (32
to test), served from a data folder as `load_arrays` serves Fashion-MNIST."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pytest
from synthetic import make_images
from test_sweep import small

optuna = pytest.importorskip("optuna", reason="the sweep extra is not installed")

import fmnist.datasets  # noqa: E402
from fmnist.errors import ConfigError, DatasetError  # noqa: E402
from fmnist.sweep import final, report  # noqa: E402
from fmnist.sweep.trial import worker  # noqa: E402
from fmnist.train.stops import Interrupted, Stops  # noqa: E402

RECIPE = replace(small("fashion-mnist"), epochs=1, batch_size=16)  # 64 images: four steps
ELSEWHERE = "/elsewhere/final-0001"


@dataclass
class DataFolder:
    """Where `--data-dir` points, and which splits were read from it."""

    path: Path
    reads: list[str] = field(default_factory=list)


@pytest.fixture
def data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> DataFolder:
    """Fashion-MNIST's splits (64 training, 32 test images) in one folder only: asked for
    anywhere else, they are not found."""
    folder = DataFolder(tmp_path / "data")
    splits = {"train": make_images(64, 1), "test": make_images(32, 2)}

    def load_arrays(name="fashion-mnist", split="train", data_dir=None, **kwargs):
        if data_dir is None or Path(data_dir) != folder.path:
            raise DatasetError(f"Fashion-MNIST is not in {data_dir}.")
        folder.reads.append(split)
        images, labels = splits[split]
        return np.ascontiguousarray(images.numpy()), labels.numpy()

    def dataset_fingerprint(name="fashion-mnist", data_dir=None):
        return "stand-in"

    monkeypatch.setattr(fmnist.datasets, "load_arrays", load_arrays)
    monkeypatch.setattr(fmnist.datasets, "dataset_fingerprint", dataset_fingerprint)
    return folder


def study_with_best_trial_1() -> optuna.Study:
    """Trial 0 (lr 0.01, 50 %) and the best, trial 1 (lr 0.05, 90 %)."""
    study = optuna.create_study(direction="maximize")
    lr = {"lr": optuna.distributions.FloatDistribution(0.001, 1.0)}
    for value, rate in ((0.5, 0.01), (0.9, 0.05)):
        study.add_trial(optuna.trial.create_trial(
            value=value, params={"lr": rate}, distributions=lr, user_attrs={"values": {"lr": rate}}))
    return study


def add_claim(study: optuna.Study, who: str, of: int = 1, **extra) -> int:
    """Another worker's claim (as final.claim adds it); its trial number."""
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL, user_attrs={
        report.CLAIM: who, "final_of": of, "final_dir": ELSEWHERE, **extra}))
    return study.trials[-1].number


# a live worker that notes any signal it gets (SIGHUP, SIGTERM, SIGINT) until told to go on
LISTENS = """import signal, sys
got = []
for s in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
    signal.signal(s, lambda signum, frame: got.append(signum))
print("ready", flush=True)
sys.stdin.readline()
print("signalled" if got else "untouched", flush=True)
"""


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def rows(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_the_claim_holder_trains_the_best_settings_on_all_training_images_once(tmp_path, data):
    study = study_with_best_trial_1()
    sweep_dir = tmp_path / "sweep"
    folder = (sweep_dir / "final-0001").resolve()
    folder.mkdir(parents=True)  # a start stopped in its set-up: config.json only, nothing saved
    (folder / "config.json").write_text("{}\n")
    lines: list[str] = []

    final_dir, accuracy = final.final_run(study, study.best_trial, RECIPE, sweep_dir, None,
                                          data.path, Stops(), lines.append)
    assert final_dir == folder
    assert lines == [f"Training trial 1's settings on all training images into {folder}; the "
                     "test set is read now, once."]
    assert sorted(data.reads) == ["test", "train"]  # from --data-dir, test split included
    config = json.loads((folder / "config.json").read_text())  # the leftover was replaced
    assert config["lr"] == 0.05 and config["name"] == "t-sweep"
    assert json.loads((folder / "status.json").read_text())["status"] == "finished"
    assert len(rows(folder)) == 1 and accuracy == rows(folder)[-1]["test_accuracy"]
    assert isinstance(accuracy, float)
    assert study.user_attrs["final_run"] == {"trial": 1, "dir": str(folder), "accuracy": accuracy,
                                             "worker": worker()}
    (claim,) = final.claims(study, 1)  # this worker's one claim, no trial of the search
    assert claim.state.name == "FAIL" and claim.user_attrs == {
        report.CLAIM: worker(), "final_of": 1, "final_dir": str(folder)}
    assert final.claims(study, 0) == [] and len(report.trials(study)) == 2
    assert report.best_of(study).number == 1

    # the same worker again (the sweep run once more): the finished run is read, not retrained
    again = final.final_run(study, study.best_trial, RECIPE, sweep_dir, None, data.path, Stops(),
                            lines.append)
    assert again == (folder, accuracy) and len(lines) == 1 and len(data.reads) == 2
    assert len(final.claims(study, 1)) == 1


def test_a_final_run_stopped_by_a_signal_is_continued_from_its_save(tmp_path, data):
    study = study_with_best_trial_1()
    sweep_dir = tmp_path / "sweep"
    folder = (sweep_dir / "final-0001").resolve()
    lines: list[str] = []
    with Stops() as stops:  # the sweep's: a SIGTERM came just before the final run
        signal.raise_signal(signal.SIGTERM)
        with pytest.raises(Interrupted) as stopped:
            final.final_run(study, study.best_trial, RECIPE, sweep_dir, None, data.path, stops,
                            lines.append)
    assert stopped.value.signum == signal.SIGTERM and not stopped.value.finished
    assert (folder / "resume.pt").is_file()  # stopped after its first step, saved
    assert json.loads((folder / "status.json").read_text())["status"] == "interrupted"
    assert "final_run" not in study.user_attrs

    saved = (folder / "resume.pt").read_bytes()
    with Stops() as stops:  # stopped again as its continuation begins: one more step, saved
        signal.raise_signal(signal.SIGINT)
        with pytest.raises(Interrupted) as again:
            final.final_run(study, study.best_trial, RECIPE, sweep_dir, None, data.path, stops,
                            lines.append)
    assert again.value.signum == signal.SIGINT and (folder / "resume.pt").read_bytes() != saved
    assert lines[1:] == [f"Continuing the final run in {folder}."]

    data.reads.clear()
    final_dir, accuracy = final.final_run(study, study.best_trial, RECIPE, sweep_dir, None,
                                          data.path, Stops(), lines.append)
    assert final_dir == folder and lines[2:] == [f"Continuing the final run in {folder}."]
    assert sorted(data.reads) == ["test", "train"]  # the continuation reads --data-dir too
    assert json.loads((folder / "config.json").read_text())["lr"] == 0.05
    assert json.loads((folder / "status.json").read_text())["status"] == "finished"
    assert accuracy == rows(folder)[-1]["test_accuracy"] and len(rows(folder)) == 1
    assert study.user_attrs["final_run"]["accuracy"] == accuracy
    assert len(final.claims(study, 1)) == 1


def test_a_final_run_gets_the_sweeps_trial_budget(tmp_path, data):
    """The final run is planned like a trial: 0.01 s cannot hold one epoch."""
    study = study_with_best_trial_1()
    with pytest.raises(ConfigError, match="^Not even one epoch fits in"):
        final.final_run(study, study.best_trial, RECIPE, tmp_path / "sweep", 0.01, data.path,
                        Stops(), lambda line: None)


def test_a_worker_without_the_claim_says_who_trains_it_and_trains_nothing(tmp_path, data):
    study = study_with_best_trial_1()
    add_claim(study, "machine-b:4242")
    study.set_user_attr("final_run", {"trial": 0, "dir": "/elsewhere/final-0000",
                                      "accuracy": 0.5, "worker": "machine-b:4242"})
    lines: list[str] = []
    run = (study, study.best_trial, RECIPE, tmp_path / "sweep", None, data.path, Stops(),
           lines.append)
    assert final.final_run(*run) == (None, None)  # a final run of another trial: not this one
    assert lines == [f"Worker machine-b:4242 trains the final run in {ELSEWHERE}."]
    study.set_user_attr("final_run", {"trial": 1, "dir": ELSEWHERE, "accuracy": 0.91234,
                                      "worker": "machine-c:7"})
    assert final.final_run(*run) == (None, None)
    assert lines[1] == f"Worker machine-c:7 trained the final run in {ELSEWHERE}: 91.23 % test accuracy."
    assert data.reads == [] and not (tmp_path / "sweep").exists()
    assert [c.user_attrs[report.CLAIM] for c in final.claims(study, 1)] == ["machine-b:4242"]


def test_only_a_process_known_to_have_ended_on_this_host_is_gone(monkeypatch):
    host = socket.gethostname()
    alive = subprocess.Popen([sys.executable, "-c", LISTENS], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert alive.stdout.readline() == "ready\n"
        assert not final.gone(f"{host}:{alive.pid}")
        # looking did not signal it (a signal sent before this line is handled before it is read)
        assert alive.communicate("go on\n", timeout=30)[0] == "untouched\n"
    finally:
        alive.kill()
        alive.wait()
    ended = dead_pid()
    assert final.gone(f"{host}:{ended}")
    assert not final.gone(f"{host}:{os.getpid()}")
    assert not final.gone(f"machine-b:{ended}")  # another host's pids cannot be looked at
    assert not final.gone(f"{host}:")
    assert not final.gone(f"{host}:12x")
    monkeypatch.setattr(socket, "gethostname", lambda: "pod:7")  # the pid follows the last colon
    assert final.gone(f"pod:7:{ended}")
    assert not final.gone(f"pod:7:{os.getpid()}")


def test_a_takeover_chain_ends_at_its_latest_live_taker(tmp_path):
    study = study_with_best_trial_1()
    host = socket.gethostname()
    add_claim(study, "machine-b:1", of=0)  # a claim for another trial's final run
    first = add_claim(study, f"{host}:{dead_pid()}")
    taker = add_claim(study, f"{host}:{dead_pid()}", replaces=first)
    live = add_claim(study, "machine-b:4242", replaces=taker)
    add_claim(study, "machine-c:1", replaces=first)  # a later taker of the first: it lost
    assert [c.number for c in final.claims(study, 1)] == [first, taker, live, live + 1]
    assert final.holder(study, 1).number == live
    assert final.holder(study, 2) is None  # no claim yet
    winner = final.claim(study, 1, tmp_path / "final-0001")  # held by a live worker: kept
    assert winner.number == live and len(final.claims(study, 1)) == 4


def test_a_new_claim_names_this_worker_the_trial_and_the_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    study = study_with_best_trial_1()
    winner = final.claim(study, 1, Path("sweep") / "final-0001")
    assert winner.user_attrs == {report.CLAIM: worker(), "final_of": 1,
                                 "final_dir": str(tmp_path.resolve() / "sweep" / "final-0001")}
    assert [t.number for t in report.trials(study)] == [0, 1]  # no trial of the search
    assert study.best_trial.number == 1
