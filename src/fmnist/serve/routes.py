"""The routes: each a small function of the request and the app's `Engine`, which FastAPI
passes in (`current_engine`); a test can call one with an engine of its own."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from fmnist.serve.engine import Engine
from fmnist.serve.errors import error_response
from fmnist.serve.requests import parse_fields, read_items
from fmnist.serve.samples import MAX_SAMPLES
from fmnist.serve.schemas import ERRORS, FIELDS_PARAM, PREDICT_BODY, ErrorOut, PredictResponse

STATIC_DIR = Path(__file__).parent / "static"
# The page loads only its own files; images are data: URLs (predictions) or blob: (uploads).
CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)


def current_engine(request: Request) -> Engine:
    return request.app.state.engine


EngineDep = Annotated[Engine, Depends(current_engine)]
router = APIRouter()


@router.post(
    "/v1/predict",
    response_model=None,
    responses={200: {"model": PredictResponse}, **ERRORS},
    openapi_extra={"requestBody": PREDICT_BODY, "parameters": [FIELDS_PARAM]},
    summary="Classify one or more images in one forward pass",
)
async def predict(request: Request, engine: EngineDep) -> JSONResponse:
    # The queue is checked before the body is read too: an overloaded server refuses at once
    # and spends nothing on the request. The counters are only touched here, on the event loop.
    engine.shed()
    fields = parse_fields(request.query_params.get("fields"))
    with engine.admit_upload():
        items = await read_items(request, engine.limits.max_batch)
    with engine.admit():
        result = await engine.run(items, fields, lambda: hung_up(request))
    lat = result["latency_ms"]
    return JSONResponse(
        result, headers={"Server-Timing": f"model;dur={lat['model']}, total;dur={lat['total']}"}
    )


async def hung_up(request: Request) -> None:
    """Returns once the client has closed the connection (the body has been read by then, so
    the next message can only be the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


@router.get("/v1/model", summary="What model is served: name, classes, size, metrics, data")
async def model_info(engine: EngineDep) -> dict[str, Any]:
    return engine.model_info()


@router.get("/v1/stats", summary="Forward passes and their sizes; requests in flight and refused")
async def stats(engine: EngineDep) -> dict[str, Any]:
    return engine.stats()


@router.get("/v1/samples", summary="Real test images with their true labels")
async def samples(
    engine: EngineDep,
    n: int = Query(12, ge=1, le=MAX_SAMPLES, description="how many images"),
    seed: int = Query(0, ge=0, description="which random selection"),
) -> dict[str, Any]:
    return await run_in_threadpool(engine.samples, n, seed)


@router.get("/healthz", summary="Liveness: the process can answer predictions", responses={503: {"model": ErrorOut}})
async def healthz(engine: EngineDep) -> JSONResponse:
    if engine.failed:  # a liveness probe that fails makes the supervisor replace the process
        return error_response(503, engine.state()[1] or "")
    return JSONResponse({"status": "ok"})


@router.get("/readyz", summary="Readiness: warmed up, not draining, not failed", responses={503: {"model": ErrorOut}})
async def readyz(engine: EngineDep) -> JSONResponse:
    state, why = engine.state()
    if why is None:
        return JSONResponse({"status": state, "model": engine.backend.meta.get("model")})
    return JSONResponse({"status": state, "error": why}, status_code=503)


@router.get("/metrics", summary="Prometheus metrics (text format)", response_class=Response)
async def metrics(engine: EngineDep) -> Response:
    # with several workers this reads every worker's files: off the loop
    body = await run_in_threadpool(engine.metrics.exposition)
    return Response(body, media_type=engine.metrics.content_type)


def _page(name: str) -> FileResponse:
    return FileResponse(STATIC_DIR / name, headers={"Content-Security-Policy": CSP, "Cache-Control": "no-cache"})


@router.get("/", include_in_schema=False)
async def index() -> FileResponse:
    return _page("index.html")


@router.get("/docs", include_in_schema=False)
async def docs() -> FileResponse:
    return _page("docs.html")
