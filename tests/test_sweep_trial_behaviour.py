"""One trial of `fmnist sweep`, as Optuna runs it: it trains the sampled settings on the
validation split it is handed (its folder `trials/NNNN`), scores itself at each eighth of its
steps for the pruner, and ends as the study needs: pruned with its reason, failed with its
error, skipped when the study has its N, or stopped by a signal with a continuation queued that
resumes its folder (or starts again where nothing was saved).

A real in-memory Optuna study and a tiny cnn on 64 synthetic images (16 for validation), 2
epochs of 8 steps; the pruners below are Optuna pruners that decide (or send a signal) at a
given report, which is how a trial meets them in a sweep."""

from __future__ import annotations

import json
import os
import signal
import socket
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from synthetic import make_data
from test_sweep import small

optuna = pytest.importorskip("optuna", reason="the sweep extra is not installed")

import fmnist.sweep.trial  # noqa: E402
from fmnist import checkpoint  # noqa: E402
from fmnist.errors import ConfigError  # noqa: E402
from fmnist.evaluate import evaluate  # noqa: E402
from fmnist.sweep import parse_space  # noqa: E402
from fmnist.sweep.measures import Objective  # noqa: E402
from fmnist.sweep.trial import (  # noqa: E402
    Surplus,
    TrialFailed,
    TrialInterrupted,
    TrialObjective,
    percent,
)
from fmnist.train import fit  # noqa: E402
from fmnist.train.stops import Interrupted, Stops  # noqa: E402

EIGHTHS = [12, 25, 38, 50, 62, 75, 88, 100]
CAUGHT = (Surplus, TrialFailed, TrialInterrupted)  # what the sweep catches (study.run_trials)
DATA = make_data(64, 16)  # the validation split a trial is handed: 64 to train, 16 to score
# the recipe evaluates every epoch and serves with flip TTA: a trial does neither
RECIPE = replace(small("csv:unused"), epochs=2, batch_size=8, eval_every=1, tta_flip=True)
LRS = {"lr": {"choices": [0.01, 0.02]}}
# settings that cannot run: whitening sets a first conv of at most 18 channels
CANNOT_RUN = {"whiten": {"choices": [True]}, "model_config": {"widths": {"choices": [[40, 8, 16]]}}}


class Pruner(optuna.pruners.BasePruner):
    """Notes the reports it is asked about; at `at` it prunes, or runs `then` (a signal)."""

    def __init__(self, at: int | None = None, then=None) -> None:
        self.at, self.then, self.asked = at, then, []

    def prune(self, study, trial) -> bool:
        self.asked.append(trial.last_step)
        if trial.last_step != self.at or self.asked.count(self.at) > 1:
            return False
        if self.then is None:
            return True
        self.then(trial)  # once
        return False


def new_study(pruner=None, directions=("maximize",)):
    return optuna.create_study(directions=list(directions), pruner=pruner or Pruner())


def objective(study, folder: Path, table=None, stops=None, loads=None, **kwargs) -> TrialObjective:
    def data():
        if loads is not None:
            loads.append(1)
        return DATA

    space = parse_space(table or LRS, RECIPE)
    return TrialObjective(study, RECIPE, space, folder, data, stops or Stops(), **kwargs)


def plain_accuracy(folder: Path) -> float:
    """The accuracy of the model in `folder` on the validation images, one forward pass."""
    model, meta = checkpoint.load_model(folder)
    return evaluate(model, DATA.test_images, DATA.test_labels, meta, tta_flip=False).accuracy


def queued(study):
    return [t for t in study.get_trials() if t.state.name == "WAITING"]


pytestmark = pytest.mark.usefixtures("quiet_optuna")


def test_the_report_points_are_the_eighths_of_the_planned_steps():
    assert [percent(done, 16) for done in range(0, 17, 2)] == [0, *EIGHTHS]
    assert percent(1, 16) == 0 and percent(3, 16) == 12 and percent(15, 16) == 88
    assert percent(40, 16) == 100  # never past 100
    assert percent(1, 1) == 100 and percent(0, 1) == 0
    assert percent(0, 0) == 0 and percent(1, 0) == 100  # a plan of no steps


def test_a_trial_trains_its_settings_in_its_own_folder_scored_plain_at_each_eighth(
        tmp_path, capsys):
    study = new_study()
    for lr in (0.02, 0.01):
        study.enqueue_trial({"lr": lr})
    loads: list[int] = []
    run = objective(study, tmp_path, loads=loads)
    study.optimize(run, n_trials=2, catch=CAUGHT)
    assert capsys.readouterr().out == ""  # not --verbose: no progress lines
    assert loads == [1]  # the validation split is loaded once per process
    for number, lr in ((0, 0.02), (1, 0.01)):
        trial = study.trials[number]
        folder = tmp_path / "trials" / f"{number:04d}"
        assert trial.state.name == "COMPLETE"
        assert list(trial.intermediate_values) == EIGHTHS
        assert trial.value == trial.intermediate_values[100]
        assert trial.user_attrs["values"] == {"lr": lr}
        assert trial.user_attrs["run_dir"] == str(folder.resolve())
        assert trial.user_attrs["host"] == f"{socket.gethostname()}:{os.getpid()}"
        config = json.loads((folder / "config.json").read_text())
        assert config["lr"] == lr and config["eval_every"] == 0
        rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        assert "test_accuracy" not in rows[0]  # epoch 1 is not evaluated, only scored
        assert trial.value == plain_accuracy(folder)  # no flip TTA, though the recipe has it
        assert trial.user_attrs["epochs"] == 2
        assert trial.user_attrs["train_seconds"] == round(rows[1]["train_seconds"], 2)

    # scoring at the eighths leaves the training alone: the same recipe without the sweep
    # trains the same model
    trained = checkpoint.load_model(tmp_path / "trials" / "0000")[0].state_dict()
    plain = fit(replace(RECIPE, lr=0.02, eval_every=0), data=DATA, save=False,
                display=False).model.state_dict()
    assert trained.keys() == plain.keys()
    assert all(torch.equal(trained[k], plain[k]) for k in plain)


def test_a_pruner_ends_a_trial_where_it_says_and_the_folder_says_why(tmp_path):
    study = new_study(Pruner(at=62))
    study.optimize(objective(study, tmp_path), n_trials=1, catch=CAUGHT)
    trial = study.trials[0]
    assert trial.state.name == "PRUNED"
    assert list(trial.intermediate_values) == EIGHTHS[:5]
    assert study.pruner.asked == EIGHTHS[:5]
    status = json.loads((tmp_path / "trials" / "0000" / "status.json").read_text())
    assert status["status"] == "pruned"
    assert status["reason"] == (f"validation accuracy {trial.intermediate_values[62]:.2%} at 62 % "
                                "of its steps is below the other trials' median there")
    assert trial.user_attrs["epochs"] == 1  # what its folder holds, for the table


def test_the_pruner_is_never_asked_at_100_nor_in_a_two_measure_study(tmp_path):
    at_100 = Pruner(at=100)
    study = new_study(at_100)
    study.optimize(objective(study, tmp_path / "one"), n_trials=1, catch=CAUGHT)
    assert study.trials[0].state.name == "COMPLETE" and at_100.asked == EIGHTHS[:-1]

    never = Pruner(at=12)
    two = new_study(never, directions=("maximize", "minimize"))
    run = objective(two, tmp_path / "two", objective=Objective("params"))
    two.optimize(run, n_trials=1, catch=CAUGHT)
    trial = two.trials[0]
    assert trial.state.name == "COMPLETE" and never.asked == [] and trial.intermediate_values == {}
    model = checkpoint.load_model(Path(trial.user_attrs["run_dir"]))[0]
    size = sum(p.numel() for p in model.parameters())
    assert trial.values[1] == trial.user_attrs["params"] == size
    assert trial.values[0] == plain_accuracy(Path(trial.user_attrs["run_dir"]))


def test_a_signal_mid_trial_queues_a_continuation_that_resumes_its_folder(tmp_path, capsys):
    def sigterm(trial):
        signal.raise_signal(signal.SIGTERM)  # fit holds SIGTERM: it stops after this step

    study = new_study(Pruner(at=62, then=sigterm))
    run = objective(study, tmp_path)
    study.optimize(run, n_trials=1, catch=CAUGHT)
    cut = study.trials[0]
    folder = (tmp_path / "trials" / "0000").resolve()
    assert cut.state.name == "FAIL" and cut.user_attrs["interrupted"] == str(folder)
    assert run.signum == signal.SIGTERM
    # asked at 62 %: after step 10 of 16 (the first at or past 5/8), and it stopped there
    assert run.cut == (f"Stopped by SIGTERM: saved at epoch 2, step 2 in {tmp_path / 'trials' / '0000'}"
                       ". Trial 0 is queued to continue from there when the sweep goes on")
    [waiting] = queued(study)
    reported = {str(k): v for k, v in cut.intermediate_values.items()}
    assert list(reported) == ["12", "25", "38", "50", "62"]
    assert waiting.system_attrs["fixed_params"] == cut.params  # the same settings
    assert waiting.user_attrs == {"continues": 0, "resume_dir": str(folder), "reported": reported}

    capsys.readouterr()
    study.optimize(objective(study, tmp_path, verbose=True), n_trials=1, catch=CAUGHT)
    assert capsys.readouterr().out != ""  # --verbose: the resumed run's progress
    again = study.trials[1]
    assert again.state.name == "COMPLETE" and again.user_attrs["run_dir"] == str(folder)
    assert again.params == cut.params and again.user_attrs["continues"] == 0
    assert list(again.intermediate_values) == EIGHTHS  # its first reports made again, first
    assert all(again.intermediate_values[k] == v for k, v in cut.intermediate_values.items())
    assert not (tmp_path / "trials" / "0001").exists()
    assert json.loads((folder / "status.json").read_text())["status"] == "finished"
    assert again.value == plain_accuracy(folder)  # the model it finished there


def test_ctrl_c_twice_early_in_a_trial_queues_it_to_start_again_in_a_folder_of_its_own(
        tmp_path, capsys):
    def ctrl_c_twice(trial):
        signal.raise_signal(signal.SIGINT)
        signal.raise_signal(signal.SIGINT)  # the second does not wait: nothing is saved yet

    study = new_study(Pruner(at=12, then=ctrl_c_twice))
    run = objective(study, tmp_path)
    study.optimize(run, n_trials=1, catch=CAUGHT)
    first = tmp_path / "trials" / "0000"
    assert run.signum == signal.SIGINT
    assert run.cut == (f"Stopped by SIGINT in trial 0 (its last save is in {first}). Trial 0 is "
                       "queued to start again when the sweep goes on")
    assert study.trials[0].user_attrs["interrupted"] == str(first.resolve())

    capsys.readouterr()
    study.optimize(objective(study, tmp_path, verbose=True), n_trials=1, catch=CAUGHT)
    assert capsys.readouterr().out != ""  # --verbose: the run's progress
    again = study.trials[1]
    assert again.state.name == "COMPLETE" and again.user_attrs["continues"] == 0
    assert again.user_attrs["run_dir"] == str((tmp_path / "trials" / "0001").resolve())
    assert list(again.intermediate_values) == EIGHTHS


def test_a_signal_while_the_validation_split_loads_stops_the_trial_at_its_first_step(tmp_path):
    with Stops() as stops:  # the sweep's, held while the trial starts
        def loading():
            signal.raise_signal(signal.SIGTERM)  # caught by the sweep, just before fit
            return DATA

        study = new_study()
        run = TrialObjective(study, RECIPE, parse_space(LRS, RECIPE), tmp_path, loading, stops)
        study.optimize(run, n_trials=1, catch=CAUGHT)
    cut = study.trials[0]
    status = json.loads((tmp_path / "trials" / "0000" / "status.json").read_text())
    assert cut.state.name == "FAIL" and status["status"] == "interrupted"
    assert cut.intermediate_values == {}  # one step of 16: no report yet
    assert run.signum == signal.SIGTERM
    assert run.cut.endswith("Trial 0 is queued to continue from there when the sweep goes on")


def test_a_signal_as_a_trial_begins_trains_nothing_and_queues_it_to_start(tmp_path):
    stops = Stops()
    stops.signum = signal.SIGTERM  # came between the sweep's look and this trial
    study = new_study()
    study.enqueue_trial({"lr": 0.02}, user_attrs={"from_recipe": True})
    loads: list[int] = []
    run = objective(study, tmp_path, stops=stops, loads=loads)
    with pytest.raises(TrialInterrupted) as stopped:
        run(study.ask())
    assert stopped.value.signum == signal.SIGTERM
    assert str(stopped.value) == "Stopped by SIGTERM as trial 0 began, before it trained."
    assert run.cut == ("Stopped by SIGTERM as trial 0 began, before it trained. Trial 0 is queued "
                       "to start again when the sweep goes on")
    assert run.signum == signal.SIGTERM and loads == [] and not (tmp_path / "trials").exists()
    trial = study.trials[0]
    assert trial.user_attrs["interrupted"] == "" and trial.user_attrs["values"] == {"lr": 0.02}
    [waiting] = queued(study)
    assert waiting.system_attrs["fixed_params"] == {"lr": 0.02}
    assert waiting.user_attrs == {"continues": 0, "from_recipe": True}


def test_a_signal_after_a_trials_last_step_keeps_it_complete_and_measured(tmp_path, monkeypatch):
    def finished_then_stopped(*args, **kwargs):
        result = fit(*args, **kwargs)
        raise Interrupted(signal.SIGTERM, "after the last step", finished=True,
                          resume_from=result.run_dir)

    monkeypatch.setattr(fmnist.sweep.trial, "fit", finished_then_stopped)
    study = new_study(directions=("maximize", "minimize"))
    run = objective(study, tmp_path, objective=Objective("params"))
    study.optimize(run, n_trials=1, catch=CAUGHT)
    trial = study.trials[0]
    assert trial.state.name == "COMPLETE" and queued(study) == []
    assert run.signum == signal.SIGTERM and run.cut is None
    model = checkpoint.load_model(tmp_path / "trials" / "0000")[0]
    assert trial.values[1] == trial.user_attrs["params"] == sum(p.numel() for p in model.parameters())
    assert trial.user_attrs["epochs"] == 2


def test_a_trial_that_diverges_fails_with_the_reason(tmp_path):
    study = new_study()
    run = objective(study, tmp_path, table={"lr": {"choices": [1e6]}})
    study.optimize(run, n_trials=1, catch=CAUGHT)
    trial = study.trials[0]
    assert trial.state.name == "FAIL"
    assert trial.user_attrs["error"].startswith("Training diverged in epoch 1: ")
    assert queued(study) == [] and run.signum is None


def test_settings_that_cannot_run_fail_the_trial_and_twice_with_nothing_working_end_the_sweep(
        tmp_path):
    study = new_study()
    run = objective(study, tmp_path, table=CANNOT_RUN)
    study.optimize(run, n_trials=1, catch=CAUGHT)
    trial = study.trials[0]
    assert trial.state.name == "FAIL" and trial.user_attrs["error"].startswith(
        "whiten sets a first conv of 2 to 18 channels")
    with pytest.raises(ConfigError, match="^whiten sets a first conv"):
        study.optimize(run, n_trials=1, catch=CAUGHT)

    for worked in ("COMPLETE", "PRUNED"):  # once a trial has worked, the sweep goes on
        study = new_study()
        study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState[worked],
                                                  value=0.5 if worked == "COMPLETE" else None))
        run = objective(study, tmp_path / worked, table=CANNOT_RUN)
        study.optimize(run, n_trials=3, catch=CAUGHT)
        assert [t.state.name for t in study.trials] == [worked, "FAIL", "FAIL", "FAIL"]

    study = new_study()  # a trial budget that not even one epoch fits: the trial cannot run
    study.optimize(objective(study, tmp_path / "budget", per_trial=0.01), n_trials=1,
                   catch=CAUGHT)
    assert study.trials[0].user_attrs["error"].startswith("Not even one epoch fits in 0.0 s on this machine")


def test_a_trial_past_the_studys_n_or_a_second_copy_of_the_recipe_is_skipped(tmp_path):
    def past(states, trials=2, from_recipe=False):
        study = new_study()
        for state in states:
            study.add_trial(optuna.trial.create_trial(
                state=optuna.trial.TrialState[state], value=0.5 if state == "COMPLETE" else None,
                user_attrs={"from_recipe": True} if from_recipe else {}))
        if from_recipe:
            study.enqueue_trial({}, user_attrs={"from_recipe": True})
        run = objective(study, tmp_path, table=CANNOT_RUN, trials=trials)
        study.optimize(run, n_trials=1, catch=CAUGHT)
        last = study.trials[-1]
        return last.user_attrs.get("skipped") or last.user_attrs["error"][:6]

    assert past(["COMPLETE", "PRUNED"]) == "the study already had its 2 trials"
    assert past(["COMPLETE", "FAIL"]) == "whiten"  # a failed trial leaves its place
    assert past(["COMPLETE"], trials=None) == "whiten"  # no N: a budget ends the sweep
    assert past(["COMPLETE"], trials=None, from_recipe=True) == (
        "the recipe's settings are another trial already")
    assert past(["FAIL"], trials=None, from_recipe=True) == "whiten"  # its retry takes its place

    study = new_study()  # a later trial (another worker's) does not take an earlier one's place
    first, later = study.ask(), study.ask()
    with pytest.raises(TrialFailed):  # it ran (and failed on its settings): not skipped
        objective(study, tmp_path, table=CANNOT_RUN, trials=1)(first)
    assert later.number > first.number and "skipped" not in study.trials[0].user_attrs


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")  # as storage.py does
def test_the_retry_of_a_killed_workers_trial_resumes_its_folder_with_its_reports(tmp_path,
                                                                                  capsys):
    class Killed(BaseException):
        """kill -9 of the worker mid-trial: nothing after it runs."""

    def kill(trial):
        raise Killed

    study = new_study(Pruner(at=62, then=kill))
    run = objective(study, tmp_path)
    with pytest.raises(Killed):
        study.optimize(run, n_trials=1)
    # what Optuna does once the worker's heartbeat is stale
    study.tell(0, state=optuna.trial.TrialState.FAIL)
    killed = study.trials[0]
    optuna.storages.RetryHeartbeatStaleTrialCallback()(study, killed)
    capsys.readouterr()
    study.optimize(objective(study, tmp_path), n_trials=1, catch=CAUGHT)
    assert capsys.readouterr().out == ""  # not --verbose: the resumed run shows nothing
    retry = study.trials[1]
    folder = tmp_path / "trials" / "0000"
    assert retry.state.name == "COMPLETE" and retry.user_attrs["run_dir"] == str(folder.resolve())
    assert list(retry.intermediate_values) == EIGHTHS
    assert all(retry.intermediate_values[k] == v for k, v in killed.intermediate_values.items())
    assert list(killed.intermediate_values) == EIGHTHS[:5]
    assert not (tmp_path / "trials" / "0001").exists()
    assert json.loads((folder / "status.json").read_text())["status"] == "finished"
