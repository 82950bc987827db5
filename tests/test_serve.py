"""The HTTP API through FastAPI's test client: every endpoint, every error case, and health checks
that answer while a prediction runs."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import re
import shutil
import struct
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from PIL import Image

import fmnist.datasets
from fmnist.checkpoint import load_model
from fmnist.cli import main as cli_main
from fmnist.errors import DatasetError
from fmnist.images import open_image, preprocess
from fmnist.predict import Predictor
from fmnist.serve import create_app, routes
from fmnist.serve.app import SETTINGS_ENV, STATIC_DIR, app_from_env
from fmnist.serve.backends import as_backend
from fmnist.serve.engine import Batching, Engine
from fmnist.serve.errors import ApiError
from fmnist.serve.limits import Limits
from fmnist.serve.metrics import MULTIPROC_ENV
from fmnist.serve.schemas import PredictionOut

LIMITS = {"max_upload_bytes": 200_000, "max_batch": 4, "max_pixels": 1_000_000,
          "max_request_pixels": 2_000_000, "max_queue": 8,
          "request_timeout_s": 30.0, "max_uploads": 16, "predict_timeout_s": 30.0}


# ---- helpers ---------------------------------------------------------------------------------


def png(width: int = 40, height: int = 56, *, seed: int = 0, fmt: str = "PNG") -> bytes:
    """A light blob on a dark background, as an encoded image file."""
    rng = np.random.default_rng(seed)
    img = np.zeros((height, width), np.uint8)
    img[height // 5 : -height // 5, width // 4 : -width // 4] = rng.integers(120, 255)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format=fmt)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG that declares width x height pixels (a decompression bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit grayscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def decode_data_url(url: str) -> np.ndarray:
    assert url.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))))


def asgi_post(app: FastAPI, chunks: list[bytes], content_type: str) -> tuple[int, dict]:
    """POST `chunks` as separate http.request messages and no Content-Length, the way a chunked
    upload reaches the app (TestClient always hands the body over as one message)."""
    messages = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)
    ]
    sent: list[dict] = []

    async def receive() -> dict:
        if messages:
            return messages.pop(0)
        await asyncio.Event().wait()  # the client waits for its answer: it never hangs up
        raise AssertionError("unreachable")

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/v1/predict", "raw_path": b"/v1/predict", "root_path": "",
        "query_string": b"", "headers": [(b"content-type", content_type.encode())],
        "client": ("127.0.0.1", 1234), "server": ("testserver", 80),
    }  # fmt: skip
    asyncio.run(app(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, json.loads(body)


class Spy:
    """Wraps a Predictor: records the batch shape of every forward pass; can block or fail."""

    def __init__(self, inner: Predictor) -> None:
        self.inner = inner
        self.calls: list[tuple[int, ...]] = []
        self.started = threading.Event()
        self.release: threading.Event | None = None
        self.fail = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def predict_arrays(self, images: np.ndarray) -> np.ndarray:
        self.calls.append(tuple(images.shape))
        self.started.set()
        if self.release is not None:
            assert self.release.wait(10), "test never released the prediction"
        if self.fail:
            raise RuntimeError("simulated bug")
        return self.inner.predict_arrays(images)


@pytest.fixture
def predictor(make_checkpoint) -> Predictor:
    return Predictor.from_checkpoint(make_checkpoint("mlp"))


@pytest.fixture
def spy(predictor: Predictor) -> Spy:
    return Spy(predictor)


@pytest.fixture
def app(spy: Spy) -> FastAPI:
    return create_app(spy, **LIMITS)  # type: ignore[arg-type]


@pytest.fixture
def client(app: FastAPI):
    # raise_server_exceptions (the default) turns any 500 into a test failure on the spot
    with TestClient(app) as c:
        wait_ready(c)
        yield c
    # and no bad input may have reached the catch-all handler
    assert app.state.engine.internal_errors == 0


def wait_ready(c: TestClient) -> None:
    for _ in range(200):
        if c.get("/readyz").status_code == 200:
            return
        time.sleep(0.01)
    raise AssertionError("server never became ready")


def check_prediction(p: dict, classes: list[str]) -> None:
    assert set(p["probabilities"]) == set(classes)
    probs = np.array([p["probabilities"][c] for c in classes])
    assert probs.sum() == pytest.approx(1.0, abs=1e-4)
    assert p["label"] == classes[int(probs.argmax())] == classes[p["index"]]
    assert p["probability"] == pytest.approx(probs.max(), abs=1e-5)
    assert [t["label"] for t in p["top"]][0] == p["label"] and len(p["top"]) == 3
    assert decode_data_url(p["input"]).shape == (28, 28)


# ---- health, readiness, model info -----------------------------------------------------------


def test_healthz_and_readyz(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json() == {"status": "ready", "model": "mlp"}


def test_readyz_is_503_until_warmed_up(predictor: Predictor) -> None:
    gate = threading.Event()

    class SlowWarmup(Spy):
        def warmup(self) -> None:
            gate.wait(10)

    app = create_app(SlowWarmup(predictor))  # type: ignore[arg-type]
    with TestClient(app) as c:
        r = c.get("/readyz")
        assert r.status_code == 503 and "warming up" in r.json()["error"]
        assert c.get("/healthz").status_code == 200  # alive, just not ready
        gate.set()
        wait_ready(c)


def test_model_info(client: TestClient, predictor: Predictor) -> None:
    info = client.get("/v1/model").json()
    assert info["model"] == "mlp"
    assert info["classes"] == predictor.classes and len(info["classes"]) == 10
    assert info["parameters"] == sum(p.numel() for p in predictor.model.parameters())
    assert info["metrics"] == {"test_accuracy": 0.1, "test_loss": 2.3}
    assert info["dataset"] == "fashion-mnist"
    assert info["limits"] == LIMITS
    assert info["ready"] is True


def test_model_info_says_whether_predictions_use_flip_tta(make_checkpoint) -> None:
    """A run evaluated with flip TTA is served with it, and /v1/model says so: the accuracy
    shown and the predictions served are the same kind."""
    net, meta = load_model(make_checkpoint("mlp"))
    arr = np.zeros((28, 28), np.uint8)
    arr[4:20, 2:9] = 220  # lopsided, so that the flipped image gives other probabilities
    for tta in (False, True):
        predictor = Predictor(net, {**meta, "tta_flip": tta})
        with TestClient(create_app(predictor, warmup=False)) as c:
            assert c.get("/v1/model").json()["tta"] is tta
            p = c.post("/v1/predict", json={"arrays": [arr.tolist()]}).json()["predictions"][0]
        want = Predictor(net, meta, tta=tta).predict_arrays(arr[None])[0]
        other = Predictor(net, meta, tta=not tta).predict_arrays(arr[None])[0]
        got = [p["probabilities"][c] for c in predictor.classes]
        assert got == pytest.approx(want, abs=1e-6) and got != pytest.approx(other, abs=1e-6)


def test_routes_answer_alone_with_an_engine_of_their_own(predictor: Predictor) -> None:
    """A route is a function of the request and an engine: no app, no HTTP."""
    engine = Engine(as_backend(predictor), Limits(max_queue=0), Batching(enabled=False))
    request = Request({"type": "http", "method": "POST", "path": "/v1/predict", "query_string": b"", "headers": []})
    with pytest.raises(ApiError) as refused:  # the app's handlers make it JSON
        asyncio.run(routes.predict(request, engine))
    assert refused.value.status == 503 and refused.value.headers["Retry-After"] == "1"
    assert asyncio.run(routes.stats(engine))["refused"] == 1
    assert asyncio.run(routes.readyz(engine)).status_code == 503
    engine.warmup()
    assert asyncio.run(routes.readyz(engine)).status_code == 200
    assert asyncio.run(routes.model_info(engine))["limits"]["max_queue"] == 0


# ---- predictions -----------------------------------------------------------------------------


def test_predict_one_multipart_file(client: TestClient, predictor: Predictor) -> None:
    data = png()
    r = client.post("/v1/predict", files={"file": ("blob.png", data, "image/png")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "mlp" and body["count"] == 1
    p = body["predictions"][0]
    assert p["name"] == "blob.png"
    check_prediction(p, predictor.classes)
    # the image shown is exactly what the shared preprocessing gives, and the numbers match
    seen = preprocess(open_image(data))
    assert np.array_equal(decode_data_url(p["input"]), seen)
    want = predictor.predict_arrays(seen[None])[0]
    assert [p["probabilities"][c] for c in predictor.classes] == pytest.approx(want, abs=1e-5)
    assert set(body["latency_ms"]) == {"decode", "model", "total"}
    assert body["pass_images"] == 1
    assert body["latency_ms"]["model"] > 0
    assert "model;dur=" in r.headers["server-timing"]


def test_a_batch_is_one_forward_pass(client: TestClient, spy: Spy) -> None:
    files = [("file", (f"{i}.png", png(30 + i, 40, seed=i), "image/png")) for i in range(3)]
    files.append(("other_field", ("x.jpg", png(fmt="JPEG"), "image/jpeg")))
    r = client.post("/v1/predict", files=files)
    assert r.status_code == 200, r.text
    assert [p["name"] for p in r.json()["predictions"]] == ["0.png", "1.png", "2.png", "x.jpg"]
    assert spy.calls == [(4, 28, 28)]


def test_json_base64_arrays_and_raw_body_agree(client: TestClient, predictor: Predictor) -> None:
    data = png(seed=3)
    seen = preprocess(open_image(data))
    via_form = client.post("/v1/predict", files={"f": ("a.png", data, "image/png")}).json()
    via_b64 = client.post("/v1/predict", json={"images": [b64(data), "data:image/png;base64," + b64(data)]}).json()
    via_raw = client.post("/v1/predict", content=data, headers={"Content-Type": "image/png"}).json()
    via_array = client.post("/v1/predict", json={"arrays": [seen.tolist()]}).json()
    via_bare = client.post("/v1/predict", json={"arrays": seen.tolist()}).json()  # one bare 28x28
    results = [via_form, via_b64, via_raw, via_array, via_bare]
    assert [r["count"] for r in results] == [1, 2, 1, 1, 1]
    ref = via_form["predictions"][0]["probabilities"]
    for r in results:
        for p in r["predictions"]:
            check_prediction(p, predictor.classes)
            assert p["probabilities"] == pytest.approx(ref, abs=1e-5)


def test_arrays_are_used_as_is(client: TestClient, predictor: Predictor) -> None:
    """A raw 28x28 array is what the model sees: no re-cropping, floats rounded."""
    arr = np.zeros((28, 28), np.uint8)
    arr[2:6, 3:9] = 200  # off-centre: preprocessing would move it, arrays must not
    mixed = arr.astype(float).tolist()
    mixed[2][3] = 199.6  # rounds to 200
    r = client.post("/v1/predict", json={"arrays": [arr.tolist(), mixed]})
    assert r.status_code == 200, r.text
    want = predictor.predict_arrays(arr[None])[0]
    for p in r.json()["predictions"]:
        assert np.array_equal(decode_data_url(p["input"]), arr)
        assert [p["probabilities"][c] for c in predictor.classes] == pytest.approx(want, abs=1e-5)


def test_a_prediction_has_the_one_shared_shape(client: TestClient, predictor: Predictor) -> None:
    """The API returns Prediction.to_dict (as the CLI does) plus the name and the image seen,
    and the OpenAPI spec describes exactly those keys."""
    data = png(seed=5)
    seen = preprocess(open_image(data))
    p = client.post("/v1/predict", files={"file": ("a.png", data, "image/png")}).json()["predictions"][0]
    want = predictor.prediction(predictor.predict_arrays(seen[None])[0]).to_dict(3)
    assert p == {"name": "a.png", **want, "input": p["input"]}
    assert set(p) == set(PredictionOut.model_fields)
    spec = client.get("/openapi.json").json()
    assert set(spec["components"]["schemas"]["PredictionOut"]["properties"]) == set(p)


# ---- every bad input: a 4xx JSON error that names the problem, never a 500 -------------------

BAD_REQUESTS = {
    "malformed json": (dict(content=b'{"images": [', headers={"Content-Type": "application/json"}), 400, "Malformed JSON"),
    "invalid utf-8 json": (dict(content=b"\xff\xfe{", headers={"Content-Type": "application/json"}), 400, "Malformed JSON"),
    "deeply nested json": (dict(content=b"[" * 100_000, headers={"Content-Type": "application/json"}), 400, "Malformed JSON"),
    "json list": (dict(json=[1, 2]), 422, '"images"'),
    "json without keys": (dict(json={"picture": "x"}), 422, '"images"'),
    "images not a list": (dict(json={"images": "abc"}), 422, "must be a list"),
    "image not a string": (dict(json={"images": [123]}), 422, "base64 string"),
    "bad base64": (dict(json={"images": ["not base64!!"]}), 422, "not valid base64"),
    "non-ascii base64": (dict(json={"images": ["\u00ff\u00ff\u00ff\u00ff"]}), 422, "not valid base64"),
    "non-ascii data url": (dict(json={"images": ["data:image/png;base64,caf\u00e9"]}), 422, "not valid base64"),
    "base64 of text": (dict(json={"images": [b64(b"hello world")]}), 422, "not an image"),
    "empty image list": (dict(json={"images": []}), 422, "No images"),
    "array wrong shape": (dict(json={"arrays": [[[0] * 28] * 27]}), 422, "shape (27, 28)"),
    "array flat": (dict(json={"arrays": [[0] * 784]}), 422, "shape (784,)"),
    "array ragged": (dict(json={"arrays": [[[0] * 28] * 27 + [[0] * 5]]}), 422, "28x28"),
    "array of strings": (dict(json={"arrays": [[["a"] * 28] * 28]}), 422, "28x28"),
    "array out of range": (dict(json={"arrays": [[[300] * 28] * 28]}), 422, "0 to 255"),
    "array negative": (dict(json={"arrays": [[[-1] * 28] * 28]}), 422, "0 to 255"),
    "array NaN": (dict(content=("[" + ",".join(["[" + ",".join(["NaN"] * 28) + "]"] * 28) + "]").join(['{"arrays": [', "]}"]).encode(),
                       headers={"Content-Type": "application/json"}), 422, "finite"),
    "arrays not a list": (dict(json={"arrays": 5}), 422, "must be a list"),
    "batch too large (json)": (dict(json={"arrays": [[[0] * 28] * 28] * 5}), 413, "at most 4"),
    "batch too large (files)": (dict(files=[("file", (f"{i}.png", png(), "image/png")) for i in range(5)]), 413, "at most 4"),
    "text file upload": (dict(files={"file": ("notes.txt", b"just some text", "text/plain")}), 422, "not an image"),
    "empty file upload": (dict(files={"file": ("empty.png", b"", "image/png")}), 422, "empty"),
    "truncated png": (dict(files={"file": ("cut.png", png(200, 200, seed=1)[:150], "image/png")}), 422, "corrupt or truncated"),
    "truncated jpeg": (dict(files={"file": ("cut.jpg", png(200, 200, seed=1, fmt="JPEG")[:400], "image/jpeg")}), 422, "corrupt or truncated"),
    "form without files": (dict(files={"note": (None, "hi")}), 422, "No images"),
    "urlencoded form": (dict(data={"note": "hi"}), 415, "Unsupported Content-Type"),
    "too many pixels": (dict(files={"file": ("big.png", png(2000, 1000), "image/png")}), 422, "more than the 1,000,000"),
    "bomb header": (dict(files={"file": ("bomb.png", png_header_only(20_000, 20_000), "image/png")}), 422, "pixels"),
    "raw body not an image": (dict(content=b"GIF89a-not-really", headers={"Content-Type": "image/gif"}), 422, "not an image"),
    "unsupported content type": (dict(content=b"hello", headers={"Content-Type": "text/plain"}), 415, "Unsupported Content-Type"),
    "no content type": (dict(content=b"hello"), 415, "Unsupported Content-Type"),
    "body too large (content-length)": (dict(content=b"\0" * 300_000, headers={"Content-Type": "image/png"}), 413, "at most 200,000 bytes"),
    "body too large (chunked)": (dict(content=[b"\0" * 50_000] * 6, headers={"Content-Type": "image/png"}), 413, "at most 200,000 bytes"),
    "json too large": (dict(json={"images": ["A" * 300_000]}), 413, "at most"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_REQUESTS), ids=list(BAD_REQUESTS))
def test_bad_predict_requests_get_a_json_4xx(client: TestClient, spy: Spy, case: str) -> None:
    kwargs, status, words = BAD_REQUESTS[case]
    r = client.post("/v1/predict", **kwargs)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    error = r.json()["error"]
    assert words in error and error.endswith("."), error
    assert spy.calls == []  # nothing bad reached the model


def test_chunked_body_is_counted_while_read(client: TestClient) -> None:
    """No Content-Length: the limit is enforced on the bytes as they arrive."""

    def body():
        yield from [b"\0" * 40_000] * 4  # 160 KB: under the limit, so it must get through

    r = client.post("/v1/predict", content=body(), headers={"Content-Type": "image/png"})
    assert r.status_code == 422 and "not an image" in r.json()["error"]


@pytest.mark.parametrize(
    ("chunks", "status", "words"),
    [
        ([b"\0" * 40_000] * 4, 422, "not an image"),  # 160 KB in all: under the 200 KB limit
        ([b"\0" * 50_000] * 6, 413, "at most 200,000 bytes"),  # each chunk under, the total over
    ],
)
def test_body_limit_counts_all_chunks_together(app: FastAPI, chunks: list[bytes], status: int, words: str) -> None:
    got, body = asgi_post(app, chunks, "image/png")
    assert got == status and words in body["error"], body


def test_healthz_answers_while_a_json_body_is_parsed(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """Parsing and base64-decoding a JSON body of up to max_upload_bytes happens off the event
    loop: the server answers while it is held open."""
    parsing, release = threading.Event(), threading.Event()
    real_loads = json.loads

    def held_loads(text: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(text, bytes) and b"held-open" in text:  # only the request below
            parsing.set()
            assert release.wait(10), "test never released the parse"
        return real_loads(text, *args, **kwargs)

    monkeypatch.setattr(json, "loads", held_loads)
    body = json.dumps({"images": [b64(png())], "note": "held-open"}).encode()
    result: dict[str, Any] = {}
    worker = threading.Thread(target=lambda: result.update(
        r=client.post("/v1/predict", content=body, headers={"Content-Type": "application/json"})))  # fmt: skip
    worker.start()
    try:
        assert parsing.wait(10), "the server never parsed the JSON body"
        answers: list[int] = []
        probe = threading.Thread(target=lambda: answers.append(client.get("/healthz").status_code), daemon=True)
        probe.start()
        probe.join(5)
        assert answers == [200] and "r" not in result  # answered while the parse was held
    finally:
        release.set()
        worker.join(10)
    assert result["r"].status_code == 200, result["r"].text


def test_default_limits_reject_a_decompression_bomb(predictor: Predictor) -> None:
    with TestClient(create_app(predictor, warmup=False)) as c:
        for w, h in [(8_000, 8_000), (50_000, 50_000)]:  # under and over PIL's own bomb limit
            r = c.post("/v1/predict", files={"file": ("bomb.png", png_header_only(w, h), "image/png")})
            assert r.status_code == 422 and "pixels" in r.json()["error"], r.text


@pytest.mark.parametrize(
    ("method", "path", "status", "words"),
    [
        ("GET", "/v1/nothing", 404, "Nothing at GET /v1/nothing"),
        ("GET", "/v1/predict", 405, "GET is not allowed on /v1/predict"),
        ("GET", "/v1/samples?n=0", 422, "n: Input should be greater than or equal to 1"),
        ("GET", "/v1/samples?n=1000", 422, "less than or equal to 48"),
        ("GET", "/v1/samples?seed=x", 422, "seed"),
        ("GET", "/static/nothing.js", 404, "Nothing at GET /static/nothing.js"),
    ],
)
def test_other_errors_are_json(client: TestClient, method: str, path: str, status: int, words: str) -> None:
    r = client.request(method, path)
    assert r.status_code == status
    assert words in r.json()["error"]


def test_a_bug_is_a_logged_json_500(app: FastAPI, spy: Spy, caplog: pytest.LogCaptureFixture) -> None:
    spy.fail = True
    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.post("/v1/predict", files={"file": ("a.png", png(), "image/png")})
    assert r.status_code == 500
    assert "bug in fmnist" in r.json()["error"]
    assert app.state.engine.internal_errors == 1
    assert "simulated bug" in caplog.text  # the traceback is in the server log


# ---- concurrency -----------------------------------------------------------------------------


def test_healthz_answers_while_a_prediction_runs(client: TestClient, spy: Spy) -> None:
    spy.release = threading.Event()
    result: dict[str, Any] = {}
    worker = threading.Thread(
        target=lambda: result.update(r=client.post("/v1/predict", files={"f": ("a.png", png(), "image/png")}))
    )
    worker.start()
    try:
        assert spy.started.wait(10), "the prediction never started"
        answers: list[int] = []
        probe = threading.Thread(target=lambda: answers.extend(
            client.get(p).status_code for p in ("/healthz", "/readyz", "/v1/model")))  # fmt: skip
        probe.start()
        probe.join(5)
        # the model is still busy (blocked) and yet the event loop answered
        assert answers == [200, 200, 200] and "r" not in result
    finally:
        spy.release.set()
        worker.join(10)
    assert result["r"].status_code == 200


# ---- test images for the page's strip ---------------------------------------------------------


def test_samples_degrade_to_an_empty_strip_without_data(make_checkpoint) -> None:
    pred = Predictor.from_checkpoint(make_checkpoint("mlp"))
    pred.meta["dataset"] = "no-such-dataset"
    with TestClient(create_app(pred, warmup=False)) as c:
        r = c.get("/v1/samples?n=5")
    assert r.status_code == 200
    assert r.json()["samples"] == [] and "No test images" in r.json()["error"]


def fake_test_split(n: int = 20) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), np.arange(n, dtype=np.int64) % 10


def test_samples_never_start_a_download(
    predictor: Predictor, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    # no copy anywhere: no --data-dir, an empty cache, no Debian package
    monkeypatch.delenv("FMNIST_DATA_DIR", raising=False)
    monkeypatch.setenv("FMNIST_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(fmnist.datasets.finding, "DEBIAN_ROOT", tmp_path / "debian")
    for proxy in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):  # a download that
        monkeypatch.setenv(proxy, "http://127.0.0.1:9")  # starts anyway fails at once, offline
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    with TestClient(create_app(predictor, warmup=False)) as c:
        body = c.get("/v1/samples?n=3").json()
    assert body["samples"] == [] and "No test images" in body["error"]
    # what a user sees when a download starts: its line on stderr, and its failure in the error
    assert "downloading" not in capfd.readouterr().err, "GET /v1/samples started a download"
    assert "download (not allowed here)" in body["error"], body["error"]


def test_samples_appear_once_the_data_is_installed(predictor: Predictor, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure is not remembered: the next request looks again."""
    installed = False
    images, labels = fake_test_split()

    def load_arrays(name: str, split: str = "train", data_dir: Any = None, *, download: bool = True):
        assert (name, split, download) == ("fashion-mnist", "test", False)
        if not installed:
            raise DatasetError("No verified copy of Fashion-MNIST found.")
        return images, labels

    monkeypatch.setattr(fmnist.datasets, "load_arrays", load_arrays)
    with TestClient(create_app(predictor, warmup=False)) as c:
        before = c.get("/v1/samples?n=3").json()
        installed = True
        after = c.get("/v1/samples?n=3").json()
    assert before["samples"] == [] and "No verified copy" in before["error"]
    assert len(after["samples"]) == 3 and "error" not in after
    for s in after["samples"]:
        assert np.array_equal(np.array(s["pixels"], np.uint8), images[s["index"]])


def test_samples_load_outside_the_lock(predictor: Predictor, monkeypatch: pytest.MonkeyPatch) -> None:
    """A slow load does not queue other requests behind a lock: two loads run at once."""
    both_loading = threading.Barrier(2, timeout=5)
    images, labels = fake_test_split()

    def load_arrays(name: str, split: str = "train", data_dir: Any = None, *, download: bool = True):
        both_loading.wait()  # returns only once the other request is loading too
        return images, labels

    monkeypatch.setattr(fmnist.datasets, "load_arrays", load_arrays)
    engine = create_app(predictor, warmup=False).state.engine
    results: list[dict] = []
    threads = [threading.Thread(target=lambda: results.append(engine.samples(2, 0))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(results) == 2 and results[0] == results[1] and len(results[0]["samples"]) == 2


@pytest.mark.realdata
def test_samples_are_real_test_images(client: TestClient, predictor: Predictor) -> None:
    try:
        images, labels = fmnist.datasets.load_arrays("fashion-mnist", "test")
    except DatasetError as e:
        pytest.skip(f"Fashion-MNIST not available: {e}")
    body = client.get("/v1/samples?n=6&seed=1").json()
    assert len(body["samples"]) == 6 and body["dataset"] == "fashion-mnist"
    for s in body["samples"]:
        i = s["index"]
        assert np.array_equal(np.array(s["pixels"], np.uint8), images[i])
        assert np.array_equal(decode_data_url(s["image"]), images[i])
        assert s["label_index"] == labels[i] and s["label"] == predictor.classes[labels[i]]
    assert client.get("/v1/samples?n=6&seed=1").json() == body  # same seed, same images
    assert client.get("/v1/samples?n=6&seed=2").json() != body


# ---- the page, its files and the API docs ----------------------------------------------------


def test_page_and_static_files(client: TestClient) -> None:
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in r.headers["content-security-policy"]
    html = r.text
    for ref in re.findall(r'(?:src|href)="(/static/[^"]+)"', html):
        assert client.get(ref).status_code == 200, ref
    for element in ('id="pad"', 'id="seen"', 'id="probs"', 'id="strip"', 'id="file"'):
        assert element in html


def test_static_files_need_no_outside_network() -> None:
    for path in STATIC_DIR.iterdir():
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"(?:src|href|url|import|fetch)\s*[=(]\s*[\"']?(?:https?:)?//", text), path.name


def test_openapi_and_offline_docs(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    for path in ("/v1/predict", "/v1/model", "/v1/samples", "/healthz", "/readyz"):
        assert path in spec["paths"]
    body = spec["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json"} <= set(body)
    docs = client.get("/docs")
    assert docs.status_code == 200 and "/static/docs.js" in docs.text
    assert client.get("/static/docs.js").status_code == 200
    assert "cdn" not in docs.text.lower()


# ---- fmnist serve ----------------------------------------------------------------------------


def test_cli_serve_binds_loopback_with_a_warm_model(make_checkpoint, monkeypatch, capsys) -> None:
    import fmnist.serve.server

    seen: dict[str, Any] = {}
    monkeypatch.setattr(fmnist.serve.server, "serve", lambda config, **kw: seen.update(config=config, **kw) or 0)
    argv = ["serve", str(make_checkpoint("mlp")), "--port", "8123", "--max-images", "7",
            "--workers", "1", "--backend", "torch", "--graceful-timeout", "4", "--drain-delay", "2"]  # fmt: skip
    assert cli_main(argv) == 0
    config = seen["config"]
    assert config.host == "127.0.0.1" and config.port == 8123
    assert config.timeout_graceful_shutdown == 4 and seen["drain_s"] == 2
    assert "Page at http://127.0.0.1:8123/" in capsys.readouterr().err
    with TestClient(config.app) as c:
        assert c.get("/readyz").status_code == 200  # warmed up before binding
        assert c.get("/v1/model").json()["limits"]["max_batch"] == 7


def test_cli_serve_workers_use_the_app_factory(make_checkpoint, monkeypatch) -> None:
    import fmnist.cli.serve

    seen: dict[str, Any] = {}
    # not re-executed as the supervisor (that would replace this test process), and no workers
    monkeypatch.setattr(fmnist.cli.serve, "become_supervisor", lambda spec: seen.update(spec) or 0)
    monkeypatch.delenv(SETTINGS_ENV, raising=False)
    monkeypatch.setenv(MULTIPROC_ENV, "")  # so that it is restored after the test...
    monkeypatch.delenv(MULTIPROC_ENV)  # ...and unset meanwhile: the CLI makes its own folder
    ckpt = make_checkpoint("mlp")
    argv = ["serve", str(ckpt), "--workers", "2", "--max-upload-mb", "1", "--backend", "torch",
            "--batch-window-ms", "5", "--batch-size", "9", "--max-queue", "3"]  # fmt: skip
    assert cli_main(argv) == 0
    assert seen["workers"] == 2 and seen["common"]["port"] == 8000
    assert os.environ[MULTIPROC_ENV] == str(Path(seen["tmp"]) / "metrics")
    monkeypatch.delenv(MULTIPROC_ENV)  # this process is no worker: its own registry, no files
    # the workers load the pinned copy in the server's folder, not the path given
    shutil.rmtree(ckpt)
    with TestClient(app_from_env()) as c:  # what each worker process builds
        wait_ready(c)
        info = c.get("/v1/model").json()
        assert info["limits"]["max_upload_bytes"] == 2**20  # --max-upload-mb 1 is 1 MiB
        assert info["limits"]["max_queue"] == 3
        assert len(info["model_id"]) == 16
        stats = c.get("/v1/stats").json()
        assert (stats["window_ms"], stats["max_pass_images"]) == (5.0, 9)
    shutil.rmtree(seen["tmp"])  # what the supervisor does when it stops


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["serve", "{missing}"], "does not exist"),
        (["serve", "{garbage}"], "Cannot read"),
        (["serve", "{ckpt}", "--model", "cnn"], "holds a 'mlp' model"),
        (["serve", "{ckpt}", "--port", "70000"], "--port"),
        (["serve", "{ckpt}", "--workers", "0"], "--workers"),
        (["serve", "{ckpt}", "--workers", "many"], "--workers"),
        (["serve", "{ckpt}", "--max-queue", "0"], "--max-queue"),
        (["serve", "{ckpt}", "--batch-window-ms", "-1"], "--batch-window-ms"),
        (["serve", "{ckpt}", "--backend", "torch", "--request-timeout", "0"], "--request-timeout"),
        (["serve", "{ckpt}", "--max-uploads", "0"], "--max-uploads"),
        (["serve", "{ckpt}", "--max-request-megapixels", "0"], "--max-request-megapixels"),
        (["serve", "{ckpt}", "--drain-delay", "-1"], "--drain-delay"),
        (["serve", "{ckpt}", "--watchdog-timeout", "-1"], "--watchdog-timeout must be 0 (off) or more"),
        (["serve", "{ckpt}", "--graceful-timeout", "0"], "--graceful-timeout"),
        # (on a machine with CUDA this one is served; the next is refused everywhere)
        *([] if torch.cuda.is_available() else [(["serve", "{ckpt}", "--device", "cuda"], "no CUDA GPU")]),
        (["serve", "{ckpt}", "--device", "cuda", "--backend", "onnxruntime"],
         "no CUDA GPU" if not torch.cuda.is_available() else "onnxruntime runs the model on the CPU"),
    ],
)
def test_cli_serve_user_errors_are_one_line(make_checkpoint, tmp_path: Path, capsys, args, words) -> None:
    garbage = tmp_path / "model.safetensors"
    garbage.write_bytes(b"not a checkpoint")
    paths = {"missing": tmp_path / "nope", "garbage": garbage, "ckpt": make_checkpoint("mlp")}
    argv = [a.format(**paths) for a in args]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fmnist: error: ") and words in err and "\n" not in err, err



def test_serve_without_the_serve_extra_is_one_sentence(monkeypatch, capsys, make_checkpoint):
    """`make run` installs only what training needs; serving then says what to install."""
    import sys

    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if not installed
    assert cli_main(["serve", str(make_checkpoint())]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fmnist: error: fmnist serve needs the 'uvicorn' package: pip install")
    assert err.count("\n") == 1


def test_serve_options_old_names_still_work_but_are_not_listed(capsys) -> None:
    from fmnist.cli import get_parser

    parser = get_parser()
    new = parser.parse_args(["serve", "run", "--max-images", "5", "--max-pass-images", "9"])
    old = parser.parse_args(["serve", "run", "--max-batch", "5", "--batch-size", "9"])
    assert (new.max_batch, new.batch_size) == (old.max_batch, old.batch_size) == (5, 9)
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--help"])
    shown = capsys.readouterr().out
    assert "--max-images" in shown and "--max-pass-images" in shown
    assert "--max-batch" not in shown and "--batch-size" not in shown
