"""Slowloris: a request whose line and headers trickle in, one line every so often.

Against uvicorn's own HTTP protocol the trickle holds its connection as long as it goes on
(the attack, shown here so that the test would notice a server that bounds it some other way);
`HeadDeadlineProtocol`, which `civis-vault up` serves with, answers 408 problem+json and closes
the connection once the head is `head_timeout_s` late, whatever trickles in meanwhile. A
request whose head arrives in time is served as before, on the same connection after it.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from api.http.head_deadline import HeadDeadlineProtocol

HEAD_TIMEOUT_S = 1.0
TRICKLE_S = 0.25  # one header line this often: each comes well inside any idle timeout


class _Short(HeadDeadlineProtocol):
    head_timeout_s = HEAD_TIMEOUT_S


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
    )
    await send({"type": "http.response.body", "body": b"ok"})


def _serving(protocol: type[HttpToolsProtocol]) -> Iterator[int]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    config = uvicorn.Config(_app, http=protocol, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[listener])))
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.started
    try:
        yield listener.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture()
def guarded() -> Iterator[int]:
    yield from _serving(_Short)


@pytest.fixture()
def plain() -> Iterator[int]:
    yield from _serving(HttpToolsProtocol)


def _trickle(port: int, seconds: float) -> tuple[bytes, float]:
    """Send a request line, then a header line every `TRICKLE_S`, for `seconds` or until the
    server answers or closes; what it answered, and when it did (inf if it never did)."""
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.settimeout(TRICKLE_S)
        started = time.monotonic()
        conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        answer = b""
        for i in range(int(seconds / TRICKLE_S)):
            try:
                chunk = conn.recv(65536)
            except TimeoutError:
                try:
                    conn.sendall(f"X-Slow-{i}: y\r\n".encode())
                except OSError:
                    return answer, time.monotonic() - started
                continue
            answer += chunk
            if not chunk:
                return answer, time.monotonic() - started
        return answer, float("inf")


def test_the_trickle_holds_a_plain_uvicorn_connection(plain: int) -> None:
    """The attack: without a deadline on the head, 4 s of trickle get no answer at all."""
    answer, closed_after = _trickle(plain, 4 * HEAD_TIMEOUT_S)
    assert answer == b"" and closed_after == float("inf")


def test_a_trickled_head_gets_a_408_problem_and_the_connection_closed(guarded: int) -> None:
    answer, closed_after = _trickle(guarded, 8 * HEAD_TIMEOUT_S)
    assert HEAD_TIMEOUT_S <= closed_after < 6 * HEAD_TIMEOUT_S, closed_after
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 ")
    assert b"content-type: application/problem+json" in head.lower()
    problem = json.loads(body)
    assert problem["status"] == 408 and problem["title"] == "Request Timeout"
    assert "X-Slow" not in problem["detail"]


def test_a_connection_that_sends_nothing_is_closed_too(guarded: int) -> None:
    with socket.create_connection(("127.0.0.1", guarded)) as conn:
        conn.settimeout(6 * HEAD_TIMEOUT_S)
        started = time.monotonic()
        answer = conn.recv(65536)
        assert answer.startswith(b"HTTP/1.1 408 ")
        assert time.monotonic() - started >= HEAD_TIMEOUT_S * 0.9


def test_heads_in_time_are_served_on_one_connection_past_the_deadline(guarded: int) -> None:
    """Each request's head has its own deadline: requests spread over three deadlines on one
    keep-alive connection are each answered."""
    with socket.create_connection(("127.0.0.1", guarded)) as conn:
        conn.settimeout(5)
        for _ in range(3):
            conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = b""
            while not answer.endswith(b"\r\n\r\nok"):
                chunk = conn.recv(65536)
                assert chunk, answer
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 200 ")
            time.sleep(HEAD_TIMEOUT_S * 0.6)
