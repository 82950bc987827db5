"""`fmnist sweep` on tiny synthetic data: it finds the better of two settings, prunes, resumes,
never reads the test split during trials, retries a trial whose worker was killed, shares one
study between two worker processes on a real PostgreSQL server, and answers bad input in one
sentence."""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import pytest
from child_env import child_env
from synthetic import make_data, write_csv

optuna = pytest.importorskip("optuna", reason="the sweep extra is not installed")

import fmnist.datasets  # noqa: E402
from fmnist import runs  # noqa: E402
from fmnist.cli import main  # noqa: E402
from fmnist.errors import ConfigError  # noqa: E402
from fmnist.recipes import Recipe, apply_overrides, read_config_file  # noqa: E402
from fmnist.sweep import parse_space, report, sweep  # noqa: E402
from fmnist.sweep.storage import with_driver  # noqa: E402

TESTS = Path(__file__).parent
# A tiny cnn on 320 synthetic images, one thread: ~0.2 s an epoch on 2 busy cores.
SMALL = dict(model="cnn", model_config={"widths": [8, 8, 16]}, epochs=2, batch_size=32, lr=0.01,
             bf16="off", channels_last=False, flip=False, tta_flip=False, eval_batch_size=256,
             threads=1, schedule="constant", shift=0)
# lr 1e-5 learns nothing in 2 epochs (~10 %); lr 0.01 reaches ~85-100 %.
TWO_LRS = {"lr": {"choices": [1e-5, 0.01]}}
FLAGS = ["--model", "cnn", "--batch-size", "32", "--epochs", "2", "--lr", "0.01", "--bf16", "off",
         "--no-channels-last", "--no-flip", "--no-tta-flip", "--eval-batch-size", "256",
         "--threads", "1", "--schedule", "constant", "--shift", "0"]


def small_dataset(folder: Path) -> str:
    """320 training and 64 test images as CSV files in `folder`; the `--dataset` that reads them."""
    return write_csv(folder / "data", make_data(320, 64))


@pytest.fixture
def dataset(tmp_path: Path) -> str:
    return small_dataset(tmp_path)


def small(dataset: str) -> Recipe:
    return Recipe(name="t", dataset=dataset, **SMALL)  # type: ignore[arg-type]


def space_file(path: Path, epochs: int = 3, lrs: str = "1e-5, 0.01") -> Path:
    path.write_text(f"lr = {{choices = [{lrs}]}}\nepochs = {epochs}\n"
                    "[model_config]\nwidths = [8, 8, 16]\n")
    return path


def state(trial) -> str:
    return "skipped" if "skipped" in trial.user_attrs else trial.state.name


# ---- one machine --------------------------------------------------------------------------------


@pytest.mark.slow
def test_finds_the_better_setting_prunes_resumes_and_never_reads_the_test_split(
        dataset, tmp_path, monkeypatch):
    # a recipe that evaluates its last epoch only: trials still report every epoch to the pruner
    recipe, out = replace(small(dataset), eval_every=0), tmp_path / "sweep"
    space = parse_space(TWO_LRS, recipe)
    # While trials run, the test split is not there: its file is gone, and any read fails.
    test_csv = Path(dataset.removeprefix("csv:")) / "fashion-mnist_test.csv"
    hidden = test_csv.rename(tmp_path / "test.csv.away")
    real_load = fmnist.datasets.load_arrays

    def train_only(name="fashion-mnist", split="train", *args, **kwargs):
        assert split != "test", "a trial read the test split"
        return real_load(name, split, *args, **kwargs)

    monkeypatch.setattr(fmnist.datasets, "load_arrays", train_only)
    first = sweep(recipe, space, out=out, trials=4, validation=0.2, prune_after=1, seed=0,
                  final=False, show=lambda line: None)
    trials = first.study.get_trials()
    assert [state(t) for t in trials].count("FAIL") == 0  # the missing test file broke nothing
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in trials) == 4
    best = first.study.best_trial
    assert best.params["lr"] == 0.01 and best.value > 0.6  # the other learns nothing: ~0.1
    assert {t.params["lr"] for t in trials} == {1e-5, 0.01}  # both were tried
    # the first trial is the recipe's own settings; its score is its last, plain report
    assert trials[0].user_attrs["from_recipe"] and trials[0].params["lr"] == 0.01
    assert trials[0].value == trials[0].intermediate_values[100]
    # pruning fired: a trial stopped part-way, on its plain validation accuracy at a share of
    # its steps that the others reported at too
    pruned = [t for t in trials if t.state.name == "PRUNED"]
    assert pruned and all(t.params["lr"] == 1e-5 for t in pruned)
    reported = pruned[0].intermediate_values
    assert set(reported) <= set(trials[0].intermediate_values) and max(reported) < 100
    folder = Path(pruned[0].user_attrs["run_dir"])
    status = json.loads((folder / "status.json").read_text())  # the folder says pruned too
    assert status["status"] == "pruned" and status["reason"].startswith("validation accuracy")
    assert f"at {max(reported)} % of its steps" in status["reason"]
    assert status["evaluated_on"] == "validation" and "error" not in status
    out = first.sweep_dir
    assert "| pruned at" in (out / "trials.md").read_text()
    listed = {r.name: r for r in runs.list_runs(out / "trials")}[folder.name]
    assert listed.status == "pruned"
    assert (out / "history.png").stat().st_size > 0 and (out / "importances.png").is_file()

    # The same command again, with more trials and the test split back: only the new trials
    # run, then the best settings are trained on all training images and tested once.
    hidden.rename(test_csv)
    monkeypatch.setattr(fmnist.datasets, "load_arrays", real_load)
    stamps = {t.number: Path(t.user_attrs["run_dir"], "config.json").stat().st_mtime_ns
              for t in trials}
    second = sweep(recipe, space, out=tmp_path / "sweep", trials=6, validation=0.2,
                   prune_after=1, seed=0, show=lambda line: None)
    again = report.trials(second.study)  # the final run's claim is no trial of the search
    assert len(again) == 6 and [t.number for t in again] == list(range(6))
    assert all(Path(again[n].user_attrs["run_dir"], "config.json").stat().st_mtime_ns == stamp
               for n, stamp in stamps.items())  # the first four were not run again
    assert second.final_dir is not None and second.final_accuracy > 0.6
    final = read_config_file(second.final_dir / "config.json")
    assert final["lr"] == 0.01 and final["holdout"] == 0
    # trials are scored by the sweep's own evaluations; the final run as the recipe says
    assert final["eval_every"] == 0
    assert read_config_file(Path(again[0].user_attrs["run_dir"]) / "config.json")["eval_every"] == 0
    apply_overrides(Recipe(), final)  # reusable as --config
    best_json = json.loads((out / "best.json").read_text())
    assert best_json["changed"] == {}  # lr 0.01 is the recipe's own: the table says so
    assert json.loads((second.final_dir / "status.json").read_text())["status"] == "finished"


def test_a_trial_that_diverges_fails_and_the_sweep_goes_on(dataset, tmp_path):
    # lr 1e4 blows the loss up in the first epoch (fit raises DivergedError); lr 0.01 learns
    recipe, out = small(dataset), tmp_path / "sweep"
    space = parse_space({"lr": {"choices": [1e4, 0.01]}}, recipe)
    result = sweep(recipe, space, out=out, trials=4, validation=0.2, seed=0, final=False,
                   show=lambda line: None)
    trials = result.study.get_trials()
    failed = [t for t in trials if t.state.name == "FAIL"]
    assert failed and all(t.params["lr"] == 1e4 for t in failed)
    assert len(trials) - len(failed) == 4  # --trials counts the trials that did not fail
    assert all("diverged" in t.user_attrs["error"] for t in failed)
    assert result.study.best_trial.params["lr"] == 0.01
    assert result.sweep_dir == out / "sweep"  # --out DIR holds DIR/NAME
    assert "| failed |" in (result.sweep_dir / "trials.md").read_text()


@pytest.mark.slow
def test_a_killed_worker_leaves_the_study_usable_and_its_trial_failed_and_resumed(
        dataset, tmp_path):
    # one gentle lr: the trial must still be training when it is killed, not have ended (or
    # stopped by the divergence guard) on a fast machine
    out, space = tmp_path / "sweep", space_file(tmp_path / "space.toml", epochs=40,
                                                lrs="0.001, 0.002")
    command = [sys.executable, "-m", "fmnist", "sweep", "--dataset", dataset, *FLAGS, "--space",
               str(space), "--trials", "1", "--out", str(out), "--heartbeat", "1", "--no-final",
               "--validation", "0.2"]
    worker = subprocess.Popen(command, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    metrics = out / "sweep" / "trials" / "0000" / "metrics.jsonl"
    deadline = time.monotonic() + 60
    while not metrics.is_file():  # mid-trial: an epoch done, many to go
        assert worker.poll() is None, worker.stderr.read().decode() if worker.stderr else ""
        assert time.monotonic() < deadline, "the worker never finished an epoch"
        time.sleep(0.05)
    assert worker.poll() is None, "the trial ended before it could be killed mid-way"
    worker.send_signal(signal.SIGKILL)
    first_epoch = metrics.read_text().splitlines()[0]
    worker.wait()
    # past the grace period (2 heartbeats = 2 s) by more than a second: SQLite stamps heartbeats
    # in whole seconds, so 2.5 s after the last beat can read as 2 s, not yet stale (it failed so)
    time.sleep(3.5)

    # The same command in another process: the dead trial is failed and its place retried.
    assert main(command[3:]) == 0
    study = optuna.load_study(study_name="sweep", storage=f"sqlite:///{out / 'sweep' / 'study.db'}")
    killed, retry = study.get_trials()
    assert killed.state.name == "FAIL" and "skipped" not in killed.user_attrs
    assert retry.state.name in ("COMPLETE", "PRUNED")
    assert retry.system_attrs["failed_trial"] == 0 and retry.params == killed.params
    # the recipe's own settings (the first trial) are retried too: not taken for a duplicate
    assert killed.user_attrs["from_recipe"] and retry.user_attrs["from_recipe"]
    table = (out / "sweep" / "trials.md").read_text()
    assert "| 0 | failed |" in table and "(retry of 0)" in table
    # the retry resumed the killed trial's folder from its last saved epoch: not from scratch
    assert retry.user_attrs["run_dir"] == killed.user_attrs["run_dir"]
    assert metrics.read_text().splitlines()[0] == first_epoch
    assert not (out / "sweep" / "trials" / "0001").exists()


# ---- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("space", "args", "says"), [
    ("lrr = {low = 0.1, high = 1.0}", [], "Unknown field 'lrr'"),
    ("lr = {low = 0.5, high = 0.1}", [], "cannot be sampled: low 0.5"),
    ("batch_size = {choices = [32, 0]}", [], "cannot be sampled: 0"),
    ("[model_config]\ndepth = {choices = [1, 2]}", [], "cannot be sampled"),
    ("lr = {low = 0.01, high = 0.1}", ["--storage", "nosuchdb://x/y"], "Cannot open the study storage"),
    ("lr = {low = 0.01, high = 0.1}", ["--storage", "postgresql://u:secret@127.0.0.1:1/db"],
     "Cannot open the study storage postgresql://u:***@127.0.0.1:1/db"),
    ("lr = {low = 0.01, high = 0.1}", ["--budget", "30s", "--trial-budget", "20s"],
     "cannot hold a trial and the final run"),
    ("lr = {low = 0.01, high = 0.1}\nepochs = 2", ["--trial-budget", "20s"], "drop one of them"),
    ("lr = {low = 0.01, high = 0.1}", ["--objective", "accuracy,speed"],
     "Invalid objective 'accuracy,speed'"),
])
def test_bad_input_is_one_sentence(dataset, tmp_path, capsys, space, args, says):
    (tmp_path / "s.toml").write_text(space)
    argv = ["sweep", "--dataset", dataset, *FLAGS, "--space", str(tmp_path / "s.toml"),
            "--out", str(tmp_path / "out"), *args]
    if "--budget" not in args:
        argv += ["--trials", "2"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1 and "Traceback" not in err and "secret" not in err


def test_without_optuna_it_says_what_to_install(dataset, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna now fails
    assert main(["sweep", "--dataset", dataset, "--trials", "2", "--out", str(tmp_path)]) == 2
    assert "pip install optuna" in capsys.readouterr().err


# ---- many machines: a real PostgreSQL server ------------------------------------------------------


def env() -> dict[str, str]:
    return child_env()


@pytest.fixture
def postgres():
    """A PostgreSQL server from Debian's package in a temp folder, as the `postgres` user when
    run as root (it refuses root); yields its URL."""
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not bins:
        pytest.skip("PostgreSQL is not installed (Debian's postgresql package; `make test` "
                    "installs it where apt is available)")
    bin_dir = Path(bins[-1]).parent
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    root = Path(tempfile.mkdtemp(prefix="fmnist-pg-"))
    if as_user:
        shutil.chown(root, "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data, log = root / "data", root / "log"

    def run(*cmd: str) -> None:
        subprocess.run([*as_user, *cmd], check=True, capture_output=True, timeout=120)

    try:
        run(str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres")
        run(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-o",
            f"-p {port} -k {root} -h 127.0.0.1 -c fsync=off", "start")
        run(str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "sweep")
        yield f"postgresql://postgres@127.0.0.1:{port}/sweep"
    finally:
        subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate",
                        "stop"], capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
def test_two_workers_share_one_study_and_one_final_run_on_postgresql(dataset, tmp_path, postgres):
    space = space_file(tmp_path / "space.toml", epochs=2)
    outs = [tmp_path / "machine-a", tmp_path / "machine-b"]

    def workers(*flags: str) -> list[str]:
        started = [subprocess.Popen(
            [sys.executable, "-m", "fmnist", "sweep", "--dataset", dataset, *FLAGS, "--space",
             str(space), "--trials", "5", "--storage", postgres, "--name", "shared", "--out",
             str(out), "--validation", "0.2", "--pruner", "none", "--sampler-seed", str(i),
             *flags], env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            for i, out in enumerate(outs)]
        said = [w.communicate(timeout=300)[0].decode() for w in started]
        for w, text in zip(started, said, strict=True):
            assert w.returncode == 0, text
        return said

    workers("--no-final")
    study = optuna.load_study(study_name="shared", storage=with_driver(postgres))
    searched = len(report.trials(study))
    ran = [t for t in report.trials(study) if "skipped" not in t.user_attrs]
    assert sum(t.state.name == "COMPLETE" for t in ran) == 5  # no trial lost ...
    assert all(t.state.name == "COMPLETE" for t in ran)  # ... none left running or failed
    folders = {out.name: sorted(int(p.name) for p in (out / "shared" / "trials").iterdir())
               for out in outs if (out / "shared" / "trials").is_dir()}
    numbers = [n for ns in folders.values() for n in ns]
    assert sorted(numbers) == sorted(t.number for t in ran)  # each trial ran exactly once ...
    assert all(len(ns) >= 1 for ns in folders.values()) and len(folders) == 2  # ... shared out
    for t in ran:  # ... in the folder of the worker that the study says ran it
        machine = Path(t.user_attrs["run_dir"]).parent.parent.parent.name
        assert t.number in folders[machine]

    # The same command with the final run on, on both machines at once: the study has its
    # trials, so both go straight to the final run, together. One trains it, the other says who.
    said = workers()
    finals = [p for out in outs for p in (out / "shared").glob("final-*")]
    assert len(finals) == 1
    assert sum("Training trial" in text for text in said) == 1
    assert sum("trains the final run in" in text or "trained the final run in" in text
               for text in said) == 1
    study = optuna.load_study(study_name="shared", storage=with_driver(postgres))
    assert study.user_attrs["final_run"]["dir"] == str(finals[0].resolve())
    assert len(report.trials(study)) == searched  # the claims are no trials of the search


class StoredStudy:
    """The part of an Optuna study check_same_settings reads and writes."""

    study_name = "s"

    def __init__(self, attrs):
        self.user_attrs = attrs

    def set_user_attr(self, key, value):
        self.user_attrs[key] = value


def test_a_study_from_before_a_recipe_field_continues_with_its_old_value(tmp_path):
    from fmnist.sweep.study import LOCAL, check_same_settings

    recipe, space = small("csv:x"), parse_space(TWO_LRS, small("csv:x"))
    fresh = StoredStudy({})
    check_same_settings(fresh, recipe, space, None, 0.2)
    old = json.loads(json.dumps(fresh.user_attrs))  # a study stored before whiten and eval_every
    for added in ("whiten", "eval_every"):
        old["fmnist"]["recipe"].pop(added, None)
    assert "eval_every" in LOCAL and "whiten" not in LOCAL
    check_same_settings(StoredStudy(old), recipe, space, None, 0.2)  # whiten False as it was
    check_same_settings(StoredStudy(old), replace(recipe, eval_every=0), space, None, 0.2)
    with pytest.raises(ConfigError, match="recipe field whiten"):  # its trials were unwhitened
        check_same_settings(StoredStudy(old), replace(recipe, whiten=True), space, None, 0.2)
