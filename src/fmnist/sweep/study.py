"""Running a sweep: trials on a validation split of the training images, pruned at matched
points of their schedules (fmnist.sweep.trial), then the best settings trained once on the whole
training set and evaluated once on the test set, by one worker (fmnist.sweep.final).

Each trial is an ordinary `fit` with its own run folder (`trials/NNNN`), at the recipe's length
or at an equal `--trial-budget` (fit's time budget: every trial gets the same wall clock, so
settings are compared at equal cost). Optuna samples (TPE), prunes (median) and keeps the study;
the loop here decides whether to start another trial and says how it went. A new study's first
trial is the recipe's own settings, so the winner is never worse on the validation split.

A signal (SIGTERM, SIGINT, SIGHUP) ends the sweep at any moment without losing work: a trial
part-way is saved and queued to continue, no new trial starts, and `SweepStopped` says which
command to run again.
"""

from __future__ import annotations

import json
import signal
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from fmnist import datasets
from fmnist.atomic import write_text
from fmnist.budget import parse_duration
from fmnist.errors import ConfigError
from fmnist.recipes import ADDED_LATER, Recipe, to_dict
from fmnist.sweep import report
from fmnist.sweep.final import final_run
from fmnist.sweep.measures import Objective, parse_objective
from fmnist.sweep.space import Space, default_space, describe, fixed_length, with_recipe
from fmnist.sweep.storage import default_url, hide_password, open_storage, optuna
from fmnist.sweep.trial import Surplus, TrialFailed, TrialInterrupted, TrialObjective, worker
from fmnist.train import Data
from fmnist.train.stops import Stops

VALIDATION_SEED = 31337  # the validation split is the same for every trial, seed and worker
# Recipe fields that may differ between the workers of one study (paths, machines; and
# eval_every, which trials override: they are scored by the sweep's own evaluations).
LOCAL = ("dataset", "device", "threads", "log", "eval_every")


class SweepStopped(KeyboardInterrupt):
    """A signal ended the sweep; str() says where, and which command continues it. `signum`:
    the signal (the command's exit status is 128 + signum)."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum


@dataclass
class SweepResult:
    sweep_dir: Path
    study: Any  # optuna.Study
    stopped: str  # why no further trial was started
    final_dir: Path | None  # the best settings trained on all training images; None if not yet
    final_accuracy: float | None  # its test accuracy


def validation_size(n_train: int, validation: float) -> int:
    """Images held out: a fraction (0 < v < 1) or a count."""
    n = round(n_train * validation) if 0 < validation < 1 else int(validation)
    if not 0 < n < n_train or (validation >= 1 and not float(validation).is_integer()):
        raise ConfigError(f"--validation {validation:g} must be a fraction between 0 and 1 or a "
                          f"count below the {n_train} training images.")
    return n


def trial_data(recipe: Recipe, data_dir: str | Path | None, validation: float) -> Data:
    """The training split only, a fixed part of it in the test slots (what fit evaluates each
    epoch): the test split is not even read while trials run."""
    xs, ys = datasets.load_arrays(recipe.dataset, "train", data_dir)
    images, labels = torch.from_numpy(xs), torch.from_numpy(ys)
    n = validation_size(len(images), validation)
    perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(VALIDATION_SEED))
    keep, held = perm[:-n].sort().values, perm[-n:].sort().values
    return Data(images[keep], labels[keep], images[held], labels[held],
                datasets.class_names(recipe.dataset), evaluated_on="validation")


def sweep(
    recipe: Recipe,
    space: Space | None = None,
    *,
    out: str | Path | None = None,
    name: str = "sweep",
    storage: str | None = None,
    trials: int | None = None,
    budget: float | str | None = None,
    trial_budget: float | str | None = None,
    validation: float = 0.1,
    objective: str = "accuracy",
    pruner: str = "median",
    prune_after: int = 4,
    seed: int | None = None,
    final: bool = True,
    data_dir: str | Path | None = None,
    heartbeat: int = 30,
    verbose: bool = False,
    again: str | None = None,
    show: Callable[[str], None] = print,
) -> SweepResult:
    """Run (or continue, or join) the study `name` until it has `trials` finished trials or
    `budget` is spent, then train its best settings on the whole training set (`final`).
    `objective` "accuracy,latency" or "accuracy,params" searches a Pareto front. `again` is the
    command that continues the sweep, for the message a signal ends it with (SweepStopped)."""
    goal = parse_objective(objective)
    space = space if space is not None else default_space(recipe)
    seconds = None if budget is None else parse_duration(budget)
    per_trial = None if trial_budget is None else parse_duration(trial_budget)
    check_args(space, trials, seconds, per_trial, pruner, final)
    recipe = replace(recipe, dataset=datasets.canonical_name(recipe.dataset), holdout=0)
    space, first, notes = with_recipe(space, recipe)
    sweep_dir = sweep_folder(out, name)
    url = storage or default_url(sweep_dir)
    study = open_study(url, name, heartbeat, seed, goal, pruner, prune_after)
    check_same_settings(study, recipe, space, per_trial, validation, goal)
    optuna().storages.fail_stale_trials(study)  # a worker that died: its trial failed, a copy queued
    write_text(sweep_dir / "sweep.json", json.dumps(
        {"study": name, "storage": hide_password(url), "trials": trials, "budget": seconds,
         "trial_budget": per_trial, "validation": validation, "objective": goal.name,
         "recipe": to_dict(recipe), "space": describe(space)}, indent=2) + "\n", "sweep settings")
    show(f"Sweep '{name}' in {sweep_dir} (storage {hide_password(url)}): "
         f"{len(report.trials(study))} trial(s) so far; "
         + (f"{per_trial:g} s per trial" if per_trial else "trials at the recipe's length")
         + "; scored on a validation split of the training images.")
    start_from_recipe(study, first, notes, show)
    if goal.second and pruner == "median":
        show(f"Nothing is pruned: Optuna prunes single-objective studies only ({goal.name}).")
    with Stops() as stops:
        run = TrialObjective(study, recipe, space, sweep_dir,
                             lambda: trial_data(recipe, data_dir, validation), stops, goal,
                             trials, per_trial, verbose)
        stopped = run_trials(study, run, trials, seconds, per_trial, final, show)
        report.write(sweep_dir, study, recipe)
        if run.signum is not None or stops.signum is not None:
            raise stop_message(run, stops, again)
        final_dir, accuracy = final_step(study, recipe, sweep_dir, per_trial, data_dir, final,
                                         stops, again, show)
    for line in report.summary(study, recipe, final_dir, accuracy):
        show(line)
    return SweepResult(sweep_dir, study, stopped, final_dir, accuracy)


def sweep_folder(out: str | Path | None, name: str) -> Path:
    """`sweeps/NAME`, or `OUT/NAME`: studies of different names never share a folder. A folder
    `OUT` that holds this study already (made before the name was part of the path) is kept."""
    if out is None:
        folder = Path("sweeps") / name
    else:
        settings = Path(out) / "sweep.json"
        try:
            old = json.loads(settings.read_text(encoding="utf-8")).get("study")
        except (OSError, ValueError, AttributeError):
            old = None
        folder = Path(out) if old == name else Path(out) / name
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def start_from_recipe(study: Any, first: dict[str, Any], notes: list[str],
                      show: Callable[[str], None]) -> None:
    """A new study's first trial: the recipe's own settings (`first`), so the sweep's winner is
    never worse on the validation split than what the user has now."""
    if report.trials(study):
        return
    study.enqueue_trial(first, user_attrs={"from_recipe": True})
    show("The first trial is the recipe's own settings"
         + (f" ({'; '.join(notes)})." if notes else "."))


def open_study(url: str, name: str, heartbeat: int, seed: int | None, goal: Objective,
               pruner: str, prune_after: int) -> Any:
    """The study `name` at `url`, created if new (ConfigError if it has another objective)."""
    op = optuna()
    store = open_storage(url, heartbeat)
    prunes = pruner == "median" and goal.second is None  # Optuna prunes one objective only
    study = op.create_study(
        storage=store, study_name=name, directions=goal.directions,
        load_if_exists=True, sampler=sampler(op, seed, store, name),
        pruner=op.pruners.MedianPruner(n_startup_trials=prune_after) if prunes
        else op.pruners.NopPruner(),
    )
    if [d.name.lower() for d in study.directions] != goal.directions:
        raise ConfigError(f"Study '{name}' was started with another --objective: repeat its "
                          "command, or pick a new --name.")
    return study


def run_trials(study: Any, run: TrialObjective, trials: int | None, seconds: float | None,
               per_trial: float | None, final: bool, show: Callable[[str], None]) -> str:
    """Start trials until the study has its N, the budget is spent or a signal came; returns
    why no further trial starts ("" after a signal)."""
    started = time.monotonic()
    while run.signum is None and run.stops.signum is None:
        left = None if seconds is None else seconds - (time.monotonic() - started)
        stopped = stop_reason(study, trials, left, per_trial, final)
        if stopped:
            show(f"Stopped: {stopped}")
            return stopped
        study.optimize(run, n_trials=1, catch=(Surplus, TrialFailed, TrialInterrupted),
                       gc_after_trial=True)
        left = None if seconds is None else seconds - (time.monotonic() - started)
        show(report.progress(last_of(study), study, trials, left))
        report.write(run.sweep_dir, study, run.recipe, pictures=False)  # the table stays current
    return ""


def stop_message(run: TrialObjective, stops: Stops, again: str | None) -> SweepStopped:
    """What a signal ended: a trial (queued to continue) or the time between trials."""
    signum = run.signum if run.signum is not None else stops.signum
    assert signum is not None
    go_on = f"run `{again}` to go on" if again else "run the same sweep again to go on"
    if run.cut is not None:
        return SweepStopped(signum, f"{run.cut}: {go_on}.")
    return SweepStopped(signum, f"Stopped by {signal.Signals(signum).name} between trials: no "
                                f"trial was cut short; {go_on}.")


def final_step(study: Any, recipe: Recipe, sweep_dir: Path, per_trial: float | None,
               data_dir: str | Path | None, final: bool, stops: Stops, again: str | None,
               show: Callable[[str], None]) -> tuple[Path | None, float | None]:
    """The final run, if this is the time and the worker for it; a signal during it ends the
    sweep (SweepStopped), its state saved for the next run of the command."""
    running = [t for t in report.trials(study) if t.state.name == "RUNNING"]
    best = report.best_of(study)
    if running:
        show(f"{len(running)} trial(s) still running in other workers: the last worker to finish "
             "trains the best settings (or run this command again once they are done).")
    if running or not final or best is None:
        return None, None
    try:
        return final_run(study, best, recipe, sweep_dir, per_trial, data_dir, stops, show)
    except KeyboardInterrupt as e:  # fit's Interrupted: saved where it stopped
        signum = getattr(e, "signum", signal.SIGINT)
        if getattr(e, "finished", False):  # it says the run finished
            raise SweepStopped(signum, str(e)) from e
        go_on = f"Run `{again}`" if again else "Run the same sweep again"
        raise SweepStopped(signum, f"{e} {go_on} to continue the final run.") from e


def last_of(study: Any) -> Any:
    """This process's latest finished trial."""
    shown = report.trials(study)
    own = [t for t in shown if t.user_attrs.get("host") == worker() or "skipped" in t.user_attrs]
    return max(own, key=lambda t: t.datetime_complete or t.datetime_start) if own else shown[-1]


def check_args(space: Space, trials: int | None, seconds: float | None, per_trial: float | None,
               pruner: str, final: bool) -> None:
    if trials is None and seconds is None:
        raise ConfigError("Say how long to sweep: --trials N, --time-budget DURATION, or both.")
    if trials is not None and trials < 1:
        raise ConfigError(f"--trials must be at least 1, got {trials}.")
    if pruner not in ("median", "none"):
        raise ConfigError(f"Invalid pruner '{pruner}'. Only median and none are supported.")
    if per_trial is not None and fixed_length(space):
        raise ConfigError(f"The space sets {' and '.join(fixed_length(space))}, but --trial-budget "
                          "chooses each trial's length: drop one of them.")
    if seconds is not None and per_trial is not None and seconds < per_trial * (2 if final else 1):
        need = "a trial and the final run" if final else "one trial"
        raise ConfigError(f"A budget of {seconds:g} s cannot hold {need} of {per_trial:g} s each: "
                          "give a larger --time-budget or a smaller --trial-budget.")


def sampler(op: Any, seed: int | None, storage: Any, name: str) -> Any:
    """TPE, seeded so that a rerun with more trials does not sample the first ones again
    (the seed moves on with the study's size)."""
    if seed is None:
        return op.samplers.TPESampler()
    try:
        done = len(op.load_study(study_name=name, storage=storage).trials)
    except KeyError:  # a new study
        done = 0
    return op.samplers.TPESampler(seed=seed + done)


def check_same_settings(study: Any, recipe: Recipe, space: Space, per_trial: float | None,
                        validation: float, goal: Objective | None = None) -> None:
    """Every worker and every rerun of a study samples the same space for the same recipe:
    mixing trials of two setups would make their scores meaningless."""
    settings = {"recipe": {k: v for k, v in to_dict(recipe).items() if k not in LOCAL},
                "space": describe(space), "trial_budget": per_trial, "validation": validation,
                "objective": (goal or Objective()).name}
    settings = json.loads(json.dumps(settings))  # as the storage gives it back
    stored = study.user_attrs.get("fmnist")
    if stored is not None and "recipe" in stored:  # a study from before a field existed
        before = {k: v for k, v in ADDED_LATER.items() if k not in LOCAL}
        stored = {"objective": "accuracy", **stored, "recipe": {**before, **stored["recipe"]}}
    if stored is None:
        study.set_user_attr("fmnist", settings)
    elif stored != settings:
        differ = [k for k in settings if stored.get(k) != settings[k]]
        if "recipe" in differ:
            differ = [f"recipe field {k}" for k in settings["recipe"]
                      if stored["recipe"].get(k) != settings["recipe"][k]] + differ[1:]
        raise ConfigError(f"Study '{study.study_name}' was started with another "
                          f"{', '.join(differ)}: repeat its command, or pick a new --name.")


def stop_reason(study: Any, trials: int | None, left: float | None, per_trial: float | None,
                final: bool) -> str:
    """Why no further trial should start ("" to start one)."""
    all_trials = report.trials(study)
    if left is not None:
        took = [(t.datetime_complete - t.datetime_start).total_seconds() for t in all_trials
                if t.state.name == "COMPLETE" and t.datetime_complete and t.datetime_start]
        expected = statistics.median(took) if took else (per_trial or 0.0)
        reserve = expected * (2 if final else 1)  # the final run takes about one trial's time
        if left < reserve or left <= 0:
            return (f"the budget is spent ({max(0.0, left):.0f} s left; a trial takes ~{expected:.0f} s"
                    + (", and the final run about as long)." if final else ")."))
    if any(t.state.name == "WAITING" for t in all_trials):
        return ""  # a failed or stopped trial's copy waits: it takes that one's place
    taken = [t for t in all_trials if t.state.name in ("COMPLETE", "PRUNED", "RUNNING")]
    if trials is not None and len(taken) >= trials:
        return f"the study has its {trials} trials."
    return ""


