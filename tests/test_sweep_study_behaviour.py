"""The study of a sweep, as its user meets it: what a trial trains and is scored on (the
training images less a fixed validation split, read from `--data-dir`; the test split never),
what a rerun of the study accepts (the same recipe, space, trial budget, validation split and
objective; machine-local fields may differ) and refuses (in one sentence naming each field that
differs), when another trial starts (the study's N, a queued copy first, a time budget that
must still hold a trial and the final run), how a new study starts (the recipe's own settings
first), how its sampler and pruner are set up, and what a signal's message says.

Real Optuna studies (in memory, or SQLite in a temp folder); a sweep whose study already holds
its trials runs without training anything, which is how a rerun is checked; the two tests that
train (a trial, a final run) train a tiny cnn for one epoch on 50 synthetic images."""

from __future__ import annotations

import datetime as dt
import json
import signal
import statistics
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from test_sweep import SMALL
from test_write_errors import read_only

optuna = pytest.importorskip("optuna", reason="the sweep extra is not installed")

import fmnist.datasets  # noqa: E402
import fmnist.sweep.final  # noqa: E402
import fmnist.sweep.trial  # noqa: E402
from fmnist.errors import ConfigError, DatasetError, DivergedError, WriteError  # noqa: E402
from fmnist.recipes import Recipe, to_dict  # noqa: E402
from fmnist.sweep import parse_space, report, sweep  # noqa: E402
from fmnist.sweep.measures import Objective  # noqa: E402
from fmnist.sweep.space import default_space, describe, with_recipe  # noqa: E402
from fmnist.sweep.storage import default_url  # noqa: E402
from fmnist.sweep.study import (  # noqa: E402
    SweepStopped,
    check_same_settings,
    last_of,
    open_study,
    start_from_recipe,
    stop_message,
    stop_reason,
    sweep_folder,
    trial_data,
    validation_size,
)
from fmnist.sweep.trial import worker  # noqa: E402
from fmnist.train.stops import Interrupted  # noqa: E402

# study.ask() on a storage with heartbeats, as the pruner and sampler tests do, is fine here
pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")
# one epoch at batch 16: a few steps, so a signal after the first leaves some to continue
RECIPE = Recipe(name="t", dataset="fashion-mnist",  # type: ignore[arg-type]
                **{**SMALL, "epochs": 1, "batch_size": 16})
LRS = {"lr": {"choices": [1e-5, 0.01]}}
SPACE = parse_space(LRS, RECIPE)
T0 = dt.datetime(2026, 12, 7, 12, 0, 0)


@dataclass
class DataFolder:
    """Where `--data-dir` points, and which splits were read from it."""

    path: Path
    images: np.ndarray
    labels: np.ndarray
    reads: list[str] = field(default_factory=list)


@pytest.fixture
def data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> DataFolder:
    """Fashion-MNIST's training split (50 distinct images) in one folder only; its test split
    is there too, but a sweep's trials must not read it."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(50, 28, 28), dtype=np.uint8)
    labels = np.arange(50, dtype=np.int64) % 10
    folder = DataFolder(tmp_path / "data", images, labels)

    def load_arrays(name="fashion-mnist", split="train", data_dir=None, **kwargs):
        if name != "fashion-mnist" or data_dir is None or Path(data_dir) != folder.path:
            raise DatasetError(f"{name} is not in {data_dir}.")
        folder.reads.append(split)
        if split == "train":
            return images, labels
        return images[:20], labels[:20]

    monkeypatch.setattr(fmnist.datasets, "load_arrays", load_arrays)
    monkeypatch.setattr(fmnist.datasets, "dataset_fingerprint", lambda *a, **k: "stand-in")
    return folder


def pixels(images) -> list[bytes]:
    return [bytes(memoryview(np.ascontiguousarray(image))) for image in images]


# ---- what a trial trains and is scored on ------------------------------------------------------


def test_the_validation_split_is_a_fraction_or_a_count_below_the_training_images():
    assert validation_size(50, 0.2) == 10 and validation_size(50, 0.5) == 25
    assert validation_size(1000, 0.25) == 250
    assert validation_size(50, 10) == 10 and validation_size(50, 10.0) == 10
    assert validation_size(50, 1) == 1 and validation_size(50, 49) == 49
    for bad in (0, 0.001, 0.999, 50, 51, 1.5, -3):
        with pytest.raises(ConfigError) as refused:
            validation_size(50, bad)
        assert str(refused.value) == (f"--validation {bad:g} must be a fraction between 0 and 1 "
                                      "or a count below the 50 training images.")


def test_a_trial_trains_on_the_training_split_less_a_fixed_validation_split(data):
    torch.manual_seed(1)
    first = trial_data(RECIPE, data.path, 0.2)
    torch.manual_seed(2)  # the split does not follow torch's global seed
    second = trial_data(RECIPE, data.path, 10)
    assert data.reads == ["train", "train"]  # the test split is never read
    all_images = pixels(data.images)
    for split in (first, second):
        train, held = pixels(split.train_images), pixels(split.test_images)
        assert len(train) == 40 and len(held) == 10 and not set(train) & set(held)
        assert sorted(train + held) == sorted(all_images)
        assert train == [p for p in all_images if p in set(train)]  # in the files' order
        for images, labels in ((split.train_images, split.train_labels),
                               (split.test_images, split.test_labels)):
            assert [int(data.labels[all_images.index(p)]) for p in pixels(images)] == (
                labels.tolist())
        assert split.evaluated_on == "validation"
        assert split.classes == fmnist.datasets.class_names("fashion-mnist")
    assert pixels(first.test_images) == pixels(second.test_images)  # the same for every trial
    with pytest.raises(DatasetError):
        trial_data(RECIPE, None, 0.2)  # the data is where --data-dir says


def test_a_sweeps_trials_read_the_data_dir_and_never_the_test_split(tmp_path, data,
                                                                    monkeypatch, capsys):
    seen = []
    real_fit = fmnist.sweep.trial.fit

    def watched_fit(recipe, *, data, **kwargs):  # what `fit` is handed: what the trial sees
        seen.append((len(data.train_images), len(data.test_images), data.evaluated_on))
        return real_fit(recipe, data=data, **kwargs)

    monkeypatch.setattr(fmnist.sweep.trial, "fit", watched_fit)
    capsys.readouterr()
    result = sweep(RECIPE, SPACE, out=tmp_path, trials=1, validation=0.3, final=False,
                   data_dir=data.path, pruner="none", show=lambda line: None)
    assert seen == [(35, 15, "validation")] and set(data.reads) == {"train"}
    assert capsys.readouterr() == ("", "")  # a trial trains quietly unless verbose
    assert [t.state.name for t in report.trials(result.study)] == ["COMPLETE"]



def test_a_time_budget_stops_the_sweep_when_no_trial_and_final_run_fit_what_is_left(
        tmp_path, data):
    folder = tmp_path / "tight" / "sweep"  # a study whose one trial so far was pruned
    folder.mkdir(parents=True)
    timed(optuna.create_study(storage=default_url(folder), study_name="sweep",
                              direction="maximize"), "PRUNED")
    lines: list[str] = []
    # no whole trial measured yet: a trial takes its trial budget, 20 s, and so does the final
    # run; 40 s less the moments this call has taken cannot hold both
    result = sweep(RECIPE, SPACE, out=tmp_path / "tight", budget="40s", trial_budget="20s",
                   data_dir=data.path, show=lines.append)
    assert "Stopped: the budget is spent (40 s left; a trial takes ~20 s, and the final run " \
           "about as long)." in lines
    assert data.reads == [] and result.final_dir is None  # nothing trained, not even the final
    # a budget of a few seconds and trials at the recipe's length: trials until the time left
    # is less than the median trial takes (the first, with nothing measured yet, always starts)
    lines.clear()
    result = sweep(RECIPE, SPACE, out=tmp_path / "short", budget="3s", final=False,
                   data_dir=data.path, show=lines.append)
    assert [line for line in lines if line.startswith("Stopped: ")] == [f"Stopped: {result.stopped}"]
    progress = [line for line in lines if line.startswith("trial ")]
    assert progress and all(line.endswith(" min of budget left") for line in progress)
    assert result.stopped.startswith("the budget is spent (")
    assert result.stopped.endswith(" s left; a trial takes ~{:.0f} s).".format(statistics.median(
        (t.datetime_complete - t.datetime_start).total_seconds()
        for t in report.trials(result.study) if t.state.name == "COMPLETE")))


def test_a_signal_between_trials_starts_no_other_trial(tmp_path, data):
    lines: list[str] = []

    def show(line: str) -> None:
        lines.append(line)
        if line.startswith("trial 0 complete"):
            signal.raise_signal(signal.SIGTERM)

    with pytest.raises(SweepStopped) as stopped:
        sweep(RECIPE, SPACE, out=tmp_path, trials=2, final=False, data_dir=data.path, show=show,
              again="fmnist sweep --trials 2")
    assert str(stopped.value) == ("Stopped by SIGTERM between trials: no trial was cut short; run "
                                  "`fmnist sweep --trials 2` to go on.")
    assert stopped.value.signum == signal.SIGTERM
    study = optuna.load_study(study_name="sweep", storage=default_url(tmp_path / "sweep"))
    assert [t.state.name for t in study.trials] == ["COMPLETE"]
    accuracy = f"{100 * study.trials[0].value:.2f} %"
    assert lines[-1] == f"trial 0 complete: {accuracy} | 1/2 done, best {accuracy} (trial 0)"


def test_a_trial_that_diverges_is_recorded_failed_and_the_sweep_goes_on(tmp_path, data,
                                                                        monkeypatch):
    real_fit = fmnist.sweep.trial.fit
    calls = []

    def diverges_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise DivergedError("The loss became nan at epoch 1.")
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(fmnist.sweep.trial, "fit", diverges_once)
    result = sweep(RECIPE, SPACE, out=tmp_path, trials=1, final=False, data_dir=data.path,
                   pruner="none", show=lambda line: None)
    trials = report.trials(result.study)
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"]
    assert trials[0].user_attrs["error"] == "The loss became nan at epoch 1."
    assert result.stopped == "the study has its 1 trials."


# ---- what a rerun accepts and refuses ------------------------------------------------------------


def study_with_trials(out: Path, name: str = "sweep", n: int = 1,
                      directions: tuple[str, ...] = ("maximize",)) -> str:
    """A study that already holds `n` complete trials of the lr space, where a sweep with
    `--out out --name name` keeps it; its storage URL."""
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    url = default_url(folder)
    study = optuna.create_study(storage=url, study_name=name, directions=list(directions))
    lr = {"lr": optuna.distributions.CategoricalDistribution([1e-5, 0.01])}
    for i in range(n):
        rate = 0.01 if i % 2 else 1e-5
        study.add_trial(optuna.trial.create_trial(
            values=[0.5 + 0.1 * i] + [100.0 * (i + 1)] * (len(directions) - 1),
            params={"lr": rate}, distributions=lr,
            user_attrs={"values": {"lr": rate}, "host": "machine-b:1"}))
    return url


def rerun(out: Path, data: DataFolder, recipe: Recipe = RECIPE, **kwargs) -> list[str]:
    """`fmnist sweep` again on the study in `out`: it has its trials, so nothing trains."""
    lines: list[str] = []
    settings = {"trials": 1, "validation": 0.2, "final": False, "data_dir": data.path,
                "show": lines.append, **kwargs}
    space = settings.pop("space", parse_space(LRS, recipe))
    sweep(recipe, space, out=out, **settings)
    return lines


def refusal(out: Path, data: DataFolder, recipe: Recipe = RECIPE, **kwargs) -> str:
    with pytest.raises(ConfigError) as refused:
        rerun(out, data, recipe, **kwargs)
    return str(refused.value)


def test_a_rerun_with_the_same_settings_goes_on_and_one_with_others_is_refused(tmp_path, data):
    study_with_trials(tmp_path)
    lines = rerun(tmp_path, data)  # the first run of this version records the settings
    assert "Stopped: the study has its 1 trials." in lines
    assert data.reads == []  # nothing trained

    again = "repeat its command, or pick a new --name."
    said = f"Study 'sweep' was started with another validation: {again}"
    assert refusal(tmp_path, data, validation=0.3) == said
    assert refusal(tmp_path, data, validation=10) == said  # 10 of 50 is 0.2, but not the same
    assert refusal(tmp_path, data, replace(RECIPE, weight_decay=1e-3)) == (
        f"Study 'sweep' was started with another recipe field weight_decay: {again}")
    changed = replace(RECIPE, weight_decay=1e-3, batch_size=8)
    assert refusal(tmp_path, data, changed, validation=0.3) == (
        f"Study 'sweep' was started with another recipe field batch_size, recipe field "
        f"weight_decay, validation: {again}")
    wider = parse_space({"lr": {"choices": [1e-5, 0.01, 0.1]}}, RECIPE)
    assert refusal(tmp_path, data, space=wider) == (
        f"Study 'sweep' was started with another space: {again}")
    # a budget that holds a trial and the final run exactly is accepted; the trial budget is not
    assert refusal(tmp_path, data, budget="40s", trial_budget="20s", final=True) == (
        f"Study 'sweep' was started with another trial_budget: {again}")
    assert refusal(tmp_path, data, objective="accuracy,params") == (
        f"Study 'sweep' was started with another --objective: {again}")

    # where the data is, the device, threads and how often to evaluate are the machine's own
    local = replace(RECIPE, device="cpu", threads=2, eval_every=0, log="quickstart")
    assert "Stopped: the study has its 1 trials." in rerun(tmp_path, data, local)


def test_two_measure_studies_keep_their_second_measure(tmp_path, data):
    study_with_trials(tmp_path, directions=("maximize", "minimize"))
    assert not any(line.startswith("Nothing is pruned") for line in rerun(
        tmp_path, data, objective="accuracy,params", pruner="none"))
    lines = rerun(tmp_path, data, objective="accuracy,params")
    assert "Nothing is pruned: Optuna prunes single-objective studies only (accuracy,params)." in (
        lines)
    assert refusal(tmp_path, data, objective="accuracy,latency") == (
        "Study 'sweep' was started with another objective: repeat its command, or pick a new "
        "--name.")


def add_claim(url: str, who: str, final_dir: str) -> None:
    """Another worker's claim on trial 0's final run (as fmnist.sweep.final adds it)."""
    study = optuna.load_study(study_name="sweep", storage=url)
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL, user_attrs={
        report.CLAIM: who, "final_of": 0, "final_dir": final_dir}))


def test_a_sweep_records_its_settings_and_says_where_it_is_and_who_trains_the_final_run(
        tmp_path, data):
    url = study_with_trials(tmp_path)
    add_claim(url, "machine-b:4242", "/elsewhere/final-0000")
    lines: list[str] = []
    recipe = replace(RECIPE, holdout=5)  # a sweep holds nothing out: the validation split does
    result = sweep(recipe, SPACE, out=tmp_path, trials=1, data_dir=data.path, show=lines.append)
    folder = tmp_path / "sweep"
    swept = replace(recipe, holdout=0)
    expected = {"study": "sweep", "storage": url, "trials": 1, "budget": None,
                "trial_budget": None, "validation": 0.1, "objective": "accuracy",
                "recipe": to_dict(swept), "space": describe(with_recipe(SPACE, swept)[0])}
    assert (folder / "sweep.json").read_text() == json.dumps(expected, indent=2) + "\n"
    assert lines[0] == (f"Sweep 'sweep' in {folder} (storage {url}): 1 trial(s) so far; trials "
                        "at the recipe's length; scored on a validation split of the training "
                        "images.")
    assert lines[1:3] == ["Stopped: the study has its 1 trials.",
                          "Worker machine-b:4242 trains the final run in /elsewhere/final-0000."]
    assert lines[-2:] == ["Best: trial 0, 50.00 % on the validation split.", "  lr: 0.01 -> 1e-05"]
    assert (result.sweep_dir, result.stopped, result.final_dir, result.final_accuracy) == (
        folder, "the study has its 1 trials.", None, None)
    assert [t.number for t in report.trials(result.study)] == [0]
    assert (folder / "trials.md").is_file() and data.reads == []

    budgeted = tmp_path / "budgeted"  # a study started with a trial budget, and a time budget
    study_with_trials(budgeted)
    lines.clear()
    # 30 s hold one trial of 20 s when there is no final run to keep room for
    sweep(recipe, SPACE, out=budgeted, trials=1, budget="30s", trial_budget="20s", final=False,
          data_dir=data.path, show=lines.append)
    assert lines[0].endswith("1 trial(s) so far; 20 s per trial; scored on a validation split of "
                             "the training images.")
    stored = json.loads((budgeted / "sweep" / "sweep.json").read_text())
    assert (stored["budget"], stored["trial_budget"]) == (30.0, 20.0)


def test_without_a_space_a_sweep_searches_its_models_default_one_and_keeps_paths_absolute(
        tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    study_with_trials(tmp_path / "out")
    recipe = replace(RECIPE, dataset="csv:photos")  # a relative path, as typed
    sweep(recipe, out=tmp_path / "out", trials=1, final=False, show=lambda line: None)
    stored = json.loads((tmp_path / "out" / "sweep" / "sweep.json").read_text())
    absolute = replace(recipe, dataset=f"csv:{tmp_path / 'photos'}", holdout=0)
    assert stored["recipe"] == to_dict(absolute)  # found again from any folder
    assert stored["space"] == describe(with_recipe(default_space(absolute), absolute)[0])


def test_a_sweep_folder_that_cannot_be_written_is_one_sentence(tmp_path, small_disk, data):
    url = study_with_trials(tmp_path)  # the study is elsewhere; the sweep's folder is not
    (small_disk / "sweep").mkdir()
    read_only(small_disk)
    with pytest.raises(WriteError) as caught:
        sweep(RECIPE, SPACE, out=small_disk, storage=url, trials=1, data_dir=data.path,
              show=lambda line: None)
    assert str(caught.value) == (f"Could not write the sweep settings {small_disk / 'sweep' / 'sweep.json'}"
                                 ": the filesystem is read-only.")

def test_with_trials_still_running_elsewhere_the_final_run_waits_for_them(tmp_path, data):
    url = study_with_trials(tmp_path)
    study = optuna.load_study(study_name="sweep", storage=url)
    timed(study, "RUNNING")  # another worker's, under way
    lines = rerun(tmp_path, data, trials=2, final=True)
    assert "Stopped: the study has its 2 trials." in lines
    assert ("1 trial(s) still running in other workers: the last worker to finish trains the "
            "best settings (or run this command again once they are done).") in lines
    assert not any("final run" in line for line in lines) and data.reads == []


class StoredStudy:
    """What check_same_settings reads of a study and writes into it."""

    study_name = "old"

    def __init__(self, attrs: dict) -> None:
        self.user_attrs = attrs

    def set_user_attr(self, key: str, value) -> None:
        self.user_attrs[key] = value


def test_a_study_from_before_a_field_existed_goes_on_with_that_fields_old_value():
    fresh = StoredStudy({})
    check_same_settings(fresh, RECIPE, SPACE, None, 0.2, Objective())
    assert set(fresh.user_attrs) == {"fmnist"}
    old = json.loads(json.dumps(fresh.user_attrs))
    del old["fmnist"]["objective"]  # from before --objective: it was accuracy
    del old["fmnist"]["recipe"]["whiten"]  # from before the recipe had whiten
    check_same_settings(StoredStudy(old), RECIPE, SPACE, None, 0.2, Objective())
    check_same_settings(StoredStudy(old), RECIPE, SPACE, None, 0.2)  # no objective: accuracy
    with pytest.raises(ConfigError, match=r"^Study 'old' was started with another recipe "
                                          r"field whiten: repeat"):
        check_same_settings(StoredStudy(old), replace(RECIPE, whiten=True), SPACE, None, 0.2)
    with pytest.raises(ConfigError, match=r"^Study 'old' was started with another objective:"):
        check_same_settings(StoredStudy(old), RECIPE, SPACE, None, 0.2, Objective("params"))


def test_the_study_keeps_its_storage_and_a_rerun_with_another_objective_is_refused(tmp_path):
    url = default_url(tmp_path)
    study = open_study(url, "s", 30, None, Objective(), "none", 4)
    study.add_trial(optuna.trial.create_trial(value=0.5))
    again = open_study(url, "s", 30, None, Objective(), "none", 4)  # the same study, reopened
    assert [t.value for t in again.trials] == [0.5]
    with pytest.raises(ConfigError) as refused:
        open_study(url, "s", 30, None, Objective("latency"), "none", 4)
    assert str(refused.value) == ("Study 's' was started with another --objective: repeat its "
                                  "command, or pick a new --name.")


# ---- how trials are started: the pruner, the sampler, the first trial, the stop ---------------


def pruned_after(url: str, name: str, pruner: str, prune_after: int, finished: int) -> bool:
    """Whether a trial far below `finished` earlier ones at the same point is pruned."""
    study = open_study(url, name, 30, None, Objective(), pruner, prune_after)
    for _ in range(finished):
        study.add_trial(optuna.trial.create_trial(value=0.9, intermediate_values={50: 0.9}))
    trial = study.ask()
    trial.report(0.1, 50)
    return trial.should_prune()


def test_the_median_pruner_waits_for_prune_after_trials_and_none_never_prunes(tmp_path):
    url = default_url(tmp_path)
    assert pruned_after(url, "a", "median", 2, finished=2)
    assert not pruned_after(url, "b", "median", 3, finished=2)
    assert not pruned_after(url, "c", "none", 2, finished=5)
    two = open_study(url, "d", 30, None, Objective("params"), "median", 2)
    assert isinstance(two.pruner, optuna.pruners.NopPruner)  # Optuna prunes one objective only


def lrs(study, n: int) -> list[float]:
    values = []
    for _ in range(n):
        trial = study.ask()
        values.append(trial.suggest_float("lr", 1e-5, 1.0, log=True))
        study.tell(trial, 0.5)
    return values


def test_a_seeded_sampler_moves_its_seed_on_with_the_studys_size(tmp_path):
    """--sampler-seed 7: a new study samples as TPE seeded 7; the same study reopened with 3
    trials as TPE seeded 10, so its rerun does not sample the first trials again."""
    url = default_url(tmp_path)
    other = optuna.create_study(storage=url, study_name="other")  # another study in the storage
    other.add_trial(optuna.trial.create_trial(value=0.1))
    study = open_study(url, "s", 30, 7, Objective(), "none", 4)
    first = lrs(study, 3)
    assert first == lrs(optuna.create_study(sampler=optuna.samplers.TPESampler(seed=7)), 3)
    rerun_values = lrs(open_study(url, "s", 30, 7, Objective(), "none", 4), 3)
    assert rerun_values == lrs(optuna.create_study(sampler=optuna.samplers.TPESampler(seed=10)), 3)
    unseeded = [lrs(open_study(url, name, 30, None, Objective(), "none", 4), 3)
                for name in ("u1", "u2")]
    assert unseeded[0] != unseeded[1]


def test_a_new_study_starts_with_the_recipes_own_settings(tmp_path):
    study = optuna.create_study(direction="maximize")
    lines: list[str] = []
    start_from_recipe(study, {"lr": 0.003}, ["lr: the recipe's 0.003 added to the choices",
                                             "batch_size: the recipe's 128 added"], lines.append)
    assert lines == ["The first trial is the recipe's own settings (lr: the recipe's 0.003 added "
                     "to the choices; batch_size: the recipe's 128 added)."]
    (queued,) = study.trials
    assert queued.state.name == "WAITING" and queued.user_attrs == {"from_recipe": True}
    trial = study.ask()
    assert trial.suggest_float("lr", 1e-5, 1.0) == 0.003  # what the first trial trains

    plain = optuna.create_study()
    start_from_recipe(plain, {"lr": 0.1}, [], lines.append)
    assert lines[1] == "The first trial is the recipe's own settings."
    start_from_recipe(plain, {"lr": 0.1}, [], lines.append)  # it has a trial: not again
    assert len(plain.trials) == 1 and len(lines) == 2


def timed(study, state: str, seconds: float = 1.0, start: float = 0.0, **attrs) -> None:
    """A trial of `state` started `start` s after T0 that took `seconds` (a running one has
    started, a waiting one not)."""
    kind = optuna.trial.TrialState[state]
    began = T0 + dt.timedelta(seconds=start)
    study.add_trial(optuna.trial.FrozenTrial(
        number=0, trial_id=0, state=kind, value=0.5 if state == "COMPLETE" else None,
        datetime_start=None if state == "WAITING" else began,
        datetime_complete=began + dt.timedelta(seconds=seconds) if kind.is_finished() else None,
        params={}, distributions={}, user_attrs=attrs, system_attrs={}, intermediate_values={}))


def test_another_trial_starts_until_the_study_has_its_n_counting_only_unfailed_ones():
    study = optuna.create_study(direction="maximize")
    assert stop_reason(study, 3, None, None, True) == ""
    timed(study, "COMPLETE", 10)
    timed(study, "PRUNED")
    timed(study, "FAIL")
    assert stop_reason(study, 3, None, None, True) == ""  # the failed one does not count
    assert stop_reason(study, None, None, None, True) == ""  # a budget alone: no count
    timed(study, "RUNNING")  # another worker's, under way
    assert stop_reason(study, 3, None, None, True) == "the study has its 3 trials."
    assert stop_reason(study, 2, None, None, True) == "the study has its 2 trials."
    timed(study, "WAITING")  # a stopped trial's copy, queued: it runs first
    assert stop_reason(study, 3, None, None, True) == ""


def test_a_time_budget_keeps_room_for_a_median_trial_and_the_final_run():
    study = optuna.create_study(direction="maximize")
    for seconds in (10, 20, 60):  # median 20 s (mean 30 s)
        timed(study, "COMPLETE", seconds)
    timed(study, "PRUNED", 1000)  # a pruned trial says nothing of a whole one's time
    spent = "the budget is spent ({} s left; a trial takes ~20 s"
    assert stop_reason(study, None, 39.6, None, True) == (
        spent.format(40) + ", and the final run about as long).")
    assert stop_reason(study, None, 40, None, True) == ""
    assert stop_reason(study, None, 19, None, False) == spent.format(19) + ")."
    assert stop_reason(study, None, 20, None, False) == ""
    assert stop_reason(study, 10, 19, None, False) == spent.format(19) + ")."

    fresh = optuna.create_study(direction="maximize")  # no trial yet: the trial budget, if any
    assert stop_reason(fresh, None, 29, 15, True) == (
        "the budget is spent (29 s left; a trial takes ~15 s, and the final run about as long).")
    assert stop_reason(fresh, None, 31, 15, True) == ""
    assert stop_reason(fresh, None, 0.5, None, False) == ""
    assert stop_reason(fresh, None, 0, None, False) == (
        "the budget is spent (0 s left; a trial takes ~0 s).")
    assert stop_reason(fresh, None, -5, None, False) == (
        "the budget is spent (0 s left; a trial takes ~0 s).")


# ---- where the sweep lives, and what a signal says ----------------------------------------------


def test_the_sweep_folder_is_made_where_it_is_asked_for(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert sweep_folder(None, "shoes") == Path("sweeps") / "shoes"
    assert (tmp_path / "sweeps" / "shoes").is_dir()
    deep = tmp_path / "a" / "b"
    assert sweep_folder(deep, "s") == deep / "s" and (deep / "s").is_dir()
    assert sweep_folder(deep, "s") == deep / "s"  # again: the same folder
    (deep / "sweep.json").write_text("not json")  # damaged settings: a folder of its own
    assert sweep_folder(deep, "s") == deep / "s"
    (deep / "sweep.json").write_text(json.dumps({"study": "b"}))
    assert sweep_folder(deep, "b") == deep


def test_a_signal_says_what_it_stopped_and_the_command_that_goes_on():
    between = stop_message(SimpleNamespace(signum=None, cut=None),
                           SimpleNamespace(signum=signal.SIGHUP), "fmnist sweep --trials 9")
    assert isinstance(between, SweepStopped) and between.signum == signal.SIGHUP
    assert str(between) == ("Stopped by SIGHUP between trials: no trial was cut short; run "
                            "`fmnist sweep --trials 9` to go on.")
    cut = "Stopped by SIGTERM: saved at epoch 1. Trial 3 is queued to continue"
    mid = stop_message(SimpleNamespace(signum=signal.SIGTERM, cut=cut),
                       SimpleNamespace(signum=signal.SIGINT), None)
    assert mid.signum == signal.SIGTERM  # the trial's signal
    assert str(mid) == f"{cut}: run the same sweep again to go on."


def test_bad_sweep_settings_are_refused_before_anything_is_made(tmp_path, data):
    def refused(**kwargs) -> str:
        # no data where it would look: a sweep that went on would end at its first trial
        settings = {"out": tmp_path / "out", "trials": 2, "data_dir": tmp_path / "nowhere",
                    **kwargs}
        with pytest.raises(ConfigError) as error:
            sweep(RECIPE, settings.pop("space", SPACE), **settings)
        return str(error.value)

    assert refused(trials=None) == (
        "Say how long to sweep: --trials N, --time-budget DURATION, or both.")
    assert refused(trials=0) == "--trials must be at least 1, got 0."
    assert refused(pruner="mean") == "Invalid pruner 'mean'. Only median and none are supported."
    fixed = parse_space({**LRS, "epochs": 3}, RECIPE)
    assert refused(space=fixed, trial_budget="10s") == (
        "The space sets epochs, but --trial-budget chooses each trial's length: drop one of them.")
    both = parse_space({**LRS, "epochs": 3, "steps": 100}, RECIPE)
    assert refused(space=both, trial_budget="10s").startswith("The space sets epochs and steps, but")
    assert refused(budget="30s", trial_budget="20s") == (
        "A budget of 30 s cannot hold a trial and the final run of 20 s each: give a larger "
        "--time-budget or a smaller --trial-budget.")
    assert refused(budget="15s", trial_budget="20s", final=False) == (
        "A budget of 15 s cannot hold one trial of 20 s each: give a larger --time-budget or a "
        "smaller --trial-budget.")
    assert not (tmp_path / "out").exists()


def test_a_space_that_sets_the_trials_length_needs_no_trial_budget(tmp_path, data):
    study_with_trials(tmp_path)
    fixed = parse_space({**LRS, "epochs": 3}, RECIPE)
    assert "Stopped: the study has its 1 trials." in rerun(tmp_path, data, space=fixed)


def test_the_progress_line_is_about_this_workers_latest_trial():
    me, other = worker(), "machine-b:4242"
    study = optuna.create_study(direction="maximize")
    timed(study, "COMPLETE", 30, 0, host=me)
    timed(study, "COMPLETE", 99, 1, host=other)  # another worker's ends last
    timed(study, "FAIL", 59, 1, skipped="the study has its 2 trials")  # this worker's skip
    timed(study, "COMPLETE", 48, 2, host=me)
    assert last_of(study).number == 2  # ended at 60 s, after this worker's trials at 30 and 50
    mine = optuna.create_study(direction="maximize")
    timed(mine, "COMPLETE", 50, 0, host=me)
    timed(mine, "COMPLETE", 29, 1, host=me)
    timed(mine, "COMPLETE", 98, 2, host=other)
    assert last_of(mine).number == 0
    elsewhere = optuna.create_study(direction="maximize")  # none of this worker's: the last one
    for start in (0, 1, 2):
        timed(elsewhere, "COMPLETE", 10, start, host=other)
    assert last_of(elsewhere).number == 2


def test_a_signal_during_the_final_run_ends_the_sweep_and_its_rerun_continues_it(
        tmp_path, data, monkeypatch):
    study_with_trials(tmp_path)
    folder = tmp_path / "sweep" / "final-0000"

    def signalled(*signals: int):
        def show(line: str) -> None:
            if line.startswith("Training trial 0's settings"):
                for signum in signals:  # the sweep holds them; fit gets one through PassOn
                    signal.raise_signal(signum)
        return show

    def final_sweep(show, again=None):
        return sweep(RECIPE, SPACE, out=tmp_path, trials=1, validation=0.2, data_dir=data.path,
                     again=again, show=show)

    with pytest.raises(SweepStopped) as twice:  # Ctrl-C twice: out at once, nothing saved
        final_sweep(signalled(signal.SIGINT, signal.SIGINT))
    assert twice.value.signum == signal.SIGINT
    assert str(twice.value) == " Run the same sweep again to continue the final run."
    assert not (folder / "resume.pt").exists()

    with pytest.raises(SweepStopped) as stopped:  # saved after its first step
        final_sweep(signalled(signal.SIGTERM), again="fmnist sweep --trials 1")
    assert stopped.value.signum == signal.SIGTERM
    assert str(stopped.value).startswith("Stopped by SIGTERM")
    assert str(stopped.value).endswith(". Run `fmnist sweep --trials 1` to continue the final run.")
    assert (folder / "resume.pt").is_file()

    real_fit = fmnist.sweep.final.fit

    def finished_then_stopped(*args, **kwargs):  # the signal came after the last step
        real_fit(*args, **kwargs)
        raise Interrupted(signal.SIGHUP, "after the last step", finished=True)

    monkeypatch.setattr(fmnist.sweep.final, "fit", finished_then_stopped)
    lines: list[str] = []
    with pytest.raises(SweepStopped) as late:
        final_sweep(lines.append)
    assert late.value.signum == signal.SIGHUP
    assert str(late.value) == "Stopped by SIGHUP: after the last step"
    assert f"Continuing the final run in {folder.resolve()}." in lines

    monkeypatch.setattr(fmnist.sweep.final, "fit", real_fit)
    lines.clear()
    result = final_sweep(lines.append)  # finished: read, not trained again
    assert result.final_dir == folder.resolve() and result.final_accuracy is not None
    assert not any(line.startswith(("Continuing", "Training")) for line in lines)
    assert lines[-2] == (f"Final run (all training images, test set read once): "
                         f"{100 * result.final_accuracy:.2f} % test accuracy in {folder.resolve()}")
