"""Every error the server gives is JSON {"error": "one sentence"}.

`ApiError` is an error with its HTTP status, raised anywhere below the routes (limits, request
parsing, decoding, overload); `add_error_handlers` turns it, and FastAPI's and Starlette's own
errors, into that shape. Of fmnist's own errors, those a client causes (a bad image, a bad
option) are 422; those that are the server's fault (a checkpoint, dataset or file it cannot
read or write) are 500 and logged, as is any other exception (a bug).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from fmnist.errors import CheckpointError, DatasetError, FmnistError, WriteError
from fmnist.serve.batching import BatcherClosed, BatcherDied

log = logging.getLogger("fmnist.serve")


class ApiError(Exception):
    """A client error with its HTTP status; becomes {"error": message}."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


# The server's own faults among fmnist's errors: nothing the client can change fixes them.
SERVER_FAULTS = (CheckpointError, DatasetError, WriteError)


def error_response(status: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def api_error(request: Request, exc: ApiError) -> JSONResponse:
    return error_response(exc.status, exc.message, headers=exc.headers)


async def shutting_down(request: Request, exc: BatcherClosed) -> JSONResponse:
    return error_response(503, "The server is shutting down: retry shortly.", headers={"Retry-After": "1"})


async def batcher_died(request: Request, exc: BatcherDied) -> JSONResponse:
    # the worker is about to exit and be replaced (see fmnist.serve.server): another will answer
    return error_response(503, "This server process has failed and is restarting: retry shortly.",
                          headers={"Retry-After": "1", "Connection": "close"})  # fmt: skip


async def client_gone(request: Request, exc: ClientDisconnect) -> JSONResponse:
    # hung up mid-upload: not a bug, and nobody reads the answer (499, as nginx logs it)
    return error_response(499, "The client closed the connection before its request was sent.")


async def user_error(request: Request, exc: FmnistError) -> JSONResponse:
    if isinstance(exc, SERVER_FAULTS):
        return await server_fault(request, exc)
    return error_response(422, str(exc))


async def server_fault(request: Request, exc: FmnistError) -> JSONResponse:
    request.app.state.engine.internal_errors += 1
    log.error("Server fault on %s %s: %s", request.method, request.url.path, exc)
    return error_response(500, f"The server failed: {exc}")


async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    message = str(exc.detail)
    if exc.status_code == 404 and message == "Not Found":
        message = f"Nothing at {request.method} {request.url.path} (the API is listed at /docs)."
    elif exc.status_code == 405:
        message = f"{request.method} is not allowed on {request.url.path} (see /docs)."
    return error_response(exc.status_code, message, headers=exc.headers)


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    parts = [
        f"{'.'.join(str(x) for x in e.get('loc', ())[1:]) or 'request'}: {e.get('msg')}"
        for e in exc.errors()
    ]
    return error_response(422, "; ".join(parts) + ".")


async def bug(request: Request, exc: Exception) -> JSONResponse:
    request.app.state.engine.internal_errors += 1
    log.error("Unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "Internal server error: this is a bug in fmnist; the server log has details.")


def add_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, api_error)  # type: ignore[arg-type]
    app.add_exception_handler(BatcherClosed, shutting_down)  # type: ignore[arg-type]
    app.add_exception_handler(BatcherDied, batcher_died)  # type: ignore[arg-type]
    app.add_exception_handler(ClientDisconnect, client_gone)  # type: ignore[arg-type]
    app.add_exception_handler(FmnistError, user_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, http_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, bug)
