"""A light worker app for the supervisor's in-process tests (test_serve_server_behaviour):
imported by name in the worker processes it spawns. No torch, no model: / answers
"<pid> <reloads>", the worker's process id and how many SIGHUP reloads it has run; /stick
blocks its event loop for good (a bug that never returns: the watchdog's case); after /deaf it
ignores SIGTERM (a worker that will not stop).

Each start takes the next word of the file named by $COUNTING_PLAN, when it is set: "fail"
(the worker exits before it listens, as one whose model file is gone) or "ok"."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route


def app() -> Starlette:
    plan = os.environ.get("COUNTING_PLAN")
    if plan:
        first, *rest = Path(plan).read_text().split() or ["ok"]
        Path(plan).write_text("\n".join(rest) + "\n")
        if first == "fail":
            raise SystemExit(3)
    reloads = [0]

    async def pid(request: Request) -> PlainTextResponse:
        return PlainTextResponse(f"{os.getpid()} {reloads[0]}")

    async def stick(request: Request) -> PlainTextResponse:
        time.sleep(3600)
        return PlainTextResponse("")

    async def deaf(request: Request) -> PlainTextResponse:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        return PlainTextResponse("")

    def reload() -> None:  # run in a thread of its own by the server, on SIGHUP
        reloads[0] += 1

    served = Starlette(routes=[Route("/", pid), Route("/stick", stick), Route("/deaf", deaf)])
    served.state.reload = reload
    return served
