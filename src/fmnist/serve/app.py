"""The HTTP API and the web page, as one FastAPI app: `create_app(predictor)`.

    POST /v1/predict   images as multipart files, JSON {"images": [base64...]} or
                       {"arrays": [28x28 numbers 0-255...]}, or one raw image body
                       -> top class, all probabilities, the 28x28 image the model saw (PNG data
                       URL) and the latency; `?fields=label,top` returns only those fields
    GET  /v1/model     model name, classes, parameter count, metrics, dataset and its hash
    GET  /v1/stats     forward passes and their sizes, requests in flight, refused, dropped
    GET  /v1/samples   real test images with their true labels (empty list without the data)
    GET  /healthz      the process can answer (503 once its batcher has died)
    GET  /readyz       warmed up and not draining (503 while starting, draining or failed)
    GET  /metrics      Prometheus text format (fmnist.serve.metrics)
    GET  /openapi.json the spec;  GET /docs  an offline reference page built from it
    GET  /             the web page (static files under /static, no CDN, no build step)

Every error is JSON {"error": "one sentence"}: 400 malformed JSON, 408 body not sent in time,
413 too large (bytes or batch), 415 unknown content type, 422 not an image / corrupt / too many
pixels / bad array / unknown field, 499 (logged only) the client hung up before its answer, 503
(with Retry-After) when `max_queue` predictions are queued or `max_uploads` bodies are arriving,
when an answer takes over `predict_timeout_s`, or while shutting down; 500 for the server's own
faults and bugs. Decoding and inference run in other threads, never on the event loop, so
health checks answer while predictions run.

The parts, in the order a request meets them: `limits` (body size and time), `routes`,
`requests` (parsing), `engine` (decoding, forward passes, `answers`), `errors` (every error's
JSON); `backends` is what runs the model, `schemas` the OpenAPI description.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from fmnist.errors import FmnistError
from fmnist.predict import Predictor
from fmnist.serve.auth import ApiKey
from fmnist.serve.backends import Backend, as_backend, load_predictor
from fmnist.serve.engine import Batching, Engine
from fmnist.serve.errors import add_error_handlers
from fmnist.serve.limits import BodyLimit, Limits
from fmnist.serve.metrics import RequestMetrics
from fmnist.serve.pinning import Pinned, read_current
from fmnist.serve.routes import STATIC_DIR, router
from fmnist.serve.server import SETTINGS_ENV

__all__ = ["SETTINGS_ENV", "STATIC_DIR", "Batching", "app_from_env", "create_app", "swap_in"]

log = logging.getLogger("uvicorn.error")
_DEFAULT = Limits()


def create_app(
    predictor: Predictor | Backend,
    *,
    max_upload_bytes: int = _DEFAULT.max_upload_bytes,
    max_batch: int = _DEFAULT.max_batch,
    max_pixels: int = _DEFAULT.max_pixels,
    max_request_pixels: int = _DEFAULT.max_request_pixels,
    batching: Batching | None = None,
    max_queue: int = _DEFAULT.max_queue,
    request_timeout_s: float = _DEFAULT.request_timeout_s,
    max_uploads: int = _DEFAULT.max_uploads,
    predict_timeout_s: float = _DEFAULT.predict_timeout_s,
    warmup: bool = True,
    model_id: str | None = None,
    api_key: str | None = None,
) -> FastAPI:
    """The ASGI app serving `predictor`.

    `max_batch` is the most images one request may hold, `max_pixels` the most pixels one
    image may have and `max_request_pixels` all of a request's images together; `batching` says how requests share
    forward passes; past `max_queue` predictions queued or `max_uploads` bodies arriving a
    request gets 503 at once (see `Limits`).

    With `warmup`, one forward pass runs in a background thread at startup and /readyz answers
    503 until it is done; pass False when the predictor is already warm (the CLI warms it before
    it binds the port). `model_id` names the files served (fmnist.serve.pinning); without it,
    a hash of the predictor's weights. With `api_key`, every route but the probes and the page
    needs it (fmnist.serve.auth).
    """
    limits = Limits(max_upload_bytes=max_upload_bytes, max_batch=max_batch, max_pixels=max_pixels,
                    max_request_pixels=max_request_pixels, max_queue=max_queue,
                    request_timeout_s=request_timeout_s, max_uploads=max_uploads,
                    predict_timeout_s=predict_timeout_s)  # fmt: skip
    engine = Engine(as_backend(predictor), limits, batching, model_id)
    if not warmup:
        engine.ready.set()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
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
    if api_key:  # outside the body limit (a request without the key is not read), inside metrics
        app.add_middleware(ApiKey, key=api_key)
    app.add_middleware(RequestMetrics, metrics=engine.metrics)  # outermost: counts every answer
    add_error_handlers(app)
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def _version() -> str:
    from fmnist import __version__

    return __version__


def app_from_env() -> FastAPI:
    """App factory for `uvicorn --factory` with several worker processes, each loading the
    model itself: `fmnist serve` puts its settings in FMNIST_SERVE_SETTINGS as JSON
    ({"current": the supervisor's model pin file, "threads", "coverage", "app": create_app's
    keyword arguments}). On SIGHUP the worker loads what the pin file names then."""
    import torch

    settings = json.loads(os.environ[SETTINGS_ENV])
    if settings.get("threads"):
        torch.set_num_threads(settings["threads"])
    current = Path(settings["current"])
    pinned, _ = read_current(current)
    # warm before uvicorn listens: a worker the supervisor restarts takes no traffic cold
    coverage, device = settings.get("coverage"), settings.get("device", "cpu")
    predictor = _load(pinned, coverage, device)
    options = dict(settings.get("app", {}))
    options["batching"] = Batching(**options.get("batching", {}))
    app = create_app(predictor, **options, warmup=False, model_id=pinned.model_id)
    engine: Engine = app.state.engine
    app.state.reload = lambda: swap_in(engine, lambda: read_current(current), coverage, device)
    return app


def _load(pinned: Pinned, coverage: float | None, device: str = "cpu") -> Backend:
    predictor = as_backend(load_predictor(pinned.path, pinned.model, pinned.backend, coverage, device))
    predictor.warmup()
    return predictor


def swap_in(engine: Engine, pin: Callable[[], tuple[Pinned, str | None]],
            coverage: float | None = None, device: str = "cpu") -> None:  # fmt: skip
    """A reload: `pin()` says what to serve (and why the last attempt failed, if it did); a
    model with another id is loaded, warmed and swapped in, while the old one goes on
    answering. A failure leaves the old one serving, with the reason in the log and in
    /v1/model (`reload_error`)."""
    if not engine.reloading.acquire(blocking=False):  # SIGHUP twice in a row: one reload
        log.warning("A reload is already under way: this one is skipped")
        return
    try:
        pinned, error = pin()
        if pinned.model_id != engine.model_id:
            engine.swap(_load(pinned, coverage, device), pinned.model_id)
            log.info("Reloaded: serving model %s (from %s)", pinned.model_id, pinned.source)
        engine.reload_error = error
    except FmnistError as e:
        engine.reload_error = str(e)
        log.error("Reload failed; model %s goes on serving: %s", engine.model_id, e)
    finally:
        engine.reloading.release()
