"""Apps that misbehave after they listen, for the supervisor's tests (test_serve_supervisor):
imported by name in the worker processes the supervisor spawns."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI


def crash_after_listen() -> FastAPI:
    """Listens, then dies half a second later (a native crash, an OOM kill)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        asyncio.get_running_loop().call_later(0.5, os._exit, 3)
        yield

    return FastAPI(lifespan=lifespan)


def stuck_loop() -> FastAPI:
    """Answers /pid until /stick blocks its event loop for good (a bug that never returns)."""
    app = FastAPI()

    @app.get("/pid")
    async def pid() -> int:
        return os.getpid()

    @app.get("/stick")
    async def stick() -> None:
        time.sleep(3600)

    return app
