"""The HTTP API and the web page: `create_app(predictor)` builds the ASGI app that
`fmnist serve` runs with uvicorn. See `fmnist.serve.app` for the endpoints."""

from fmnist.serve.app import create_app

__all__ = ["create_app"]
