"""One trial of a sweep: an ordinary `fit` on the validation split with the sampled settings,
scored at matched points for the pruner, and continued (not lost) when a signal stops it.

Scoring: a trial reports its plain validation accuracy (one forward pass, no flip TTA) at each
eighth of its planned optimiser steps, to Optuna as step 12, 25, ... 100 (the percentage of
the steps done). Trials of different lengths (a `--trial-budget` plans each one's epochs for
its own speed) are so compared at the same share of their schedules, by the same evaluation;
the trial's score is its report at 100.

A stop: fit saves the step it was at and raises `Interrupted`. The trial is then marked failed
with `interrupted` (its folder) among its attributes, and a continuation with the same settings
is queued in the study: the next run of the same sweep command picks it first, resumes the folder
(its reports made again in the new trial, so the pruner compares it as before), or trains it
afresh where that folder is not on this machine. A trial whose worker was killed (kill -9, a
lost machine) is retried by Optuna once its heartbeat is stale; the retry resumes the folder the
same way, from its last saved epoch.
"""

from __future__ import annotations

import json
import os
import signal
import socket
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from fmnist import checkpoint, rundir
from fmnist.errors import ConfigError, DivergedError
from fmnist.recipes import Recipe
from fmnist.sweep.measures import Objective
from fmnist.sweep.space import Space, sample, to_recipe
from fmnist.train import Callback, Data, EndRun, RunState, fit
from fmnist.train.evaluation import evaluate_epoch
from fmnist.train.stops import Stops

REPORTS = 8  # reports per trial, at each eighth of its planned steps


def worker() -> str:
    """This process, as the study names it: host:pid."""
    return f"{socket.gethostname()}:{os.getpid()}"


class Surplus(Exception):
    """A trial started while the study already had its N (or a second copy of the recipe's own
    settings): Optuna marks it failed; the table shows it as skipped (nothing was trained)."""


class TrialFailed(Exception):
    """A trial whose settings cannot run (say, a model that does not fit the trial budget) once
    others have, or that diverged: it is marked failed, with the reason in the table, and the
    sweep goes on."""


class TrialInterrupted(Exception):
    """A signal stopped the trial part-way: it is marked failed and interrupted, a continuation
    is queued, and the sweep ends (`signum` says on which signal)."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum


def percent(done: int, total: int) -> int:
    """The report point reached after `done` of `total` steps: 0 (none yet), 12, 25, ... 100."""
    eighths = min(REPORTS, done * REPORTS // max(1, total))
    return round(100 * eighths / REPORTS)


class PassOn(Callback):
    """A signal the sweep's own Stops caught just before fit took the signals over, passed on
    to fit: it then stops at its first chance, as if the signal had come a moment later."""

    def __init__(self, stops: Stops) -> None:
        self.stops = stops

    def on_fit_start(self, state: RunState) -> None:
        if self.stops.signum is not None:
            signal.raise_signal(self.stops.signum)  # fit's handler, now


class Pruning(Callback):
    """Scores the trial on the validation split (in the test slots) at each eighth of its
    planned steps, plain, and reports it to Optuna; ends the trial when the pruner says so.
    A multi-objective study is scored the same way, but Optuna takes no reports there, so
    nothing is reported or pruned (`report` False). `reported` holds the reports of the run
    this one resumes (percent -> accuracy): made again, first."""

    def __init__(self, trial: Any, report: bool, reported: dict[int, float] | None = None) -> None:
        self.trial, self.report = trial, report
        self.reports: dict[int, float] = dict(reported or {})

    def on_fit_start(self, state: RunState) -> None:
        if self.report:
            for at, accuracy in sorted(self.reports.items()):
                self.trial.report(accuracy, at)

    def on_step(self, state: RunState, step: int, loss: Any, batch: int) -> None:
        parts = state.parts
        assert parts is not None
        at = percent(state.global_step + step + 1, parts.total_steps)
        if at > max(self.reports, default=0):
            self.score(state, at)
            parts.train_model.train()  # the evaluation left it in eval mode, mid-epoch
            if self.report and at < 100 and self.trial.should_prune():
                raise EndRun("pruned", f"validation accuracy {self.reports[at]:.2%} at {at} % "
                             "of its steps is below the other trials' median there")

    def on_fit_end(self, state: RunState) -> None:
        # a run re-planned to end at an epoch's end (a time budget) ends before its 100 % step
        if 100 not in self.reports:
            self.score(state, 100)

    def score(self, state: RunState, at: int) -> None:
        assert state.parts is not None and state.setup is not None
        evaluated = evaluate_epoch(state.parts.model, state.setup, final=False)
        self.reports[at] = float(evaluated.row["test_accuracy"])
        if self.report:
            self.trial.report(self.reports[at], at)

    @property
    def accuracy(self) -> float:
        return self.reports[100]


@dataclass
class TrialObjective:
    """The function Optuna calls for each trial of one sweep: `__call__(trial)` trains it and
    returns its score (with the second measure of a multi-objective study)."""

    study: Any
    recipe: Recipe
    space: Space
    sweep_dir: Path
    data: Any  # () -> Data: the validation split, loaded on the first trial this process runs
    stops: Stops
    objective: Objective = Objective()
    trials: int | None = None
    per_trial: float | None = None
    verbose: bool = False
    loaded: list[Data] = field(default_factory=list)
    signum: int | None = None  # the signal that stopped a trial of this process
    cut: str | None = None  # where it stopped a trial part-way and what is queued, in words

    def __call__(self, trial: Any) -> float | tuple[float, float]:
        self.check_place(trial)
        values = sample(trial, self.space)
        # the final run evaluates as the recipe says; a trial's scores come from Pruning, and
        # fit evaluates its last epoch anyway
        trial_recipe = replace(to_recipe(self.recipe, values), eval_every=0)
        resume_dir, reported = self.resumable(trial)
        run_dir = resume_dir or self.sweep_dir / "trials" / f"{trial.number:04d}"
        trial.set_user_attr("values", values)
        if self.stops.signum is not None:  # a signal as the trial began: it is not started
            name = signal.Signals(self.stops.signum).name
            self.interrupted(trial, None, self.stops.signum,
                             f"Stopped by {name} as trial {trial.number} began, before it trained.")
        trial.set_user_attr("run_dir", str(run_dir.resolve()))
        trial.set_user_attr("host", worker())
        pruning = Pruning(trial, not self.objective.second, reported)
        callbacks = [pruning, PassOn(self.stops)]
        try:
            if not self.loaded:
                self.loaded.append(self.data())
            if resume_dir:
                result = fit(resume=resume_dir, data=self.loaded[0], callbacks=callbacks,
                             display=self.verbose)
            else:
                result = fit(trial_recipe, data=self.loaded[0], out=run_dir,
                             time_budget=self.per_trial, callbacks=callbacks, display=self.verbose)
        except EndRun as e:
            import optuna

            self.note_length(trial, run_dir)
            raise optuna.TrialPruned(str(e)) from e
        except KeyboardInterrupt as e:  # fmnist.train.Interrupted, or Ctrl-C twice
            signum = getattr(e, "signum", signal.SIGINT)
            if not getattr(e, "finished", False):
                where = str(e) if str(e).endswith(".") else (  # Ctrl-C twice says nothing
                    f"Stopped by {signal.Signals(signum).name} in trial {trial.number} (its last "
                    f"save is in {run_dir}).")
                self.interrupted(trial, run_dir, signum, where, pruning.reports)
            self.signum = signum  # finished: the trial is complete, but the sweep stops
            return self.finish(trial, pruning, run_dir, None, trial_recipe.tta_flip)
        except DivergedError as e:  # settings that do not learn: a result, not the sweep's end
            trial.set_user_attr("error", str(e))
            raise TrialFailed(str(e)) from e
        except ConfigError as e:  # e.g. this trial's model does not fit the trial budget
            trial.set_user_attr("error", str(e))
            if self.nothing_works():
                raise
            raise TrialFailed(str(e)) from e
        return self.finish(trial, pruning, run_dir, result.model, trial_recipe.tta_flip)

    def check_place(self, trial: Any) -> None:
        """Skip a trial the study has no place for (Surplus)."""
        if self.trials is not None and surplus(self.study, trial, self.trials):
            trial.set_user_attr("skipped", f"the study already had its {self.trials} trials")
            raise Surplus()
        if trial.user_attrs.get("from_recipe") and any(
                t.user_attrs.get("from_recipe") for t in self.study.get_trials(deepcopy=False)
                if t.number < trial.number and t.state.name != "FAIL"):
            # two workers that started a new study together both queued the recipe's settings
            # (a failed one's retry or continuation takes its place, as any trial's does)
            trial.set_user_attr("skipped", "the recipe's settings are another trial already")
            raise Surplus()

    def resumable(self, trial: Any) -> tuple[Path | None, dict[int, float]]:
        """The folder a trial resumes and the reports its run had made (percent -> accuracy):
        a continuation's, the stopped trial's folder; a retry's (its worker was killed), the
        killed trial's, from its last save. None (and no reports) where that folder is not
        here with its resume state: the trial trains afresh in its own."""
        folder, reported = trial.user_attrs.get("resume_dir"), trial.user_attrs.get("reported", {})
        stored = {t.number: t for t in self.study.get_trials(deepcopy=False)}
        killed = stored[trial.number].system_attrs.get("failed_trial")  # Optuna's, on a retry
        if folder is None and killed in stored:
            folder = trial.user_attrs.get("run_dir")  # copied from the killed trial
            reported = stored[killed].intermediate_values
        if folder and (Path(folder) / rundir.RESUME).is_file():
            return Path(folder), {int(k): v for k, v in reported.items()}
        return None, {}

    def interrupted(self, trial: Any, run_dir: Path | None, signum: int, where: str,
                    reported: dict[int, float] | None = None) -> None:
        """Queue the trial's continuation, then end it (TrialInterrupted)."""
        trial.set_user_attr("interrupted", str(run_dir.resolve()) if run_dir else "")
        attrs: dict[str, Any] = {"continues": trial.number}
        if run_dir is not None:
            attrs |= {"resume_dir": str(run_dir.resolve()),
                      "reported": {str(k): v for k, v in (reported or {}).items()}}
        if trial.user_attrs.get("from_recipe"):
            attrs["from_recipe"] = True
        self.study.enqueue_trial(trial.params, user_attrs=attrs)
        saved = run_dir is not None and (run_dir / rundir.RESUME).is_file()
        self.signum = signum
        self.cut = (f"{where} Trial {trial.number} is queued to "
                    f"{'continue from there' if saved else 'start again'} when the sweep goes on")
        raise TrialInterrupted(signum, where)

    def finish(self, trial: Any, pruning: Pruning, run_dir: Path, model: Any,
               tta_flip: bool) -> float | tuple[float, float]:
        """The trial's score (its last report), and the second measure of its model."""
        self.note_length(trial, run_dir)
        if not self.objective.second:
            return pruning.accuracy
        if model is None:  # the run finished as a signal came: its model is in its folder
            model = checkpoint.load_model(run_dir)[0]
        second = self.objective.measure(model, tta_flip)
        trial.set_user_attr(self.objective.second, second)
        return pruning.accuracy, second

    def note_length(self, trial: Any, run_dir: Path) -> None:
        """The epochs and training seconds the trial's folder holds, for the table."""
        path = run_dir / rundir.METRICS
        try:
            last = json.loads(path.read_text(encoding="utf-8").splitlines()[-1])
        except (OSError, IndexError, ValueError):  # none yet, or a damaged file: the table's loss
            return
        trial.set_user_attr("epochs", last.get("epoch"))
        trial.set_user_attr("train_seconds", round(last.get("train_seconds", 0.0), 2))

    def nothing_works(self) -> bool:
        """No trial has completed or been pruned, and two (this failed one counted) have failed:
        the sweep stops."""
        all_trials = self.study.get_trials(deepcopy=False)
        errors = [t for t in all_trials if "error" in t.user_attrs]
        worked = [t for t in all_trials if t.state.name in ("COMPLETE", "PRUNED")]
        return not worked and len(errors) >= 2


def surplus(study: Any, trial: Any, trials: int) -> bool:
    """Whether `trial` would be one too many: `trials` unfailed trials came before it (two
    workers can both start what each thought was the last trial; the later one yields)."""
    earlier = [t for t in study.get_trials(deepcopy=False)
               if t.number < trial.number and t.state.name != "FAIL"]
    return len(earlier) >= trials

