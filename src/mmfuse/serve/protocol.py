"""HTTP connections under slow or unknown clients: read timeouts and a cap on connections.

uvicorn's h11 protocol holds a connection open for as long as its client likes: one that sends
nothing, or trickles its headers or its body a byte at a time, is never dropped, so a few hundred
such clients hold the server. `LimitedH11Protocol` adds three limits (`ConnectionLimits`):

- `header_timeout`: a request's line and headers must have arrived this many seconds after the
  connection opened (or after the previous answer, on a kept-alive connection);
- `body_timeout`: its whole body, this many seconds after its headers;
- `max_connections`: open connections per server process; one more is answered 503 and closed.

A client past a timeout gets a 408 in the service's error shape (unless an answer has started)
and is disconnected; other connections are untouched. Headers are also capped in size (h11's
16 KiB) and bodies by the service's `--max-upload-mb`. Run it with `uvicorn.Config(...,
http=PROTOCOL)` and `attach(config, limits)`; uvicorn pickles the config into each worker
process, limits included.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from http import HTTPStatus

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from mmfuse.serve.errors import error_body

PROTOCOL = "mmfuse.serve.protocol:LimitedH11Protocol"
_ATTRIBUTE = "mmfuse_connection_limits"


@dataclass(frozen=True)
class ConnectionLimits:
    """How long a client may take to send a request, and how many may be connected at once."""

    header_timeout: float = 10.0  # seconds for the request line and headers
    body_timeout: float = 60.0  # seconds for the body, from the end of the headers
    max_connections: int = 100  # per server process

    def __post_init__(self) -> None:
        for name in ("header_timeout", "body_timeout", "max_connections"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")


def attach(config, limits: ConnectionLimits) -> None:
    """Give the `LimitedH11Protocol` connections of uvicorn `config` these limits."""
    setattr(config, _ATTRIBUTE, limits)


def raw_answer(status: int, reason: str, message: str) -> bytes:
    """A whole HTTP/1.1 answer in the service's error shape, closing the connection."""
    body = json.dumps(error_body(reason, message)).encode()
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body


class LimitedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with `ConnectionLimits`: a timer runs while the client owes the
    headers of a request, and another while it owes the body; a full server refuses more."""

    def __init__(self, config, server_state, app_state, _loop=None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits: ConnectionLimits = getattr(config, _ATTRIBUTE, None) or ConnectionLimits()
        self.waiting_for: str | None = None  # "headers", "body" or None (the client owes none)
        self.timer: asyncio.TimerHandle | None = None
        self.refused = False

    def connection_made(self, transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.limits.max_connections:
            self.refused, self.transport = True, transport
            message = (
                f"the server has its limit of {self.limits.max_connections} open connections; "
                "try again shortly"
            )
            transport.write(raw_answer(503, "busy", message))
            transport.close()
            self.logger.warning("refused a connection: %d are open", len(self.connections))
            return
        super().connection_made(transport)
        self._follow()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()
        if not self.refused:
            super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.refused:
            return
        super().data_received(data)
        self._follow()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._follow()

    def _follow(self) -> None:
        """(Re)arm the timer for what the client owes now: headers, a body, or nothing."""
        state = self.conn.their_state
        owes = "headers" if state is h11.IDLE else "body" if state is h11.SEND_BODY else None
        if owes == self.waiting_for:
            return
        self._cancel()
        self.waiting_for = owes
        if owes is not None and not self.transport.is_closing():
            limit = self.limits.header_timeout if owes == "headers" else self.limits.body_timeout
            self.timer = self.loop.call_later(limit, self._timed_out, owes, limit)

    def _cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _timed_out(self, owes: str, limit: float) -> None:
        self.timer = None
        if self.transport.is_closing():
            return
        where = "{}:{}".format(*self.client) if self.client else "a client"
        self.logger.info("%s disconnected: no complete request %s within %g s", where, owes, limit)
        if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):  # no answer has started
            flag = "--header-timeout" if owes == "headers" else "--body-timeout"
            message = (
                f"the request {owes} did not arrive within {limit:g} s (the server's {flag}); "
                "the connection is closed"
            )
            self.transport.write(raw_answer(408, "timeout", message))
        self.transport.close()
