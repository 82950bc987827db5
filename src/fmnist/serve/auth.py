"""An optional API key: with one set (`fmnist serve --api-key-file`, or FMNIST_API_KEY), every
route needs it but the probes, the page with its static files and the API's description, which
hold no data. A client sends `Authorization: Bearer KEY` (or `X-API-Key: KEY`); anything else
is a 401 with a JSON error. The key is compared in constant time. It travels in clear text
over plain HTTP: terminate TLS in front of the server (docs/serving.md)."""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from fmnist.serve.errors import error_response

ENV = "FMNIST_API_KEY"
# what a browser or a probe fetches without credentials
OPEN = frozenset({"/", "/docs", "/healthz", "/readyz", "/openapi.json", "/favicon.ico"})


def presented(scope: Scope) -> bytes | None:
    headers = dict(scope["headers"])
    auth = headers.get(b"authorization", b"")
    if auth[:7].lower() == b"bearer ":
        return auth[7:].strip()
    return headers.get(b"x-api-key")


class ApiKey:
    """ASGI middleware: 401 unless the request carries `key` (paths in OPEN and under
    /static/ excepted)."""

    def __init__(self, app: ASGIApp, key: str) -> None:
        self.app = app
        self.key = key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN or scope["path"].startswith("/static/"):
            await self.app(scope, receive, send)
            return
        given = presented(scope)
        if given is None or not hmac.compare_digest(given, self.key):
            why = "This server needs an API key" if given is None else "The API key is wrong"
            await error_response(401, f"{why}: send it as 'Authorization: Bearer KEY'.",
                                 headers={"WWW-Authenticate": "Bearer"})(scope, receive, send)  # fmt: skip
            return
        await self.app(scope, receive, send)
