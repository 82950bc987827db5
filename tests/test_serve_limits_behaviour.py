"""The server's limits as a client and an operator meet them, on a real server on 127.0.0.1:
a refused request shows in /metrics, random URLs do not grow its series, a body that trickles in
is cut when the request's time is up (not reset by every byte), a declared Content-Length over
the limit is refused before any of the body is sent, and a long life of requests (good, bad and
refused) leaves nothing counted as pending.

Only what is visible from outside is asserted: statuses, bodies, /metrics text."""

from __future__ import annotations

import base64
import select
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
import uvicorn
from prometheus_client.parser import text_string_to_metric_families
from test_serve import png

from fmnist.predict import Predictor
from fmnist.serve import create_app
from fmnist.serve.engine import Batching

PNG = {"Content-Type": "image/png"}


class LiveServer:
    """uvicorn serving `create_app(predictor, **options)` on a free port, in a thread."""

    def __init__(self, predictor: Predictor, **options: Any) -> None:
        config = uvicorn.Config(create_app(predictor, warmup=False, **options), host="127.0.0.1",
                                port=0, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "the server never started"
            time.sleep(0.02)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        text = httpx.get(self.url + "/metrics", timeout=10).text
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    def raw(self, head: str, body: bytes = b"") -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=30)
        sock.sendall(head.encode() + body)
        return sock


@pytest.fixture
def serve(make_checkpoint) -> Iterator[Any]:
    predictor = Predictor.from_checkpoint(make_checkpoint("mlp"))
    servers: list[LiveServer] = []

    def start(**options: Any) -> LiveServer:
        servers.append(LiveServer(predictor, **options))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def post_head(length: int) -> str:
    return (f"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
            f"Content-Length: {length}\r\n\r\n")


def status_of(sock: socket.socket) -> int:
    answer = b""
    while b"\r\n" not in answer:
        chunk = sock.recv(4096)
        assert chunk, "the server closed the connection without an answer"
        answer += chunk
    return int(answer.split()[1])


def until(condition, what: str, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"never happened in {seconds:g} s: {what}"
        time.sleep(0.02)


def test_a_refused_request_is_counted_and_routes_are_labelled_by_template(serve) -> None:
    server = serve(max_uploads=1)
    slow = server.raw(post_head(len(png())), png()[:10])  # an upload still arriving
    try:
        until(lambda: server.metrics().get(("fmnist_uploads_in_progress", ())) == 1,
              "the slow upload is counted")
        refused = httpx.post(server.url + "/v1/predict", content=png(), headers=PNG, timeout=30)
        assert refused.status_code == 503
    finally:
        slow.close()
    for i in range(3):  # an attacker probing random URLs
        assert httpx.get(f"{server.url}/wp-admin/{i}.php?x={i}", timeout=10).status_code == 404
    assert httpx.post(server.url + "/v1/predict", content=png(), headers=PNG,
                      timeout=30).status_code == 200
    m = server.metrics()
    rejected = {labels: v for (name, labels), v in m.items() if name == "fmnist_rejected_total"}
    assert sum(rejected.values()) == 1, rejected
    routes = {dict(labels).get("route") for (name, labels) in m
              if name == "fmnist_http_requests_total"}
    assert not any("wp-admin" in str(r) for r in routes), routes
    assert m[("fmnist_http_requests_total",
              (("method", "POST"), ("route", "/v1/predict"), ("status", "503")))] == 1
    assert m[("fmnist_http_requests_total",
              (("method", "POST"), ("route", "/v1/predict"), ("status", "200")))] == 1
    assert sum(v for (name, labels), v in m.items() if name == "fmnist_http_requests_total"
               and dict(labels)["status"] == "404") == 3


def test_a_body_that_trickles_in_is_cut_when_the_requests_time_is_up(serve) -> None:
    server = serve(request_timeout_s=1.0)
    body = png()
    sock = server.raw(post_head(len(body)))
    try:
        sent = 0  # one byte every 0.2 s, each well inside the 1 s, until the server answers
        while sent < len(body) and not select.select([sock], [], [], 0.2)[0]:
            sock.sendall(body[sent:sent + 1])
            sent += 1
        assert sent < len(body) // 2, "the body trickled in without the server cutting it"
        assert status_of(sock) == 408
    finally:
        sock.close()


def test_a_content_length_over_the_limit_is_refused_before_the_body_is_sent(serve) -> None:
    server = serve(max_upload_bytes=1000, request_timeout_s=30.0)
    sock = server.raw(post_head(50_000_000))  # the headers only: not a byte of the body
    try:
        sock.settimeout(10)  # a server that waits for the body would answer only after 30 s
        assert status_of(sock) == 413
    finally:
        sock.close()


def test_many_queues_worth_of_requests_good_bad_and_refused_leave_nothing_pending(serve) -> None:
    server = serve(max_queue=2, max_upload_bytes=4096)
    statuses = []
    for i in range(12):  # six times the queue, one at a time: a leak of one a request shows
        good = httpx.post(server.url + "/v1/predict", content=png(seed=i), headers=PNG, timeout=30)
        statuses.append(good.status_code)
        bad = httpx.post(server.url + "/v1/predict", content=b"not an image", headers=PNG,
                         timeout=30)
        assert 400 <= bad.status_code < 500
        big = httpx.post(server.url + "/v1/predict", content=b"x" * 5000, headers=PNG, timeout=30)
        assert big.status_code == 413
    assert statuses == [200] * 12
    m = server.metrics()
    assert m[("fmnist_predictions_queued", ())] == 0
    assert m[("fmnist_uploads_in_progress", ())] == 0


def test_after_more_images_than_a_pass_holds_two_requests_still_share_one_pass(serve) -> None:
    """The batcher counts the images waiting for a pass: were a pass's images never taken off
    that count, it would soon believe a pass is always full and stop waiting for company."""
    server = serve(batching=Batching(window_ms=2000, max_images=2))

    def images(*seeds: int) -> dict[str, list[str]]:
        return {"images": [base64.b64encode(png(seed=s)).decode() for s in seeds]}

    for i in range(3):  # each a full pass at once: six images through a pass of two
        full = httpx.post(server.url + "/v1/predict", json=images(i, i + 10), timeout=30)
        assert full.status_code == 200
    before = server.metrics()[("fmnist_forward_pass_images_count", ())]
    with ThreadPoolExecutor(2) as pool:  # two one-image requests at once: one pass of two
        answers = list(pool.map(lambda s: httpx.post(server.url + "/v1/predict",
                                                     json=images(s), timeout=30), (20, 21)))
    assert [a.status_code for a in answers] == [200, 200]
    m = server.metrics()
    assert m[("fmnist_forward_pass_images_count", ())] == before + 1
    assert m[("fmnist_forward_pass_images_sum", ())] == 8
