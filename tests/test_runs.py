"""`fmnist runs`: the table of run folders (finished, interrupted, killed, damaged), JSON,
sorting, `runs compare`, and what a Ctrl-C leaves behind."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from synthetic import make_data

from fmnist.cli import main
from fmnist.recipes import Recipe, apply_overrides
from fmnist.rundir import write_status
from fmnist.runs import read_run
from fmnist.train import Callback, fit

SMALL = Recipe(name="t", model="cnn", model_config={"widths": [8, 8, 16]}, epochs=1,
               batch_size=32, lr=0.05, bf16="off", eval_batch_size=64, channels_last=False,
               flip=False, tta_flip=False)


class Interrupt(Callback):
    def on_epoch_start(self, state):
        if state.epoch == 2:
            raise KeyboardInterrupt  # Ctrl-C while epoch 2 trains


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    """runs/ with a finished run, a second one at another lr, an interrupted one, one whose
    process was killed, a damaged one, plus the `latest` link and a stray file."""
    root = tmp_path_factory.mktemp("runs") / "runs"
    fit(SMALL, data=make_data(), out=root / "a-finished", display=False)
    fit(apply_overrides(SMALL, {"lr": 0.01, "name": "slow"}), data=make_data(),
        out=root / "b-other-lr", display=False)
    with pytest.raises(KeyboardInterrupt):
        fit(apply_overrides(SMALL, {"epochs": 3}), data=make_data(), out=root / "c-interrupted",
            display=False, callbacks=[Interrupt()])
    shutil.copytree(root / "c-interrupted", root / "d-killed")
    status = json.loads((root / "d-killed" / "status.json").read_text())
    (root / "d-killed" / "status.json").write_text(
        json.dumps(status | {"status": "running", "pid": dead_pid()}))
    shutil.copytree(root / "a-finished", root / "e-damaged")
    (root / "e-damaged" / "metrics.jsonl").write_text('{"epoch": 1, "test_acc')
    assert (root / "latest").is_symlink()  # fit points it at the newest run: not a run itself
    (root / "notes.txt").write_text("not a run")
    return root


def runs_json(capsys, *argv) -> list[dict]:
    assert main(["runs", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_the_table_shows_every_run_and_how_it_ended(runs_dir, capsys):
    assert main(["runs", str(runs_dir)]) == 0
    out, err = capsys.readouterr()
    assert err == "" and "Traceback" not in out
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["run", "date", "recipe", "model"]
    by_name = {line.split()[0]: line for line in lines[1:]}
    assert set(by_name) == {"a-finished", "b-other-lr", "c-interrupted", "d-killed", "e-damaged"}
    assert by_name["a-finished"].endswith("finished")
    assert "1/1" in by_name["a-finished"]
    assert by_name["c-interrupted"].endswith("interrupted, resumable")
    assert "1/3" in by_name["c-interrupted"]
    assert by_name["d-killed"].endswith("failed, resumable")
    assert "damaged: metrics.jsonl line 1 is not JSON" in by_name["e-damaged"]


def test_json_and_sorting(runs_dir, capsys):
    runs = {r["name"]: r for r in runs_json(capsys, str(runs_dir))}
    a = runs["a-finished"]
    result = json.loads((runs_dir / "a-finished" / "metrics.jsonl").read_text())
    assert a["status"] == "finished" and a["recipe"] == "t" and a["model"] == "cnn"
    assert a["final_accuracy"] == result["test_accuracy"] == a["best_accuracy"]
    assert a["epochs"] == 1 and a["planned_epochs"] == 1 and a["parameters"] > 1000
    assert a["train_seconds"] > 0 and a["images_per_s"] > 0 and a["hardware"]
    assert runs["c-interrupted"]["status"] == "interrupted" and runs["c-interrupted"]["resumable"]
    assert runs["e-damaged"]["status"] == "damaged"
    by_acc = [r["name"] for r in runs_json(capsys, str(runs_dir), "--sort", "accuracy",
                                           "--reverse")]
    accs = [runs[n]["final_accuracy"] or -1 for n in by_acc]
    assert accs == sorted(accs, reverse=True)
    names = [r["name"] for r in runs_json(capsys, str(runs_dir), "--sort", "name")]
    assert names == sorted(names)


def test_an_interrupted_run_says_how_to_resume_and_resumes(tmp_path, capsys):
    run = tmp_path / "r"
    with pytest.raises(KeyboardInterrupt):
        fit(apply_overrides(SMALL, {"epochs": 2}), data=make_data(), out=run, display=False,
            callbacks=[Interrupt()])
    err = capsys.readouterr().err
    assert f"Epoch 1 is the last saved in {run}; continue with `fmnist train --resume {run}`" in err
    status = json.loads((run / "status.json").read_text())
    assert (status["status"], status["epoch"], status["epochs"]) == ("interrupted", 1, 2)
    fit(resume=run, data=make_data(), display=False)
    assert read_run(run).status == "finished" and read_run(run).epochs == 2


def test_a_run_stopped_before_its_first_epoch_is_not_resumable(tmp_path, capsys):
    class Early(Callback):
        def on_step(self, state, step, loss, batch):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(SMALL, data=make_data(), out=tmp_path / "r", display=False, callbacks=[Early()])
    assert "No epoch was finished" in capsys.readouterr().err
    run = read_run(tmp_path / "r")
    assert (run.status, run.resumable, run.epochs) == ("interrupted", False, 0)


def test_a_failed_run_records_its_error(tmp_path):
    class Boom(Callback):
        def on_epoch_end(self, state, row):
            raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError):
        fit(SMALL, data=make_data(), out=tmp_path / "r", display=False, callbacks=[Boom()])
    run = read_run(tmp_path / "r")
    assert (run.status, run.resumable) == ("failed", True)
    assert run.problem == "RuntimeError: out of memory"


def test_status_keeps_when_the_run_started(tmp_path):
    write_status(tmp_path, "running", epochs=3, hardware="x")
    first = json.loads((tmp_path / "status.json").read_text())
    write_status(tmp_path, "finished", epoch=3)
    last = json.loads((tmp_path / "status.json").read_text())
    assert last["started"] == first["started"] and last["hardware"] == "x"
    assert last["status"] == "finished" and not list(tmp_path.glob(".*tmp"))


def test_compare_shows_differences_results_and_one_picture(runs_dir, tmp_path, capsys,
                                                         monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["runs", "compare", "a-finished", "b-other-lr", "--dir", str(runs_dir)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split() == ["recipe", "field", "a-finished", "b-other-lr"]
    assert lines[1].split() == ["recipe", "t", "slow"]
    assert lines[2].split() == ["lr", "0.05", "0.01"] and len(lines[3].split()) < 3  # only lr
    accs = [json.loads((runs_dir / n / "metrics.jsonl").read_text())["test_accuracy"]
            for n in ("a-finished", "b-other-lr")]
    acc_line = next(line for line in lines if line.startswith("final test accuracy"))
    assert acc_line.split()[-2:] == [f"{100 * a:.2f}%" for a in accs]
    assert (tmp_path / "compare-a-finished-b-other-lr.png").stat().st_size > 10_000


@pytest.mark.parametrize("argv, message", [
    (["runs", "nowhere"], "Runs folder nowhere does not exist"),
    (["runs", "compare", "a-finished"], "takes two runs"),
    (["runs", "compare", "a-finished", "zzz"], "No run 'zzz'"),
    (["runs", "compare", "a-finished", "e-damaged"],
     "is damaged (metrics.jsonl line 1 is not JSON)"),
    (["runs", "one", "two"], "takes one folder"),
])
def test_bad_input_is_one_sentence(runs_dir, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(runs_dir.parent)
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert err.startswith("fmnist: error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err + out


def test_an_empty_runs_folder(tmp_path, capsys):
    assert main(["runs", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == f"No runs in {tmp_path}."


def test_a_run_stopped_after_an_epoch_not_evaluated_has_no_final_accuracy_yet(tmp_path, capsys):
    class StopAt4(Callback):
        def on_epoch_start(self, state):
            if state.epoch == 4:
                raise KeyboardInterrupt

    run = tmp_path / "r"
    with pytest.raises(KeyboardInterrupt):
        fit(apply_overrides(SMALL, {"epochs": 4, "eval_every": 2}), data=make_data(), out=run,
            display=False, callbacks=[StopAt4()])
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert ["test_accuracy" in r for r in rows] == [False, True, False]
    listed = read_run(run)
    assert listed.final_accuracy is None and listed.best_accuracy == rows[1]["test_accuracy"]
    capsys.readouterr()
    assert main(["runs", str(tmp_path)]) == 0 and "interrupted" in capsys.readouterr().out
    fit(resume=run, data=make_data(), display=False)
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["epoch"] == 4 and read_run(run).final_accuracy == last["test_accuracy"]
