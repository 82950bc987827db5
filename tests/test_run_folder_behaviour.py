"""A run folder across stops and resumes, as its users meet it: status.json still says when the
run began, a folder stopped part-way through an epoch (its older saves gone) still evaluates,
predicts and serves, and a resumed run draws the same Python `random` numbers an unbroken one
would."""

from __future__ import annotations

import json
import os
import random
import signal
import time
from dataclasses import replace

import pytest
from fastapi.testclient import TestClient
from synthetic import make_data, write_csv
from test_serve import png
from test_stops_behaviour import TINY, SignalAt, tiny_data

from fmnist import rundir
from fmnist.cli import main
from fmnist.predict import Predictor
from fmnist.serve import create_app
from fmnist.train import Callback, fit
from fmnist.train.stops import Interrupted


def status(run):
    return json.loads((run / rundir.STATUS).read_text())


def test_status_started_stays_when_the_run_began_across_updates_and_a_resume(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(Interrupted):
        fit(TINY, data=tiny_data(), out=run, display=False,
            callbacks=[SignalAt(2, 1, signal.SIGTERM)])
    began = status(run)["started"]
    time.sleep(1.1)  # status.json's times are whole seconds
    fit(resume=run, data=tiny_data(), display=False)
    now = status(run)
    assert now["status"] == "finished" and now["updated"] != began
    assert now["started"] == began


def test_a_truncated_status_file_is_written_whole_again_and_reads_finished_after_a_resume(
        tmp_path, capsys):
    """A crash of an older version or a full disk left half a status.json: the resume's first
    update writes it whole, so the run is not shown as damaged forever."""
    run = tmp_path / "run"
    with pytest.raises(Interrupted):
        fit(TINY, data=tiny_data(), out=run, display=False,
            callbacks=[SignalAt(2, 1, signal.SIGTERM)])
    whole = (run / rundir.STATUS).read_text()
    (run / rundir.STATUS).write_text(whole[: len(whole) // 2])
    fit(resume=run, data=tiny_data(), display=False)
    assert status(run)["status"] == "finished"
    capsys.readouterr()
    assert main(["runs", "--dir", str(tmp_path), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(r["status"], r.get("damaged")) for r in listed] == [("finished", None)]


def test_status_updates_keep_started_and_what_was_said_before(tmp_path):
    rundir.write_status(tmp_path, "running", epoch=0, device="cpu")
    began = status(tmp_path)["started"]
    time.sleep(1.1)
    rundir.write_status(tmp_path, "interrupted", epoch=1)
    now = status(tmp_path)
    assert now["started"] == began != now["updated"]
    assert (now["status"], now["epoch"], now["device"]) == ("interrupted", 1, "cpu")


def test_a_folder_stopped_mid_epoch_with_its_older_saves_gone_evaluates_predicts_and_serves(
        tmp_path, capsys):
    run = tmp_path / "run"
    recipe = replace(TINY, dataset=write_csv(tmp_path / "data", make_data(96, 32)))
    with pytest.raises(Interrupted):  # saved at every step: epoch 2's saves replace epoch 1's
        fit(recipe, out=run, display=False, checkpoint_every=1e-9,
            callbacks=[SignalAt(2, 1, signal.SIGTERM)])
    saves = sorted(p.name for p in (run / rundir.CHECKPOINTS).iterdir())
    assert saves == ["epoch-0002-step-000001", "epoch-0002-step-000002"]  # epoch-0001 is gone
    capsys.readouterr()

    assert main(["evaluate", str(run), "--json", "--out", str(tmp_path / "report")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert 0 <= report["accuracy"] <= 1

    image = tmp_path / "shirt.png"
    image.write_bytes(png())
    assert main(["predict", str(run), str(image), "--json"]) == 0
    assert str(image) in capsys.readouterr().out

    with TestClient(create_app(Predictor.from_checkpoint(run))) as client:
        answer = client.post("/v1/predict", content=png(), headers={"Content-Type": "image/png"})
    assert answer.status_code == 200, answer.text
    assert os.readlink(run / rundir.CURRENT) == "checkpoints/epoch-0002-step-000002"


class PythonDraws(Callback):
    """Draws from Python's `random` at every step, as an augmentation written with it would."""

    def __init__(self) -> None:
        self.draws: list[float] = []

    def on_step(self, state, step, loss, batch):
        self.draws.append(random.random())


def test_a_resumed_run_draws_the_python_random_numbers_an_unbroken_one_draws(tmp_path):
    random.seed(7)
    whole = PythonDraws()
    fit(TINY, data=tiny_data(), save=False, display=False, callbacks=[whole])

    random.seed(7)
    run, resumed = tmp_path / "run", PythonDraws()
    with pytest.raises(Interrupted):
        fit(TINY, data=tiny_data(), out=run, display=False,
            callbacks=[resumed, SignalAt(2, 0, signal.SIGTERM)])  # mid-epoch
    random.seed(12345)  # whatever the process did in between
    fit(resume=run, data=tiny_data(), display=False, callbacks=[resumed])
    assert resumed.draws == whole.draws
