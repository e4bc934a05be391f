"""An upload's connection lets the kernel queue rows for PostgreSQL: a Unix socket's send
buffer is widened, up to what the kernel allows; a TCP socket's is left to TCP's own sizing."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session

from tests.vault.conftest import VaultServices, make_dataset
from vault import db, uploads
from vault.uploads import RecordIn


def _send_buffer(sock: socket.socket) -> int:
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)


def test_a_unix_socket_queues_what_the_kernel_allows() -> None:
    cap = int(Path("/proc/sys/net/core/wmem_max").read_text())
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        before = _send_buffer(a)
        size = 4 * before
        db.widen_send_buffer(a.fileno(), size)
        after = _send_buffer(a)
        assert after >= min(size, cap)  # Linux reports twice what it was given
        if cap > before:
            assert after > before
        a.sendall(b"still open")  # only the duplicate descriptor was closed
        assert b.recv(16) == b"still open"


def test_a_tcp_socket_is_left_to_tcp() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    with server, socket.create_connection(server.getsockname()) as client:
        before = _send_buffer(client)
        db.widen_send_buffer(client.fileno(), 4 * before)
        assert _send_buffer(client) == before


def test_an_upload_widens_its_own_connection(
    session: Session, services: VaultServices, monkeypatch: pytest.MonkeyPatch
) -> None:
    widened: list[int] = []
    monkeypatch.setattr(uploads, "widen_send_buffer", lambda fd, *a: widened.append(fd))
    dataset = make_dataset(session)
    services.uploader.upload(session, dataset.id, [RecordIn("alice", b"{}")])
    connection: Any = session.connection().connection.driver_connection
    assert widened == [connection.pgconn.socket]


def test_a_socket_that_cannot_be_changed_is_left_as_it_is() -> None:
    """A hint, not a condition: a descriptor that is not a socket (or none left to duplicate
    it with) leaves the upload at the default pace, it does not fail it."""
    with open(__file__, "rb") as not_a_socket:
        db.widen_send_buffer(not_a_socket.fileno())
