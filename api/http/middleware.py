"""Pure ASGI middleware: request body limits (size and time) and Prometheus metrics.

Why pure ASGI (not `BaseHTTPMiddleware`): an upload body of gigabytes must pass through as a
stream, untouched and unbuffered; these wrappers only count bytes, time the gaps between
chunks and look at the status.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

import anyio
from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.http.errors import PROBLEM_JSON, body_timeout, body_too_large, bounded_path, logged_path

# Upload routes get the large limit; every other route gets the JSON limit.
UPLOAD_PATH = re.compile(r"^/v1/datasets/[^/]+/uploads/?$")


class BodyLimit:
    """413 for a body over its limit: at once from Content-Length, else while it streams.

    408 for a body that stops arriving: no chunk for `idle_timeout_s`, or not complete after
    the total for its kind. Whoever reads the body (FastAPI's parser, an upload's worker
    thread) gets the 408 raised where it waits, so it lets go of what it holds.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        upload_max_bytes: int,
        json_max_bytes: int,
        idle_timeout_s: float,
        upload_timeout_s: float,
        json_timeout_s: float,
    ) -> None:
        self.app = app
        self.upload_max_bytes = upload_max_bytes
        self.json_max_bytes = json_max_bytes
        self.idle_timeout_s = idle_timeout_s
        self.upload_timeout_s = upload_timeout_s
        self.json_timeout_s = json_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # `match`, as the router matches its paths: what it routes to the upload is one.
        is_upload = UPLOAD_PATH.match(scope["path"]) is not None
        limit = self.upload_max_bytes if is_upload else self.json_max_bytes
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _send_413(send, scope["path"], limit)
            return
        seen = 0
        complete = False
        total_s = self.upload_timeout_s if is_upload else self.json_timeout_s
        deadline = time.monotonic() + total_s

        async def counted() -> Message:
            nonlocal seen, complete
            if complete:  # the body is in; what remains is waiting for a disconnect
                return await receive()
            wait_s = min(self.idle_timeout_s, deadline - time.monotonic())
            with anyio.move_on_after(max(wait_s, 0.0)):
                message = await receive()
                if message["type"] == "http.request":
                    seen += len(message.get("body", b""))
                    if seen > limit:
                        raise body_too_large(limit)
                    complete = not message.get("more_body", False)
                else:
                    complete = True
                return message
            raise body_timeout(self.idle_timeout_s, total_s)

        await self.app(scope, counted, send)


async def _send_413(send: Send, path: str, limit: int) -> None:
    import json

    body = json.dumps(
        {
            "type": "about:blank",
            "title": "Content Too Large",
            "status": 413,
            "detail": f"request body exceeds {limit} bytes",
            "instance": bounded_path(path),
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", PROBLEM_JSON.encode()),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class Metrics:
    """Requests by method, route template (never the raw path: it holds ids) and status."""

    def __init__(self, app: ASGIApp, *, registry: CollectorRegistry) -> None:
        self.app = app
        self.requests = Counter(
            "civis_http_requests",
            "HTTP requests answered",
            ["method", "route", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "civis_http_request_duration_seconds",
            "Time to the end of the response",
            ["method", "route"],
            registry=registry,
            buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 60),
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        start = time.perf_counter()

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route: Any = scope.get("route")
            template = getattr(route, "path", "unmatched")
            self.requests.labels(scope["method"], template, str(status)).inc()
            self.latency.labels(scope["method"], template).observe(time.perf_counter() - start)


_ACCESS_LOGGER = "uvicorn.access"


class BoundedAccessLog(logging.Filter):
    """Cuts the request line of uvicorn's access log, and masks the keys in it.

    The path and query string are the caller's: a refused request must not reach the log in
    full (a 60 KB query string is one line of 60 KB per request otherwise), and a subject's
    pseudonym must not reach it at all, since nothing erases a log line when the subject is
    erased; every 64-hex-digit run becomes `<key>`. uvicorn logs `(client, method, path,
    version, status)` as the record's arguments."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 5 and isinstance(args[2], str):
            path = logged_path(args[2])
            record.args = (args[0], args[1], path, args[3], args[4])
        return True


def bound_access_log() -> None:
    """Install `BoundedAccessLog` once on uvicorn's access logger (idempotent: the lifespan
    of every app instance in a process calls it)."""
    logger = logging.getLogger(_ACCESS_LOGGER)
    if not any(isinstance(f, BoundedAccessLog) for f in logger.filters):
        logger.addFilter(BoundedAccessLog())
