"""Hostile clients on a replica's client port, against real replica processes on loopback.

Each attack comes from its own loopback source addresses (127.0.0.2 and up: Linux routes all
of 127/8 to `lo`), as it would from its own hosts, while the honest client that must still
be served afterwards dials from 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import struct
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from ledger_bridge import ports
from ledger_bridge.client import AsyncLedgerClient, Receipt
from ledger_bridge.cluster import Cluster
from ledger_bridge.kvapp import encode_set
from ledger_bridge.transport import (
    CLIENT_CONNECTIONS_PER_HOST_MAX,
    HEADER,
    ClientConnection,
    ClientListener,
    RemoteProtocolError,
    encode_frame,
    pack,
    read_frame,
    split_address,
    unpack,
)

pytestmark = pytest.mark.e2e

PARAMS = {"batch_size_max": 50, "batch_wait_ms": 2}
MIB = 1024 * 1024
T = TypeVar("T")


@pytest.fixture()
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with Cluster(tmp_path / "ledger", 4, base_port=ports.cluster_block(4), params=PARAMS) as c:
        c.start()
        c.wait_ready()
        yield c


def _dial(source: str, address: str) -> socket.socket:
    host, port = split_address(address)
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((source, 0))
    s.settimeout(10)
    s.connect((host, port))
    return s


def _closed_by_peer(s: socket.socket) -> bool:
    """True once the replica closed `s` (EOF or reset); never blocks."""
    s.setblocking(False)  # a socket with a timeout would wait for it before the recv
    try:
        return s.recv(65536) == b""
    except BlockingIOError:
        return False
    except OSError as exc:
        return exc.errno in (errno.ECONNRESET, errno.EPIPE)


def _wait_closed(socks: list[socket.socket], at_least: int, timeout_s: float = 30) -> int:
    deadline = time.monotonic() + timeout_s
    closed: set[int] = set()
    while True:
        closed |= {i for i, s in enumerate(socks) if i not in closed and _closed_by_peer(s)}
        if len(closed) >= at_least or time.monotonic() > deadline:
            return len(closed)
        time.sleep(0.05)


def _submit_from_a_fresh_client(cluster: Cluster, key: bytes) -> Receipt:
    """A new honest client (new connections from 127.0.0.1) submits one transaction."""

    async def go() -> Receipt:
        transport = cluster.client_transport()
        client = AsyncLedgerClient(
            transport, cluster.genesis.public_keys(), cluster.genesis.f, timeout_ms=60_000
        )
        try:
            return await client.submit(encode_set(key, b"after the attack"))
        finally:
            await transport.close()

    return asyncio.run(go())


def _rss_bytes(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} for pid {pid}")


def test_one_host_of_idle_sockets_cannot_lock_out_a_new_client(cluster: Cluster) -> None:
    """1,100 idle connections from one host on every replica (over the global limit of
    1,024): the replicas close what is over the per-host limit at once, and a new client on
    another host still gets its request committed."""
    socks: list[socket.socket] = []
    try:
        for address in cluster.client_addresses():
            socks += [_dial("127.0.0.2", address) for _ in range(1100)]
        receipt = _submit_from_a_fresh_client(cluster, b"fresh")
        assert receipt.block_height >= 1
        # What was over the per-host limit was closed, without a byte sent.
        over = len(socks) - 4 * CLIENT_CONNECTIONS_PER_HOST_MAX
        assert _wait_closed(socks, over) == over
    finally:
        for s in socks:
            s.close()


def _partial_frames(
    cluster: Cluster, sources: list[str], per_source: int, announced: int, sent: int
) -> list[socket.socket]:
    """From each source, `per_source` connections to replica 0, each sending a frame header
    announcing `announced` bytes followed by `sent` of them, then nothing."""
    address = cluster.client_addresses()[0]
    socks: list[socket.socket] = []
    body = struct.pack(">I", announced) + b"\x00" * sent
    for source in sources:
        for _ in range(per_source):
            s = _dial(source, address)
            socks.append(s)
            # The replica may close it on the header or when a budget is spent: both fine.
            with contextlib.suppress(OSError):
                s.sendall(body)
    return socks


@pytest.mark.parametrize(
    ("sources", "per_source", "announced", "sent"),
    [
        # A few connections each holding a near-16 MiB frame open.
        (2, 20, 16 * MIB - 1, 4 * MIB),
        # Frames under any unauthenticated limit, from many hosts and connections.
        (16, 60, 200 * 1024, 200 * 1024 - 1),
    ],
    ids=["large-partial-frames", "many-small-partial-frames"],
)
def test_partial_frames_cannot_grow_a_replicas_memory(
    cluster: Cluster, sources: int, per_source: int, announced: int, sent: int
) -> None:
    pid = cluster.pid(0)
    before = _rss_bytes(pid)
    peak_before = _rss_bytes(pid, "VmHWM")
    addresses = [f"127.0.0.{2 + i}" for i in range(sources)]
    socks = _partial_frames(cluster, addresses, per_source, announced, sent)
    try:
        receipt = _submit_from_a_fresh_client(cluster, b"fresh")
        assert receipt.block_height >= 1
        # The peak catches what was buffered and already freed (a closed connection).
        grown = max(_rss_bytes(pid) - before, _rss_bytes(pid, "VmHWM") - peak_before)
        assert grown < 100 * MIB, f"replica 0 grew by {grown // MIB} MiB"
    finally:
        for s in socks:
            s.close()


# -- the same listener on a real socket, with limits small enough to reach in a test ---------


class Server:
    """A real `ClientListener` on loopback. Frames: {"op": "ping"} is answered with a pong,
    {"op": "auth"} authenticates the connection as the node does once a signature verifies,
    anything else is recorded."""

    def __init__(self, **limits: Any) -> None:
        self.listener = ClientListener(self._on_request, **limits)
        self.received: list[int] = []  # sizes of the recorded frames
        self.port = 0

    def _on_request(self, frame: Any, conn: ClientConnection) -> None:
        op = frame.get("op") if isinstance(frame, dict) else None
        if op == "auth":
            conn.authenticate()
        elif op == "ping":
            conn.send({"op": "pong"})
        else:
            self.received.append(len(pack(frame)))

    async def __aenter__(self) -> Server:
        await self.listener.start("127.0.0.1:0")
        assert self.listener._server is not None
        self.port = self.listener._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.listener.stop()

    async def dial(self, source: str = "127.0.0.1") -> tuple[asyncio.StreamReader, Any]:
        return await asyncio.open_connection("127.0.0.1", self.port, local_addr=(source, 0))


async def _closed(reader: asyncio.StreamReader, timeout_s: float = 10) -> bool:
    """True if the server closes the connection within a generous wait (what it sent
    before, such as its challenge, is read and dropped)."""
    try:
        await asyncio.wait_for(reader.read(), timeout_s)
        return True
    except TimeoutError:
        return False
    except ConnectionError:
        return True


async def _pong(reader: asyncio.StreamReader, writer: Any) -> bool:
    """The connection is served: a ping gets its pong (after the listener's challenge, which
    comes first on a connection's first call)."""
    writer.write(encode_frame(pack({"op": "ping"})))
    try:
        frame = await asyncio.wait_for(read_frame(reader), 10)
        if frame is not None and unpack(frame).get("op") == "challenge":
            frame = await asyncio.wait_for(read_frame(reader), 10)
        return frame == pack({"op": "pong"})
    except (TimeoutError, ConnectionError, RemoteProtocolError):
        return False


def _run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 60))


def test_a_frame_never_finished_closes_its_connection_and_others_are_served() -> None:
    async def go() -> None:
        async with Server(read_timeout_ms=300, idle_timeout_ms=60_000) as server:
            honest = await server.dial()
            assert await _pong(*honest)
            slow_reader, slow = await server.dial("127.0.0.2")
            slow.write(struct.pack(">I", 1000) + b"\x00" * 500)  # half a frame, then nothing
            assert await _closed(slow_reader)
            assert server.listener.stats.closed_read_timeout == 1
            assert server.listener.buffered_bytes == 0
            assert await _pong(*honest)

    _run(go())


def test_a_silent_connection_is_closed_and_a_talking_one_is_not() -> None:
    async def go() -> None:
        async with Server(idle_timeout_ms=1000, read_timeout_ms=60_000) as server:
            silent_reader, _ = await server.dial("127.0.0.2")
            talking = await server.dial()
            loop = asyncio.get_running_loop()
            until = loop.time() + 3  # three idle timeouts, a frame every 50 ms
            while loop.time() < until:
                assert await _pong(*talking)
                await asyncio.sleep(0.05)
            assert await _closed(silent_reader)
            assert server.listener.stats.closed_idle == 1
            assert await _pong(*talking)

    _run(go())


def test_a_large_frame_needs_an_authenticated_connection() -> None:
    limits = {"unauthenticated_frame_bytes_max": 1024, "frame_bytes_max": 64 * 1024}
    big = encode_frame(pack({"op": "data", "blob": b"\x00" * 32 * 1024}), 64 * 1024)

    async def go() -> None:
        async with Server(**limits) as server:
            stranger_reader, stranger = await server.dial()
            stranger.write(big)
            assert await _closed(stranger_reader)
            assert server.listener.stats.protocol_errors == 1
            # The frame after the one that authenticates, even in the same write, may be large.
            reader, writer = await server.dial()
            writer.write(encode_frame(pack({"op": "auth"})) + big)
            assert await _pong(reader, writer)
            assert server.received == [len(big) - HEADER.size]

    _run(go())


def test_one_host_gets_only_its_share_of_connections() -> None:
    async def go() -> None:
        async with Server(connections_max=6, connections_per_host_max=4) as server:
            mine = [await server.dial("127.0.0.2") for _ in range(6)]
            assert [await _closed(r, 1) for r, _ in mine[4:]] == [True, True]
            assert all([await _pong(*c) for c in mine[:4]])
            others = [await server.dial("127.0.0.3") for _ in range(3)]
            assert all([await _pong(*c) for c in others[:2]])
            assert await _closed(others[2][0])  # the global limit still holds
            stats = server.listener.stats
            assert stats.refused_over_host_connections_max == 2
            assert stats.refused_over_connections_max == 1

    _run(go())


async def _until_read(server: Server, partials: int) -> None:
    """Wait until the listener holds or has refused `partials` partial frames."""
    listener, loop = server.listener, asyncio.get_running_loop()
    deadline = loop.time() + 10
    while loop.time() < deadline:
        held = listener.buffered_bytes // (30 * 1024 + HEADER.size)
        if held + listener.stats.closed_over_buffer_budget >= partials:
            return
        await asyncio.sleep(0.005)


def test_partial_frames_are_held_within_the_host_and_global_budgets() -> None:
    limits = {
        "frame_bytes_max": 32 * 1024,
        "unauthenticated_frame_bytes_max": 32 * 1024,
        "buffered_bytes_per_host_max": 64 * 1024,
        "buffered_bytes_max": 128 * 1024,
    }
    partial = struct.pack(">I", 31 * 1024) + b"\x00" * 30 * 1024

    async def go() -> None:
        async with Server(**limits) as server:
            conns = []
            for source in ["127.0.0.2"] * 3 + ["127.0.0.3"] * 2 + ["127.0.0.4"]:
                reader, writer = await server.dial(source)
                writer.write(partial)
                await writer.drain()
                conns.append((reader, writer))
                await _until_read(server, len(conns))  # in order: which one overruns matters
            # The third of the first host and the one that overruns the total are closed.
            assert await _closed(conns[2][0]) and await _closed(conns[5][0])
            assert server.listener.stats.closed_over_buffer_budget == 2
            assert server.listener.buffered_bytes <= 128 * 1024
            assert await _pong(*await server.dial("127.0.0.5"))
            for _, writer in conns:
                writer.close()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10
            while server.listener.connections > 1 and loop.time() < deadline:
                await asyncio.sleep(0.01)
            assert server.listener.buffered_bytes == 0  # every byte charged was given back

    _run(go())
