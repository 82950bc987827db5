"""The server's limits, and the one enforced before a route runs: the request body's size and
the time it may take to arrive (checked on Content-Length and again while the body streams in).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fmnist.images import MAX_PIXELS
from fmnist.serve.errors import ApiError, error_response


@dataclass(frozen=True)
class Limits:
    """What one request may hold and how many may be in flight; /v1/model reports them."""

    max_upload_bytes: int = 10 * 1024 * 1024
    max_batch: int = 64  # images in one request
    max_pixels: int = MAX_PIXELS  # in one decoded image (decompression bombs)
    # in all of one request's images: 64 blank 6324x6324 PNGs are 2.6 MB on the wire and 2.6 G
    # pixels; a request is refused (413) as soon as its headers say it holds more than this
    max_request_pixels: int = 64_000_000
    # past this many predictions admitted (body read, waiting for or in a forward pass) a
    # request gets 503 at once: that bounds the queue, and so the latency of what is admitted
    max_queue: int = 64
    request_timeout_s: float = 30.0  # for the whole body to arrive
    # bodies still arriving are not work yet: they have a bound of their own, larger, so that
    # a few hundred slow uploads cannot take the queue's places (memory: at most max_uploads
    # bodies of max_upload_bytes), and request_timeout_s ends each of them
    max_uploads: int = 256
    # how long an admitted prediction may take to be answered: past it, 503 (a stuck or dead
    # batcher must not hold its callers for ever)
    predict_timeout_s: float = 30.0


def mb(n: int) -> str:
    return f"{n:,} bytes ({n / 2**20:.1f} MiB)" if n >= 2**20 else f"{n:,} bytes"


class BodyLimit:
    """ASGI middleware: 413 when a request body is larger than `max_bytes`, 408 when it has not
    all arrived `timeout_s` after the request began.

    A declared Content-Length is refused before anything is read; a chunked body (or a lying
    header) is counted as it arrives and refused as soon as it passes the limit. The timeout is
    what stops a slow client (slowloris-style upload) from holding a request slot for ever.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float = 30.0) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    def _too_large(self, size: str) -> str:
        return (
            f"Request body is {size}; this server accepts at most {mb(self.max_bytes)} per "
            "request: send fewer or smaller images (or start it with a larger --max-upload-mb)."
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                await error_response(400, "Content-Length header is not a number.")(scope, receive, send)
                return
            if size > self.max_bytes:
                await error_response(413, self._too_large(mb(size)))(scope, receive, send)
                return
        received = 0
        deadline = time.monotonic() + self.timeout_s
        complete = False

        async def limited() -> Message:
            nonlocal received, complete
            if complete:  # after the body only a disconnect can come: no deadline for that
                return await receive()
            try:  # asyncio.timeout, not wait_for: no extra task per body chunk
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    message = await receive()
            except TimeoutError:
                raise ApiError(
                    408, f"The request body did not arrive within {self.timeout_s:g} s: send it "
                    "at once (or start the server with a larger --request-timeout).",
                ) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise ApiError(413, self._too_large(f"over {mb(self.max_bytes)}"))
                complete = not message.get("more_body", False)
            else:
                complete = True
            return message

        await self.app(scope, limited, send)
