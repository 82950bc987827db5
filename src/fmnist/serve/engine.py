"""The model side of the server: decoding, forward passes (shared across requests or one at a
time), answers, and the counters /v1/stats reports. Its methods run off the event loop.

Requests share forward passes (`batching.Batcher`): those that arrive within `window_ms` of
each other go through the model together. The batcher's thread also decodes each request
(while the window is open) and formats its answer; the event loop only parses HTTP.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from concurrent.futures import Future
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from starlette.concurrency import run_in_threadpool

from fmnist.errors import ImageError
from fmnist.images import open_image
from fmnist.serve.answers import answer
from fmnist.serve.backends import Backend
from fmnist.serve.batching import Batched, Batcher
from fmnist.serve.errors import ApiError
from fmnist.serve.limits import Limits
from fmnist.serve.requests import FIELDS, Item, Job
from fmnist.serve.samples import Samples


@dataclass
class Batching:
    """How requests share forward passes. `enabled=False` is one pass per request, in turn."""

    enabled: bool = True
    window_ms: float = 2.0  # how long a lone request waits for company
    max_images: int = 64  # the most images in one pass (a larger request still runs, alone)


class Engine:
    """The backend plus everything the routes need from it."""

    def __init__(self, backend: Backend, limits: Limits, batching: Batching | None = None) -> None:
        self.backend = backend
        self.limits = limits
        batching = batching or Batching()
        # Unbatched: one forward pass at a time, since torch already uses every core for one
        # batch and interleaved passes would only fight over them. Batched: the batcher's one
        # thread runs the passes, so they never overlap either.
        self.lock = threading.Lock()
        self.batcher = (
            Batcher(backend.predict_arrays, prepare=self._decode_job, finish=self._answer_job,
                    max_images=batching.max_images, window_s=batching.window_ms / 1e3)
            if batching.enabled else None
        )  # fmt: skip
        self.ready = threading.Event()
        self.internal_errors = 0
        self.in_flight = 0  # predictions admitted and not yet answered (touched on the loop only)
        self.refused = 0
        self._samples = Samples(backend.meta, list(backend.classes))

    def warmup(self) -> None:
        try:
            with self.lock:
                self.backend.warmup()
        finally:
            self.ready.set()

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()

    def decode(self, items: list[Item]) -> np.ndarray:
        """uint8 (N, 28, 28): what the model sees; a bad image is this request's 422 alone."""
        arrays = []
        for item in items:
            if isinstance(item.data, np.ndarray):
                arrays.append(item.data)
                continue
            try:
                image = open_image(item.data, max_pixels=self.limits.max_pixels)
            except ImageError as e:
                raise ApiError(422, f"{item.name}: {e}") from None
            arrays.append(self.backend.preprocess(image))
        return np.stack(arrays)

    async def run(self, items: list[Item], fields: tuple[str, ...] = FIELDS) -> dict[str, Any]:
        """The answer to one request, awaited on the event loop without blocking it."""
        if self.batcher is not None:
            # no thread is held while waiting: the batcher's thread decodes, predicts, answers
            return await asyncio.wrap_future(self.submit(items, fields))
        return await run_in_threadpool(self.predict, items, fields)

    def submit(self, items: list[Item], fields: tuple[str, ...] = FIELDS) -> Future[dict[str, Any]]:
        """Batched: the answer, decoded, predicted with whatever else arrives, and formatted
        on the batcher's thread (the caller awaits it without holding a thread)."""
        if self.batcher is None:
            raise RuntimeError("submit() needs batching; use predict()")
        return self.batcher.submit(Job(items, fields), len(items))

    def predict(self, items: list[Item], fields: tuple[str, ...] = FIELDS) -> dict[str, Any]:
        """Unbatched: the answer to one request, in the calling thread, one pass at a time."""
        job = Job(items, fields)
        batch = self.decode(items)
        t1 = time.perf_counter()
        with self.lock:
            probs = self.backend.predict_arrays(batch)
        t2 = time.perf_counter()
        return answer(self.backend, job, batch, probs, len(batch), t1 - job.t0, t2 - t1)

    def _decode_job(self, job: Job) -> np.ndarray:
        return self.decode(job.items)

    def _answer_job(self, job: Job, shared: Batched) -> dict[str, Any]:
        # "model" for a batched request: from decoded to answered (the window, the pass)
        model_s = time.perf_counter() - job.t0 - shared.prepare_s
        return answer(self.backend, job, shared.images, shared.rows, shared.pass_images,
                      shared.prepare_s, model_s)  # fmt: skip

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
            "refused": self.refused,
        }

    def model_info(self) -> dict[str, Any]:
        backend = self.backend
        meta = backend.meta
        return {
            "model": meta.get("model"),
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
            "versions": meta.get("versions", {}),
            "device": str(backend.device),
            "backend": backend.name,
            "ready": self.ready.is_set(),
            "limits": asdict(self.limits),
        }

    def samples(self, n: int, seed: int) -> dict[str, Any]:
        return self._samples.pick(n, seed)
