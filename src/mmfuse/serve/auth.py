"""Who may call the service: an optional API key, and the web origins allowed to call it (CORS).

With an API key (`mmfuse serve --api-key`, or `$MMFUSE_API_KEY`), every request needs the header
`Authorization: Bearer <key>`, compared in constant time; without it, or with another key, the
answer is a 401 in the service's error shape. `GET /health` stays open for load balancers and
probes, and so does the page at `/` (static HTML holding nothing of the model: it asks for the
key, and sends it with its calls). With none, the service is open to whoever reaches its port,
which by default is only this machine (it binds 127.0.0.1).

CORS: browsers let a page from another origin call the service only for the origins given to
`--cors-origin`; none by default. Preflight requests are answered before the key is checked.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Sequence

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from mmfuse.serve.errors import error_response

ENV_API_KEY = "MMFUSE_API_KEY"
# Paths answered without the key.
OPEN_PATHS = frozenset({"/", "/health"})
_ORIGIN = re.compile(r"https?://[A-Za-z0-9.\-]+(:\d{1,5})?|https?://\[[0-9A-Fa-f:.]+\](:\d{1,5})?")


def check_origin(origin: str) -> str:
    """`origin` if it is `*` or a scheme, host and optional port (no path); else ValueError."""
    if origin != "*" and not _ORIGIN.fullmatch(origin):
        raise ValueError(
            f"{origin!r} is not an origin; give its scheme, host and port only, e.g. "
            "https://app.example.com or http://localhost:3000 (no path, no trailing slash), "
            "or * for any"
        )
    return origin


class ApiKeyMiddleware:
    """401 for every request but those to `OPEN_PATHS` without `Authorization: Bearer <key>`."""

    def __init__(self, app, api_key: str):
        if not api_key:
            raise ValueError("api_key must be a non-empty string")
        self.app = app
        self.expected = api_key.encode("utf-8")

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"authorization")
        scheme, _, token = (given or b"").partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.expected):
            await self.app(scope, receive, send)
            return
        message = (
            "this server needs an API key: send the header Authorization: Bearer <key>"
            if given is None
            else "the Authorization header does not hold this server's API key (Bearer <key>)"
        )
        headers = {"WWW-Authenticate": 'Bearer realm="mmfuse"'}
        await error_response(401, "unauthorized", message, headers=headers)(scope, receive, send)


def add_access_control(
    app: FastAPI, api_key: str | None = None, cors_origins: Sequence[str] = ()
) -> None:
    """Require `api_key` (when given) and allow `cors_origins` (outermost, so that preflight
    requests, which carry no key, are answered)."""
    if api_key:
        app.add_middleware(ApiKeyMiddleware, api_key=api_key)
    if cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=[check_origin(o) for o in cors_origins],
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
            max_age=600,
        )
