"""/metrics: Prometheus' text format, via prometheus_client.

    fmnist_http_requests_total{route,method,status}     every answer, errors included
    fmnist_http_request_duration_seconds{route}          histogram, from first byte to answer
    fmnist_forward_pass_images / _seconds                histograms of the shared passes
    fmnist_predictions_queued / fmnist_uploads_in_progress   gauges (summed over live workers)
    fmnist_rejected_total{reason}                        busy, uploads, deadline, client_gone
    fmnist_model_info{model,backend,tta,model_id}        1 (0: a model replaced by a reload)
    fmnist_predictions_total{recognised,set_size}        every image answered: recognised true,
                                                         false or unknown (an uncalibrated
                                                         model); classes in its set 0, 1, 2, 3+
                                                         or none
    fmnist_top_probability                               histogram of each answer's calibrated
                                                         top probability
    fmnist_worker_restarts_total{reason}                 crashed, failed_start, unresponsive
                                                         (written by the supervisor)

With several workers every process writes its values to files under PROMETHEUS_MULTIPROC_DIR
(`fmnist serve` makes one; prometheus_client's multiprocess mode) and whichever worker answers
/metrics sums them all, so one scrape sees the whole server. The variable must be set before
prometheus_client is imported: it picks its storage then. When a worker dies the supervisor
folds its counters and histograms into one archive file per kind and deletes its files
(`mark_worker_dead`), so that totals never go back and the folder does not grow with every
restart.

Each app has a registry of its own, so that several apps in one process (tests) do not clash.
The route label is the route's template (`/v1/predict`), never the raw path, so that probing
random URLs cannot grow the number of series; unknown paths count as "other".
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as prom_multiprocess
from prometheus_client.mmap_dict import MmapedDict
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
PASS_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
PROBABILITY_BUCKETS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)


def multiprocess() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


class Metrics:
    """The server's metrics, and their exposition."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("fmnist_http_requests", "HTTP requests answered, by route and status",
                                ["route", "method", "status"], registry=r)  # fmt: skip
        self.latency = Histogram("fmnist_http_request_duration_seconds", "Time to answer, by route",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.pass_images = Histogram("fmnist_forward_pass_images", "Images in one forward pass",
                                     buckets=PASS_BUCKETS, registry=r)  # fmt: skip
        self.pass_seconds = Histogram("fmnist_forward_pass_seconds", "Duration of one forward pass",
                                      buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        # livesum: a dead worker's last value must not linger in the sum
        self.queued = Gauge("fmnist_predictions_queued", "Predictions admitted and not yet answered",
                            multiprocess_mode="livesum", registry=r)  # fmt: skip
        self.uploads = Gauge("fmnist_uploads_in_progress", "Prediction bodies still arriving",
                             multiprocess_mode="livesum", registry=r)  # fmt: skip
        self.rejected = Counter("fmnist_rejected", "Predictions refused or dropped before their "
                                "forward pass, by reason", ["reason"], registry=r)  # fmt: skip
        # drift: inputs unlike the training images show as more "false", larger sets and
        # lower top probabilities (docs/serving.md has alert rules)
        self.predictions = Counter("fmnist_predictions", "Images answered, by whether they were "
                                   "recognised and the size of their prediction set",
                                   ["recognised", "set_size"], registry=r)  # fmt: skip
        self.top_probability = Histogram("fmnist_top_probability", "Calibrated probability of "
                                         "each answer's top class", buckets=PROBABILITY_BUCKETS,
                                         registry=r)  # fmt: skip
        # livemax: a dead worker's series goes with it (a replaced model's id included)
        self.model = Gauge("fmnist_model_info", "The model served (value always 1)",
                           ["model", "backend", "tta", "model_id"], multiprocess_mode="livemax",
                           registry=r)  # fmt: skip

    def set_model(self, model: Any, backend: str, tta: bool, model_id: str) -> None:
        self.model.labels(str(model), backend, str(tta).lower(), model_id).set(1)

    def observe(self, recognised: bool | None, set_size: int | None, top: float) -> None:
        """One answered image, for the drift metrics."""
        known = "unknown" if recognised is None else str(recognised).lower()
        size = "none" if set_size is None else str(set_size) if set_size < 3 else "3+"
        self.predictions.labels(known, size).inc()
        self.top_probability.observe(top)

    def unset_model(self, model: Any, backend: str, tta: bool, model_id: str) -> None:
        labels = (str(model), backend, str(tta).lower(), model_id)
        if multiprocess():  # prometheus_client cannot remove a series there: it reads 0
            self.model.labels(*labels).set(0)
        else:
            self.model.remove(*labels)

    def exposition(self) -> bytes:
        if not multiprocess():
            return generate_latest(self.registry)
        # every worker's files, summed: the registry only holds the collector
        registry = CollectorRegistry()
        prom_multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)


class WorkerRestarts:
    """fmnist_worker_restarts_total{reason}, counted by the supervisor in a file of its own."""

    REASONS = ("crashed", "failed_start", "unresponsive")

    def __init__(self) -> None:
        self.counter = Counter("fmnist_worker_restarts", "Worker processes replaced, by reason",
                               ["reason"], registry=CollectorRegistry())  # fmt: skip
        for reason in self.REASONS:  # every series from the start, at 0
            self.counter.labels(reason)

    def inc(self, reason: str) -> None:
        self.counter.labels(reason).inc()


def mark_worker_dead(pid: int) -> None:
    """The supervisor's bookkeeping for a dead worker: its live gauges go, its counters and
    histograms are added to the archive files, and its files are deleted."""
    if not multiprocess():
        return
    directory = Path(os.environ[MULTIPROC_ENV])
    prom_multiprocess.mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]
    for kind in ("counter", "histogram"):
        dead = directory / f"{kind}_{pid}.db"
        if dead.is_file():
            _fold(dead, directory / f"{kind}_archive.db")
    for other in directory.glob(f"gauge_*_{pid}.db"):  # non-live gauges: nothing to keep
        other.unlink(missing_ok=True)


def _fold(dead: Path, archive: Path) -> None:
    """Add every value of `dead` to `archive`, then delete `dead`. A scrape in between counts
    the dead worker's values twice, once: the next one is right again."""
    values = MmapedDict.read_all_values_from_file(str(dead))
    kept = MmapedDict(str(archive))
    try:
        for key, value, timestamp, _ in values:
            total, _ = kept.read_value(key)
            kept.write_value(key, total + value, timestamp)
    finally:
        kept.close()
    dead.unlink()


class RequestMetrics:
    """ASGI middleware: counts every answer by route and status and times it. Outermost, so
    that the limits' own 408/413 answers are counted too."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500  # what the client gets if the app raises before answering

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", None) or "other"
            m = self.metrics
            m.requests.labels(route, scope["method"], str(status)).inc()
            m.latency.labels(route).observe(time.perf_counter() - t0)
