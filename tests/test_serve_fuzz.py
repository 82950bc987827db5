"""Decoder fuzzing against the real server: structured random image files (every format PIL
might be asked to read, with mutated headers, chunks, sizes, palettes, truncations and
compression bombs) are posted to `fmnist serve`; every answer must be a 200 or a 4xx within
the deadline, never a 5xx or a hang, and /healthz must answer throughout.

Seeded: a failure names its case number; rerun with the same SEED and CASES to get it again."""

from __future__ import annotations

import io
import random
import struct
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image
from test_serve_deploy import ServeProcess

SEED = 20261207
CASES = 300
PREDICT_TIMEOUT_S = 5.0
FORMATS = ["PNG", "JPEG", "GIF", "WEBP", "TIFF", "BMP"]
MODES = ["L", "RGB", "RGBA", "P", "1", "LA", "I;16"]


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def base_image(rng: random.Random) -> bytes:
    """A valid small image file of a random format, mode and size."""
    fmt = rng.choice(FORMATS)
    w, h = rng.randint(1, 64), rng.randint(1, 64)
    pixels = np.random.default_rng(rng.randrange(2**32)).integers(0, 256, (h, w, 3), dtype=np.uint8)
    img = Image.fromarray(pixels)
    mode = rng.choice(MODES)
    try:
        img = img.convert(mode) if mode != "I;16" else img.convert("L")
        buf = io.BytesIO()
        options = {"progressive": True} if fmt == "JPEG" and rng.random() < 0.3 else {}
        if fmt == "JPEG" and img.mode not in ("L", "RGB"):
            img = img.convert("RGB")
        img.save(buf, format=fmt, **options)
    except (OSError, ValueError, KeyError):  # a mode the format cannot store
        buf = io.BytesIO()
        img.convert("RGB").save(buf, format=fmt)
    return buf.getvalue()


def bomb(rng: random.Random) -> bytes:
    """Small files that declare or inflate to far more than they hold."""
    kind = rng.randrange(5)
    if kind == 0:  # a PNG declaring a huge size
        w, h = rng.choice([(50000, 50000), (65535, 1), (1, 2**31 - 1), (0, 0), (7000, 7000)])
        ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
        idat = zlib.compress(b"\0" * rng.choice([64, 1 << 20]), 9)
        return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    if kind == 1:  # text and ICC chunks that inflate to MBs
        base = base_image_of("PNG", rng)
        payload = zlib.compress(b"x" * (1 << 20), 9)
        extra = rng.choice([b"zTXt", b"iTXt", b"iCCP"])
        body = {b"zTXt": b"k\0\0", b"iTXt": b"k\0\1\0\0\0", b"iCCP": b"icc\0\0"}[extra] + payload
        return base[:33] + chunk(extra, body) * rng.randint(1, 40) + base[33:]
    if kind == 2:  # a GIF whose first frame is larger than its screen
        gif = base_image_of("GIF", rng)
        at = gif.find(b"\x2c")  # image descriptor
        if at > 0:
            gif = gif[: at + 5] + struct.pack("<HH", 65535, 65535) + gif[at + 9 :]
        return gif
    if kind == 3:  # a blank PNG of many pixels, honestly encoded (a few KB)
        buf = io.BytesIO()
        Image.new("1", (rng.randint(4000, 9000), rng.randint(4000, 9000))).save(buf, format="PNG")
        return buf.getvalue()
    # a JPEG with a huge declared frame
    jpeg = base_image_of("JPEG", rng)
    sof = jpeg.find(b"\xff\xc0")
    if sof < 0:
        sof = jpeg.find(b"\xff\xc2")
    if sof > 0:
        jpeg = jpeg[: sof + 5] + struct.pack(">HH", 65000, 65000) + jpeg[sof + 9 :]
    return jpeg


def base_image_of(fmt: str, rng: random.Random) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (rng.randint(1, 40), rng.randint(1, 40)), (rng.randrange(256), 0, 0)).save(buf, format=fmt)
    return buf.getvalue()


def mutate(data: bytes, rng: random.Random) -> bytes:
    data = bytearray(data)
    how = rng.randrange(6)
    if how == 0 and data:  # flip bytes anywhere
        for _ in range(rng.randint(1, 10)):
            data[rng.randrange(len(data))] = rng.randrange(256)
    elif how == 1 and data:  # flip bytes in the header, where sizes and chunk lengths live
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(min(len(data), 40))] = rng.randrange(256)
    elif how == 2:  # truncate
        data = data[: rng.randrange(len(data) + 1)]
    elif how == 3 and len(data) > 8:  # repeat a slice (duplicated chunks and segments)
        a = rng.randrange(len(data))
        b = min(len(data), a + rng.randint(1, 200))
        data[a:a] = data[a:b] * rng.randint(2, 20)
    elif how == 4:  # random garbage after a real signature
        data = data[:8] + bytearray(rng.randbytes(rng.randint(0, 300)))
    # how == 5: unchanged (a valid file)
    return bytes(data)


def cases() -> list[bytes]:
    rng = random.Random(SEED)
    return [bomb(rng) if rng.random() < 0.15 else mutate(base_image(rng), rng) for _ in range(CASES)]


@pytest.mark.slow
def test_no_upload_gets_a_5xx_or_a_hang_and_healthz_answers_throughout(make_checkpoint) -> None:
    server = ServeProcess(make_checkpoint("mlp"), "--workers", "1",
                          "--predict-timeout", str(PREDICT_TIMEOUT_S))  # fmt: skip
    try:
        server.wait_ready()
        stop = threading.Event()
        health: list[int | str] = []

        def probe() -> None:
            with httpx.Client(timeout=PREDICT_TIMEOUT_S) as c:
                while not stop.wait(0.05):
                    try:
                        health.append(c.get(server.url + "/healthz").status_code)
                    except httpx.TransportError as e:  # a hang counts as a timeout here
                        health.append(type(e).__name__)

        def post(case: tuple[int, bytes]) -> tuple[int, int | str]:
            n, body = case
            try:
                r = httpx.post(server.url + "/v1/predict", content=body, timeout=PREDICT_TIMEOUT_S + 5,
                               headers={"Content-Type": "application/octet-stream"})  # fmt: skip
                return n, r.status_code
            except httpx.TransportError as e:
                return n, type(e).__name__

        prober = threading.Thread(target=probe, daemon=True)
        prober.start()
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(post, enumerate(cases())))
        stop.set()
        prober.join(30)
    finally:
        server.stop()
    bad = [(n, s) for n, s in answers if not (s == 200 or (isinstance(s, int) and 400 <= s < 500))]
    assert not bad, f"cases (seed {SEED}) answered with a 5xx or not at all: {bad[:20]}\n{server.log[-3000:]}"
    assert health and all(s == 200 for s in health), f"/healthz failed meanwhile: {set(health)}"
    statuses = {s for _, s in answers}
    assert 200 in statuses and 422 in statuses  # the cases reach both the model and the checks
