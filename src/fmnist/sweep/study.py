"""Running a sweep: trials on a validation split of the training images, pruned on their
per-epoch validation accuracy, then the best settings trained once on the whole training set
and evaluated once on the test set.

Each trial is an ordinary `fit` with its own run folder (`trials/NNNN`), at the recipe's length
or at an equal `--trial-budget` (fit's time budget: every trial gets the same wall clock, so
settings are compared at equal cost). Optuna samples (TPE), prunes (median) and keeps the study;
the loop here decides whether to start another trial and says how it went.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from fmnist import datasets, rundir
from fmnist.atomic import write_text
from fmnist.budget import parse_duration
from fmnist.errors import ConfigError, DivergedError
from fmnist.recipes import ADDED_LATER, Recipe, to_dict
from fmnist.sweep import report
from fmnist.sweep.space import Space, default_space, describe, fixed_length, sample, to_recipe
from fmnist.sweep.storage import default_url, hide_password, open_storage, optuna
from fmnist.train import Callback, Data, EndRun, RunState, fit

VALIDATION_SEED = 31337  # the validation split is the same for every trial, seed and worker
# Recipe fields that may differ between the workers of one study (paths, machines; and
# eval_every, which trials override: they evaluate every epoch).
LOCAL = ("dataset", "device", "threads", "log", "eval_every")


class Surplus(Exception):
    """A trial started while the study already had its N: Optuna marks it failed; the table
    shows it as skipped (nothing was trained)."""


class TrialFailed(Exception):
    """A trial whose settings cannot run (say, a model that does not fit the trial budget) once
    others have, or that diverged: it is marked failed, with the reason in the table, and the
    sweep goes on."""


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


class Pruning(Callback):
    """Reports each epoch's validation accuracy to Optuna; stops the trial when its pruner says
    so, at the start of the next epoch (so the run folder's metrics hold the epoch it was judged
    on). The folder's status.json and the study both say pruned."""

    def __init__(self, trial: Any) -> None:
        self.trial, self.prune = trial, False

    def on_epoch_start(self, state: RunState) -> None:
        if self.prune:
            raise EndRun("pruned",
                f"validation accuracy {self.accuracy:.2%} after epoch {state.epoch - 1} is below "
                "the other trials' median there")

    def on_epoch_end(self, state: RunState, row: dict[str, Any]) -> None:
        self.accuracy = row["test_accuracy"]  # the validation split, in the test slots
        self.trial.report(self.accuracy, row["epoch"])
        self.prune = self.trial.should_prune()


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
    pruner: str = "median",
    prune_after: int = 4,
    seed: int | None = None,
    final: bool = True,
    data_dir: str | Path | None = None,
    heartbeat: int = 30,
    verbose: bool = False,
    show: Callable[[str], None] = print,
) -> SweepResult:
    """Run (or continue, or join) the study `name` until it has `trials` finished trials or
    `budget` is spent, then train its best settings on the whole training set (`final`)."""
    op = optuna()
    space = space if space is not None else default_space(recipe)
    seconds = None if budget is None else parse_duration(budget)
    per_trial = None if trial_budget is None else parse_duration(trial_budget)
    check_args(space, trials, seconds, per_trial, pruner, final)
    recipe = replace(recipe, dataset=datasets.canonical_name(recipe.dataset), holdout=0)
    sweep_dir = Path(out) if out is not None else Path("sweeps") / name
    sweep_dir.mkdir(parents=True, exist_ok=True)
    url = storage or default_url(sweep_dir)
    store = open_storage(url, heartbeat)
    study = op.create_study(
        storage=store, study_name=name, direction="maximize",
        load_if_exists=True, sampler=sampler(op, seed, store, name),
        pruner=(op.pruners.MedianPruner(n_startup_trials=prune_after) if pruner == "median"
                else op.pruners.NopPruner()),
    )
    check_same_settings(study, recipe, space, per_trial, validation)
    op.storages.fail_stale_trials(study)  # a worker that died: its trial failed, a copy queued
    write_text(sweep_dir / "sweep.json", json.dumps(
        {"study": name, "storage": hide_password(url), "trials": trials, "budget": seconds,
         "trial_budget": per_trial, "validation": validation, "recipe": to_dict(recipe),
         "space": describe(space)}, indent=2) + "\n", "sweep settings")
    show(f"Sweep '{name}' in {sweep_dir} (storage {hide_password(url)}): "
         f"{len(study.trials)} trial(s) so far; "
         + (f"{per_trial:g} s per trial" if per_trial else "trials at the recipe's length")
         + "; scored on a validation split of the training images.")

    data: list[Data] = []  # loaded on the first trial this process runs

    def objective(trial: Any) -> float:
        if trials is not None and surplus(op, study, trial, trials):
            trial.set_user_attr("skipped", f"the study already had its {trials} trials")
            raise Surplus()
        if not data:
            data.append(trial_data(recipe, data_dir, validation))
        values = sample(trial, space)
        # every epoch evaluated (on the validation split): the pruner compares trials epoch by
        # epoch; the final run evaluates as the recipe says
        trial_recipe = replace(to_recipe(recipe, values), eval_every=1)
        run_dir = sweep_dir / "trials" / f"{trial.number:04d}"
        trial.set_user_attr("values", values)
        trial.set_user_attr("run_dir", str(run_dir.resolve()))
        trial.set_user_attr("host", f"{socket.gethostname()}:{os.getpid()}")
        try:
            result = fit(trial_recipe, data=data[0], out=run_dir, time_budget=per_trial,
                         callbacks=[Pruning(trial)], display=verbose)
        except EndRun as e:
            raise op.TrialPruned(str(e)) from e
        except DivergedError as e:  # settings that do not learn: a result, not the sweep's end
            trial.set_user_attr("error", str(e))
            raise TrialFailed(str(e)) from e
        except ConfigError as e:  # e.g. this trial's model does not fit the trial budget
            trial.set_user_attr("error", str(e))
            errors = [t for t in study.get_trials(deepcopy=False) if "error" in t.user_attrs]
            if not report.completed(study) and not report.pruned(study) and len(errors) >= 2:
                raise  # nothing has worked, twice (the trial itself not yet counted): stop
            raise TrialFailed(str(e)) from e
        row = result.rows[-1]
        trial.set_user_attr("epochs", row["epoch"])
        trial.set_user_attr("train_seconds", round(row["train_seconds"], 2))
        return float(row["test_accuracy"])

    started = time.monotonic()
    while True:
        left = None if seconds is None else seconds - (time.monotonic() - started)
        stopped = stop_reason(op, study, trials, left, per_trial, final)
        if stopped:
            break
        study.optimize(objective, n_trials=1, catch=(Surplus, TrialFailed), gc_after_trial=True)
        left = None if seconds is None else seconds - (time.monotonic() - started)
        show(report.progress(last_of(study), study, trials, left))
        report.write(sweep_dir, study, recipe, pictures=False)  # the table stays current
    show(f"Stopped: {stopped}")
    report.write(sweep_dir, study, recipe)
    final_dir = accuracy = None
    running = [t for t in study.get_trials(deepcopy=False)
               if t.state in (op.trial.TrialState.RUNNING, op.trial.TrialState.WAITING)]
    if running:
        show(f"{len(running)} trial(s) still running in other workers: the last worker to finish "
             "trains the best settings (or run this command again once they are done).")
    elif final and report.completed(study):
        final_dir, accuracy = train_final(study, recipe, sweep_dir, per_trial, data_dir, show)
    for line in report.summary(study, recipe, final_dir, accuracy):
        show(line)
    return SweepResult(sweep_dir, study, stopped, final_dir, accuracy)


def last_of(study: Any) -> Any:
    """This process's latest finished trial."""
    mine = f"{socket.gethostname()}:{os.getpid()}"
    own = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("host") == mine
           or "skipped" in t.user_attrs]
    return max(own, key=lambda t: t.datetime_complete or t.datetime_start) if own else study.trials[-1]


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
                        validation: float) -> None:
    """Every worker and every rerun of a study samples the same space for the same recipe:
    mixing trials of two setups would make their scores meaningless."""
    settings = {"recipe": {k: v for k, v in to_dict(recipe).items() if k not in LOCAL},
                "space": describe(space), "trial_budget": per_trial, "validation": validation}
    settings = json.loads(json.dumps(settings))  # as the storage gives it back
    stored = study.user_attrs.get("fmnist")
    if stored is not None and "recipe" in stored:  # a study from before a field existed
        before = {k: v for k, v in ADDED_LATER.items() if k not in LOCAL}
        stored = {**stored, "recipe": {**before, **stored["recipe"]}}
    if stored is None:
        study.set_user_attr("fmnist", settings)
    elif stored != settings:
        differ = [k for k in settings if stored.get(k) != settings[k]]
        if "recipe" in differ:
            differ = [f"recipe field {k}" for k in settings["recipe"]
                      if stored["recipe"].get(k) != settings["recipe"][k]] + differ[1:]
        raise ConfigError(f"Study '{study.study_name}' was started with another "
                          f"{', '.join(differ)}: repeat its command, or pick a new --name.")


def surplus(op: Any, study: Any, trial: Any, trials: int) -> bool:
    """Whether `trial` would be one too many: `trials` unfailed trials came before it (two
    workers can both start what each thought was the last trial; the later one yields)."""
    failed = op.trial.TrialState.FAIL
    earlier = [t for t in study.get_trials(deepcopy=False)
               if t.number < trial.number and t.state != failed]
    return len(earlier) >= trials


def stop_reason(op: Any, study: Any, trials: int | None, left: float | None,
                per_trial: float | None, final: bool) -> str:
    """Why no further trial should start ("" to start one)."""
    state = op.trial.TrialState
    all_trials = study.get_trials(deepcopy=False)
    if any(t.state == state.WAITING for t in all_trials):
        return ""  # a failed trial's copy waits: its place is retried
    taken = [t for t in all_trials if t.state in (state.COMPLETE, state.PRUNED, state.RUNNING)]
    if trials is not None and len(taken) >= trials:
        return f"the study has its {trials} trials."
    if left is not None:
        took = [(t.datetime_complete - t.datetime_start).total_seconds() for t in all_trials
                if t.state == state.COMPLETE and t.datetime_complete and t.datetime_start]
        expected = statistics.median(took) if took else (per_trial or 0.0)
        reserve = expected * (2 if final else 1)  # the final run takes about one trial's time
        if left < reserve or left <= 0:
            return (f"the budget is spent ({max(0.0, left):.0f} s left; a trial takes ~{expected:.0f} s"
                    + (", and the final run about as long)." if final else ")."))
    return ""


def train_final(study: Any, recipe: Recipe, sweep_dir: Path, per_trial: float | None,
                data_dir: str | Path | None, show: Callable[[str], None]) -> tuple[Path, float]:
    """The best trial's settings, trained on all training images (at the same budget per run)
    and evaluated on the test set: the sweep's result. Done once: a rerun finds it."""
    best = study.best_trial
    final_dir = sweep_dir / f"final-{best.number:04d}"
    status = final_dir / rundir.STATUS
    said = json.loads(status.read_text(encoding="utf-8")).get("status") if status.is_file() else None
    if said != "finished":
        if (final_dir / rundir.RESUME).is_file():
            show(f"Continuing the final run in {final_dir}.")
            fit(resume=final_dir, data_dir=data_dir)
        else:
            show(f"Training trial {best.number}'s settings on all training images into "
                 f"{final_dir}; the test set is read now, once.")
            final = replace(to_recipe(recipe, best.user_attrs["values"]), name=f"{recipe.name}-sweep")
            fit(final, out=final_dir, data_dir=data_dir, time_budget=per_trial)
    rows = [json.loads(line) for line in
            (final_dir / rundir.METRICS).read_text(encoding="utf-8").splitlines() if line]
    return final_dir, float(rows[-1]["test_accuracy"])
