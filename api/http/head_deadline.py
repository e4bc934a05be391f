"""uvicorn's HTTP protocol with a deadline and a size bound on each request's head.

Why: uvicorn bounds the wait between requests (its keep-alive timeout, which any byte cancels)
and the app bounds the body (`BodyLimits`: 408 when it stops arriving), but nothing bounds the
request line and headers, in time or in size. A client sending one header line every few
seconds holds its connection, and its buffer, for as long as it likes (slowloris: enough such
connections exhaust a worker's memory and file descriptors), and one sending headers fast can
fill a worker's memory. So each request's head must be complete within `head_timeout_s` of
the first byte that could start it (or of the connection's opening), and within
`head_bytes_max` bytes; otherwise the connection gets a 408 or a 431 problem+json and is
closed. The app never sees the request, so nothing of it is stored or logged.

The deadline runs only while the connection waits for a head with no response in flight: a
pipelined request's head, waiting behind its predecessor's response (uvicorn stops reading
meanwhile), gets its deadline once that response is complete, and a deadline never writes
into a response being sent.
"""

from __future__ import annotations

import asyncio
import json

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

HEAD_TIMEOUT_S = 10.0
HEAD_BYTES_MAX = 64 * 1024


def _refusal(status: int, reason: str, title: str, detail: str) -> bytes:
    body = json.dumps({"type": "about:blank", "title": title, "status": status, "detail": detail})
    return (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/problem+json\r\n"
        f"connection: close\r\ncontent-length: {len(body)}\r\n\r\n{body}"
    ).encode()


REQUEST_TIMEOUT = _refusal(
    408,
    "Request Timeout",
    "Request Timeout",
    f"the request line and headers did not arrive within {HEAD_TIMEOUT_S:g} s",
)
HEAD_TOO_LARGE = _refusal(
    431,
    "Request Header Fields Too Large",
    "Request Header Fields Too Large",
    f"the request line and headers exceed {HEAD_BYTES_MAX} bytes",
)


class HeadDeadlineProtocol(HttpToolsProtocol):
    """`HttpToolsProtocol` whose every request's head has `head_timeout_s` and `head_bytes_max`."""

    head_timeout_s = HEAD_TIMEOUT_S
    head_bytes_max = HEAD_BYTES_MAX
    _head_deadline: asyncio.TimerHandle | None = None
    _head_pending = False  # a request has begun and its headers are not complete
    _head_bytes = 0  # bytes received while the deadline ran

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_if_idle()

    def data_received(self, data: bytes) -> None:
        # Any byte may start a head (a blank line before a request too): it cancels uvicorn's
        # keep-alive timer, so the deadline must run from it.
        self._arm_if_idle()
        super().data_received(data)
        if self._head_deadline is not None:  # still waiting for a head: all of it was head
            self._head_bytes += len(data)
            if self._head_bytes > self.head_bytes_max:
                self._refuse(HEAD_TOO_LARGE)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_pending = True
        self._arm_if_idle()

    def on_headers_complete(self) -> None:
        self._head_pending = False
        self._disarm()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._head_pending:  # a pipelined head waited behind this response
            self._arm_if_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _idle(self) -> bool:
        """No response in flight: a 408 or 431 written now cannot cut into one."""
        return self.cycle is None or self.cycle.response_complete

    def _arm_if_idle(self) -> None:
        if self._head_deadline is None and self._idle() and not self.transport.is_closing():
            self._head_bytes = 0
            self._head_deadline = self.loop.call_later(self.head_timeout_s, self._too_late)

    def _disarm(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _too_late(self) -> None:
        self._head_deadline = None
        self._refuse(REQUEST_TIMEOUT)

    def _refuse(self, answer: bytes) -> None:
        self._disarm()
        if not self._idle():  # never into a response: the connection ends after it instead
            self.cycle.keep_alive = False
            return
        if not self.transport.is_closing():
            self.transport.write(answer)
            self.transport.close()
