"""Uploads made to hurt: the work a request can cause is bounded before it is done, and none of
it runs on the event loop (fmnist.serve.engine, fmnist.images)."""

from __future__ import annotations

import io
import socket
import struct
import threading
import time
import zlib
from typing import Any

import httpx
import numpy as np
import PIL.Image
import pytest
from PIL import Image
from test_serve import Spy, png
from test_serve_deploy import live, stats, until  # noqa: F401  (live is a fixture)

from fmnist.images import declared_size, open_image, png_without_metadata
from fmnist.predict import Predictor
from fmnist.serve import create_app
from fmnist.serve.engine import INLINE_PIXELS


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def text_chunk_png(chunks: int = 64, size: int = 1 << 20) -> bytes:
    """A 28x28 PNG carrying `chunks` zTXt chunks of `size` bytes of text each (a few KB of
    compressed bytes each): PIL inflates every one of them when it opens the file."""
    base = png(28, 28)
    ztxt = chunk(b"zTXt", b"comment\0\0" + zlib.compress(b"a" * (size - 1), 9))
    return base[:33] + ztxt * chunks + base[33:]  # after the IHDR chunk


@pytest.fixture
def predictor(make_checkpoint) -> Predictor:
    return Predictor.from_checkpoint(make_checkpoint("mlp"))


# ---- the image side -----------------------------------------------------------------------


def test_png_text_chunks_are_dropped_unread_and_the_picture_kept() -> None:
    bomb = text_chunk_png(chunks=4)
    stripped = png_without_metadata(bomb)
    assert b"zTXt" not in stripped and len(stripped) < len(bomb) // 4
    opened = open_image(bomb)
    assert not any(k == "comment" for k in opened.info)  # never inflated
    assert np.array_equal(np.asarray(opened), np.asarray(Image.open(io.BytesIO(png(28, 28)))))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "BMP", "WEBP"])
def test_declared_size_reads_what_pil_reads(fmt: str) -> None:
    data = png(37, 23, fmt=fmt)
    assert declared_size(data) == Image.open(io.BytesIO(data)).size == (37, 23)
    assert declared_size(data[:5]) is None  # too short to say
    assert declared_size(b"II*\0" + bytes(64)) is None  # TIFF: not a format we read


def test_a_jpeg_of_very_many_scans_is_refused_before_decoding() -> None:
    data = png(64, 64, fmt="JPEG")
    sos = data.index(b"\xff\xda")
    many = data[:sos] + data[sos:-2] * 2 + b"\xff\xda" * 200 + data[-2:]
    with pytest.raises(Exception, match="more than 100 scans"):
        open_image(many)


# ---- the server ---------------------------------------------------------------------------


def test_no_image_library_runs_on_the_event_loop(predictor: Predictor, live, monkeypatch) -> None:  # noqa: F811
    server = live(create_app(predictor))
    opened_on: list[int] = []
    real_open = PIL.Image.open

    def recording_open(*args: Any, **kwargs: Any) -> Image.Image:
        opened_on.append(threading.get_ident())
        return real_open(*args, **kwargs)

    monkeypatch.setattr(PIL.Image, "open", recording_open)
    bodies = [text_chunk_png(), png(), png(fmt="JPEG"), png(1200, 1000), b"\x89PNG not really"]
    statuses = [httpx.post(server.url + "/v1/predict", content=b, headers={"Content-Type": "image/png"},
                           timeout=30).status_code for b in bodies]  # fmt: skip
    assert statuses == [200, 200, 200, 200, 422]
    assert len(opened_on) >= 4  # every image was opened, in some thread...
    assert server.thread.ident not in opened_on  # ...and never on the server's event loop


def test_a_request_over_the_pixel_budget_is_refused_before_any_decoding(predictor: Predictor, monkeypatch) -> None:
    from fastapi.testclient import TestClient

    app = create_app(predictor, max_pixels=5_000_000, max_request_pixels=10_000_000)
    opened: list[int] = []
    real_open = PIL.Image.open
    monkeypatch.setattr(PIL.Image, "open", lambda *a, **k: opened.append(1) or real_open(*a, **k))
    buf = io.BytesIO()
    Image.new("L", (2000, 2000)).save(buf, format="PNG")
    huge = buf.getvalue()  # 4 M pixels each, 4 KB on the wire
    with TestClient(app) as client:
        r = client.post("/v1/predict", files=[("file", (f"{i}.png", huge, "image/png")) for i in range(3)])
        assert r.status_code == 413, r.text
        assert "at most 10,000,000 per request" in r.json()["error"]
        assert opened == []
        # two fit: they are decoded (and, blank, classified)
        r = client.post("/v1/predict", files=[("file", (f"{i}.png", huge, "image/png")) for i in range(2)])
        assert r.status_code == 200, r.text


class SlowDecode(Spy):
    """A predictor whose preprocessing (once per decoded image) waits for the test."""

    def __init__(self, inner: Predictor) -> None:
        super().__init__(inner)
        self.preprocessed = 0
        self.decoding = threading.Event()
        self.release = threading.Event()

    def preprocess(self, image: Image.Image) -> np.ndarray:
        self.preprocessed += 1
        self.decoding.set()
        assert self.release.wait(30), "test never released the decode"
        return self.inner.preprocess(image)

    def predict_arrays(self, images: np.ndarray) -> np.ndarray:
        return self.inner.predict_arrays(images)


LARGE = png(1200, 1000)  # over INLINE_PIXELS: decoded in the pool, before the batcher
assert INLINE_PIXELS < 1200 * 1000


def test_a_decode_past_the_deadline_frees_its_slot_and_stops(predictor: Predictor, live) -> None:  # noqa: F811
    spy = SlowDecode(predictor)
    server = live(create_app(spy, predict_timeout_s=0.5))  # type: ignore[arg-type]
    files = [("file", (f"{i}.png", LARGE, "image/png")) for i in range(3)]
    r = httpx.post(server.url + "/v1/predict", files=files, timeout=30)
    assert r.status_code == 503 and "within 0.5 s" in r.json()["error"]
    assert stats(server.url)["in_flight"] == 0  # the slot is free while the decode still runs
    spy.release.set()
    time.sleep(0.3)
    assert spy.preprocessed == 1  # the other two images were never decoded


def test_a_decode_whose_client_hung_up_frees_its_slot_and_stops(predictor: Predictor, live) -> None:  # noqa: F811
    spy = SlowDecode(predictor)
    server = live(create_app(spy))  # type: ignore[arg-type]
    boundary = "xyz"
    body = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{i}.png"\r\n'
        f"Content-Type: image/png\r\n\r\n".encode() + LARGE + b"\r\n" for i in range(3)
    ) + f"--{boundary}--\r\n".encode()
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    sock.sendall(f"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
                 f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n".encode() + body)  # fmt: skip
    assert spy.decoding.wait(30)
    assert stats(server.url)["in_flight"] == 1
    sock.close()  # the client gives up while its first image is being decoded
    until(lambda: stats(server.url)["in_flight"] == 0, "the slot freed", 10)
    assert stats(server.url)["rejected"].get("client_gone") == 1
    spy.release.set()
    time.sleep(0.3)
    assert spy.preprocessed == 1


@pytest.mark.parametrize("mode", ["1", "P", "PA", "I;16", "RGBA"])
def test_a_large_image_of_any_mode_is_prepared_like_its_grayscale(mode: str) -> None:
    # found by the decoder fuzzer: a large 1-bit PNG made reduce() raise (a 500)
    image = Image.new("L", (3000, 2100))
    image.paste(255, (1000, 500, 2000, 1500))
    from fmnist.images import preprocess

    assert np.array_equal(preprocess(image.convert(mode)), preprocess(image))
