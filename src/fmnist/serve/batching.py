"""Cross-request dynamic batching: requests that arrive within a short window share one forward
pass, as TorchServe's `max_batch_delay`, Triton's dynamic batcher and LitServe's
`batch_timeout` do.

Why: a forward pass has a fixed cost that batching shares (measured on 2 cores, AMD EPYC,
class avx512, the cnn 16,64,128: 0.86 ms at batch 1, 0.33 ms an image at batch 32), so eight
clients queued one by one behind a lock pay eight fixed costs where one would do.

`Batcher(forward)` owns one thread. `submit(images)` hands it a request's images and returns a
`Future` of that request's rows of `forward`'s output (a `Batched`). The thread takes the oldest request,
waits until `window_s` after it arrived (or until `max_images` are waiting), runs `forward`
once on everything it took, and gives every request its own rows back, in order. A lone
request waits at most the window; requests that queued while a pass was running go into the
next pass without waiting again. A request is never split: one larger than `max_images` runs
alone. `close()` answers what is queued, then stops the thread.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np


class BatcherClosed(RuntimeError):
    """The batcher is shutting down and takes no new requests."""


@dataclass
class Batched:
    """One request's share of a forward pass."""

    rows: np.ndarray  # forward's output for this request's images, in order
    pass_images: int  # images in the whole pass (this request's and the others')
    forward_s: float  # how long the pass took


@dataclass
class _Request:
    images: np.ndarray
    future: Future[Batched]
    arrived: float = field(default_factory=time.monotonic)


class Batcher:
    def __init__(
        self,
        forward: Callable[[np.ndarray], np.ndarray],
        *,
        max_images: int = 64,
        window_s: float = 0.002,
    ) -> None:
        if max_images < 1 or window_s < 0:
            raise ValueError("max_images must be >= 1 and window_s >= 0")
        self.forward = forward
        self.max_images = max_images
        self.window_s = window_s
        self.passes = 0
        self.batch_sizes: Counter[int] = Counter()  # images in a forward pass -> passes
        self._pending: deque[_Request] = deque()
        self._pending_images = 0
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="fmnist-batcher", daemon=True)
        self._thread.start()

    def submit(self, images: np.ndarray) -> Future[Batched]:
        """Queue one request's images (N, ...); the future gets forward's N output rows."""
        request = _Request(images, Future())
        with self._cond:
            if self._closed:
                raise BatcherClosed("The server is shutting down.")
            self._pending.append(request)
            self._pending_images += len(images)
            self._cond.notify()
        return request.future

    def close(self, timeout: float | None = 10.0) -> None:
        """Answer every queued request, then stop the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def _take(self) -> list[_Request] | None:
        """The next pass's requests, oldest first; None once closed and drained."""
        with self._cond:
            while not self._pending:
                if self._closed:
                    return None
                self._cond.wait()
            deadline = self._pending[0].arrived + self.window_s
            while not self._closed and self._pending_images < self.max_images:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            taken = [self._pending.popleft()]
            count = len(taken[0].images)
            while self._pending and count + len(self._pending[0].images) <= self.max_images:
                taken.append(self._pending.popleft())
                count += len(taken[-1].images)
            self._pending_images -= count
        # a caller that gave up (cancelled its future) is dropped from the pass
        return [r for r in taken if r.future.set_running_or_notify_cancel()]

    def _run(self) -> None:
        while (taken := self._take()) is not None:
            if not taken:
                continue
            if len(taken) == 1:
                images = taken[0].images
            else:
                images = np.concatenate([r.images for r in taken])
            t0 = time.perf_counter()
            try:
                out = self.forward(images)
            except BaseException as e:  # every waiting request must hear of it, not just the log
                for r in taken:
                    r.future.set_exception(e)
                continue
            took = time.perf_counter() - t0
            self.passes += 1
            self.batch_sizes[len(images)] += 1
            start = 0
            for r in taken:
                r.future.set_result(Batched(out[start : start + len(r.images)], len(images), took))
                start += len(r.images)
