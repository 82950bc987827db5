"""Running the app as a deployed service: shutdown by design, and supervised workers.

`Server` is uvicorn's server with three changes:

- SIGTERM or SIGINT starts *draining*: /readyz turns 503 at once, the server keeps accepting
  for `drain_s` seconds (so that a load balancer that polls /readyz stops sending before the
  port closes; 0 for a plain process manager), then stops accepting, closes idle keep-alive
  connections, answers every request already accepted, including those on connections accepted
  whose request had not been read yet (`FirstRequestGrace`), for at most `graceful_s`
  (uvicorn's `timeout_graceful_shutdown`), stops the batcher and exits 0. A second SIGINT quits
  at once. What closing the port still cuts, connections the kernel had queued and this process
  never accepted, is counted in the log's "Closing the port" line.
  uvicorn itself re-raises the signal once it has shut down, so the exit status would say
  "killed by SIGTERM" (143) after a clean drain; this one exits 0.
- If the batcher's thread has died (fmnist.serve.batching), /readyz and /healthz already say
  so; the server then shuts down and exits 1, so that whatever supervises it (`Supervisor`
  below, systemd, Kubernetes) starts a fresh one.
- With `make_app`, the app is built inside the process that serves it (a worker), before it
  listens: the model is loaded and warm before the first connection reaches it.

`Supervisor` runs several such workers (spawned processes, each with its own socket or the
parent's, see fmnist.cli.serve) and starts a new one whenever one exits; on SIGTERM/SIGINT it
passes the signal on, waits for every worker to drain, and exits 0 when they all did.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Any

import uvicorn
from uvicorn.importer import import_from_string

from fmnist.serve.metrics import mark_worker_dead

if TYPE_CHECKING:  # not at run time: the supervising parent never imports torch
    from fmnist.serve.engine import Engine

log = logging.getLogger("uvicorn.error")  # uvicorn's own lines, so they read as one log

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# the worker's settings (fmnist.serve.app.app_from_env reads them), as JSON: here, not in the
# app's module, so that the supervising parent can set them without importing the app (torch)
SETTINGS_ENV = "FMNIST_SERVE_SETTINGS"


class Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, *, make_app: Callable[[], Any] | None = None,
                 drain_s: float = 0.0, first_request_grace_s: float = 1.0,
                 ready: Any = None) -> None:  # fmt: skip
        super().__init__(config)
        self.make_app = make_app
        self.ready = ready  # an Event the supervisor reads: set once the port listens
        self.drain_s = drain_s
        self.first_request_grace_s = first_request_grace_s
        self.exit_code = 0
        self.engine: Engine | None = None
        self._drain_until: float | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        if self.make_app is not None and not self.config.loaded:
            self.config.app, self.config.factory = self.make_app(), False
        if not self.config.loaded:
            self.config.load()
        protocol = self.config.http_protocol_class
        if not issubclass(protocol, FirstRequestGrace):
            self.config.http_protocol_class = type(protocol.__name__, (FirstRequestGrace, protocol),
                                                   {"grace_s": self.first_request_grace_s})  # fmt: skip
        self.engine = _engine_of(self.config.app)
        await super().serve(sockets)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and self.ready is not None:
            self.ready.set()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # What closing the port cuts and what it does not, in one line (the lifecycle benchmark
        # reads it): connections the kernel has queued but this process has not accepted are
        # reset with the socket; every accepted one is answered (see FirstRequestGrace).
        connections = list(self.server_state.connections)
        fresh = sum(1 for c in connections if getattr(c, "cycle", None) is None)
        busy = sum(1 for c in connections if (cy := getattr(c, "cycle", None)) is not None
                   and not cy.response_complete)  # fmt: skip
        backlog = sum(_accept_queue(s) for srv in self.servers for s in srv.sockets)
        log.info("Closing the port: %d request(s) in progress, %d connection(s) accepted with "
                 "their request still to come, %d idle; %d connection(s) queued in the kernel, "
                 "never accepted, are reset", busy, fresh, len(connections) - fresh - busy,
                 backlog)  # fmt: skip
        await super().shutdown(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # not uvicorn's: it records the signal to re-raise it at exit (see the module's text)
        if self._drain_until is not None or self.should_exit:
            self.force_exit = self.force_exit or sig == signal.SIGINT
            self.should_exit = True  # a second signal: skip what is left of the drain delay
            return
        log.info("Received %s: draining (not ready; %g s until the port closes)",
                 signal.Signals(sig).name, self.drain_s)  # fmt: skip
        if self.engine is not None:
            self.engine.draining.set()
        self._drain_until = time.monotonic() + self.drain_s
        self.should_exit = self.drain_s <= 0

    async def on_tick(self, counter: int) -> bool:
        if self._drain_until is not None and time.monotonic() >= self._drain_until:
            self.should_exit = True
        engine = self.engine
        if engine is not None and engine.failed and not self.should_exit:
            log.critical("The batcher has died: stopping this process so that it is replaced")
            engine.draining.set()
            self.exit_code = 1
            self.should_exit = True
        return await super().on_tick(counter)


class FirstRequestGrace:
    """Mixed into uvicorn's HTTP protocol (`Server` does it). At shutdown uvicorn closes every
    connection with no request in progress, including one it accepted an instant ago whose
    request it has not read yet, or not all of its headers: the client connected and sent at
    once (as a fresh connection per request does) and its request is cut although its
    connection was accepted. Under SIGTERM with 16 such clients that was every cut request
    (12 of 12 in one run, benchmarks/serve_lifecycle.py). Here a connection with no request
    yet gets `grace_s` for it (a client sends as soon as it has connected; one that has not
    within a second is not about to), and it is answered with Connection: close; an idle
    keep-alive connection, which has had its answers, is still closed at once."""

    grace_s = 1.0
    cycle: Any
    loop: Any
    transport: Any
    _grace: Any = None

    def shutdown(self) -> None:
        if self.cycle is None and self._grace is None:
            self._grace = self.loop.call_later(self.grace_s, self._end_grace)
            return
        super().shutdown()  # type: ignore[misc]

    def _end_grace(self) -> None:
        if not self.transport.is_closing():
            super().shutdown()  # type: ignore[misc]

    def data_received(self, data: bytes) -> None:
        super().data_received(data)  # type: ignore[misc]
        if self._grace is not None and self.cycle is not None:
            self.cycle.keep_alive = False  # as uvicorn does for a request in progress

    def connection_lost(self, exc: Exception | None) -> None:
        if self._grace is not None:
            self._grace.cancel()
        super().connection_lost(exc)  # type: ignore[misc]


def _accept_queue(sock: Any) -> int:
    """Connections the kernel has completed on listening `sock` and nobody has accepted yet
    (Linux: TCP_INFO's tcpi_unacked is the accept queue's length on a listening socket); 0
    where that cannot be read."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
        return int(struct.unpack_from("I", info, 24)[0])
    except (AttributeError, OSError, struct.error):
        return 0


def _engine_of(app: Any) -> Engine | None:
    state = getattr(app, "state", None)
    return getattr(state, "engine", None)


def serve(config: uvicorn.Config, *, drain_s: float = 0.0) -> int:
    """One process: serve `config.app` until a signal; the exit status."""
    server = Server(config, drain_s=drain_s)
    server.run()
    return server.exit_code


def _worker(config: uvicorn.Config, sockets: list[socket.socket], make_app: Callable[[], Any] | str,
            drain_s: float, ready: Any) -> None:  # fmt: skip
    config.configure_logging()
    if isinstance(make_app, str):  # "module:function", imported here, in the worker
        make_app = import_from_string(make_app)
    server = Server(config, make_app=make_app, drain_s=drain_s, ready=ready)  # type: ignore[arg-type]
    server.run(sockets=sockets)
    raise SystemExit(server.exit_code)


@dataclass
class Slot:
    """One worker's place: its process, the Event it sets once it listens, and how many of its
    starts in a row ended before that (a model file gone, a port taken, a broken install)."""

    process: Any = None
    ready: Any = None
    failed_starts: int = 0
    start_at: float = 0.0  # when a slot waiting out its back-off starts again


class Supervisor:
    """`workers` processes serving `make_app()` on `sock`; see the module's text. `make_app`
    may be "module:function", imported by each worker only: then the supervisor itself need not
    import the app, torch or the model (fmnist serve's parent does not).

    A worker that exits after it listened is replaced at once. One that exits before it
    listened is started again after a back-off (1, 2, 4 ... up to 30 s), rather than loading
    torch in a loop; when every worker has failed to start `give_up` times in a row, none is
    serving and none will: the supervisor stops with status 1, for its own process manager."""

    BACKOFF_MAX_S = 30.0

    def __init__(self, config: uvicorn.Config, sock: socket.socket, workers: int,
                 make_app: Callable[[], Any] | str, *, drain_s: float = 0.0,
                 give_up: int = 3) -> None:  # fmt: skip
        self.config, self.sock, self.workers = config, sock, workers
        self.make_app, self.drain_s, self.give_up = make_app, drain_s, give_up
        self.stopping = threading.Event()
        self.restarts = 0
        self._context = multiprocessing.get_context("spawn")  # no torch state forked into workers

    def _start(self, slot: Slot) -> None:
        slot.ready = self._context.Event()
        slot.process = self._context.Process(
            target=_worker, args=(self.config, [self.sock], self.make_app, self.drain_s, slot.ready),
            name="fmnist-serve-worker",
        )  # fmt: skip
        slot.process.start()

    def _check(self, slot: Slot, now: float) -> None:
        """Start the slot's worker when due; notice and schedule the replacement of one that exited."""
        p = slot.process
        if p is None:
            if now >= slot.start_at:
                self._start(slot)
            return
        if p.is_alive():
            if slot.ready.is_set():
                slot.failed_starts = 0
            return
        mark_worker_dead(p.pid)
        self.restarts += 1
        slot.process = None
        if slot.ready.is_set():  # killed (OOM, a native crash) or exited because its batcher died
            log.error("Worker [%d] exited with status %s: starting another", p.pid, p.exitcode)
            slot.start_at = now
            return
        slot.failed_starts += 1
        delay = min(self.BACKOFF_MAX_S, 2.0 ** (slot.failed_starts - 1))
        slot.start_at = now + delay
        log.error("Worker [%d] exited with status %s before it listened (%d in a row): starting "
                  "another in %g s", p.pid, p.exitcode, slot.failed_starts, delay)  # fmt: skip

    def _stop(self, sig: int, frame: FrameType | None) -> None:
        self.stopping.set()

    def run(self) -> int:
        previous = {sig: signal.signal(sig, self._stop) for sig in STOP_SIGNALS}
        try:
            log.info("Started parent process [%d]", os.getpid())
            slots = [Slot() for _ in range(self.workers)]
            while not self.stopping.wait(0.2):
                for slot in slots:
                    self._check(slot, time.monotonic())
                if all(s.process is None and s.failed_starts >= self.give_up for s in slots):
                    log.critical("No worker starts (each failed %d times in a row; see above): "
                                 "stopping", self.give_up)  # fmt: skip
                    return 1
            return self._shutdown([s.process for s in slots if s.process is not None])
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _shutdown(self, processes: list[Any]) -> int:
        log.info("Stopping: every worker drains its requests, then exits")
        for p in processes:
            if p.is_alive():
                os.kill(p.pid, signal.SIGTERM)
        # the workers' own deadline, plus what their lifespan shutdown may take
        timeout = self.drain_s + (self.config.timeout_graceful_shutdown or 0) + 10
        deadline = time.monotonic() + timeout
        for p in processes:
            p.join(max(0.0, deadline - time.monotonic()))
            if p.is_alive():
                log.error("Worker [%d] did not stop in %g s: killing it", p.pid, timeout)
                p.kill()
                p.join()
            mark_worker_dead(p.pid)
        # a worker still starting has no handler yet and dies of the SIGTERM itself: it was
        # serving nothing, so that is a clean stop too
        failed = [p.pid for p in processes if p.exitcode not in (0, -signal.SIGTERM)]
        if failed:
            log.error("Workers %s did not exit cleanly", failed)
        log.info("Stopped parent process [%d]", os.getpid())
        return 1 if failed else 0
