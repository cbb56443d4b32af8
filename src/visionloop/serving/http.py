"""The HTTP server under the app: uvicorn's h11 protocol, with a deadline for request headers.

uvicorn times out an idle keep-alive connection, but not one that is still sending its headers:
a client that trickles a header byte every few seconds (slowloris) holds its connection for
ever, and 200 of them hold 200 file descriptors and sockets. Here a connection whose request
headers are not complete ``header_timeout_s`` after it opened (or after its previous answer) is
answered 408 and closed. A body that trickles is the app's to cut off (it gets what is left of
the request's deadline: :mod:`visionloop.serving.uploads`). Neither holds a decode thread or a
queue slot meanwhile: both are taken only once the whole body is in.

h11 is used, not httptools, so that this guard holds whichever extras are installed (httptools
was no faster here: ``benchmarks/results/http_stack_ab.json``).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

_TIMEOUT_BODY = b'{"error": "request headers not received in time", "type": "RequestTimeout"}'
_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
    b"content-length: %d\r\n\r\n%s" % (len(_TIMEOUT_BODY), _TIMEOUT_BODY)
)


ARRIVED = "visionloop.first_byte"  # scope key: time.monotonic() of the request's first byte


class HeaderDeadlineProtocol(H11Protocol):
    """h11 with a deadline on each request's headers (set by :func:`protocol`), and the time
    each request's first byte arrived in its scope (:data:`ARRIVED`), so that its deadline
    counts from then, not from when a busy event loop got round to the route."""

    header_timeout_s: float = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._first_byte: float | None = None
        self._stamped: dict[str, Any] | None = None
        self._waiting_since = self.loop.time()
        self._header_timer: asyncio.TimerHandle | None = self.loop.call_later(
            self.header_timeout_s, self._check_headers
        )

    def data_received(self, data: bytes) -> None:
        if self._first_byte is None and self.conn.their_state is h11.IDLE:
            self._first_byte = time.monotonic()
        super().data_received(data)
        scope: Any = self.scope
        if scope is not None and scope is not self._stamped and self._first_byte is not None:
            scope[ARRIVED] = self._first_byte  # a new request's scope: stamp it once
            self._stamped, self._first_byte = scope, None

    def on_response_complete(self) -> None:
        self._waiting_since = self.loop.time()  # the next request's headers are due from now
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        super().connection_lost(exc)

    def _check_headers(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        now = self.loop.time()
        # IDLE: h11 has not seen a complete request line and headers since the last answer.
        waiting = self.conn.their_state is h11.IDLE
        if waiting and now - self._waiting_since >= self.header_timeout_s:
            self.transport.write(_TIMEOUT_RESPONSE)
            self.transport.close()
            return
        if waiting:
            due = max(self._waiting_since + self.header_timeout_s - now, 0.001)
        else:  # a request is in flight: look again later (its answer resets the clock)
            due = self.header_timeout_s / 4
        self._header_timer = self.loop.call_later(due, self._check_headers)


def protocol(header_timeout_s: float) -> type[HeaderDeadlineProtocol]:
    """The protocol class uvicorn instantiates per connection, with this header deadline."""
    return type(
        "HeaderDeadlineProtocol", (HeaderDeadlineProtocol,), {"header_timeout_s": header_timeout_s}
    )


def config(app: Any, header_timeout_s: float, **options: Any) -> uvicorn.Config:
    """uvicorn's config for our app: h11 with the header deadline, plus ``options``."""
    return uvicorn.Config(app, http=protocol(header_timeout_s), **options)
