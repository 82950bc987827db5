"""A stop during a sweep loses nothing: a SIGTERM mid-trial ends the sweep with 143 and the
command to run again; that command continues the trial from its resume.pt, in the same folder,
and the study ends with the trials it was asked for. A signal between trials starts no trial,
and one that lets a trial finish keeps it complete."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna", reason="the sweep extra is not installed")

from test_sweep import FLAGS, TWO_LRS, env, small, small_dataset, space_file  # noqa: E402

import fmnist.sweep.final  # noqa: E402
import fmnist.sweep.trial  # noqa: E402
from fmnist import rundir  # noqa: E402
from fmnist.sweep import SweepStopped, parse_space, report, sweep  # noqa: E402
from fmnist.train.stops import Interrupted  # noqa: E402


@pytest.fixture
def dataset(tmp_path: Path) -> str:
    return small_dataset(tmp_path)


def load(sweep_dir: Path) -> optuna.Study:
    return optuna.load_study(study_name="sweep", storage=f"sqlite:///{sweep_dir / 'study.db'}")


@pytest.mark.slow
def test_a_sigterm_mid_trial_is_continued_by_the_same_command(dataset, tmp_path):
    # gentle lrs (nothing diverges) and 12 epochs: the second trial is still early when stopped
    out, space = tmp_path / "out", space_file(tmp_path / "space.toml", epochs=12,
                                              lrs="0.001, 0.002")
    command = [sys.executable, "-m", "fmnist", "sweep", "--dataset", dataset, *FLAGS, "--space",
               str(space), "--trials", "2", "--out", str(out), "--no-final", "--validation", "0.2",
               "--pruner", "none"]
    worker = subprocess.Popen(command, env=env(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
    folder = out / "sweep" / "trials" / "0001"
    deadline = time.monotonic() + 90
    # two epochs of 12 of the second trial saved: past its first report (an eighth of its steps)
    while not ((folder / "metrics.jsonl").is_file()
               and len((folder / "metrics.jsonl").read_text().splitlines()) >= 2):
        assert worker.poll() is None, worker.stderr.read().decode() if worker.stderr else ""
        assert time.monotonic() < deadline, "the second trial never got going"
        time.sleep(0.02)
    worker.send_signal(signal.SIGTERM)
    err = worker.communicate(timeout=60)[1].decode()
    assert worker.returncode == 143, err
    # one sentence: where it stopped, and the sweep command (not `fmnist train`) to go on
    assert "Traceback" not in err and "fmnist train --resume" not in err
    assert "Trial 1 is queued to continue from there when the sweep goes on" in err
    assert f"run `fmnist sweep --dataset {dataset}" in err and "to go on" in err

    cut, queued = report.trials(load(out / "sweep"))[1:]
    assert cut.state.name == "FAIL" and cut.user_attrs["interrupted"] == str(folder.resolve())
    assert queued.state.name == "WAITING" and queued.user_attrs["continues"] == 1
    assert cut.intermediate_values  # it had reported: the continuation reports those again
    before = (folder / "metrics.jsonl").read_text().splitlines()

    rerun = subprocess.run(command, env=env(), capture_output=True, timeout=180)
    assert rerun.returncode == 0, rerun.stderr.decode()
    trials = report.trials(load(out / "sweep"))
    assert [report.state_of(t) for t in trials] == ["complete", "interrupted", "complete"]
    cont = trials[2]
    assert cont.user_attrs["run_dir"] == str(folder.resolve())  # the same folder, resumed ...
    after = (folder / "metrics.jsonl").read_text().splitlines()
    assert after[:len(before)] == before and len(after) == 12  # ... not trained again
    assert all(cont.intermediate_values[k] == v for k, v in cut.intermediate_values.items())
    assert cont.value == cont.intermediate_values[100] and cont.params == cut.params
    assert json.loads((folder / "status.json").read_text())["status"] == "finished"
    assert not (out / "sweep" / "trials" / "0002").exists()
    assert "(continues 1)" in (out / "sweep" / "trials.md").read_text()


def test_a_signal_between_trials_ends_the_sweep_and_starts_no_trial(dataset, tmp_path):
    caught = []  # where SIGTERM would go if the sweep did not hold it: not this process's end
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: caught.append(signum))

    def show(line: str) -> None:  # the progress line comes while Optuna's bookkeeping is done
        if line.startswith("trial 0 "):
            signal.raise_signal(signal.SIGTERM)

    recipe = small(dataset)
    try:
        with pytest.raises(SweepStopped) as stopped:
            sweep(recipe, parse_space(TWO_LRS, recipe), out=tmp_path, trials=3, validation=0.2,
                  final=False, show=show, again="python my_sweep.py")
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert caught == [] and stopped.value.signum == signal.SIGTERM
    assert "between trials" in str(stopped.value) and "`python my_sweep.py`" in str(stopped.value)
    trials = report.trials(load(tmp_path / "sweep"))
    assert [t.state.name for t in trials] == ["COMPLETE"]  # no second trial began
    assert (tmp_path / "sweep" / "trials.md").is_file()  # the report was written before it ended


def test_a_signal_after_a_trials_last_step_keeps_it_complete(dataset, tmp_path, monkeypatch):
    """fit raises Interrupted(finished=True) when the signal came after the last step: the run
    is whole, so the trial is complete, scored, and nothing is queued; the sweep still ends."""
    real_fit = fmnist.sweep.trial.fit

    def finished_then_stopped(*args, **kwargs):
        real_fit(*args, **kwargs)
        stop = Interrupted(signal.SIGTERM)
        stop.finished = True
        raise stop

    monkeypatch.setattr(fmnist.sweep.trial, "fit", finished_then_stopped)
    recipe = small(dataset)
    with pytest.raises(SweepStopped) as stopped:
        sweep(recipe, parse_space(TWO_LRS, recipe), out=tmp_path, trials=3, validation=0.2,
              final=False, show=lambda line: None)
    assert stopped.value.signum == signal.SIGTERM
    trials = report.trials(load(tmp_path / "sweep"))
    assert [t.state.name for t in trials] == ["COMPLETE"]
    assert trials[0].value == trials[0].intermediate_values[100]


def test_a_stopped_trial_whose_folder_is_not_here_is_trained_afresh(dataset, tmp_path,
                                                                    monkeypatch):
    """The continuation is picked up where the stopped trial's folder is not (another worker's
    machine): it trains the same settings from the start, in a folder of its own."""
    real_fit = fmnist.sweep.trial.fit
    calls: list[dict] = []

    def stopped_the_first_time(*args, **kwargs):
        calls.append(kwargs)
        result = real_fit(*args, **kwargs)
        if len(calls) == 1:
            raise Interrupted(signal.SIGTERM)  # as if part-way: its resume.pt is in its folder
        return result

    monkeypatch.setattr(fmnist.sweep.trial, "fit", stopped_the_first_time)
    recipe = small(dataset)
    space = parse_space(TWO_LRS, recipe)
    with pytest.raises(SweepStopped):
        sweep(recipe, space, out=tmp_path, trials=1, validation=0.2, final=False,
              show=lambda line: None)
    shutil.rmtree(tmp_path / "sweep" / "trials" / "0000")
    result = sweep(recipe, space, out=tmp_path, trials=1, validation=0.2, final=False,
                   show=lambda line: None)
    cut, again = report.trials(result.study)
    assert [report.state_of(t) for t in (cut, again)] == ["interrupted", "complete"]
    assert again.params == cut.params and again.user_attrs["continues"] == 0
    assert "resume" not in calls[1] and calls[1]["out"] == tmp_path / "sweep" / "trials" / "0001"
    assert again.user_attrs["run_dir"] == str((tmp_path / "sweep" / "trials" / "0001").resolve())


def test_a_signal_as_the_final_run_begins_stops_it_and_the_rerun_trains_it(dataset, tmp_path,
                                                                           monkeypatch):
    real_claim = fmnist.sweep.final.claim

    def claim_then_signal(*args, **kwargs):  # the signal comes between the claim and fit
        winner = real_claim(*args, **kwargs)
        signal.raise_signal(signal.SIGTERM)
        return winner

    monkeypatch.setattr(fmnist.sweep.final, "claim", claim_then_signal)
    recipe = small(dataset)
    space = parse_space(TWO_LRS, recipe)
    with pytest.raises(SweepStopped) as stopped:
        sweep(recipe, space, out=tmp_path, trials=1, validation=0.2, show=lambda line: None,
              again="fmnist sweep --trials 1")
    assert stopped.value.signum == signal.SIGTERM
    assert str(stopped.value).endswith(". Run `fmnist sweep --trials 1` to continue the final run.")
    final_dir = tmp_path / "sweep" / "final-0000"
    assert rundir.read_status(final_dir).get("status") != "finished"

    monkeypatch.setattr(fmnist.sweep.final, "claim", real_claim)
    result = sweep(recipe, space, out=tmp_path, trials=1, validation=0.2, show=lambda line: None)
    assert result.final_dir == final_dir and result.final_accuracy is not None
    assert rundir.read_status(final_dir)["status"] == "finished"
