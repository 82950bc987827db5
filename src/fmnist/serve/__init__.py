"""The HTTP API and the web page: `create_app(predictor)` builds the ASGI app that
`fmnist serve` runs with uvicorn. See `fmnist.serve.app` for the endpoints.

`create_app` is imported on first use: the app pulls in torch, and a process that only
supervises workers (fmnist.serve.server.Supervisor) imports parts of this package without it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fmnist.serve.app import create_app

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from fmnist.serve.app import create_app

        return create_app
    raise AttributeError(f"module 'fmnist.serve' has no attribute {name!r}")
