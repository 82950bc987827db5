"""One `fmnist serve` process (`Server`, `serve()`), run in this process on 127.0.0.1 with a
light app (tests/serve_counting_worker.py: no torch), as an operator meets it: real signals,
what the port answers, the exit status, the log lines. Complements
test_serve_server_behaviour.py (whose fixtures and helpers it uses) where mutation testing of
serve/server.py found behaviour no test looked at: the defaults, `make_app`, a drain that
lasts, a forced quit, the first-request grace as configured, the accept queue counted at
shutdown, a dead batcher's line.

Every wait is bounded and waits for a state, but one: a request sent late on purpose."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from typing import Any

import serve_counting_worker
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from test_serve_deploy import read_answer, until
from test_serve_server_behaviour import Beat, Lines, get, handlers, log, serve_here

from fmnist.serve.server import Server, serve

__all__ = ["handlers", "log"]  # fixtures, used by name

STOPS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)  # each put back when serving ends


async def bare_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A plain ASGI app: no `state`, so no engine to drain and no reload."""
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"bare"})


def test_sigterm_with_the_default_drain_closes_the_port_at_once_and_exits_0(
    log: Lines, handlers: dict[int, Any]
) -> None:
    """Neither `Server` (here serving a plain ASGI app) nor `serve()` told a drain delay: none
    (a plain process manager's case)."""
    seen: dict[str, Any] = {}

    def operator(server: Server, port: int) -> None:
        r = get(port, "/")
        seen["answered"] = r is not None and r.text == "bare"
        os.kill(os.getpid(), signal.SIGTERM)

    server = serve_here(bare_app, operator)
    assert seen["answered"]
    assert server.exit_code == 0
    assert log.said("INFO Received SIGTERM: draining (not ready; 0 s until the port closes)"), log

    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    config = uvicorn.Config(serve_counting_worker.app(), host="127.0.0.1", port=port, log_config=None,
                            log_level="info")  # fmt: skip

    def stop() -> None:
        until(lambda: get(port, "/") is not None, "serve() listens", 10)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=stop, daemon=True).start()
    guard = threading.Timer(15, lambda: [os.kill(os.getpid(), signal.SIGINT) for _ in range(2)])
    guard.start()
    try:
        assert serve(config) == 0
    finally:
        guard.cancel()
    assert log.lines.count("INFO Received SIGTERM: draining (not ready; 0 s until the port closes)") == 2, log
    assert {sig: signal.getsignal(sig) for sig in STOPS} == {sig: handlers[sig] for sig in STOPS}


def test_during_a_one_second_drain_the_port_goes_on_answering_after_the_loop_has_ticked(
    log: Lines, handlers: dict[int, Any]
) -> None:
    """The drain lasts its `drain_s` (here 1 s), not one turn of the event loop: a request
    sent after the loop has ticked since the signal is still answered; then the port closes
    by itself and the process exits 0."""
    beat, seen = Beat(), {}

    def operator(server: Server, port: int) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        until(lambda: log.has("Received SIGTERM"), "the signal handled", 10)
        ticked = beat.value
        until(lambda: beat.value > ticked, "the event loop ticked since", 10)
        r = get(port, "/")
        seen["after a tick"] = None if r is None else r.status_code
        until(lambda: get(port, "/") is None, "the port closed once the drain was over", 10)

    server = serve_here(serve_counting_worker.app(), operator, drain_s=1.0, heartbeat=beat)
    assert seen["after a tick"] == 200
    assert server.exit_code == 0
    assert log.said("INFO Received SIGTERM: draining (not ready; 1 s until the port closes)"), log
    assert {sig: signal.getsignal(sig) for sig in STOPS} == {sig: handlers[sig] for sig in STOPS}


def test_a_second_ctrl_c_quits_without_waiting_for_a_request_or_the_apps_shutdown(
    log: Lines, handlers: dict[int, Any]
) -> None:
    """Ctrl-C, then Ctrl-C again: a forced quit. uvicorn then neither waits for a request still
    to come (its grace here is 5 s) nor runs the app's shutdown; a single Ctrl-C (or a second
    SIGTERM) does both."""

    def operator(server: Server, port: int) -> None:
        slow = socket.create_connection(("127.0.0.1", port), timeout=30)
        slow.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # its headers never end
        until(lambda: len(server.server_state.connections) == 1, "the connection accepted", 10)
        os.kill(os.getpid(), signal.SIGINT)
        until(lambda: log.has("Received SIGINT"), "the first Ctrl-C handled", 10)
        os.kill(os.getpid(), signal.SIGINT)  # again: quit now
        # counted before probing the port: a probe accepted first would be counted with them
        until(lambda: log.has("Closing the port"), "the connections counted", 10)
        until(lambda: get(port, "/") is None, "the port closed", 10)
        slow.close()

    server = serve_here(serve_counting_worker.app(), operator, drain_s=60.0, graceful=None,
                        first_request_grace_s=5.0)  # fmt: skip
    assert server.exit_code == 0
    assert log.said("INFO Received SIGINT: draining (not ready; 60 s until the port closes)"), log
    assert log.has("Closing the port: 0 request(s) in progress, 1 connection(s) accepted with their request still to come"), log
    assert not log.has("Waiting for application shutdown"), log


def test_with_make_app_the_app_it_builds_is_the_one_served(log: Lines, handlers: dict[int, Any]) -> None:
    """A worker's `Server(config, make_app=...)`: the app comes from `make_app`, called in the
    serving process, not from the config's own app."""

    async def made(request: Request) -> PlainTextResponse:
        return PlainTextResponse("made by make_app")

    seen: dict[str, Any] = {}

    def operator(server: Server, port: int) -> None:
        r = get(port, "/")
        seen["answer"] = None if r is None else r.text
        os.kill(os.getpid(), signal.SIGTERM)

    server = serve_here("serve_counting_worker:app", operator,
                        make_app=lambda: Starlette(routes=[Route("/", made)]))  # fmt: skip
    assert seen["answer"] == "made by make_app"
    assert server.exit_code == 0


class HeldBeat:
    """The heartbeat a worker's event loop writes at each tick; once `hold` is set, the next
    write waits (at most 10 s) for `release`: the event loop stuck for that long, as a slow
    forward pass on the loop would leave it."""

    def __init__(self) -> None:
        self.hold, self.holding, self.release = threading.Event(), threading.Event(), threading.Event()
        self._value = 0.0

    @property
    def value(self) -> float:
        return self._value

    @value.setter
    def value(self, now: float) -> None:
        if self.hold.is_set() and not self.release.is_set():
            self.holding.set()
            self.release.wait(10)
        self._value = now


def test_connections_queued_while_the_loop_was_stuck_are_counted_and_reset_at_shutdown(
    log: Lines, handlers: dict[int, Any]
) -> None:
    """SIGTERM while the event loop is stuck, and two clients connect meanwhile: the kernel
    queues them, the process never accepts them. Closing the port resets them, and the log's
    "Closing the port" line counts them, beside an idle keep-alive connection (closed)."""
    beat, seen = HeldBeat(), {}

    def operator(server: Server, port: int) -> None:
        idle = socket.create_connection(("127.0.0.1", port), timeout=10)  # keep-alive, answered
        idle.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert read_answer(idle).startswith(b"HTTP/1.1 200")
        beat.hold.set()
        assert beat.holding.wait(10), "the event loop never ticked"
        # Python runs the handler in the main thread once it is back in Python code: as the
        # stuck tick ends, before that tick goes on
        os.kill(os.getpid(), signal.SIGTERM)
        queued = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(2)]
        for sock in queued:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        beat.release.set()
        until(lambda: log.has("Closing the port"), "the connections counted", 10)  # before any probe
        until(lambda: get(port, "/") is None, "the port closed", 10)
        seen["answers"] = []
        for sock in queued:
            try:
                seen["answers"].append(sock.recv(4096))
            except ConnectionResetError:
                seen["answers"].append("reset")
            sock.close()
        seen["idle"] = idle.recv(4096)
        idle.close()

    server = serve_here(serve_counting_worker.app(), operator, heartbeat=beat)
    assert len(seen["answers"]) == 2 and all(a in ("reset", b"") for a in seen["answers"]), seen  # no answer
    assert server.exit_code == 0
    assert seen["idle"] == b"", seen  # it had its answer: closed at once
    assert log.said("INFO Closing the port: 0 request(s) in progress, 0 connection(s) accepted with their "
                    "request still to come, 1 idle; 2 connection(s) queued in the kernel, never accepted, "
                    "are reset"), log  # fmt: skip


def test_a_connection_whose_request_comes_late_is_answered_within_the_grace_it_was_given(
    log: Lines, handlers: dict[int, Any]
) -> None:
    """`first_request_grace_s` (here 30 s) is the grace a connection accepted before the port
    closed gets for its first request, not the class's default (1 s): a request sent 1.5 s
    after the port closed is answered, and the connection is closed after that answer."""
    seen: dict[str, Any] = {}

    def operator(server: Server, port: int) -> None:
        late = socket.create_connection(("127.0.0.1", port), timeout=5)
        until(lambda: len(server.server_state.connections) == 1, "the connection accepted", 10)
        os.kill(os.getpid(), signal.SIGTERM)
        until(lambda: log.has("Closing the port"), "the port closing", 10)
        time.sleep(1.5)  # longer than the default grace: that is what is told apart here
        try:
            late.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            seen["answer"] = read_answer(late)
            late.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")  # a second one: not answered
            seen["then"] = late.recv(65536)
        except (AssertionError, ConnectionError, TimeoutError) as e:
            seen.setdefault("answer", repr(e))
            seen.setdefault("then", b"")  # cut after its answer
        late.close()

    server = serve_here(serve_counting_worker.app(), operator, first_request_grace_s=30.0)
    assert isinstance(seen["answer"], bytes) and seen["answer"].startswith(b"HTTP/1.1 200"), seen
    assert seen["then"] == b"", seen  # closed once it had its answer
    assert server.exit_code == 0


class Batcher:
    """Stands in for the app's engine (`app.state.engine`, fmnist.serve.engine) as the server
    reads it: whether its batcher thread has died, and its draining Event."""

    def __init__(self) -> None:
        self.failed = False
        self.draining = threading.Event()


def test_when_the_batcher_dies_the_process_says_so_stops_and_exits_1(log: Lines, handlers: dict[int, Any]) -> None:
    app = serve_counting_worker.app()
    app.state.engine = engine = Batcher()

    def operator(server: Server, port: int) -> None:
        assert get(port, "/") is not None
        engine.failed = True
        until(lambda: get(port, "/") is None, "the port closed", 10)

    server = serve_here(app, operator, drain_s=60.0)
    assert server.exit_code == 1
    assert engine.draining.is_set()  # /readyz says so meanwhile
    assert log.said("CRITICAL The batcher has died: stopping this process so that it is replaced"), log
