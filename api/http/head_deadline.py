"""uvicorn's HTTP protocol with a deadline on each request's head.

Why: uvicorn bounds the wait between requests (its keep-alive timeout) and the body is bounded
by the app (`BodyLimits`: 408 when it stops arriving), but nothing bounds the request line and
headers. A client sending one header line every few seconds holds its connection, and its
buffer, for ever: 9,000 such connections took a worker from ~48 to ~220 MB, and enough of them
exhaust its file descriptors (slowloris). Each request's head must be complete within
`HEAD_TIMEOUT_S` of its first byte, or of the connection's opening for the first request;
otherwise the connection gets a 408 problem+json and is closed. The app never sees the request,
so nothing of it is stored or logged.
"""

from __future__ import annotations

import asyncio
import json

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

HEAD_TIMEOUT_S = 10.0

_BODY = json.dumps(
    {
        "type": "about:blank",
        "title": "Request Timeout",
        "status": 408,
        "detail": f"the request line and headers did not arrive within {HEAD_TIMEOUT_S:g} s",
    }
).encode()
REQUEST_TIMEOUT = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/problem+json\r\n"
    + b"connection: close\r\ncontent-length: "
    + str(len(_BODY)).encode()
    + b"\r\n\r\n"
    + _BODY
)


class HeadDeadlineProtocol(HttpToolsProtocol):
    """`HttpToolsProtocol` whose every request's head has `head_timeout_s` to arrive."""

    head_timeout_s = HEAD_TIMEOUT_S
    _head_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_deadline()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm_head_deadline()

    def on_headers_complete(self) -> None:
        self._disarm_head_deadline()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_deadline()
        super().connection_lost(exc)

    def _arm_head_deadline(self) -> None:
        if self._head_deadline is None:
            self._head_deadline = self.loop.call_later(self.head_timeout_s, self._head_too_late)

    def _disarm_head_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_too_late(self) -> None:
        self._head_deadline = None
        if not self.transport.is_closing():
            self.transport.write(REQUEST_TIMEOUT)
            self.transport.close()
