"""A worker app for supervisor tests: each start takes the next line of the file named by
$FLAKY_PLAN, "fail" (the worker exits before it listens, as one whose model file is gone) or
"ok" (it serves its process id at /). Light: no torch, no model."""

from __future__ import annotations

import os
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route


async def pid(request: Request) -> PlainTextResponse:
    return PlainTextResponse(str(os.getpid()))


def app() -> Starlette:
    plan = Path(os.environ["FLAKY_PLAN"])
    first, *rest = plan.read_text().split()
    plan.write_text("\n".join(rest) + "\n")
    if first == "fail":
        raise SystemExit(3)
    return Starlette(routes=[Route("/", pid)])
