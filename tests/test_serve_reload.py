"""The model you meant: `fmnist serve` pins its checkpoint at start (a moved `latest` and a
killed worker change nothing), every answer names the model (its content hash), and SIGHUP
takes a new model under load without a failed request, or keeps the old one if the new one
does not load."""

from __future__ import annotations

import os
import shutil
import signal
import threading
from pathlib import Path

import httpx
import pytest
from test_serve import png
from test_serve_deploy import PNG, ServeProcess, answering_pids, metrics, until


def model_ids(url: str, tries: int = 12) -> set[str]:
    """The model ids /v1/model reports over fresh connections (spread over the workers)."""
    return {httpx.get(url + "/v1/model", timeout=10).json()["model_id"] for _ in range(tries)}


def reload_errors(url: str, tries: int = 12) -> set[str | None]:
    return {httpx.get(url + "/v1/model", timeout=10).json()["reload_error"] for _ in range(tries)}


class Load:
    """Predictions posted back to back by `clients` threads until stopped; what they got."""

    def __init__(self, url: str, clients: int = 4) -> None:
        self.url, self.stop, self.statuses = url, threading.Event(), []  # type: ignore[var-annotated]
        self.ids: set[str] = set()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(clients)]
        for t in self.threads:
            t.start()

    def _run(self, seed: int) -> None:
        with httpx.Client(timeout=30) as client:
            while not self.stop.is_set():
                try:
                    r = client.post(self.url + "/v1/predict", content=png(seed=seed), headers=PNG)
                    self.statuses.append(r.status_code)
                    if r.status_code == 200:
                        self.ids.add(r.json()["model_id"])
                except httpx.TransportError as e:
                    self.statuses.append(type(e).__name__)

    def finish(self) -> list[int | str]:
        self.stop.set()
        for t in self.threads:
            t.join(60)
        return self.statuses


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_the_pinned_model_survives_a_moved_path_and_sighup_swaps_without_a_failed_request(
    make_checkpoint, tmp_path: Path, workers: int
) -> None:
    first = make_checkpoint("mlp", name="first")
    second = make_checkpoint("cnn", {"widths": [4, 4, 8]}, name="second")
    latest = tmp_path / "latest"
    latest.symlink_to(first)
    server = ServeProcess(latest, "--workers", str(workers))
    try:
        server.wait_ready(workers=workers)
        (first_id,) = model_ids(server.url)
        # a new training run moves `latest`, and the old run's folder goes
        latest.unlink()
        latest.symlink_to(second)
        shutil.rmtree(first)
        if workers == 2:  # a replaced worker still serves the pinned files
            os.kill(answering_pids(server.url).pop(), signal.SIGKILL)
            until(lambda: server.log.count("Application startup complete") >= 3, "a replacement started", 180)
            server.wait_ready(workers=3)
            m = metrics(server.url)
            assert m[("fmnist_worker_restarts_total", (("reason", "crashed"),))] == 1
            infos = [k for k in m if k[0] == "fmnist_model_info"]
            assert [dict(k[1])["model_id"] for k in infos] == [first_id]  # the dead worker's series went
        assert model_ids(server.url) == {first_id}

        load = Load(server.url)
        try:
            until(lambda: len(load.statuses) > 10, "the load runs")
            os.kill(server.proc.pid, signal.SIGHUP)  # now take what `latest` names
            until(lambda: load.ids >= {first_id} and len(model_ids(server.url)) == 1
                  and model_ids(server.url) != {first_id}, "every worker serves the new model", 180)  # fmt: skip
            (second_id,) = model_ids(server.url)
            until(lambda: second_id in load.ids, "answers from the new model")
            # a new model that does not load leaves the current one serving, and says why
            latest.unlink()
            broken = tmp_path / "broken"
            broken.mkdir()
            (broken / "model.safetensors").write_bytes(b"not a checkpoint")
            latest.symlink_to(broken)
            os.kill(server.proc.pid, signal.SIGHUP)
            until(lambda: all(e and "safetensors" in e for e in reload_errors(server.url)), "the failure is reported", 180)
            assert model_ids(server.url) == {second_id}
        finally:
            statuses = load.finish()
        assert statuses and set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
        assert "model goes on serving" in server.log or "goes on serving" in server.log
        assert server.stop() == 0, server.log
    finally:
        server.stop()
