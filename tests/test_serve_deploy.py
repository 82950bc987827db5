"""The server as a deployed service: real uvicorn servers on 127.0.0.1 (in a thread where the
test needs to reach into the model, in a child process where it needs real signals), slow and
vanishing clients on raw sockets, SIGTERM, kill -9, and /metrics. No timing assertions: every
wait is bounded and waits for a state, never for a duration."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import uvicorn
from child_env import child_env
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from test_serve import Spy, png, wait_ready
from test_serve_batching import Forward, RaisesOnTheFirstError, ids

from fmnist.errors import CheckpointError, ConfigError, DatasetError, WriteError
from fmnist.predict import Predictor
from fmnist.serve import create_app
from fmnist.serve.app import SETTINGS_ENV, app_from_env
from fmnist.serve.batching import Batcher, BatcherDied
from fmnist.serve.engine import Batching
from fmnist.serve.pinning import Pinned, write_current
from fmnist.serve.server import Server

# a child server loads torch and the model before it listens: on 2 busy cores, tens of seconds
START_S = 180.0
PNG = {"Content-Type": "image/png"}


# ---- helpers ---------------------------------------------------------------------------------


def until(condition: Callable[[], Any], what: str, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"never happened in {seconds:g} s: {what}")


class ThreadServer:
    """`fmnist.serve.server.Server` on 127.0.0.1, in a thread of this process."""

    def __init__(self, app: FastAPI, **options: Any) -> None:
        self.server = Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                            timeout_graceful_shutdown=10), **options)  # fmt: skip
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        until(lambda: self.server.started or not self.thread.is_alive(), "the server started")
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture
def live() -> Iterator[Callable[[FastAPI], ThreadServer]]:
    servers: list[ThreadServer] = []

    def start(app: FastAPI, **options: Any) -> ThreadServer:
        servers.append(ThreadServer(app, **options))
        return servers[-1]

    yield start
    for s in servers:
        s.stop()


class ServeProcess:
    """`fmnist serve` as a child process on a free port; its log is kept for the assertions."""

    def __init__(self, checkpoint: Path, *flags: str) -> None:
        env = child_env()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fmnist", "serve", str(checkpoint), "--port", "0",
             "--backend", "torch", *flags],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        self.lines: list[str] = []
        self._port = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        assert self._port.wait(START_S), "fmnist serve never said where it listens:\n" + self.log
        self.url = f"http://127.0.0.1:{self.port}"

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            if m := re.search(r"Uvicorn running on http://127\.0\.0\.1:(\d+)", line):
                self.port = int(m.group(1))
                self._port.set()

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def get(self, path: str) -> httpx.Response | None:
        try:
            return httpx.get(self.url + path, timeout=10)
        except httpx.TransportError:
            return None

    def wait_ready(self, workers: int = 1) -> None:
        until(lambda: self.log.count("Application startup complete") >= workers
              and (r := self.get("/readyz")) is not None and r.status_code == 200, "ready", START_S)  # fmt: skip

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)


def slow_upload(port: int, body: bytes, sent: int) -> socket.socket:
    """A POST whose headers and first `sent` bytes of `body` are sent; the rest is not (yet)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    head = (f"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()  # fmt: skip
    sock.sendall(head + body[:sent])
    return sock


def finish_upload(sock: socket.socket, body: bytes, sent: int) -> int:
    """Send the rest of the body; the status of the answer."""
    sock.sendall(body[sent:])
    answer = b""
    while b"\r\n" not in answer:
        chunk = sock.recv(4096)
        assert chunk, "the server closed the connection without an answer"
        answer += chunk
    sock.close()
    return int(answer.split()[1])


def read_answer(sock: socket.socket) -> bytes:
    """One whole HTTP answer from `sock` (its head, then Content-Length bytes of body: uvicorn
    sends them in separate writes), leaving the connection open."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection without an answer"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = re.search(rb"(?im)^content-length: *(\d+)", head)
    assert length is not None, head
    while len(body) < int(length[1]):
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection in the middle of an answer"
        body += chunk
    return head + b"\r\n\r\n" + body


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    except ConnectionResetError:  # queued just as the listener closed: the next try is refused
        return False
    return False


def stats(url: str) -> dict[str, Any]:
    return httpx.get(url + "/v1/stats", timeout=10).json()


@pytest.fixture
def predictor(make_checkpoint) -> Predictor:
    return Predictor.from_checkpoint(make_checkpoint("mlp"))


# ---- supervision: the batcher never dies silently --------------------------------------------


def test_an_error_anywhere_in_a_pass_fails_only_that_pass(forward: Forward) -> None:
    """Mismatched images make np.concatenate raise outside the forward pass's own try (the
    case that used to end the thread): that pass fails, the next one is answered."""
    forward.hold = threading.Event()
    batcher = Batcher(forward, prepare=lambda p: p, max_images=64, window_s=0)
    try:
        blocker = batcher.submit(ids(1))
        assert forward.entered.wait(10)
        bad = [batcher.submit(ids(2)), batcher.submit(np.zeros((1, 5), np.int64))]  # 2 vs 5 wide
        until(lambda: batcher.pending == 2, "two requests queued behind the held pass")
        forward.hold.set()
        assert blocker.result(timeout=10).rows[0, 0] == 10
        for f in bad:
            with pytest.raises(ValueError, match="dimension"):
                f.result(timeout=10)
        assert batcher.submit(ids(3)).result(timeout=10).rows[0, 0] == 30
        assert batcher.alive and batcher.failed_passes == 1
    finally:
        batcher.close()


@pytest.fixture
def forward() -> Forward:
    return Forward()


def test_a_dead_batcher_fails_its_requests_readyz_and_healthz_and_stops_the_server(
    predictor: Predictor, live, caplog: pytest.LogCaptureFixture
) -> None:
    spy = Spy(predictor)
    app = create_app(spy, batching=Batching(window_ms=0))  # type: ignore[arg-type]
    server = live(app)
    broken = RaisesOnTheFirstError()
    logger = logging.getLogger("fmnist.serve")
    logger.addFilter(broken)
    try:
        spy.fail = True  # a pass fails; logging that it failed kills the batcher's thread
        with httpx.Client(base_url=server.url, timeout=60) as c:
            # answered at once, not left waiting for the 30 s deadline of its prediction
            r = c.post("/v1/predict", content=png(), headers=PNG)
            assert r.status_code == 503 and "restarting" in r.json()["error"], r.text
        assert broken.tripped
    finally:
        logger.removeFilter(broken)
    # the operator's log says so, with what killed it
    died = [r for r in caplog.records if r.levelname == "CRITICAL" and r.name == "fmnist.serve"]
    assert [r.getMessage() for r in died] == ["The batcher's thread died: no prediction will be answered"]
    assert died[0].exc_info and "simulated bug in a logging filter" in str(died[0].exc_info[1])
    # the server notices and exits 1, so that its supervisor starts a fresh one; until then
    # (or if it could not) the probes say so
    server.thread.join(30)
    assert not server.thread.is_alive() and server.server.exit_code == 1
    spy.fail, passes = False, len(spy.calls)
    with TestClient(app) as c:
        assert c.get("/readyz").status_code == 503 and c.get("/readyz").json()["status"] == "failed"
        assert c.get("/healthz").status_code == 503
        again = c.post("/v1/predict", content=png(), headers=PNG)
    # refused as a failed worker, before anything is decoded for it
    assert again.status_code == 503 and "restarting" in again.json()["error"]
    assert len(spy.calls) == passes
    with pytest.raises(BatcherDied, match=r"^The batcher has stopped on an error\.$"):
        app.state.engine.batcher.submit([1])


def test_an_answer_is_awaited_with_a_deadline(predictor: Predictor) -> None:
    spy = Spy(predictor)
    spy.release = threading.Event()
    app = create_app(spy, predict_timeout_s=0.5)  # type: ignore[arg-type]
    with TestClient(app) as c:
        wait_ready(c)
        spy.started.clear()
        r = c.post("/v1/predict", content=png(), headers=PNG)  # its pass never ends...
        spy.release.set()
        s = c.get("/v1/stats").json()
    assert r.status_code == 503 and "not answered within 0.5 s" in r.json()["error"]  # ...it did
    assert r.headers["retry-after"] == "1" and s["rejected"]["deadline"] == 1 and s["in_flight"] == 0


# ---- bounded work ----------------------------------------------------------------------------


def test_many_slow_uploads_do_not_starve_ordinary_requests(predictor: Predictor, live) -> None:
    """Uploads in progress have their own bound; the queue bound counts only work."""
    app = create_app(predictor, max_queue=2, max_uploads=32)
    server = live(app)
    body = png()
    slow = [slow_upload(server.port, body, 10) for _ in range(30)]
    try:
        until(lambda: stats(server.url)["uploading"] == 30, "30 uploads in progress")
        with httpx.Client(base_url=server.url, timeout=30) as c:
            ordinary = [c.post("/v1/predict", content=png(seed=i), headers=PNG) for i in range(3)]
        assert [r.status_code for r in ordinary] == [200, 200, 200]
        slow += [slow_upload(server.port, body, 10) for _ in range(2)]
        until(lambda: stats(server.url)["uploading"] == 32, "32 uploads in progress")
        extra = slow_upload(server.port, body, 10)  # the 33rd upload: past its own bound
        answer = b"".join(iter(lambda: extra.recv(4096), b""))  # to its Connection: close
        extra.close()
        assert answer.startswith(b"HTTP/1.1 503") and b"32 uploads in progress" in answer
        assert [finish_upload(s, body, 10) for s in slow] == [200] * 32  # all still answered
    finally:
        for s in slow:
            s.close()
    assert stats(server.url)["rejected"] == {"uploads": 1}


def test_a_request_whose_client_hung_up_is_not_computed(predictor: Predictor, live) -> None:
    spy = Spy(predictor)
    spy.release = threading.Event()
    app = create_app(spy, batching=Batching(window_ms=0))  # type: ignore[arg-type]
    server = live(app)
    until(lambda: app.state.engine.ready.is_set(), "warmed up")
    spy.calls.clear()
    spy.started.clear()
    results: dict[str, httpx.Response] = {}
    first = threading.Thread(target=lambda: results.update(
        a=httpx.post(server.url + "/v1/predict", content=png(seed=1), headers=PNG, timeout=30)))  # fmt: skip
    first.start()
    assert spy.started.wait(10)  # its pass is running, held open
    body = png(seed=2)
    gone = slow_upload(server.port, body, len(body))  # all sent: it queues behind the pass...
    until(lambda: app.state.engine.in_flight == 2, "the second request queued")
    gone.close()  # ...and its client hangs up
    until(lambda: app.state.engine.rejected["client_gone"] == 1, "the hang-up noticed")
    spy.release.set()
    first.join(30)
    after = httpx.post(server.url + "/v1/predict", content=png(seed=3), headers=PNG, timeout=30)
    assert results["a"].status_code == after.status_code == 200
    assert spy.calls == [(1, 28, 28), (1, 28, 28)]  # the first and the last: never the second
    s = stats(server.url)
    assert s["dropped"] == 1 and s["forward_passes"] >= 2 and s["in_flight"] == 0


def test_a_slow_decode_does_not_delay_another_requests_answer(predictor: Predictor, live) -> None:
    """A large upload is decoded before it is queued, beside the batcher: a request whose
    decode is held (as a 40 M pixel image would hold it) does not stop the next one's pass."""
    app = create_app(predictor, batching=Batching(window_ms=0))
    server = live(app)
    engine = app.state.engine
    until(lambda: engine.ready.is_set(), "warmed up")
    slow_body, decode = png(1200, 1000, seed=1), engine.decode  # 1.2 M pixels: a large upload
    entered, release, left = threading.Event(), threading.Event(), threading.Event()

    def held_decode(items: Any, abandoned: Any = None) -> np.ndarray:
        if items[0].data != slow_body:
            return decode(items, abandoned)
        entered.set()
        try:
            assert release.wait(30), "the test never released the slow decode"
            return decode(items, abandoned)
        finally:
            left.set()

    engine.decode = held_decode
    results: dict[str, httpx.Response] = {}
    slow = threading.Thread(target=lambda: results.update(
        slow=httpx.post(server.url + "/v1/predict", content=slow_body, headers=PNG, timeout=60)))  # fmt: skip
    slow.start()
    try:
        assert entered.wait(30)
        fast = httpx.post(server.url + "/v1/predict", content=png(seed=2), headers=PNG, timeout=60)
        assert fast.status_code == 200, fast.text
        assert not left.is_set(), "the other request was answered only after the slow decode"
    finally:
        release.set()
        slow.join(60)
    assert results["slow"].status_code == 200


# ---- status codes ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "status"),
    [(CheckpointError, 500), (DatasetError, 500), (WriteError, 500), (ConfigError, 422)],
)
def test_server_faults_are_5xx_and_client_errors_4xx(predictor: Predictor, error: type, status: int) -> None:
    spy = Spy(predictor)
    app = create_app(spy)  # type: ignore[arg-type]

    def fail(images: np.ndarray) -> np.ndarray:
        raise error("Something went wrong here.")

    with TestClient(app) as c:
        wait_ready(c)
        spy.predict_arrays = fail  # type: ignore[method-assign]
        r = c.post("/v1/predict", content=png(), headers=PNG)
        ok_after = c.get("/readyz").status_code
    assert r.status_code == status and "Something went wrong here." in r.json()["error"]
    assert ok_after == 200  # a failed pass is not a failed server


# ---- graceful shutdown, workers, metrics (child processes, real signals) -----------------------


def test_shutdown_answers_connections_accepted_before_their_request_was_read(predictor: Predictor, live) -> None:
    """A client that connects and sends at once may be accepted an instant before shutdown
    and its request read only after: it is answered, not cut (uvicorn alone closes it); an
    idle keep-alive connection is closed at once."""
    app = create_app(predictor)
    server = live(app, first_request_grace_s=60)  # the test's pace cannot matter
    until(lambda: app.state.engine.ready.is_set(), "warmed up")
    body = png()
    head = (f"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body  # fmt: skip
    idle = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    quiet = socket.create_connection(("127.0.0.1", server.port), timeout=30)  # nothing sent yet
    partial = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    try:
        idle.sendall(head.replace(b"\r\n\r\n", b"\r\nConnection: keep-alive\r\n\r\n", 1))
        assert read_answer(idle).startswith(b"HTTP/1.1 200")  # answered; the connection stays open
        partial.sendall(head[:20])  # part of its headers
        connections = server.server.server_state.connections
        until(lambda: len(connections) == 3, "all three connections accepted")
        server.server.handle_exit(signal.SIGTERM, None)
        assert app.state.engine.state()[0] == "draining"
        until(lambda: refused(server.port), "the port closed")
        assert idle.recv(4096) == b""  # closed: it had its answer
        quiet.sendall(head)
        partial.sendall(head[20:])
        for sock in (quiet, partial):
            answer = b"".join(iter(lambda s=sock: s.recv(65536), b""))  # to its Connection: close
            assert answer.startswith(b"HTTP/1.1 200") and b'"predictions"' in answer, answer[:200]
    finally:
        for sock in (idle, quiet, partial):
            sock.close()
    server.thread.join(30)
    assert not server.thread.is_alive() and server.server.exit_code == 0


@pytest.mark.slow
def test_sigterm_drains_every_accepted_request_and_exits_0(make_checkpoint) -> None:
    server = ServeProcess(make_checkpoint("mlp"), "--workers", "1", "--drain-delay", "60",
                          "--graceful-timeout", "30")  # fmt: skip
    try:
        server.wait_ready()
        body = png()
        accepted = [slow_upload(server.port, body, 10) for _ in range(4)]
        until(lambda: stats(server.url)["uploading"] == 4, "4 uploads in progress")
        server.proc.send_signal(signal.SIGTERM)
        # draining: still accepting during the drain delay, but not ready
        until(lambda: (r := server.get("/readyz")) is not None and r.status_code == 503, "/readyz 503")
        assert server.get("/readyz").json()["status"] == "draining"  # type: ignore[union-attr]
        server.proc.send_signal(signal.SIGTERM)  # a second signal: stop accepting now
        until(lambda: server.get("/healthz") is None, "the port closed")
        assert [finish_upload(s, body, 10) for s in accepted] == [200] * 4
        assert server.proc.wait(60) == 0, server.log
    finally:
        server.stop()
    assert "draining" in server.log and "Finished server process" in server.log


@pytest.mark.slow
def test_two_workers_metrics_count_what_was_sent_and_a_killed_worker_is_replaced(make_checkpoint) -> None:
    server = ServeProcess(make_checkpoint("mlp"), "--workers", "2")
    try:
        server.wait_ready(workers=2)
        if sys.platform == "linux":  # the supervising parent holds neither torch nor the model
            assert "libtorch" not in Path(f"/proc/{server.proc.pid}/maps").read_text()
        # a connection per request, so that both workers get some
        for i in range(10):
            assert httpx.post(server.url + "/v1/predict", content=png(seed=i), headers=PNG, timeout=30).status_code == 200
        bad = httpx.post(server.url + "/v1/predict", content=b"x", headers={"Content-Type": "text/plain"}, timeout=30)
        assert bad.status_code == 415
        pids = answering_pids(server.url)
        for _ in range(4):  # whichever worker answers, it counts every worker's requests
            m = metrics(server.url)
            assert m[("fmnist_http_requests_total", (("method", "POST"), ("route", "/v1/predict"), ("status", "200")))] == 10
            assert m[("fmnist_http_requests_total", (("method", "POST"), ("route", "/v1/predict"), ("status", "415")))] == 1
            assert m[("fmnist_forward_pass_images_sum", ())] == 10
            model_id = httpx.get(server.url + "/v1/model", timeout=10).json()["model_id"]
            assert m[("fmnist_model_info", (("backend", "torch"), ("model", "mlp"), ("model_id", model_id), ("tta", "false")))] == 1
        victim = pids.pop()
        os.kill(victim, signal.SIGKILL)
        until(lambda: "starting another" in server.log, "the supervisor noticed")
        server.wait_ready(workers=3)  # the replacement has started...
        assert victim not in answering_pids(server.url)  # ...and serves beside the survivor
        # the dead worker's counters still count
        assert metrics(server.url)[("fmnist_http_requests_total", (("method", "POST"), ("route", "/v1/predict"), ("status", "200")))] == 10
        assert server.stop() == 0, server.log
    finally:
        server.stop()


def test_a_worker_loads_and_warms_its_model_before_it_listens(make_checkpoint, monkeypatch, tmp_path) -> None:
    """What a worker the supervisor starts runs: its app (model loaded, one forward pass done)
    is built before its port listens, so a restarted worker takes no traffic cold."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    current = tmp_path / "current.json"
    write_current(current, Pinned(str(make_checkpoint("mlp") / "model.safetensors"), None, "torch", "0" * 16, "x"))
    monkeypatch.setenv(SETTINGS_ENV, json.dumps({"current": str(current)}))
    seen: list[str] = []
    warmup = Predictor.warmup

    def watched_warmup(self: Predictor) -> None:
        seen.append("listening" if not refused(port) else "not listening")
        warmup(self)
        seen.append("warm")

    monkeypatch.setattr(Predictor, "warmup", watched_warmup)
    config = uvicorn.Config("fmnist.serve.app:app_from_env", factory=True, host="127.0.0.1", port=port,
                            log_level="warning")  # fmt: skip
    server = Server(config, make_app=app_from_env)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        until(lambda: server.started or not thread.is_alive(), "the worker started")
        first = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10)  # its very first request
        assert seen == ["not listening", "warm"] and first.status_code == 200, (seen, first.text)
    finally:
        server.should_exit = True
        thread.join(30)


def answering_pids(url: str) -> set[int]:
    """The worker processes that answer, two of them (a new connection per request: the
    kernel spreads connections over the workers' sockets)."""
    pids: set[int] = set()
    until(lambda: pids.add(stats(url)["pid"]) or len(pids) == 2, "two workers answered")
    return pids


def metrics(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(url + "/metrics", timeout=10).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}  # fmt: skip


def test_the_cli_knows_every_export_format() -> None:
    """fmnist.cli.export keeps its own copy of the formats (importing fmnist.export would load
    torch in every command, the supervising parent of `fmnist serve` included)."""
    import fmnist.cli.export
    import fmnist.export

    assert fmnist.cli.export.FORMATS == fmnist.export.FORMATS
