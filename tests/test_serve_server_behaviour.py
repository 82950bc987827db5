"""`fmnist serve`'s process management as an operator meets it, in this process (so that
mutation testing sees which code each test reaches): the supervisor, run here, spawns real
worker processes (a light app, tests/serve_counting_worker.py: no torch) and is sent real
signals; the server, run here on 127.0.0.1, is sent real SIGTERM, SIGINT and SIGHUP.

Only what is visible from outside is asserted: exit statuses, what the port answers, the log
lines, which signal handlers are left in place. Every wait is bounded and waits for a state."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import serve_counting_worker
import uvicorn
from test_serve import png
from test_serve_deploy import predictor, read_answer, refused, slow_upload, until

from fmnist.predict import Predictor
from fmnist.serve import create_app
from fmnist.serve.server import Server, Supervisor, serve

__all__ = ["predictor"]  # a fixture, used by name

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class Lines(logging.Handler):
    """The `uvicorn.error` log (the supervisor's and the server's lines), kept."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.times: list[float] = []  # when each line was logged

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.levelname} {record.getMessage()}")
        self.times.append(record.created)

    def has(self, part: str) -> bool:
        return any(part in line for line in self.lines)

    def said(self, line: str, pattern: bool = False) -> bool:
        """A whole line "LEVEL message"; with `pattern`, a regular expression for it."""
        return any(re.fullmatch(line if pattern else re.escape(line), said) for said in self.lines)

    def __str__(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture
def log() -> Iterator[Lines]:
    lines = Lines()
    logger = logging.getLogger("uvicorn.error")
    level = logger.level
    logger.addHandler(lines)
    logger.setLevel(logging.INFO)
    yield lines
    logger.removeHandler(lines)
    logger.setLevel(level)


@pytest.fixture
def handlers() -> Iterator[dict[int, Any]]:
    """This process's signal handlers while a test runs: harmless ones (a stray SIGHUP must not
    end pytest), put back afterwards; the test compares them with what it finds at the end."""
    strays: list[int] = []
    previous = {sig: signal.signal(sig, lambda s, f: strays.append(s)) for sig in SIGNALS}
    yield {sig: signal.getsignal(sig) for sig in SIGNALS}
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def supervisor(*, workers: int = 1, graceful: float | None = 5, **options: Any) -> tuple[Supervisor, str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    config = uvicorn.Config("serve_counting_worker:app", factory=True, log_config=None,
                            log_level="info", timeout_graceful_shutdown=graceful)  # fmt: skip
    return (Supervisor(config, sock, workers, "serve_counting_worker:app", **options),
            f"http://127.0.0.1:{sock.getsockname()[1]}")  # fmt: skip


def supervise(sup: Supervisor, operator: Callable[[], None], seconds: float = 20.0) -> int:
    """`sup.run()` in this (the main) thread, as `fmnist serve` runs it, while `operator` acts
    in another; the supervisor's exit status. A failing operator stops the supervisor."""
    failed: list[BaseException] = []

    def act() -> None:
        try:
            operator()
        except BaseException as e:  # noqa: BLE001 - handed to the test below
            failed.append(e)
            sup.stopping.set()

    thread = threading.Thread(target=act, daemon=True)
    guard = threading.Timer(seconds, sup.stopping.set)  # a supervisor that never stops
    thread.start()
    guard.start()
    try:
        status = sup.run()
    finally:
        guard.cancel()
    thread.join(seconds)
    if failed:
        raise failed[0]
    return status


def answer(url: str) -> tuple[int, int] | None:
    """(the answering worker's pid, the reloads it has run), or None while nothing answers."""
    try:
        r = httpx.get(url + "/", timeout=2)
    except httpx.TransportError:
        return None
    pid, reloads = r.text.split()
    return int(pid), int(reloads)


def test_each_sighup_is_prepared_once_and_reaches_the_worker_and_sigterm_stops_everything_with_0(
    log: Lines, handlers: dict[int, Any]
) -> None:
    release, prepared = threading.Event(), []

    def reload() -> None:  # the parent prepares the new model; the workers then load it
        prepared.append(threading.current_thread().name)
        assert release.wait(30)

    sup, url = supervisor(reload=reload)
    seen: dict[str, Any] = {}

    def operator() -> None:
        until(lambda: answer(url) is not None, "the worker answers", 10)
        worker, reloads = answer(url)  # type: ignore[misc]
        assert reloads == 0
        os.kill(os.getpid(), signal.SIGHUP)
        until(lambda: prepared, "the reload is being prepared", 10)
        os.kill(os.getpid(), signal.SIGHUP)  # a second one meanwhile is refused, not queued
        until(lambda: log.said("WARNING SIGHUP: a reload is already being prepared"), "the second refused", 10)
        assert answer(url) == (worker, 0)  # not told before the new model is ready
        release.set()
        until(lambda: answer(url) == (worker, 1), "the worker reloaded", 10)
        time.sleep(0.5)  # a few of the supervisor's rounds: it is told once, not again
        assert answer(url) == (worker, 1)
        os.kill(os.getpid(), signal.SIGHUP)  # and again, later: each reload reaches it
        until(lambda: answer(url) == (worker, 2), "the worker reloaded again", 10)
        seen["worker"] = worker
        os.kill(os.getpid(), signal.SIGTERM)

    assert supervise(sup, operator) == 0, log
    assert prepared == ["fmnist-reload"] * 2  # once a SIGHUP, off the signal handler
    assert not sup.restarts
    assert log.said(f"INFO Started parent process [{os.getpid()}]") and log.said(f"INFO Started worker [{seen['worker']}]")
    assert log.said("INFO Stopping: every worker drains its requests, then exits"), log
    assert log.said(f"INFO Stopped parent process [{os.getpid()}]") and not log.has("did not exit cleanly"), log
    assert {sig: signal.getsignal(sig) for sig in SIGNALS} == handlers  # put back as they were


def test_a_worker_whose_loop_is_stuck_is_killed_and_replaced_by_one_on_the_current_model(
    log: Lines, handlers: dict[int, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stuck soon after it listened, after a failed start: its death counts as a second
    failed start in a row (it had not served long enough to have proved itself)."""
    plan = tmp_path / "plan"
    plan.write_text("fail\nok\nok\n")
    monkeypatch.setenv("COUNTING_PLAN", str(plan))
    monkeypatch.setattr(Supervisor, "BACKOFF_FIRST_S", 0.1)  # 1 s in fmnist serve
    sup, url = supervisor(watchdog_s=1.0)  # no reload function
    seen: dict[str, Any] = {}

    def operator() -> None:
        until(lambda: answer(url) is not None, "the worker answers", 10)
        first = seen["first"] = answer(url)[0]  # type: ignore[index]
        os.kill(os.getpid(), signal.SIGHUP)  # nothing to reload: said, and nothing else
        until(lambda: log.said("WARNING SIGHUP: this server has no model to reload"), "the SIGHUP refused", 10)
        with contextlib.suppress(httpx.TimeoutException):
            httpx.get(url + "/stick", timeout=0.5)
        until(lambda: (a := answer(url)) is not None and a[0] != first, "a new worker answers", 10)
        seen["second"] = answer(url)
        os.kill(os.getpid(), signal.SIGTERM)

    assert supervise(sup, operator) == 0, log
    first = seen["first"]
    assert seen["second"][1] == 0  # no reload was prepared: the new one was not told of one
    assert log.said(rf"ERROR Worker \[{first}\] has not answered for \d+ s \(its event loop is stuck\): killing it",
                    pattern=True), log  # fmt: skip
    assert log.said(rf"ERROR Worker \[{first}\] exited with status -9 \d+ s after it listened \(2 failed start\(s\) "
                    r"in a row\): starting another in 0.2 s", pattern=True), log  # fmt: skip
    assert sup.restarts == {"failed_start": 1, "unresponsive": 1}
    assert {sig: signal.getsignal(sig) for sig in SIGNALS} == handlers


def test_with_the_watchdog_off_a_stuck_worker_is_left_alone_until_shutdown_kills_it(
    log: Lines, handlers: dict[int, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`fmnist serve --watchdog-timeout 0`: for an operator whose requests may hold the loop."""
    monkeypatch.setattr(Supervisor, "SHUTDOWN_SLACK_S", 0.5)  # 10 s in fmnist serve
    sup, url = supervisor(watchdog_s=0, graceful=None)
    seen: list[int] = []

    def operator() -> None:
        until(lambda: answer(url) is not None, "the worker answers", 10)
        seen.append(answer(url)[0])  # type: ignore[index]
        with contextlib.suppress(httpx.TimeoutException):
            httpx.get(url + "/stick", timeout=0.5)
        time.sleep(1.5)  # silent for 1.5 s: seven of the supervisor's rounds, each one a chance to kill it
        os.kill(os.getpid(), signal.SIGTERM)

    assert supervise(sup, operator) == 1, log  # the stuck worker cannot drain: killed at shutdown
    assert not log.has("its event loop is stuck") and not sup.restarts, log
    assert log.said(f"ERROR Worker [{seen[0]}] did not stop in 0.5 s: killing it"), log
    assert {sig: signal.getsignal(sig) for sig in SIGNALS} == handlers


def test_workers_that_never_start_are_retried_with_a_growing_back_off_then_given_up(
    log: Lines, handlers: dict[int, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = tmp_path / "plan"
    plan.write_text("fail\nfail\nfail\n")  # every start exits before it listens
    monkeypatch.setenv("COUNTING_PLAN", str(plan))
    # 1 s in fmnist serve; here longer than a round of the supervisor's checks (0.2 s), so a
    # start that did not wait would show
    monkeypatch.setattr(Supervisor, "BACKOFF_FIRST_S", 0.3)
    sup, url = supervisor()  # giving up after 3 failed starts, as `fmnist serve` does
    assert supervise(sup, lambda: None) == 1, log
    delays = [line.rsplit("starting another in ", 1)[1] for line in log.lines if "starting another" in line]
    assert delays == ["0.3 s", "0.6 s", "1.2 s"], log
    for n, delay in ((1, 0.3), (2, 0.6), (3, 1.2)):
        assert log.said(rf"ERROR Worker \[\d+\] exited with status 3 before it listened \({n} failed start\(s\) "
                        rf"in a row\): starting another in {delay} s", pattern=True), log  # fmt: skip
    assert log.said("CRITICAL No worker starts (each failed 3 times in a row; see above): stopping"), log
    assert sup.restarts == {"failed_start": 3} and plan.read_text().split() == []
    started = [i for i, line in enumerate(log.lines) if line.startswith("INFO Started worker")]
    assert len(started) == 3, log  # given up after the third: no fourth start
    for i, delay in zip(started[1:], (0.3, 0.6), strict=True):  # each start waits out its back-off
        failed = max(j for j in range(i) if "starting another" in log.lines[j])
        assert log.times[i] - log.times[failed] >= delay - 0.02, log
    assert {sig: signal.getsignal(sig) for sig in SIGNALS} == handlers


def test_a_worker_that_served_long_enough_before_it_died_starts_its_failure_count_again(
    log: Lines, handlers: dict[int, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = tmp_path / "plan"
    plan.write_text("fail\nok\nok\n")  # a failed start, then a worker that serves, then another
    monkeypatch.setenv("COUNTING_PLAN", str(plan))
    monkeypatch.setattr(Supervisor, "STABLE_S", 0.5)  # a worker serving this long has proved itself
    sup, url = supervisor()
    seen: list[int] = []

    def operator() -> None:
        until(lambda: answer(url) is not None, "the second start answers", 10)
        seen.append(answer(url)[0])  # type: ignore[index]
        time.sleep(0.8)  # serving longer than STABLE_S
        os.kill(seen[0], signal.SIGKILL)
        until(lambda: (a := answer(url)) is not None and a[0] != seen[0], "a new worker answers", 10)
        os.kill(os.getpid(), signal.SIGTERM)

    assert supervise(sup, operator) == 0, log
    restarts = [line for line in log.lines if "starting another" in line]
    assert len(restarts) == 2 and sup.restarts == {"failed_start": 1, "crashed": 1}, log
    assert re.fullmatch(r"ERROR Worker \[\d+\] exited with status 3 before it listened \(1 failed start\(s\) in a "
                        r"row\): starting another in 1 s", restarts[0]), log  # fmt: skip
    served = re.fullmatch(rf"ERROR Worker \[{seen[0]}\] exited with status -9 (\d+) s after it listened \(1 "
                          r"failed start\(s\) in a row\): starting another in 1 s", restarts[1])  # fmt: skip
    assert served and 0 <= int(served[1]) < 60, log  # it served about a second


def test_a_worker_stopped_while_it_still_starts_is_a_clean_stop(log: Lines, handlers: dict[int, Any]) -> None:
    """It dies of the SIGTERM itself (no handler yet): it was serving nothing."""
    sup, url = supervisor()

    def operator() -> None:
        until(lambda: log.has("INFO Started worker ["), "a worker started", 10)
        os.kill(os.getpid(), signal.SIGTERM)  # at once: it is still importing its app

    assert supervise(sup, operator) == 0, log
    assert not log.has("did not exit cleanly"), log


def test_at_shutdown_a_worker_that_will_not_stop_is_killed_and_the_supervisor_exits_1(
    log: Lines, handlers: dict[int, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Supervisor, "SHUTDOWN_SLACK_S", 1.0)  # 10 s in fmnist serve
    sup, url = supervisor(graceful=None)  # it is given drain (0) + graceful (none) + 1 s
    seen: list[int] = []

    def operator() -> None:
        until(lambda: answer(url) is not None, "the worker answers", 10)
        seen.append(answer(url)[0])  # type: ignore[index]
        httpx.get(url + "/deaf", timeout=5)  # from now on it ignores SIGTERM
        os.kill(os.getpid(), signal.SIGTERM)

    assert supervise(sup, operator, seconds=40) == 1, log
    assert log.said(f"ERROR Worker [{seen[0]}] did not stop in 1 s: killing it"), log
    assert log.said(f"ERROR Workers [{seen[0]}] did not exit cleanly"), log
    assert log.said(f"INFO Stopped parent process [{os.getpid()}]"), log


# ---- one server process: signals and shutdown ----------------------------------------------


class Beat:
    """Stands in for the shared double the supervisor's watchdog reads."""

    value = 0.0


def serve_here(app: Any, operator: Callable[[Server, int], None], seconds: float = 15.0,
               graceful: float | None = None, **options: Any) -> Server:
    """`Server(..., **options)` serving `app` on 127.0.0.1 in this (the main) thread, as a
    worker runs it, while `operator(server, port)` acts in another thread; the server, once
    it has stopped. A server still serving after `seconds` is made to quit (and the test fails)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_config=None, log_level="info", timeout_graceful_shutdown=graceful)
    server = Server(config, **options)
    failed: list[BaseException] = []

    def act() -> None:
        try:
            until(lambda: server.started, "the server listens", 10)
            operator(server, port)
        except BaseException as e:  # noqa: BLE001 - handed to the test below
            failed.append(e)
            server.should_exit = server.force_exit = True

    def quit_now() -> None:
        failed.append(AssertionError(f"the server still served after {seconds:g} s"))
        server.should_exit = server.force_exit = True

    thread = threading.Thread(target=act, daemon=True)
    guard = threading.Timer(seconds, quit_now)
    thread.start()
    guard.start()
    try:
        server.run(sockets=[sock])
    finally:
        guard.cancel()
        sock.close()
    thread.join(seconds)
    if failed:
        raise failed[0]
    return server


def get(port: int, path: str) -> httpx.Response | None:
    try:
        return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=5)
    except httpx.TransportError:
        return None


def test_sigterm_turns_readyz_503_keeps_the_port_open_for_the_drain_then_exits_0(
    predictor: Predictor, log: Lines, handlers: dict[int, Any]
) -> None:
    app = create_app(predictor)
    ready, beat, seen = threading.Event(), Beat(), {}

    def operator(server: Server, port: int) -> None:
        assert ready.wait(10)  # told the supervisor it listens
        until(lambda: (r := get(port, "/readyz")) is not None and r.status_code == 200, "ready", 10)
        seen["beat"] = beat.value  # the event loop's last tick, by the monotonic clock
        assert 0 < time.monotonic() - beat.value < 30
        os.kill(os.getpid(), signal.SIGTERM)
        until(lambda: (r := get(port, "/readyz")) is not None and r.status_code == 503, "/readyz 503", 10)
        r = get(port, "/readyz")
        assert r is not None and r.json()["status"] == "draining"  # the port still answers
        until(lambda: refused(port), "the port closed once the drain was over", 10)

    server = serve_here(app, operator, drain_s=1.5, ready=ready, heartbeat=beat)
    assert server.exit_code == 0
    assert beat.value > seen["beat"]  # it went on beating while it drained
    assert log.said("INFO Received SIGTERM: draining (not ready; 1.5 s until the port closes)"), log
    assert {sig: signal.getsignal(sig) for sig in SIGNALS} == handlers


def test_a_second_sigterm_ends_the_drain_answers_what_was_accepted_and_closes_the_rest(
    predictor: Predictor, log: Lines, handlers: dict[int, Any]
) -> None:
    """A request in progress is answered; a connection accepted whose request never comes is
    closed once its grace is over; an idle keep-alive one at once. The log says what was cut."""
    app = create_app(predictor, warmup=False)
    body = png()
    head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    seen: dict[str, Any] = {}

    def operator(server: Server, port: int) -> None:
        idle = socket.create_connection(("127.0.0.1", port), timeout=30)
        idle.sendall(head)
        assert read_answer(idle).startswith(b"HTTP/1.1 200")
        upload = slow_upload(port, body, 10)  # a request in progress
        quiet = socket.create_connection(("127.0.0.1", port), timeout=30)  # never sends
        until(lambda: len(server.server_state.connections) == 3, "three connections accepted", 10)
        until(lambda: (r := get(port, "/v1/stats")) is not None and r.json()["uploading"] == 1, "uploading", 10)
        until(lambda: len(server.server_state.connections) == 3, "the stats connection gone", 10)
        os.kill(os.getpid(), signal.SIGTERM)
        until(lambda: (r := get(port, "/readyz")) is not None and r.status_code == 503, "draining", 10)
        until(lambda: len(server.server_state.connections) == 3, "the probe's connection gone", 10)
        os.kill(os.getpid(), signal.SIGTERM)  # the drain's 60 s are skipped
        # counted before probing the port: a probe accepted first would be counted with them
        until(lambda: log.has("Closing the port"), "the connections counted", 10)
        until(lambda: refused(port), "the port closed", 10)
        assert idle.recv(4096) == b""  # it had its answer: closed at once
        upload.sendall(body[10:])
        seen["upload"] = b"".join(iter(lambda: upload.recv(65536), b""))  # to its Connection: close
        seen["quiet"] = quiet.recv(4096)  # closed without a word once its grace is over
        for sock in (idle, upload, quiet):
            sock.close()

    server = serve_here(app, operator, drain_s=60.0, first_request_grace_s=0.5)
    assert seen["upload"].startswith(b"HTTP/1.1 200") and b'"predictions"' in seen["upload"], seen["upload"][:300]
    assert seen["quiet"] == b""
    assert server.exit_code == 0
    assert log.said("INFO Closing the port: 1 request(s) in progress, 1 connection(s) accepted with their "
                   "request still to come, 1 idle; 0 connection(s) queued in the kernel, never accepted, "
                   "are reset"), log  # fmt: skip
    assert {sig: signal.getsignal(sig) for sig in SIGNALS} == handlers


def test_a_second_sigint_quits_at_once_without_waiting_for_a_request_in_progress(
    predictor: Predictor, log: Lines, handlers: dict[int, Any]
) -> None:
    app = create_app(predictor, warmup=False)

    def operator(server: Server, port: int) -> None:
        upload = slow_upload(port, png(), 10)  # never finished
        until(lambda: (r := get(port, "/v1/stats")) is not None and r.json()["uploading"] == 1, "uploading", 10)
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C
        until(lambda: (r := get(port, "/readyz")) is not None and r.status_code == 503, "draining", 10)
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C again: quit now
        until(lambda: refused(port), "the port closed", 10)
        upload.close()

    # no limit on the graceful shutdown: without the second Ctrl-C's force it would wait for ever
    server = serve_here(app, operator, seconds=15, drain_s=60.0, graceful=None)
    assert log.said("INFO Received SIGINT: draining (not ready; 60 s until the port closes)"), log
    assert server.exit_code == 0


def test_one_process_reloads_on_sighup_while_it_goes_on_answering_and_exits_0_after_sigterm(
    log: Lines, handlers: dict[int, Any]
) -> None:
    """`serve()`, what `fmnist serve --workers 1` runs: SIGHUP runs the app's reload in a
    thread of its own, and a keep-alive connection goes on being answered meanwhile."""
    app = serve_counting_worker.app()
    reloads: list[str] = []
    reload = app.state.reload
    app.state.reload = lambda: (reloads.append(threading.current_thread().name), reload())
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    failed: list[BaseException] = []

    def operator() -> None:
        try:
            until(lambda: not refused(port), "the server listens", 10)
            kept = socket.create_connection(("127.0.0.1", port), timeout=30)  # keep-alive
            kept.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert read_answer(kept).endswith(b" 0")
            os.kill(os.getpid(), signal.SIGHUP)
            until(lambda: reloads, "the reload ran", 10)
            kept.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")  # the same connection
            assert read_answer(kept).endswith(b" 1")
            kept.close()
        except BaseException as e:  # noqa: BLE001 - handed to the test below
            failed.append(e)
        os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=operator, daemon=True)
    thread.start()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, log_level="info",
                            timeout_graceful_shutdown=10)  # fmt: skip
    # a server that never stops is made to (two Ctrl-C), and the test fails
    guard = threading.Timer(20, lambda: [os.kill(os.getpid(), signal.SIGINT) for _ in range(2)])
    guard.start()
    try:
        status = serve(config, drain_s=0.5)
    finally:
        guard.cancel()
    thread.join(20)
    assert status == 0
    if failed:
        raise failed[0]
    assert reloads == ["fmnist-reload"]
    assert log.said("INFO Received SIGTERM: draining (not ready; 0.5 s until the port closes)"), log
    # SIGHUP's handler too: a program that served and goes on is not reloading a stopped app
    assert {sig: signal.getsignal(sig) for sig in SIGNALS} == handlers
