"""Trials are compared at matched points: each reports its plain validation accuracy (no flip
TTA, even where the recipe serves with it) at each eighth of its own planned steps, so a
2-epoch trial and a 6-epoch trial meet the pruner at the same shares of their schedules; a
trial's score is its report at 100 %."""

from __future__ import annotations

from dataclasses import replace

import pytest
from synthetic import make_data
from test_sweep import small

optuna = pytest.importorskip("optuna", reason="the sweep extra is not installed")

import fmnist.sweep.trial  # noqa: E402
from fmnist.sweep.trial import REPORTS, Pruning  # noqa: E402
from fmnist.train import fit  # noqa: E402


class Watched(Pruning):
    """Pruning that notes the share of the planned steps done at each report."""

    def __init__(self, trial):
        super().__init__(trial, report=True)
        self.shares: dict[int, float] = {}
        self.total = 0

    def score(self, state, at):
        self.total = state.parts.total_steps
        self.shares[at] = (state.global_step + state.progress.step) / self.total
        super().score(state, at)


def test_a_short_and_a_long_trial_are_compared_at_the_same_shares_of_their_steps(monkeypatch):
    evaluations = []
    real_evaluate = fmnist.sweep.trial.evaluate_epoch

    def watched_evaluate(model, setup, final=True):
        evaluations.append(final)
        return real_evaluate(model, setup, final=final)

    monkeypatch.setattr(fmnist.sweep.trial, "evaluate_epoch", watched_evaluate)
    data = make_data(320, 64)  # 10 steps an epoch at batch 32
    study = optuna.create_study(direction="maximize")
    reports = {}
    for epochs in (2, 6):
        trial = study.ask()
        watched = Watched(trial)
        recipe = replace(small("csv:unused"), epochs=epochs, tta_flip=True, eval_every=0)
        fit(recipe, data=data, save=False, display=False, callbacks=[watched])
        study.tell(trial, watched.accuracy)
        reports[epochs] = watched
        for at, share in watched.shares.items():  # the first step at or past each eighth
            eighth = round(at * REPORTS / 100) / REPORTS
            assert eighth <= share < eighth + 1 / watched.total

    short, long = (study.trials[0], study.trials[1])
    assert set(short.intermediate_values) == set(long.intermediate_values) == {
        12, 25, 38, 50, 62, 75, 88, 100}
    # half-way is epoch 1 of 2 for one, epoch 3 of 6 for the other
    assert reports[2].shares[50] == reports[6].shares[50] == 0.5
    assert not any(evaluations)  # plain, though the recipe serves with flip TTA
    for t in (short, long):
        assert t.value == t.intermediate_values[100]
