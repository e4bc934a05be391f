"""Slowloris and oversized heads: a request whose line and headers trickle in, or never end.

Against uvicorn's own HTTP protocol the trickle holds its connection as long as it goes on
(the attack, shown here so that the test would notice a server that bounds it some other way);
`HeadDeadlineProtocol`, which `civis-vault up` serves with, answers 408 problem+json and closes
the connection once the head is `head_timeout_s` late, whatever trickles in meanwhile, and 431
once it passes `head_bytes_max`. A request whose head arrives in time is served as before, on
the same connection after it.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from api.http.head_deadline import HeadDeadlineProtocol
from tests.conftest import served

HEAD_TIMEOUT_S = 1.0
HEAD_BYTES_MAX = 8 * 1024
TRICKLE_S = 0.3  # one header line this often: each comes well inside any idle timeout
SLACK = 0.9  # the server's clock starts a little before the client's


class _Short(HeadDeadlineProtocol):
    head_timeout_s = HEAD_TIMEOUT_S
    head_bytes_max = HEAD_BYTES_MAX


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    start = {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
    await send(start)
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture()
def guarded() -> Iterator[int]:
    with served(_app, http=_Short, lifespan="off") as (_, port):
        yield port


@pytest.fixture()
def plain() -> Iterator[int]:
    with served(_app, http=HttpToolsProtocol, lifespan="off") as (_, port):
        yield port


def _recv(conn: socket.socket) -> bytes | None:
    """What the server sent, b"" once it closed (a reset too), None if nothing came in time."""
    try:
        return conn.recv(65536)
    except TimeoutError:
        return None
    except OSError:
        return b""


def _trickle(port: int, seconds: float, first: bytes = b"") -> tuple[bytes, float]:
    """After `first` (a whole request, read back), a request line, then a header line every
    `TRICKLE_S`, for `seconds` or until the server closes: what it sent after `first`'s answer,
    and when it closed (inf if it never did)."""
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.settimeout(5)
        if first:
            conn.sendall(first)
            _read_ok(conn)
        conn.settimeout(TRICKLE_S)
        started = time.monotonic()
        conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        answer = b""
        for i in range(int(seconds / TRICKLE_S)):
            chunk = _recv(conn)
            if chunk is None:
                try:
                    conn.sendall(f"X-Slow-{i}: y\r\n".encode())
                except OSError:
                    return answer, time.monotonic() - started
                continue
            if not chunk:
                return answer, time.monotonic() - started
            answer += chunk
        return answer, float("inf")


def _read_ok(conn: socket.socket) -> None:
    answer = b""
    while not answer.endswith(b"\r\n\r\nok"):
        chunk = conn.recv(65536)
        assert chunk, answer
        answer += chunk
    assert answer.startswith(b"HTTP/1.1 200 ")


def _assert_refused(answer: bytes, status: int) -> dict[str, Any]:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(f"HTTP/1.1 {status} ".encode()), answer[:80]
    assert b"content-type: application/problem+json" in head.lower()
    problem: dict[str, Any] = json.loads(body)
    assert problem["status"] == status and "X-Slow" not in problem["detail"]
    return problem


def test_the_trickle_holds_a_plain_uvicorn_connection(plain: int) -> None:
    """The attack: without a deadline on the head, 4 s of trickle get no answer at all."""
    answer, closed_after = _trickle(plain, 4 * HEAD_TIMEOUT_S)
    assert answer == b"" and closed_after == float("inf")


def test_a_trickled_head_gets_a_408_problem_and_the_connection_closed(guarded: int) -> None:
    answer, closed_after = _trickle(guarded, 8 * HEAD_TIMEOUT_S)
    assert SLACK * HEAD_TIMEOUT_S <= closed_after < 6 * HEAD_TIMEOUT_S, closed_after
    assert _assert_refused(answer, 408)["title"] == "Request Timeout"


def test_a_trickled_head_after_a_served_request_is_refused_too(guarded: int) -> None:
    """The deadline runs for every request of a connection, not only its first."""
    first = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    answer, closed_after = _trickle(guarded, 8 * HEAD_TIMEOUT_S, first)
    assert closed_after < 6 * HEAD_TIMEOUT_S and _assert_refused(answer, 408)


def test_a_blank_line_after_a_response_does_not_stop_every_clock(guarded: int) -> None:
    """A bare CRLF starts no request (the parser skips it) but cancels uvicorn's keep-alive
    timer: the head deadline must run from it, or the connection is held for ever."""
    with socket.create_connection(("127.0.0.1", guarded)) as conn:
        conn.settimeout(5)
        conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        _read_ok(conn)
        conn.sendall(b"\r\n")
        conn.settimeout(6 * HEAD_TIMEOUT_S)
        answer = _recv(conn)
        assert answer is not None, "the connection was held"
        assert _assert_refused(answer, 408)


def test_a_connection_that_sends_nothing_is_closed_too(guarded: int) -> None:
    with socket.create_connection(("127.0.0.1", guarded)) as conn:
        conn.settimeout(6 * HEAD_TIMEOUT_S)
        started = time.monotonic()
        answer = _recv(conn)
        assert answer is not None and _assert_refused(answer, 408)
        assert time.monotonic() - started >= SLACK * HEAD_TIMEOUT_S


def test_a_head_over_its_size_bound_is_a_431(guarded: int) -> None:
    with socket.create_connection(("127.0.0.1", guarded)) as conn:
        conn.settimeout(5)
        conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        try:
            for i in range(4 * HEAD_BYTES_MAX // 1024):
                conn.sendall(f"X-Big-{i}: {'y' * 1000}\r\n".encode())
        except OSError:
            pass  # closed while still sending: the answer is read below
        answer = b""
        while (chunk := _recv(conn)) not in (None, b""):
            answer += chunk
        assert _assert_refused(answer, 431)["status"] == 431


def test_heads_in_time_are_served_on_one_connection_past_the_deadline(guarded: int) -> None:
    """Each request's head has its own deadline: requests spread over two deadlines on one
    keep-alive connection are each answered."""
    with socket.create_connection(("127.0.0.1", guarded)) as conn:
        conn.settimeout(5)
        for i in range(3):
            if i:
                time.sleep(HEAD_TIMEOUT_S * 0.6)
            conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            _read_ok(conn)
