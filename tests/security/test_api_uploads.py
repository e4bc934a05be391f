"""Stalled uploads over real sockets: one provider cannot take the API down by sending slowly.

The attack: many chunked uploads that send their headers and a first chunk, then nothing. A
route that holds a worker thread and a database connection while it waits for the body lets a
few dozen such sockets starve both pools, and every other caller waits or gets a 500. What a
user would notice, and what these tests check on a real uvicorn server: other callers keep
getting answers, the stalled uploads beyond a key's share are refused at once (429), an
admitted upload that stalls is cut (408) and its slot and connection are given back.
"""

from __future__ import annotations

import logging
import socket
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass

import httpx
import pytest

from api.http.app import create_app
from api.http.settings import Settings
from tests.api.conftest import MakeKey, api_database_url, api_settings, make_key  # noqa: F401
from tests.conftest import served

STALLED_UPLOADS = 45
ATTACKER_KEYS = 3
PROBES = 6
# Generous: a probe must be answered, not answered fast (no latency is asserted).
PROBE_TIMEOUT_S = 20.0
NDJSON = "application/x-ndjson"


@dataclass
class Server:
    url: str
    host: str
    port: int


@pytest.fixture()
def server(
    request: pytest.FixtureRequest,
    api_settings: Settings,  # noqa: F811
    api_database_url: str,  # noqa: F811
) -> Iterator[Server]:
    """The real app behind a real uvicorn server on a loopback port, in a thread."""
    overrides: dict[str, object] = getattr(request, "param", {})
    settings = api_settings.model_copy(
        update={"uploads_per_key_max": 2, "uploads_max": 4, **overrides}
    )
    app = create_app(settings, database_url=api_database_url)
    with served(app, timeout_graceful_shutdown=5) as (url, port):
        yield Server(url, "127.0.0.1", port)


def _dataset(url: str, headers: dict[str, str]) -> str:
    body = {
        "name": f"meters-{uuid.uuid4().hex[:8]}",
        "category": "energy",
        "purposes": ["billing"],
        "retention_days": 30,
        "legal_basis": "contract",
    }
    r = httpx.post(f"{url}/v1/datasets", json=body, headers=headers, timeout=PROBE_TIMEOUT_S)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def _stall(server: Server, dataset: str, authorization: str) -> socket.socket:
    """Headers and the start of a first record, then silence: the socket stays open."""
    sock = socket.create_connection((server.host, server.port), timeout=PROBE_TIMEOUT_S)
    head = (
        f"POST /v1/datasets/{dataset}/uploads HTTP/1.1\r\n"
        f"Host: {server.host}\r\nAuthorization: {authorization}\r\n"
        f"Content-Type: {NDJSON}\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    first = b'{"subject_id":"s'
    sock.sendall(head.encode() + f"{len(first):x}\r\n".encode() + first + b"\r\n")
    return sock


def _status(sock: socket.socket) -> int | None:
    """The status line the server sent on a stalled socket, or None if it sent nothing yet."""
    sock.settimeout(0.5)
    try:
        data = sock.recv(64)
    except TimeoutError:
        return None
    return int(data.split(b" ")[1]) if data.startswith(b"HTTP/1.1 ") else None


def test_stalled_uploads_leave_the_api_answering_other_callers(
    server: Server,
    make_key: MakeKey,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    attackers = [make_key("provider") for _ in range(ATTACKER_KEYS)]
    datasets = [_dataset(server.url, h) for h in attackers]
    with ExitStack() as stack:
        sockets = []
        for i in range(STALLED_UPLOADS):
            sock = _stall(
                server, datasets[i % ATTACKER_KEYS], attackers[i % ATTACKER_KEYS]["Authorization"]
            )
            stack.callback(sock.close)
            sockets.append(sock)
        bystander = make_key("provider")
        answers = [
            httpx.get(f"{server.url}/v1/datasets", headers=bystander, timeout=PROBE_TIMEOUT_S)
            for _ in range(PROBES)
        ]
        assert [r.status_code for r in answers] == [200] * PROBES
        statuses = [_status(s) for s in sockets]
    # Beyond a key's share (429), and beyond the instance's (503), a stalled upload is refused
    # at once; the 4 the instance admitted are still waiting for their body.
    assert statuses.count(None) == 4
    assert {429, 503} == set(statuses) - {None}
    logged = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("httpx"))
    assert "QueuePool" not in logged


@pytest.mark.parametrize("server", [{"body_idle_timeout_s": 1.0}], indirect=True)
def test_an_admitted_upload_that_stalls_is_cut_and_gives_its_slot_back(
    server: Server,
    make_key: MakeKey,  # noqa: F811
) -> None:
    owner = make_key("provider")
    ds = _dataset(server.url, owner)
    with ExitStack() as stack:
        stalled = [_stall(server, ds, owner["Authorization"]) for _ in range(2)]
        for sock in stalled:
            stack.callback(sock.close)
        # Both of the key's slots are taken: a third upload is refused with a problem.
        r = httpx.post(
            f"{server.url}/v1/datasets/{ds}/uploads",
            content=b'{"subject_id":"s1","payload":{}}\n',
            headers={**owner, "content-type": NDJSON},
            timeout=PROBE_TIMEOUT_S,
        )
        assert r.status_code == 429
        assert r.headers["content-type"] == "application/problem+json"
        for sock in stalled:
            sock.settimeout(PROBE_TIMEOUT_S)
            answer = sock.recv(4096)
            assert answer.startswith(b"HTTP/1.1 408 "), answer[:100]
            assert b"application/problem+json" in answer
    # The slots are free again, and the cut uploads stored nothing.
    r = httpx.post(
        f"{server.url}/v1/datasets/{ds}/uploads",
        content=b'{"subject_id":"s1","payload":{}}\n',
        headers={**owner, "content-type": NDJSON},
        timeout=PROBE_TIMEOUT_S,
    )
    assert r.status_code == 201, r.text
    listed = httpx.get(f"{server.url}/v1/datasets/{ds}/uploads", headers=owner, timeout=10)
    assert [u["record_count"] for u in listed.json()] == [1]
