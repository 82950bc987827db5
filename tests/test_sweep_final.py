"""One final run per study: the oldest claim in the study's storage trains it, the others say
who does; a claim whose worker died on this host is taken over. Claims are bookkeeping: no
table, count or best trial sees them. (Two real workers on PostgreSQL: test_sweep.)"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna", reason="the sweep extra is not installed")

from fmnist.recipes import Recipe  # noqa: E402
from fmnist.sweep import final, report  # noqa: E402
from fmnist.sweep.trial import worker  # noqa: E402
from fmnist.train.stops import Stops  # noqa: E402


def study_with_a_best_trial(tmp_path: Path) -> optuna.Study:
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'study.db'}", study_name="s",
                                direction="maximize")
    study.add_trial(optuna.trial.create_trial(
        value=0.9, params={"lr": 0.1},
        distributions={"lr": optuna.distributions.FloatDistribution(0.01, 1.0)},
        user_attrs={"values": {"lr": 0.1}}))
    return study


def add_claim(study: optuna.Study, who: str, **extra) -> None:
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL, user_attrs={
        report.CLAIM: who, "final_of": 0, "final_dir": "/elsewhere/final-0000", **extra}))


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_the_oldest_claim_trains_the_final_run_and_the_others_say_who(tmp_path):
    study = study_with_a_best_trial(tmp_path)
    add_claim(study, "machine-b:4242")  # another host's worker claimed it first
    lines: list[str] = []
    final_dir, accuracy = final.final_run(study, study.best_trial, Recipe(), tmp_path, None, None,
                                          Stops(), lines.append)
    assert (final_dir, accuracy) == (None, None) and not (tmp_path / "final-0000").exists()
    assert lines == ["Worker machine-b:4242 trains the final run in /elsewhere/final-0000."]
    # a claim already held: none is added (two that look at once both add one: the older wins)
    assert [c.user_attrs[report.CLAIM] for c in final.claims(study, 0)] == ["machine-b:4242"]
    add_claim(study, worker())
    assert final.holder(study, 0).user_attrs[report.CLAIM] == "machine-b:4242"
    # the claims are no trials of the search: not in the table, the counts or the best
    assert [t.number for t in report.trials(study)] == [0]
    assert report.best_of(study).number == 0 and "final" not in report.table(study)


def test_a_claim_whose_worker_died_on_this_host_is_taken_over(tmp_path):
    study = study_with_a_best_trial(tmp_path)
    gone = f"{socket.gethostname()}:{dead_pid()}"
    add_claim(study, gone)
    add_claim(study, "machine-b:4242")  # a live claim after it: it lost to the dead one
    winner = final.claim(study, 0, tmp_path / "final-0000")
    assert winner.user_attrs[report.CLAIM] == worker()
    assert winner.user_attrs["replaces"] == final.claims(study, 0)[0].number
    assert winner.user_attrs["final_dir"] == "/elsewhere/final-0000"  # continued where it was
    # a second look (another worker, or this one again) agrees: no further claim is added
    assert final.claim(study, 0, tmp_path / "final-0000").number == winner.number
    assert len(final.claims(study, 0)) == 3
