"""/metrics: Prometheus' text format, via prometheus_client.

    fmnist_http_requests_total{route,method,status}     every answer, errors included
    fmnist_http_request_duration_seconds{route}          histogram, from first byte to answer
    fmnist_forward_pass_images / _seconds                histograms of the shared passes
    fmnist_predictions_queued / fmnist_uploads_in_progress   gauges (summed over live workers)
    fmnist_rejected_total{reason}                        busy, uploads, deadline, client_gone
    fmnist_model_info{model,backend,tta}                 always 1

With several workers every process writes its values to files under PROMETHEUS_MULTIPROC_DIR
(`fmnist serve` makes one; prometheus_client's multiprocess mode) and whichever worker answers
/metrics sums them all, so one scrape sees the whole server. The variable must be set before
prometheus_client is imported: it picks its storage then.

Each app has a registry of its own, so that several apps in one process (tests) do not clash.
The route label is the route's template (`/v1/predict`), never the raw path, so that probing
random URLs cannot grow the number of series; unknown paths count as "other".
"""

from __future__ import annotations

import os
import time
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
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
PASS_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


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
        self.model = Gauge("fmnist_model_info", "The model served (value always 1)",
                           ["model", "backend", "tta"], multiprocess_mode="max", registry=r)  # fmt: skip

    def set_model(self, model: Any, backend: str, tta: bool) -> None:
        self.model.labels(str(model), backend, str(tta).lower()).set(1)

    def exposition(self) -> bytes:
        if not multiprocess():
            return generate_latest(self.registry)
        # every worker's files, summed: the registry only holds the collector
        registry = CollectorRegistry()
        prom_multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)


def mark_worker_dead(pid: int) -> None:
    """Drop a dead worker's live gauges (the supervisor calls it; its counters stay)."""
    if multiprocess():
        prom_multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


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
