"""The HTTP API and the web page, as one FastAPI app: `create_app(predictor)`.

    POST /v1/predict   images as multipart files, JSON {"images": [base64...]} or
                       {"arrays": [28x28 numbers 0-255...]}, or one raw image body
                       -> top class, all probabilities, the 28x28 image the model saw (PNG data
                       URL) and the latency; `?fields=label,top` returns only those fields
    GET  /v1/model     model name, classes, parameter count, metrics, dataset and its hash
    GET  /v1/stats     forward passes and their sizes, requests in flight and refused
    GET  /v1/samples   real test images with their true labels (empty list without the data)
    GET  /healthz      the process answers;  GET /readyz  the model is loaded and warmed up
    GET  /openapi.json the spec;  GET /docs  an offline reference page built from it
    GET  /             the web page (static files under /static, no CDN, no build step)

Every error is JSON {"error": "one sentence"}: 400 malformed JSON, 408 body not sent in time,
413 too large (bytes or batch), 415 unknown content type, 422 not an image / corrupt / too many
pixels / bad array / unknown field, 503 (with Retry-After) when `max_queue` predictions are
already in flight. Only a bug gives a 500. Decoding and inference run in other threads, never
on the event loop, so health checks answer while predictions run.

Requests share forward passes (`batching.Batcher`): those that arrive within `batch_window_ms`
of each other go through the model together. The batcher's thread also decodes each request
(while the window is open) and formats its answer; the event loop only parses HTTP.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fmnist.errors import FmnistError, ImageError
from fmnist.images import MAX_PIXELS, SIZE, open_image
from fmnist.predict import Predictor
from fmnist.serve.batching import Batched, Batcher, BatcherClosed

log = logging.getLogger("fmnist.serve")

STATIC_DIR = Path(__file__).parent / "static"
DEFAULT_MAX_UPLOAD_BYTES = 10 * 1024 * 1024
DEFAULT_MAX_BATCH = 64
DEFAULT_MAX_QUEUE = 64
DEFAULT_REQUEST_TIMEOUT_S = 30.0
MAX_SAMPLES = 48
# The fields of a prediction a client can ask for with ?fields= (the page takes them all).
FIELDS = ("name", "label", "index", "probability", "top", "probabilities", "input")
# The page loads only its own files; images are data: URLs (predictions) or blob: (uploads).
_CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)


class ApiError(Exception):
    """A client error with its HTTP status; becomes {"error": message}."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _mb(n: int) -> str:
    return f"{n:,} bytes ({n / 2**20:.1f} MiB)" if n >= 2**20 else f"{n:,} bytes"


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


# ---- request size limit: checked on Content-Length and again while the body streams in -------


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
            f"Request body is {size}; this server accepts at most {_mb(self.max_bytes)} per "
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
                await _error(400, "Content-Length header is not a number.")(scope, receive, send)
                return
            if size > self.max_bytes:
                await _error(413, self._too_large(_mb(size)))(scope, receive, send)
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
                    raise ApiError(413, self._too_large(f"over {_mb(self.max_bytes)}"))
                complete = not message.get("more_body", False)
            else:
                complete = True
            return message

        await self.app(scope, limited, send)


# ---- parsing the three request shapes into a list of inputs -----------------------------------


@dataclass
class Item:
    """One image to classify: encoded bytes to decode, or a ready 28x28 uint8 array."""

    name: str
    data: bytes | np.ndarray


@dataclass
class _Job:
    """One request on its way through the batcher."""

    items: list[Item]
    fields: tuple[str, ...]
    t0: float = field(default_factory=time.perf_counter)


def _check_count(n: int, max_batch: int) -> None:
    if n == 0:
        raise ApiError(
            422,
            "No images in the request: send multipart files (curl -F file=@shoe.png), "
            'JSON {"images": [base64...]} or {"arrays": [28x28...]}, or an image body.',
        )
    if n > max_batch:
        raise ApiError(
            413, f"Batch of {n} images is too large: at most {max_batch} per request."
        )


async def _items_from_multipart(request: Request, max_batch: int) -> list[Item]:
    # max_files well above max_batch so that the count check below gives the 413 and its message
    form = await request.form(max_files=max_batch * 4 + 16, max_fields=1000)
    try:
        files = [(k, v) for k, v in form.multi_items() if isinstance(v, UploadFile)]
        _check_count(len(files), max_batch)
        return [Item(v.filename or k, await v.read()) for k, v in files]
    finally:
        await form.close()


def _decode_base64(text: Any, where: str) -> bytes:
    if not isinstance(text, str):
        raise ApiError(422, f"{where} must be a base64 string, not {type(text).__name__}.")
    if text.startswith("data:"):  # a data URL, as canvas.toDataURL() gives
        _, _, text = text.partition(",")
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(422, f"{where} is not valid base64.") from None


def _to_array(value: Any, where: str) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (ValueError, TypeError):
        raise ApiError(
            422, f"{where} must be {SIZE}x{SIZE} numbers 0-255 (a list of {SIZE} rows)."
        ) from None
    if arr.shape != (SIZE, SIZE):
        raise ApiError(
            422, f"{where} has shape {arr.shape}; expected {SIZE}x{SIZE} numbers 0-255."
        )
    if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 255:
        raise ApiError(422, f"{where} must hold finite numbers from 0 to 255.")
    return np.rint(arr).astype(np.uint8)


def _items_from_json(body: bytes, max_batch: int) -> list[Item]:
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as e:  # JSONDecodeError and bad UTF-8 are ValueErrors
        raise ApiError(400, f"Malformed JSON: {e}.") from None
    keys = ("images", "arrays", "image", "array")
    if not isinstance(doc, dict) or not any(k in doc for k in keys):
        raise ApiError(
            422,
            'Expected a JSON object with "images" (a list of base64 image files) or "arrays" '
            f"(a list of {SIZE}x{SIZE} arrays of numbers 0-255).",
        )
    images = doc.get("images", [])
    arrays = doc.get("arrays", [])
    if "image" in doc:
        images = [*images, doc["image"]] if isinstance(images, list) else images
    if "array" in doc:
        arrays = [*arrays, doc["array"]] if isinstance(arrays, list) else arrays
    if not isinstance(images, list):
        raise ApiError(422, '"images" must be a list of base64 strings.')
    if not isinstance(arrays, list):
        raise ApiError(422, f'"arrays" must be a list of {SIZE}x{SIZE} arrays.')
    if len(arrays) == SIZE and all(  # a single bare 28x28 array is accepted as one image
        isinstance(r, list) and all(isinstance(v, int | float) for v in r) for r in arrays
    ):
        arrays = [arrays]
    _check_count(len(images) + len(arrays), max_batch)
    items = [Item(f"images[{i}]", _decode_base64(s, f"images[{i}]")) for i, s in enumerate(images)]
    items += [Item(f"arrays[{i}]", _to_array(a, f"arrays[{i}]")) for i, a in enumerate(arrays)]
    return items


# ---- the model side: runs in worker threads ----------------------------------------------------


def png_data_url(image: np.ndarray) -> str:
    """uint8 (H, W) -> "data:image/png;base64,..." (what the page puts in an <img>)."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def parse_fields(text: str | None) -> tuple[str, ...]:
    """`?fields=label,top` -> ("label", "top"); None -> every field."""
    if text is None:
        return FIELDS
    fields = tuple(f.strip() for f in text.split(",") if f.strip())
    unknown = [f for f in fields if f not in FIELDS]
    if unknown or not fields:
        problem = f"Unknown field {unknown[0]!r} in ?fields=" if unknown else "?fields= is empty"
        raise ApiError(422, f"{problem}; choose from {', '.join(FIELDS)}.")
    return fields


@dataclass
class Batching:
    """How requests share forward passes. `enabled=False` is one pass per request, in turn."""

    enabled: bool = True
    window_ms: float = 2.0  # how long a lone request waits for company
    max_images: int = 64  # the most images in one pass (a larger request still runs, alone)


class Engine:
    """The predictor plus everything the routes need from it; methods run off the event loop."""

    def __init__(
        self, predictor: Predictor, max_pixels: int, batching: Batching | None = None
    ) -> None:
        self.predictor = predictor
        self.max_pixels = max_pixels
        self.classes = list(predictor.classes)
        batching = batching or Batching()
        # Unbatched: one forward pass at a time, since torch already uses every core for one
        # batch and interleaved passes would only fight over them. Batched: the batcher's one
        # thread runs the passes, so they never overlap either.
        self.lock = threading.Lock()
        self.batcher = (
            Batcher(predictor.predict_arrays, prepare=self._decode_job, finish=self._answer_job,
                    max_images=batching.max_images, window_s=batching.window_ms / 1e3)
            if batching.enabled else None
        )  # fmt: skip
        self.ready = threading.Event()
        self.internal_errors = 0
        self.in_flight = 0  # predictions admitted and not yet answered (touched on the loop only)
        self.refused = 0
        self._samples: tuple[np.ndarray, np.ndarray, list[str]] | None = None
        self._samples_lock = threading.Lock()

    def warmup(self) -> None:
        try:
            with self.lock:
                self.predictor.warmup()
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
                image = open_image(item.data, max_pixels=self.max_pixels)
            except ImageError as e:
                raise ApiError(422, f"{item.name}: {e}") from None
            arrays.append(self.predictor.preprocess(image))
        return np.stack(arrays)

    def submit(self, items: list[Item], fields: tuple[str, ...] = FIELDS) -> Future[dict[str, Any]]:
        """Batched: the answer, decoded, predicted with whatever else arrives, and formatted
        on the batcher's thread (the caller awaits it without holding a thread)."""
        if self.batcher is None:
            raise RuntimeError("submit() needs batching; use predict()")
        return self.batcher.submit(_Job(items, fields), len(items))

    def predict(self, items: list[Item], fields: tuple[str, ...] = FIELDS) -> dict[str, Any]:
        """Unbatched: the answer to one request, in the calling thread, one pass at a time."""
        t0 = time.perf_counter()
        batch = self.decode(items)
        t1 = time.perf_counter()
        with self.lock:
            probs = self.predictor.predict_arrays(batch)
        t2 = time.perf_counter()
        return self.answer(items, fields, batch, probs, len(batch), t1 - t0, t2 - t1, t0)

    def _decode_job(self, job: _Job) -> np.ndarray:
        return self.decode(job.items)

    def _answer_job(self, job: _Job, shared: Batched) -> dict[str, Any]:
        # "model" for a batched request: from decoded to answered (the window, the pass)
        model_s = time.perf_counter() - job.t0 - shared.prepare_s
        return self.answer(job.items, job.fields, shared.images, shared.rows, shared.pass_images,
                           shared.prepare_s, model_s, job.t0)  # fmt: skip

    def answer(
        self, items: list[Item], fields: tuple[str, ...], batch: np.ndarray, probs: np.ndarray,
        pass_images: int, decode_s: float, model_s: float, t0: float,
    ) -> dict[str, Any]:  # fmt: skip
        predictions = []
        for item, image, p in zip(items, batch, probs, strict=True):
            # the one prediction shape (fmnist.predict.Prediction.to_dict), plus what only we know
            full = {"name": item.name, **self.predictor.prediction(p).to_dict(3)}
            if "input" in fields:  # encoding the PNG is the costliest part of an answer
                full["input"] = png_data_url(image)
            predictions.append({f: full[f] for f in fields})
        return {
            "model": self.predictor.meta.get("model"),
            "count": len(predictions),
            "predictions": predictions,
            # how many images shared this request's forward pass (its own included)
            "pass_images": pass_images,
            "latency_ms": {
                "decode": round(decode_s * 1e3, 3),
                "model": round(model_s * 1e3, 3),  # waiting for the pass, and the pass
                "total": round((time.perf_counter() - t0) * 1e3, 3),
            },
        }

    def stats(self, max_queue: int) -> dict[str, Any]:
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
            "max_queue": max_queue,
            "refused": self.refused,
        }

    def model_info(self, limits: dict[str, float]) -> dict[str, Any]:
        meta = self.predictor.meta
        model = getattr(self.predictor, "model", None)
        # an ONNX model's count comes from its export (fmnist.export writes it in the metadata)
        params = sum(p.numel() for p in model.parameters()) if model is not None else meta.get("parameters")
        return {
            "model": meta.get("model"),
            "model_config": meta.get("model_config", {}),
            "classes": self.classes,
            "parameters": params,
            "dataset": meta.get("dataset"),
            "dataset_hash": meta.get("dataset_sha256"),
            "metrics": meta.get("metrics", {}),
            "epoch": meta.get("epoch"),
            "recipe": meta.get("recipe"),
            "normalize": meta.get("normalize"),
            # flip TTA or not: the served predictions are made the way `metrics` were measured
            "tta": self.predictor.tta,
            "versions": meta.get("versions", {}),
            "device": str(getattr(self.predictor, "device", "cpu")),
            "backend": "torch" if model is not None else "onnxruntime",
            "ready": self.ready.is_set(),
            "limits": limits,
        }

    def _load_samples(self) -> tuple[tuple[np.ndarray, np.ndarray, list[str]] | None, str | None]:
        """The test split and None, or None and why not.

        Only data already on disk: a GET must not start a download. A failure is not kept, so
        data installed while the server runs shows up on the next request. The lock only
        guards publishing: two requests loading at once do the same work twice, harmlessly,
        while holding it across the load would queue every request behind a slow disk.
        """
        with self._samples_lock:
            if self._samples is not None:
                return self._samples, None
        name = str(self.predictor.meta.get("dataset") or "fashion-mnist")
        try:
            from fmnist import datasets

            images, labels = datasets.load_arrays(name, "test", download=False)
        except (FmnistError, OSError, ImportError) as e:
            # the page then shows no strip; everything else keeps working
            error = f"No test images to show: {e}"
            log.info("%s", error)
            return None, error
        with self._samples_lock:
            if self._samples is None:
                self._samples = (images, labels, self.classes)
            return self._samples, None

    def samples(self, n: int, seed: int) -> dict[str, Any]:
        loaded, error = self._load_samples()
        if loaded is None:
            return {"samples": [], "error": error}
        images, labels, classes = loaded
        idx = np.random.default_rng(seed).choice(len(images), size=min(n, len(images)), replace=False)
        return {
            "dataset": self.predictor.meta.get("dataset"),
            "samples": [
                {
                    "index": int(i),
                    "label_index": int(labels[i]),
                    "label": classes[int(labels[i])] if int(labels[i]) < len(classes) else str(labels[i]),
                    "image": png_data_url(images[i]),
                    "pixels": images[i].tolist(),
                }
                for i in idx
            ],
        }


# ---- response models: for the OpenAPI spec only (responses are built as plain dicts) ----------


class Top(BaseModel):
    label: str
    probability: float


class PredictionOut(BaseModel):
    name: str
    index: int
    label: str
    probability: float
    probabilities: dict[str, float]
    top: list[Top]
    input: str  # data:image/png;base64 of the 28x28 image the model saw


class PredictResponse(BaseModel):
    model: str | None
    count: int
    predictions: list[PredictionOut]  # only the ?fields= asked for, when given
    pass_images: int  # images in the forward pass this request shared
    latency_ms: dict[str, float]


class ErrorOut(BaseModel):
    error: str


_PREDICT_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {"file": {"type": "array", "items": {"type": "string", "format": "binary"}}},
            },
        },
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {
                    "images": {"type": "array", "items": {"type": "string"},
                               "description": "base64 image files (data: URLs accepted)"},
                    "arrays": {"type": "array", "description": "28x28 arrays of numbers 0-255, light object on dark",
                               "items": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}}},
                },
            },
        },
        "image/*": {"schema": {"type": "string", "format": "binary"}},
    },
}  # fmt: skip

_FIELDS_PARAM = {
    "name": "fields", "in": "query", "required": False, "schema": {"type": "string"},
    "description": f"comma-separated prediction fields to return (default all): {', '.join(FIELDS)}",
}  # fmt: skip

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "Malformed JSON or form"},
    413: {"model": ErrorOut, "description": "Body or batch too large"},
    415: {"model": ErrorOut, "description": "Unsupported content type"},
    408: {"model": ErrorOut, "description": "The body did not arrive in time"},
    422: {"model": ErrorOut, "description": "Not an image, corrupt, too many pixels, bad array"},
    503: {"model": ErrorOut, "description": "Too many predictions in flight: retry after Retry-After"},
}


# ---- the app --------------------------------------------------------------------------------


def create_app(
    predictor: Predictor,
    *,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_batch: int = DEFAULT_MAX_BATCH,
    max_pixels: int = MAX_PIXELS,
    batching: Batching | None = None,
    max_queue: int = DEFAULT_MAX_QUEUE,
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
    warmup: bool = True,
) -> FastAPI:
    """The ASGI app serving `predictor`.

    `max_batch` is the most images one request may hold; `batching` says how requests share
    forward passes; past `max_queue` predictions in flight a request gets 503 at once, which
    bounds both latency and memory (at most max_queue bodies of max_upload_bytes).

    With `warmup`, one forward pass runs in a background thread at startup and /readyz answers
    503 until it is done; pass False when the predictor is already warm (the CLI warms it before
    it binds the port).
    """
    engine = Engine(predictor, max_pixels, batching)
    limits = {
        "max_upload_bytes": max_upload_bytes, "max_batch": max_batch, "max_pixels": max_pixels,
        "max_queue": max_queue, "request_timeout_s": request_timeout_s,
    }  # fmt: skip
    if not warmup:
        engine.ready.set()

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202 - FastAPI's lifespan protocol
        if not engine.ready.is_set():
            threading.Thread(target=engine.warmup, name="fmnist-warmup", daemon=True).start()
        yield
        engine.close()  # answers what is queued, then stops the batcher's thread

    app = FastAPI(
        title="fmnist",
        summary="Fashion-MNIST classifier: predictions over HTTP, and a page to try them.",
        version=_version(),
        docs_url=None,  # FastAPI's docs page loads Swagger UI from a CDN; ours is local
        redoc_url=None,
        openapi_url="/openapi.json",
        lifespan=lifespan,
    )
    app.state.engine = engine
    app.add_middleware(BodyLimit, max_bytes=max_upload_bytes, timeout_s=request_timeout_s)

    # ---- errors: all JSON {"error": ...}; a 500 only for bugs -------------------------------

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.message)

    @app.exception_handler(BatcherClosed)
    async def _closing(request: Request, exc: BatcherClosed) -> JSONResponse:
        return _error(503, "The server is shutting down: retry shortly.", headers={"Retry-After": "1"})

    @app.exception_handler(FmnistError)
    async def _user_error(request: Request, exc: FmnistError) -> JSONResponse:
        return _error(422, str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"Nothing at {request.method} {request.url.path} (the API is listed at /docs)."
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path} (see /docs)."
        return JSONResponse({"error": message}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = [
            f"{'.'.join(str(x) for x in e.get('loc', ())[1:]) or 'request'}: {e.get('msg')}"
            for e in exc.errors()
        ]
        return _error(422, "; ".join(parts) + ".")

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        engine.internal_errors += 1
        log.error("Unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return _error(500, "Internal server error: this is a bug in fmnist; the server log has details.")

    # ---- API -------------------------------------------------------------------------------

    @app.post(
        "/v1/predict",
        response_model=None,
        responses={200: {"model": PredictResponse}, **_ERRORS},
        openapi_extra={"requestBody": _PREDICT_BODY, "parameters": [_FIELDS_PARAM]},
        summary="Classify one or more images in one forward pass",
    )
    async def predict(request: Request) -> JSONResponse:
        # Refused before the body is read: an overloaded server answers at once, and holds at
        # most max_queue bodies. The counter is only touched here, on the event loop.
        if engine.in_flight >= max_queue:
            engine.refused += 1
            # Connection: close, so that a client that retries at once (ignoring Retry-After)
            # pays a reconnect, instead of spinning the event loop on refusals
            return _error(
                503, f"The server is busy ({max_queue} predictions in flight): retry shortly.",
                headers={"Retry-After": "1", "Connection": "close"},
            )
        engine.in_flight += 1
        try:
            return await _predict(request)
        finally:
            engine.in_flight -= 1

    async def _predict(request: Request) -> JSONResponse:
        fields = parse_fields(request.query_params.get("fields"))
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype == "multipart/form-data":
            items = await _items_from_multipart(request, max_batch)
        elif ctype in ("application/json", "text/json") or ctype.endswith("+json"):
            # parsing up to max_upload_bytes of JSON and base64 must not block the loop either
            items = await run_in_threadpool(_items_from_json, await request.body(), max_batch)
        elif ctype.startswith("image/") or ctype == "application/octet-stream":
            items = [Item("body", await request.body())]
        else:
            raise ApiError(
                415,
                f"Unsupported Content-Type '{ctype or 'none'}': use multipart/form-data, "
                "application/json or an image/* body.",
            )
        if engine.batcher is not None:
            # no thread is held while waiting: the batcher's thread decodes, predicts, answers
            result = await asyncio.wrap_future(engine.submit(items, fields))
        else:
            result = await run_in_threadpool(engine.predict, items, fields)
        lat = result["latency_ms"]
        return JSONResponse(
            result, headers={"Server-Timing": f"model;dur={lat['model']}, total;dur={lat['total']}"}
        )

    @app.get("/v1/model", summary="What model is served: name, classes, size, metrics, data")
    async def model_info() -> dict[str, Any]:
        return engine.model_info(limits)

    @app.get("/v1/stats", summary="Forward passes and their sizes; requests in flight and refused")
    async def stats() -> dict[str, Any]:
        return engine.stats(max_queue)

    @app.get("/v1/samples", summary="Real test images with their true labels")
    async def samples(
        n: int = Query(12, ge=1, le=MAX_SAMPLES, description="how many images"),
        seed: int = Query(0, ge=0, description="which random selection"),
    ) -> dict[str, Any]:
        return await run_in_threadpool(engine.samples, n, seed)

    @app.get("/healthz", summary="Liveness: the process answers")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Readiness: the model is loaded and warmed up", responses={503: {"model": ErrorOut}})
    async def readyz() -> JSONResponse:
        if engine.ready.is_set():
            return JSONResponse({"status": "ready", "model": predictor.meta.get("model")})
        return JSONResponse({"status": "starting", "error": "The model is still warming up."}, status_code=503)

    # ---- the page --------------------------------------------------------------------------

    def page(name: str) -> Callable[[], Awaitable[FileResponse]]:
        async def serve_page() -> FileResponse:
            return FileResponse(
                STATIC_DIR / name,
                headers={"Content-Security-Policy": _CSP, "Cache-Control": "no-cache"},
            )

        return serve_page

    app.get("/", include_in_schema=False)(page("index.html"))
    app.get("/docs", include_in_schema=False)(page("docs.html"))
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def _version() -> str:
    from fmnist import __version__

    return __version__


SETTINGS_ENV = "FMNIST_SERVE_SETTINGS"


def app_from_env() -> FastAPI:
    """App factory for `uvicorn --factory` with several worker processes, each loading the
    model itself: `fmnist serve` puts its settings in FMNIST_SERVE_SETTINGS as JSON
    ({"checkpoint", "model", "backend", "threads", "app": create_app's keyword arguments})."""
    import torch

    from fmnist.serve.backends import load_predictor

    settings = json.loads(os.environ[SETTINGS_ENV])
    if settings.get("threads"):
        torch.set_num_threads(settings["threads"])
    predictor = load_predictor(settings["checkpoint"], settings.get("model"), settings.get("backend", "torch"))
    options = dict(settings.get("app", {}))
    options["batching"] = Batching(**options.get("batching", {}))
    return create_app(predictor, **options)
