"""The model side of the server: decoding, forward passes (shared across requests or one at a
time), answers, and the counters /v1/stats reports. Its methods run off the event loop.

Requests share forward passes (`batching.Batcher`): those that arrive within `window_ms` of
each other go through the model together. The batcher's thread decodes each small request
(while the window is open), runs the pass and formats the answers, so a request crosses
threads twice. Anything larger is decoded first in a small pool of threads of its own
(`DECODE_THREADS`) and queued only then, so that one huge upload (up to `max_pixels`, 40 M by
default) delays no other request's pass; it only holds one decoding thread. "Small" is at most
`INLINE_PIXELS` pixels and `INLINE_BYTES` bytes in all, as the images' first bytes declare
them (read at fixed offsets, `fmnist.images.declared_size`; an image whose size cannot be read
so is not small). Why not every request in the pool: the two extra thread crossings cost a
third of the requests/s for small images (measured: 471-511 vs 749 requests/s, 8 clients, 2
workers, 2 busy cores).

One job: a request's way from its bytes to its answer. Admission, decoding, the pass and the
counters share one queue and one set of budgets, so they are one class, not several.

Bounded work: the event loop only parses HTTP and reads those fixed offsets; no image library
runs on it. A request whose images declare more than `max_request_pixels` in all is refused
(413) before anything is decoded, and decoding checks the same budget again, image by image,
with the sizes PIL finds. Decoding is part of the request's wait: the `predict_timeout_s`
deadline and the hang-up watch cover it, and when either fires the request's queue slot is
freed at once and its decoding stops at the next image (`Job.cancelled`).

Admission (`admit_upload`, `admit`): a request is counted twice, first while its body arrives
(bounded by `max_uploads`), then from its body's end to its answer (bounded by `max_queue`), so
that slow uploads cannot fill the queue and the queue bound is the work actually waiting for the
model. Refusals are 503 with Retry-After. While a request waits for its answer, its connection
is watched: a client that hangs up is dropped before its forward pass (`run`).

State (/healthz, /readyz): starting until warmed up, then ready; draining once shutdown has
begun (a load balancer should stop sending); failed if the batcher's thread has died (the
server process then exits, see fmnist.serve.server).
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from fmnist.errors import ImageError
from fmnist.images import declared_size, open_image
from fmnist.serve.answers import answer
from fmnist.serve.backends import Backend, content_id_of
from fmnist.serve.batching import Batched, Batcher, BatcherClosed
from fmnist.serve.errors import ApiError
from fmnist.serve.limits import Limits
from fmnist.serve.metrics import Metrics
from fmnist.serve.requests import FIELDS, Item, Job
from fmnist.serve.samples import Samples

# Threads decoding uploads before they are queued (unbatched: answering them). More than one,
# so that a huge image holds one of them while small ones go on being decoded beside it; few,
# because each holds a decoded image (up to 40 M pixels, 160 MB as RGBA) and they share the
# cores with the forward passes.
DECODE_THREADS = 4
# A request with more pixels or bytes than these is decoded in that pool; one with fewer, on
# the batcher's thread. 1 M pixels in 256 KB decode in a few ms: the most one request may
# delay the others' pass by (the bytes bound the work PIL does outside the pixels).
INLINE_PIXELS = 1_000_000
INLINE_BYTES = 256 * 1024


class Abandoned(Exception):
    """Nobody waits for this request's answer any more: its decoding stops."""


@dataclass
class Batching:
    """How requests share forward passes. `enabled=False` is one pass per request, in turn."""

    enabled: bool = True
    window_ms: float = 2.0  # how long a lone request waits for company
    max_images: int = 64  # the most images in one pass (a larger request still runs, alone)


@dataclass(frozen=True)
class Served:
    """The model answering now: its backend and its id (fmnist.serve.pinning). Replaced whole
    by `Engine.swap`; a pass takes it once, so its answers name the model that computed them."""

    backend: Backend
    model_id: str


class Engine:
    """The backend plus everything the routes need from it."""

    def __init__(self, backend: Backend, limits: Limits, batching: Batching | None = None,
                 model_id: str | None = None) -> None:  # fmt: skip
        self.served = Served(backend, model_id or content_id_of(backend))
        self.reload_error: str | None = None  # why the last reload failed, for /v1/model
        self.reloading = threading.Lock()  # held by the one reload under way (fmnist.serve.app)
        self.limits = limits
        batching = batching or Batching()
        # Unbatched: one forward pass at a time, since torch already uses every core for one
        # batch and interleaved passes would only fight over them. Batched: the batcher's one
        # thread runs the passes, so they never overlap either.
        self.lock = threading.Lock()
        self.metrics = Metrics()
        self.metrics.set_model(backend.meta.get("model"), backend.name, backend.tta, self.served.model_id)
        self.batcher = (
            Batcher(self._forward, prepare=self._job_images, finish=self._answer_job,
                    max_images=batching.max_images, window_s=batching.window_ms / 1e3)
            if batching.enabled else None
        )  # fmt: skip
        self._decoders = ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="fmnist-decode")
        self.ready = threading.Event()
        self.draining = threading.Event()  # set when shutdown begins (fmnist.serve.server)
        self.internal_errors = 0
        # the counters below are touched on the event loop only
        self.uploading = 0  # prediction bodies still arriving
        self.in_flight = 0  # predictions admitted (body read) and not yet answered
        self.rejected: Counter[str] = Counter()  # reason -> requests refused or dropped
        self._samples = Samples(backend.meta, list(backend.classes))

    @property
    def backend(self) -> Backend:
        return self.served.backend

    @property
    def model_id(self) -> str:
        return self.served.model_id

    def swap(self, backend: Backend, model_id: str) -> None:
        """Serve `backend` (warm already) from the next forward pass on; a pass under way
        finishes, and answers, with the model it began with."""
        old = self.served
        self.served = Served(backend, model_id)  # one assignment: readers see old or new
        self.reload_error = None
        self._samples = Samples(backend.meta, list(backend.classes))
        self.metrics.unset_model(old.backend.meta.get("model"), old.backend.name, old.backend.tta, old.model_id)
        self.metrics.set_model(backend.meta.get("model"), backend.name, backend.tta, model_id)

    def warmup(self) -> None:
        try:
            with self.lock:
                self.backend.warmup()
        finally:
            self.ready.set()

    def close(self, timeout: float = 10.0) -> None:
        if self.batcher is not None:
            self.batcher.close(timeout)
        self._decoders.shutdown(wait=False, cancel_futures=True)

    @property
    def failed(self) -> bool:
        """The batcher's thread has died: this process can answer no prediction again."""
        return self.batcher is not None and not self.batcher.alive

    def state(self) -> tuple[str, str | None]:
        """(state, why it is not ready) for /readyz: ready, starting, draining or failed."""
        if self.failed:
            return "failed", "The batcher has stopped on an error; this process is exiting."
        if self.draining.is_set():
            return "draining", "The server is shutting down."
        if not self.ready.is_set():
            return "starting", "The model is still warming up."
        return "ready", None

    def refuse(self, reason: str, message: str) -> ApiError:
        self.rejected[reason] += 1
        self.metrics.rejected.labels(reason).inc()
        # Connection: close, so that a client that retries at once (ignoring Retry-After) pays a
        # reconnect instead of spinning the event loop on refusals
        return ApiError(503, message, headers={"Retry-After": "1", "Connection": "close"})

    def shed(self) -> None:
        """503 at once if the queue is full: checked before a body is read too, so an
        overloaded server spends nothing on a request it would refuse anyway."""
        max_queue = self.limits.max_queue
        if self.in_flight >= max_queue:
            raise self.refuse("busy", f"The server is busy ({max_queue} predictions queued): retry shortly.")

    @contextmanager
    def admit_upload(self) -> Iterator[None]:
        """Count a body while it arrives; 503 past max_uploads."""
        limit = self.limits.max_uploads
        if self.uploading >= limit:
            raise self.refuse("uploads", f"The server is busy ({limit} uploads in progress): retry shortly.")
        self.uploading += 1
        self.metrics.uploads.inc()
        try:
            yield
        finally:
            self.uploading -= 1
            self.metrics.uploads.dec()

    @contextmanager
    def admit(self) -> Iterator[None]:
        """Count a prediction from its body's end to its answer; 503 past max_queue."""
        self.shed()
        self.in_flight += 1
        self.metrics.queued.inc()
        try:
            yield
        finally:
            self.in_flight -= 1
            self.metrics.queued.dec()

    def decode(self, items: list[Item], abandoned: threading.Event | None = None) -> np.ndarray:
        """uint8 (N, 28, 28): what the model sees; a bad image is this request's 422 alone, and
        images over the request's pixel budget its 413. Stops (Abandoned) at the next image
        once `abandoned` is set."""
        arrays = []
        spent = 0

        def spend(width: int, height: int) -> None:
            nonlocal spent
            spent += width * height
            if spent > self.limits.max_request_pixels:
                raise self._too_many_pixels(spent)

        for item in items:
            if abandoned is not None and abandoned.is_set():
                raise Abandoned()
            if isinstance(item.data, np.ndarray):
                arrays.append(item.data)
                continue
            try:
                image = open_image(item.data, max_pixels=self.limits.max_pixels, check_size=spend)
            except ImageError as e:
                raise ApiError(422, f"{item.name}: {e}") from None
            arrays.append(self.backend.preprocess(image))
        return np.stack(arrays)

    def _declared(self, items: list[Item]) -> tuple[int, bool]:
        """(pixels in `items`' images as their first bytes declare them, whether every size
        could be read so): constant work per image, for the event loop. An image declaring
        more than `max_pixels` is left out of the sum and not small: PIL reads its header in
        the pool and refuses it (422) before decoding, saying what it really is."""
        total, known = 0, True
        for item in items:
            if isinstance(item.data, np.ndarray):
                total += item.data.size
                continue
            size = declared_size(item.data)
            if size is None or size[0] * size[1] > self.limits.max_pixels:
                known = False
            else:
                total += size[0] * size[1]
        return total, known

    def _too_many_pixels(self, pixels: int) -> ApiError:
        return ApiError(413, f"The request's images hold {pixels:,} pixels or more; this server "
                        f"decodes at most {self.limits.max_request_pixels:,} per request: send "
                        "fewer or smaller images.")  # fmt: skip

    async def run(
        self, items: list[Item], fields: tuple[str, ...] = FIELDS,
        disconnected: Callable[[], Awaitable[Any]] | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        """The answer to one request, awaited on the event loop without blocking it, for at
        most `predict_timeout_s` from here, decoding included (then 503). `disconnected()`
        (it returns once the client has hung up) is watched meanwhile: a request whose client
        is gone is cancelled, and the batcher drops it unless its forward pass has begun
        (then 499). Either way the request stops holding its queue slot at once."""
        job = Job(items, fields)
        pixels, known = self._declared(items)  # fixed offsets only: nothing decoded on the loop
        if pixels > self.limits.max_request_pixels:
            raise self._too_many_pixels(pixels)
        if self.batcher is not None:  # a dead or closed batcher refuses first (503)
            self.batcher.check_open()
        small = known and pixels <= INLINE_PIXELS and _bytes(items) <= INLINE_BYTES
        work = asyncio.ensure_future(self._work(job, small))
        waits: set[asyncio.Future[Any]] = {work}
        if disconnected is not None:
            waits.add(asyncio.ensure_future(disconnected()))
        try:
            done, _ = await asyncio.wait(waits, timeout=self.limits.predict_timeout_s,
                                         return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
        finally:
            for w in waits:  # cancelling the work cancels its decoding or its batcher request
                if w is not work or not work.done():
                    w.cancel()
            if not work.done():
                job.cancelled.set()
        if work in done:
            if work.cancelled():  # engine.close cancelled its decode, queued in the pool
                raise BatcherClosed("The server is shutting down.")
            return work.result()
        if done:  # the client hung up: nobody will read this (499, as nginx logs it)
            self.rejected["client_gone"] += 1
            self.metrics.rejected.labels("client_gone").inc()
            raise ApiError(499, "The client closed the connection before its answer.")
        self.rejected["deadline"] += 1
        self.metrics.rejected.labels("deadline").inc()
        raise ApiError(503, f"The prediction was not answered within {self.limits.predict_timeout_s:g} s: "
                       "retry shortly.", headers={"Retry-After": "1"})  # fmt: skip

    async def _work(self, job: Job, small: bool) -> dict[str, Any]:
        """Decode `job` (in the pool unless it is small and batched), then its answer."""
        loop = asyncio.get_running_loop()
        try:
            if self.batcher is None:  # a comparison mode: one request at a time, in the pool
                return await loop.run_in_executor(self._decoders, self.predict, job)
            if not small:  # decoded in the pool, then queued
                job.images = await loop.run_in_executor(self._decoders, self._decode_timed, job)
        except RuntimeError as e:  # the pool has been shut down, with the batcher (engine.close)
            if "shutdown" not in str(e):
                raise
            raise BatcherClosed("The server is shutting down.") from None
        # no thread is held while the answer is awaited
        return await asyncio.wrap_future(self.batcher.submit(job, len(job.items)))

    def predict(self, job: Job) -> dict[str, Any]:
        """Unbatched: the answer to one request, in the calling thread, one pass at a time."""
        batch = self.decode(job.items, job.cancelled)
        t1 = time.perf_counter()
        with self.lock:
            served = self.served
            probs = served.backend.predict_arrays(batch)
        t2 = time.perf_counter()
        return answer(served.backend, served.model_id, job, batch, probs, len(batch), t1 - job.t0,
                      t2 - t1, self.metrics)  # fmt: skip

    def _forward(self, images: np.ndarray) -> np.ndarray:
        # on the batcher's thread, like _answer_job after it: this pass's model, for both
        self._pass_served = served = self.served
        t0 = time.perf_counter()
        out = served.backend.predict_arrays(images)
        self.metrics.pass_seconds.observe(time.perf_counter() - t0)
        self.metrics.pass_images.observe(len(images))
        return out

    def _job_images(self, job: Job) -> np.ndarray:
        """On the batcher's thread: the job's images, decoded now unless the pool did it."""
        return job.images if job.images is not None else self._decode_timed(job)

    def _decode_timed(self, job: Job) -> np.ndarray:
        t0 = time.perf_counter()
        try:
            return self.decode(job.items, job.cancelled)
        finally:
            job.decode_s = time.perf_counter() - t0

    def _answer_job(self, job: Job, shared: Batched) -> dict[str, Any]:
        # "model" for a batched request: from decoded to answered (the window, the pass)
        model_s = time.perf_counter() - job.t0 - job.decode_s
        served = self._pass_served
        return answer(served.backend, served.model_id, job, shared.images, shared.rows,
                      shared.pass_images, job.decode_s, model_s, self.metrics)  # fmt: skip

    def stats(self) -> dict[str, Any]:
        batcher = self.batcher
        return {
            "pid": os.getpid(),  # with several worker processes, each answers for itself
            "batching": batcher is not None,
            "window_ms": batcher.window_s * 1e3 if batcher else None,
            "max_pass_images": batcher.max_images if batcher else None,
            "forward_passes": batcher.passes if batcher else None,
            # images in a pass -> how many passes had that many
            "pass_sizes": dict(sorted(batcher.batch_sizes.items())) if batcher else None,
            "in_flight": self.in_flight,
            "max_queue": self.limits.max_queue,
            "uploading": self.uploading,
            "max_uploads": self.limits.max_uploads,
            # refused (503) before their pass: queue full (busy) or too many uploads
            "refused": self.rejected["busy"] + self.rejected["uploads"],
            # reason -> requests refused or given up: busy, uploads, deadline, client_gone
            "rejected": dict(self.rejected),
            # cancelled (client gone) before their pass: never computed
            "dropped": batcher.dropped if batcher else None,
            "failed_passes": batcher.failed_passes if batcher else None,
            "state": self.state()[0],
        }

    def model_info(self) -> dict[str, Any]:
        backend = self.backend
        meta = backend.meta
        return {
            "model": meta.get("model"),
            # a content hash of the files served: every prediction carries it too
            "model_id": self.model_id,
            "reload_error": self.reload_error,
            "model_config": meta.get("model_config", {}),
            "classes": list(backend.classes),
            "parameters": backend.parameter_count,
            "dataset": meta.get("dataset"),
            "dataset_hash": meta.get("dataset_sha256"),
            "metrics": meta.get("metrics", {}),
            "epoch": meta.get("epoch"),
            "recipe": meta.get("recipe"),
            "normalize": meta.get("normalize"),
            # flip TTA or not: the served predictions are made the way `metrics` were measured
            "tta": backend.tta,
            # the calibration in use: temperature, the sets' coverage, the not-recognised
            # threshold (null where the model has none)
            "trust": _trust_info(backend),
            "versions": meta.get("versions", {}),
            "device": str(backend.device),
            "backend": backend.name,
            "ready": self.ready.is_set(),
            "limits": asdict(self.limits),
        }

    def samples(self, n: int, seed: int) -> dict[str, Any]:
        return self._samples.pick(n, seed)


def _trust_info(backend: Backend) -> dict[str, Any] | None:
    trust = getattr(backend, "trust", None) or getattr(getattr(backend, "predictor", None), "trust", None)
    if trust is None:
        return None
    return {"temperature": trust.temperature, "coverage": trust.coverage,
            "calibrated": trust.calibrated, "set_score": trust.set_score,
            "ood_score": trust.ood_score, "ood_threshold": trust.ood_threshold}  # fmt: skip


def _bytes(items: list[Item]) -> int:
    return sum(len(item.data) for item in items if not isinstance(item.data, np.ndarray))
