"""The server's limits as a client and an operator meet them, on a real server on 127.0.0.1:
a refused request shows in /metrics, random URLs do not grow its series, a body that trickles in
is cut when the request's time is up (not reset by every byte), a declared Content-Length over
the limit is refused before any of the body is sent, and a long life of requests (good, bad and
refused) leaves nothing counted as pending.

Only what is visible from outside is asserted: statuses, bodies, /metrics text."""

from __future__ import annotations

import asyncio
import base64
import json
import re
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


def answer_of(sock: socket.socket) -> tuple[int, dict[str, Any]]:
    """The status and JSON body of the server's answer on `sock`."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection without an answer"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
    assert length is not None, head
    while len(body) < int(length.group(1)):
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection in the middle of its answer"
        body += chunk
    return int(head.split()[1]), json.loads(body)


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
        assert answer_of(sock) == (408, {"error": "The request body did not arrive within 1 s: "
                                         "send it at once (or start the server with a larger "
                                         "--request-timeout)."})
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


ADVICE = "send fewer or smaller images (or start it with a larger --max-upload-mb)."


@pytest.mark.parametrize(
    ("limit", "declared", "words"),
    [
        (10 * 2**20, 50_000_000,
         "Request body is 50,000,000 bytes (47.7 MiB); this server accepts at most 10,485,760 "
         "bytes (10.0 MiB) per request: "),
        # a MiB and over is said in MiB too; under a MiB, in bytes alone
        (2**20 - 1, 2**20,
         "Request body is 1,048,576 bytes (1.0 MiB); this server accepts at most 1,048,575 bytes "
         "per request: "),
    ],
)
def test_a_body_too_large_is_told_its_size_and_the_limit_in_bytes_and_mib(
    serve, limit: int, declared: int, words: str
) -> None:
    server = serve(max_upload_bytes=limit)
    sock = server.raw(post_head(declared))  # the headers only
    try:
        assert answer_of(sock) == (413, {"error": words + ADVICE})
    finally:
        sock.close()


def test_a_body_of_exactly_the_limit_is_read_and_one_byte_more_is_refused(serve) -> None:
    server = serve(max_upload_bytes=1000)

    def post(content: bytes | list[bytes]) -> httpx.Response:
        return httpx.post(server.url + "/v1/predict", content=content, headers=PNG, timeout=30)

    declared, chunked = post(b"x" * 1000), post([b"x" * 500, b"x" * 500])
    assert (declared.status_code, chunked.status_code) == (422, 422)  # read: not an image
    assert "not an image" in declared.json()["error"]
    over_declared, over_chunked = post(b"x" * 1001), post([b"x" * 500, b"x" * 501])
    assert over_declared.json() == {"error": "Request body is 1,001 bytes; this server accepts "
                                    "at most 1,000 bytes per request: " + ADVICE}
    assert over_chunked.json() == {"error": "Request body is over 1,000 bytes; this server "
                                   "accepts at most 1,000 bytes per request: " + ADVICE}
    assert (over_declared.status_code, over_chunked.status_code) == (413, 413)


def test_a_content_length_that_is_not_a_number_is_a_json_400(make_checkpoint) -> None:
    """uvicorn refuses such a request itself; an ASGI server that passes it on gets the app's
    own answer (what the app sees is made here, as such a server would hand it over)."""
    app = create_app(Predictor.from_checkpoint(make_checkpoint("mlp")), warmup=False)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/v1/predict", "raw_path": b"/v1/predict", "root_path": "",
        "query_string": b"", "client": ("127.0.0.1", 1234), "server": ("testserver", 80),
        "headers": [(b"content-type", b"image/png"), (b"content-length", b"12abc")],
    }  # fmt: skip
    asyncio.run(app(scope, receive, send))  # type: ignore[arg-type]
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    assert start["status"] == 400 and (b"content-type", b"application/json") in start["headers"]
    assert json.loads(body) == {"error": "Content-Length header is not a number."}


def test_a_prediction_may_take_longer_than_its_body_was_allowed_to(serve) -> None:
    """The request timeout is for the body to arrive; once it has, the request waits for its
    answer as long as the prediction takes (here a batching window longer than that timeout)."""
    server = serve(request_timeout_s=0.5, batching=Batching(window_ms=1500, max_images=64))
    answer = httpx.post(server.url + "/v1/predict", content=png(), headers=PNG, timeout=30)
    assert answer.status_code == 200, answer.text
