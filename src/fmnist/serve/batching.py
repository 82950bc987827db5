"""Cross-request dynamic batching: requests that arrive within a short window share one forward
pass, as TorchServe's `max_batch_delay`, Triton's dynamic batcher and LitServe's
`batch_timeout` do.

Why: a forward pass has a fixed cost that batching shares (measured on 2 cores, AMD EPYC,
class avx512, the cnn 16,64,128: 0.86 ms at batch 1, 0.33 ms an image at batch 32), so eight
clients queued one by one behind a lock pay eight fixed costs where one would do.

`Batcher(forward)` owns one thread. `submit(payload, count)` hands it a request and returns a
`Future` of that request's answer. The thread takes the oldest request, waits until `window_s`
after it arrived (or until `max_images` are waiting), runs `forward` once on everything it took,
and answers every request from its own rows, in order. A lone request waits at most the window;
requests that queued while a pass was running go into the next pass without waiting again. A
request is never split: one larger than `max_images` runs alone. `close()` answers what is
queued, then stops the thread.

The per-request work runs on the same thread: `prepare(payload)` makes a request's images and
`finish(payload, batched)` its answer. Why there and not in a thread pool: each request then
crosses threads twice (in, and out with its answer) instead of four times, and the decoding
happens while the window is open, when the thread would otherwise only wait. Keep both cheap:
everything queued waits for them; the server decodes a large upload before it submits it
(fmnist.serve.engine), since decoding one huge image here (40 M pixels: a few hundred ms)
delayed the pass of every request queued behind it. A request whose `prepare` or `finish`
raises gets that error alone; the others in its pass are answered as usual.

Supervision: anything a pass raises (the forward pass, `np.concatenate` of mismatched images,
a bug in `finish`) fails only the requests of that pass and the loop goes on. Should the thread
die all the same (a bug in the loop itself), every queued request, and any of the pass under
way still unanswered, fails with `BatcherDied`, `submit` refuses new ones, and `alive` turns
False so the server can say so (/readyz) and exit.

Cancellation: a request whose future is cancelled before its forward pass starts (its client
hung up) is dropped then, even if it was already decoded: the pass is the costly part, and
under a retry storm most of the queue can be such requests. From the pass on it cannot be
cancelled; its answer is computed and ignored.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger("fmnist.serve")


class BatcherClosed(RuntimeError):
    """The batcher is shutting down and takes no new requests."""


class BatcherDied(RuntimeError):
    """The batcher's thread ended on an unexpected error: nothing queued will be answered."""


@dataclass
class Batched:
    """One request's share of a forward pass."""

    images: np.ndarray  # what `prepare` made of the request: the model's input
    rows: np.ndarray  # forward's output for this request's images, in order
    pass_images: int  # images in the whole pass (this request's and the others')
    forward_s: float  # how long the pass took


@dataclass
class _Request:
    payload: Any
    count: int  # images the payload holds: known before it is prepared
    future: Future[Any]
    arrived: float = field(default_factory=time.monotonic)
    images: np.ndarray | None = None  # set by prepare; None until then or if it failed
    failed: bool = False  # prepare raised, or the caller cancelled: leave it out of the pass


def _settle(future: Future[Any], result: Any = None, error: BaseException | None = None) -> None:
    """Answer `future` unless its caller cancelled it meanwhile (nobody waits for it then).
    Without the check, a client hanging up at the wrong moment would raise InvalidStateError
    in the batcher's thread."""
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
    except InvalidStateError:
        pass


def _as_images(payload: Any) -> np.ndarray:
    return np.asarray(payload)


def _batched(payload: Any, batched: Batched) -> Batched:
    return batched


class Batcher:
    def __init__(
        self,
        forward: Callable[[np.ndarray], np.ndarray],
        *,
        prepare: Callable[[Any], np.ndarray] = _as_images,
        finish: Callable[[Any, Batched], Any] = _batched,
        max_images: int = 64,
        window_s: float = 0.002,
    ) -> None:
        if max_images < 1 or window_s < 0:
            raise ValueError("max_images must be >= 1 and window_s >= 0")
        self.forward, self.prepare, self.finish = forward, prepare, finish
        self.max_images = max_images
        self.window_s = window_s
        self.passes = 0
        self.dropped = 0  # requests cancelled before their pass, never computed
        self.failed_passes = 0  # passes that raised (their requests got the error)
        self.died: BaseException | None = None  # what ended the thread, if it ever dies
        self.batch_sizes: Counter[int] = Counter()  # images in a forward pass -> passes
        self._pending: deque[_Request] = deque()
        self._pending_images = 0
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="fmnist-batcher", daemon=True)
        self._thread.start()

    def submit(self, payload: Any, count: int | None = None) -> Future[Any]:
        """Queue one request of `count` images (default len(payload)); the future gets
        finish(payload, its Batched), by default the Batched itself."""
        request = _Request(payload, len(payload) if count is None else count, Future())
        with self._cond:
            self._check_open()
            self._pending.append(request)
            self._pending_images += request.count
            self._cond.notify()
        return request.future

    def check_open(self) -> None:
        """Raise what `submit` would raise now (BatcherDied, BatcherClosed), if anything: a
        caller can refuse a request before it spends anything on it."""
        with self._cond:
            self._check_open()

    def _check_open(self) -> None:
        if self.died is not None:
            raise BatcherDied("The batcher has stopped on an error.") from self.died
        if self._closed:
            raise BatcherClosed("The server is shutting down.")

    def close(self, timeout: float | None = 10.0) -> None:
        """Answer every queued request, then stop the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout)

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def alive(self) -> bool:
        """False once the thread has ended for any reason but `close()`."""
        return self._thread.is_alive() or (self._closed and self.died is None)

    def _prepare(self, requests: list[_Request]) -> None:
        for r in requests:
            if r.images is not None or r.failed:
                continue
            if r.future.cancelled():  # its client is gone: not even decoded
                r.failed = True
                self.dropped += 1
                continue
            try:
                r.images = self.prepare(r.payload)
            except BaseException as e:
                r.failed = True
                _settle(r.future, error=e)

    def _take(self) -> list[_Request] | None:
        """The next pass's requests, oldest first, prepared; None once closed and drained."""
        with self._cond:
            while not self._pending:
                if self._closed:
                    return None
                self._cond.wait()
            deadline = self._pending[0].arrived + self.window_s
        while True:
            with self._cond:
                waiting = list(self._pending)
            self._prepare(waiting)  # outside the lock: submit() never waits for a decode
            with self._cond:
                if self._closed or self._pending_images >= self.max_images:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                if len(self._pending) == len(waiting):  # nothing new arrived meanwhile
                    self._cond.wait(remaining)
        with self._cond:
            taken = [self._pending.popleft()]
            count = taken[0].count
            while self._pending and count + self._pending[0].count <= self.max_images:
                taken.append(self._pending.popleft())
                count += taken[-1].count
            self._pending_images -= count
        self._prepare(taken)  # any that arrived as the window closed
        return [r for r in taken if not r.failed]

    def _run(self) -> None:
        running: list[_Request] = []  # the pass under way: answered too should the thread die
        try:
            while (taken := self._take()) is not None:
                # the last moment to drop a request: from here on it costs a forward pass
                running = [r for r in taken if r.future.set_running_or_notify_cancel()]
                self.dropped += len(taken) - len(running)
                if not running:
                    continue
                try:
                    self._pass(running)
                except BaseException as e:  # only this pass fails; the next one may well work
                    self.failed_passes += 1
                    log.error("A forward pass of %d request(s) failed", len(running), exc_info=e)
                    for r in running:
                        _settle(r.future, error=e)
                running = []
        except BaseException as e:
            self.died = e
            log.critical("The batcher's thread died: no prediction will be answered", exc_info=e)
            with self._cond:
                self._closed = True
                orphans = running + list(self._pending)
                self._pending.clear()
            for r in orphans:  # an answered one stays answered (_settle)
                _settle(r.future, error=BatcherDied("The batcher has stopped on an error."))

    def _pass(self, taken: list[_Request]) -> None:
        parts = [r.images for r in taken if r.images is not None]
        images = parts[0] if len(parts) == 1 else np.concatenate(parts)
        t0 = time.perf_counter()
        out = self.forward(images)
        took = time.perf_counter() - t0
        self.passes += 1
        self.batch_sizes[len(images)] += 1
        start = 0
        for r, part in zip(taken, parts, strict=True):
            rows = out[start : start + len(part)]
            start += len(part)
            try:
                result = self.finish(r.payload, Batched(part, rows, len(images), took))
            except BaseException as e:
                _settle(r.future, error=e)
            else:
                _settle(r.future, result)
