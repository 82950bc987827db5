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
- SIGHUP reloads the model, when the app says how (`app.state.reload`, a function run in a
  thread of its own): the new model is loaded and warmed beside the old one, which answers
  meanwhile, and takes over from the next forward pass; no connection is closed, so no request
  fails. A model that does not load leaves the old one serving (fmnist.serve.app says why).

`Supervisor` runs several such workers (spawned processes, each with its own socket or the
parent's, see fmnist.cli.serve) and starts a new one whenever one exits, after a back-off; it
replaces a worker whose event loop stops turning (a watchdog); on SIGHUP it prepares the new
model once (its `reload` function) and then passes SIGHUP to every listening worker, and to
every worker that starts listening later; on SIGTERM/SIGINT it passes the signal on, waits for
every worker to drain, and exits 0 when they all did.
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
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Any

import uvicorn
from uvicorn.importer import import_from_string

from fmnist.serve.metrics import WorkerRestarts, mark_worker_dead

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
                 ready: Any = None, heartbeat: Any = None) -> None:  # fmt: skip
        super().__init__(config)
        self.make_app = make_app
        self.ready = ready  # an Event the supervisor reads: set once the port listens
        # a shared double the supervisor's watchdog reads: the event loop's last tick (monotonic)
        self.heartbeat = heartbeat
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
        reload = getattr(getattr(self.config.app, "state", None), "reload", None)
        hup = signal.getsignal(signal.SIGHUP)  # put back when serving ends (a library's caller)
        if reload is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGHUP, lambda sig, frame: threading.Thread(
                target=reload, name="fmnist-reload", daemon=True).start())  # fmt: skip
        protocol = self.config.http_protocol_class
        if not issubclass(protocol, FirstRequestGrace):
            self.config.http_protocol_class = type(protocol.__name__, (FirstRequestGrace, protocol),
                                                   {"grace_s": self.first_request_grace_s})  # fmt: skip
        self.engine = _engine_of(self.config.app)
        try:
            await super().serve(sockets)
        finally:
            if reload is not None and threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGHUP, hup)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self._beat()
        if self.started and self.ready is not None:
            self.ready.set()

    def _beat(self) -> None:
        if self.heartbeat is not None:
            self.heartbeat.value = time.monotonic()

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
        self._beat()  # uvicorn ticks every 0.1 s on the event loop: a stuck loop stops beating
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
    within a second is not about to), and the connection is closed once it is answered; an idle
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
            drain_s: float, ready: Any, heartbeat: Any) -> None:  # fmt: skip
    # the supervisor signals only listening workers, but a stray SIGHUP must not end one
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    config.configure_logging()
    if isinstance(make_app, str):  # "module:function", imported here, in the worker
        make_app = import_from_string(make_app)
    server = Server(config, make_app=make_app, drain_s=drain_s, ready=ready,  # type: ignore[arg-type]
                    heartbeat=heartbeat)  # fmt: skip
    server.run(sockets=sockets)
    raise SystemExit(server.exit_code)


@dataclass
class Slot:
    """One worker's place: its process, the Event it sets once it listens, its heartbeat, and
    how many of its starts in a row failed (a model file gone, a port taken, a broken install,
    a crash soon after it listened)."""

    process: Any = None
    ready: Any = None
    heartbeat: Any = None
    failures: int = 0
    started: float = 0.0  # when its process started
    listening: float | None = None  # when it was first seen listening
    killed: str | None = None  # why the supervisor killed it, if it did
    generation: int = 0  # the last reload it was told of (SIGHUP)
    start_at: float = 0.0  # when a slot waiting out its back-off starts again


class Supervisor:
    """`workers` processes serving `make_app()` on `sock`; see the module's text. `make_app`
    may be "module:function", imported by each worker only: then the supervisor itself need not
    import the app, torch or the model (fmnist serve's parent does not).

    Every worker that exits is started again after a back-off (1, 2, 4 ... up to 30 s), so that
    a worker that crashes in a loop does not load torch in a loop. A start counts as failed
    when the worker exits before it listens or within `STABLE_S` after; one that has listened
    longer has proved itself, and its next crash starts the count again. When every worker's
    last `give_up` starts have failed, none is serving and none will: the supervisor stops
    with status 1, for its own process manager.

    Watchdog: a listening worker whose event loop has not ticked for `watchdog_s` (it answers
    nothing, probes included, while the kernel still hands it new connections) is killed and
    replaced like a crashed one. 0 turns it off."""

    BACKOFF_FIRST_S = 1.0  # doubled at each failed start in a row, up to BACKOFF_MAX_S
    BACKOFF_MAX_S = 30.0
    STABLE_S = 60.0
    SHUTDOWN_SLACK_S = 10.0  # at shutdown, past drain and grace: what a lifespan shutdown may take

    def __init__(self, config: uvicorn.Config, sock: socket.socket, workers: int,
                 make_app: Callable[[], Any] | str, *, drain_s: float = 0.0,
                 give_up: int = 3, watchdog_s: float = 10.0,
                 reload: Callable[[], None] | None = None) -> None:  # fmt: skip
        self.config, self.sock, self.workers = config, sock, workers
        self.make_app, self.drain_s, self.give_up = make_app, drain_s, give_up
        self.watchdog_s = watchdog_s
        self.reload = reload  # prepares the new model; the workers then load it on SIGHUP
        self.generation = 0  # reloads prepared so far
        self._reloading = threading.Lock()
        self.stopping = threading.Event()
        self.restarts: Counter[str] = Counter()  # workers replaced, by reason, as /metrics counts them
        self._restarts = WorkerRestarts()
        self._context = multiprocessing.get_context("spawn")  # no torch state forked into workers

    def _start(self, slot: Slot, now: float) -> None:
        slot.ready = self._context.Event()
        slot.heartbeat = self._context.Value("d", 0.0, lock=False)
        slot.process = self._context.Process(
            target=_worker, name="fmnist-serve-worker",
            args=(self.config, [self.sock], self.make_app, self.drain_s, slot.ready, slot.heartbeat),
        )  # fmt: skip
        slot.process.start()
        log.info("Started worker [%d]", slot.process.pid)
        slot.started, slot.listening, slot.killed = now, None, None
        slot.generation = self.generation  # it reads the current model as it starts

    def _check(self, slot: Slot, now: float) -> None:
        """Start the slot's worker when due; watch a live one; notice one that exited and
        schedule its replacement."""
        p = slot.process
        if p is None:
            if now >= slot.start_at:
                self._start(slot, now)
            return
        if p.is_alive():
            if slot.ready.is_set():
                if slot.listening is None:
                    slot.listening = now
                if slot.generation != self.generation:  # a reload it has not been told of
                    slot.generation = self.generation
                    os.kill(p.pid, signal.SIGHUP)
                if now - slot.listening >= self.STABLE_S:
                    slot.failures = 0
                silent = now - slot.heartbeat.value
                if self.watchdog_s > 0 and silent > self.watchdog_s:
                    log.error("Worker [%d] has not answered for %.0f s (its event loop is stuck): "
                              "killing it", p.pid, silent)  # fmt: skip
                    slot.killed = "unresponsive"
                    p.kill()
                    p.join(5)
            return
        mark_worker_dead(p.pid)
        reason = slot.killed or ("failed_start" if slot.listening is None else "crashed")
        self.restarts[reason] += 1
        self._restarts.inc(reason)
        slot.process = None
        stable = slot.listening is not None and now - slot.listening >= self.STABLE_S
        slot.failures = 1 if stable else slot.failures + 1
        delay = min(self.BACKOFF_MAX_S, self.BACKOFF_FIRST_S * 2.0 ** (slot.failures - 1))
        slot.start_at = now + delay
        when = "before it listened" if slot.listening is None else (
            f"{now - slot.listening:.0f} s after it listened")  # fmt: skip
        log.error("Worker [%d] exited with status %s %s (%d failed start(s) in a row): starting "
                  "another in %g s", p.pid, p.exitcode, when, slot.failures, delay)  # fmt: skip

    def _stop(self, sig: int, frame: FrameType | None) -> None:
        self.stopping.set()

    def _hup(self, sig: int, frame: FrameType | None) -> None:
        threading.Thread(target=self._prepare_reload, name="fmnist-reload", daemon=True).start()

    def _prepare_reload(self) -> None:
        if self.reload is None:
            log.warning("SIGHUP: this server has no model to reload")
            return
        if not self._reloading.acquire(blocking=False):
            log.warning("SIGHUP: a reload is already being prepared")
            return
        try:
            self.reload()  # whether it worked or not, the workers read what it wrote
            self.generation += 1
        finally:
            self._reloading.release()

    def run(self) -> int:
        previous = {sig: signal.signal(sig, self._stop) for sig in STOP_SIGNALS}
        previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, self._hup)
        try:
            log.info("Started parent process [%d]", os.getpid())
            slots = [Slot() for _ in range(self.workers)]
            while not self.stopping.wait(0.2):
                for slot in slots:
                    self._check(slot, time.monotonic())
                if all(s.process is None and s.failures >= self.give_up for s in slots):
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
        timeout = self.drain_s + (self.config.timeout_graceful_shutdown or 0) + self.SHUTDOWN_SLACK_S
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
