"""Hostile connections on a replica's peer port (replica-to-replica links), without TLS.

Without TLS, anyone who reaches the peer port can dial it and claim to be replica k. These
attacks run against a real `PeerNetwork`/`PeerListener` on loopback sockets, and one against
real replica processes. Attackers dial from their own loopback source addresses (127.0.0.2
and up: Linux routes all of 127/8 to `lo`), as they would from their own hosts; the honest
replicas dial from 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import struct
import time
from collections.abc import AsyncIterator, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from ledger_bridge import ports
from ledger_bridge.client import AsyncLedgerClient, Receipt
from ledger_bridge.cluster import Cluster
from ledger_bridge.crypto import SigningKey
from ledger_bridge.kvapp import encode_set
from ledger_bridge.transport import (
    HELLO_BYTES_MAX,
    HELLO_VERSION,
    PeerLimits,
    PeerListener,
    PeerNetwork,
    encode_frame,
    hello_transcript,
    pack,
    read_frame,
    split_address,
    unpack,
)

T = TypeVar("T")
MIB = 1024 * 1024
KEYS = [SigningKey(bytes([i + 1]) * 32) for i in range(4)]
VERIFY_KEYS = [k.public_key for k in KEYS]
LIMITS = PeerLimits()
Got = list[tuple[int, bytes]]


def _run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 60))


def _free_ports(k: int) -> list[int]:
    socks = [socket.socket() for _ in range(k)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    found = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return found


def _loopback_addresses() -> dict[int, str]:
    """A free loopback address for each replica of a 4-replica cluster."""
    return {i: f"127.0.0.1:{p}" for i, p in enumerate(_free_ports(4))}


class Replicas:
    """Real `PeerNetwork`s for replicas `ids` of a 4-replica cluster on loopback; what each
    one's listener delivers is recorded in `got[id]`."""

    def __init__(self, ids: list[int], addresses: dict[int, str] | None = None, **limits: Any):
        self.addresses = addresses or _loopback_addresses()
        self.got: dict[int, Got] = {i: [] for i in ids}
        self.nets = {
            i: PeerNetwork(
                i,
                self.addresses,
                self._recorder(i),
                signing_key=KEYS[i],
                verify_keys=VERIFY_KEYS,
                **limits,
            )
            for i in ids
        }

    def _recorder(self, i: int) -> Any:
        return lambda peer, payload: self.got[i].append((peer, payload))

    def listener(self, i: int) -> PeerListener:
        return self.nets[i]._listener

    async def __aenter__(self) -> Replicas:
        for i, net in self.nets.items():
            await net.start(self.addresses[i])
        return self

    async def __aexit__(self, *exc: object) -> None:
        for net in self.nets.values():
            await net.stop()


async def _dial(address: str, source: str = "127.0.0.2") -> tuple[asyncio.StreamReader, Any]:
    host, port = split_address(address)
    return await asyncio.open_connection(host, port, local_addr=(source, 0))


async def _closed(reader: asyncio.StreamReader, timeout_s: float = 10) -> bool:
    """True once the listener closed the connection (EOF or reset) within `timeout_s`."""
    try:
        while await asyncio.wait_for(reader.read(65536), timeout_s):
            pass
    except TimeoutError:
        return False
    except ConnectionError:
        pass
    return True


async def _until(cond: Any, timeout_s: float = 10) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not cond():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


def _held(listener: PeerListener) -> int:
    return listener.connections


async def _challenge(reader: asyncio.StreamReader) -> bytes:
    frame = await asyncio.wait_for(read_frame(reader, HELLO_BYTES_MAX), 10)
    assert frame is not None
    challenge: bytes = unpack(frame)["challenge"]
    return challenge


# -- a stranger without a validator key ------------------------------------------------------


def test_a_stranger_cannot_speak_for_a_replica() -> None:
    """A hello claiming replica 1, signed over the right transcript by a key that is not
    replica 1's, then a frame."""

    async def go() -> tuple[Got, bool]:
        async with Replicas([0]) as r:
            reader, writer = await _dial(r.addresses[0])
            transcript = hello_transcript(await _challenge(reader), 1, 0)
            hello = {"v": HELLO_VERSION, "from": 1, "sig": SigningKey.generate().sign(transcript)}
            writer.write(encode_frame(pack(hello)) + encode_frame(b"forged"))
            closed = await _closed(reader)
            writer.close()
            await asyncio.sleep(0.05)
            return r.got[0], closed

    got, closed = _run(go())
    assert got == []
    assert closed


async def _relay(target: str, record: bytearray) -> tuple[asyncio.Server, str]:
    """A loopback relay to `target` recording what the dialling side sends: what an
    eavesdropper on the path between two replicas sees."""

    async def pipe(src: asyncio.StreamReader, dst: Any, into: bytearray | None) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await src.read(65536):
                if into is not None:
                    into += data
                dst.write(data)
        dst.close()

    async def serve(reader: asyncio.StreamReader, writer: Any) -> None:
        host, port = split_address(target)
        up_reader, up_writer = await asyncio.open_connection(host, port)
        await asyncio.gather(pipe(reader, up_writer, record), pipe(up_reader, writer, None))

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, f"127.0.0.1:{server.sockets[0].getsockname()[1]}"


def _first_frame(data: bytes) -> bytes:
    (length,) = struct.unpack_from(">I", data)
    return data[: 4 + length]


def test_a_captured_hello_cannot_be_replayed_to_the_same_or_another_replica() -> None:
    async def go() -> tuple[Got, Got, list[bool]]:
        async with Replicas([0, 2]) as r:
            captured = bytearray()
            relay, relay_address = await _relay(r.addresses[0], captured)
            # Replica 1 reaches replica 0 through the eavesdropper.
            net1 = PeerNetwork(
                1,
                {**r.addresses, 0: relay_address},
                lambda p, b: None,
                signing_key=KEYS[1],
                verify_keys=VERIFY_KEYS,
            )
            await net1.start(r.addresses[1])
            net1.send(0, b"honest")
            assert await _until(lambda: (1, b"honest") in r.got[0])
            await net1.stop()
            relay.close()
            hello = _first_frame(bytes(captured))
            closed = []
            for target in (0, 2):
                reader, writer = await _dial(r.addresses[target])
                writer.write(hello + encode_frame(b"replayed"))
                closed.append(await _closed(reader))
                writer.close()
            await asyncio.sleep(0.05)
            return r.got[0], r.got[2], closed

    got0, got2, closed = _run(go())
    assert (1, b"replayed") not in got0
    assert got2 == []
    assert closed == [True, True]


@pytest.mark.parametrize(
    ("hosts", "per_host"), [(1, 300), (40, 10)], ids=["one-host", "many-hosts"]
)
def test_silent_connections_are_bounded_and_a_replica_still_gets_in(
    hosts: int, per_host: int
) -> None:
    """Connections that never send a hello hold a descriptor each: over a few per host and a
    small total they are closed, and replica 1 still connects and delivers."""

    async def go() -> tuple[int, Got]:
        async with Replicas([0, 1]) as r:
            conns = [
                await _dial(r.addresses[0], f"127.0.0.{2 + h}")
                for h in range(hosts)
                for _ in range(per_host)
            ]
            r.nets[1].send(0, b"honest")
            assert await _until(lambda: (1, b"honest") in r.got[0])
            held = _held(r.listener(0))
            for _, writer in conns:
                writer.close()
            return held, r.got[0]

    held, got = _run(go())
    assert got == [(1, b"honest")]
    most = min(hosts * LIMITS.unauthenticated_per_host_max, LIMITS.unauthenticated_max) + 1
    assert held <= most, f"replica 0 holds {held} connections"


# -- a validator key holder (a Byzantine replica) ------------------------------------------


async def _hello_as(replica: int, address: str, source: str = "127.0.0.2") -> tuple[Any, Any]:
    """A connection authenticated as `replica` would (its key, replica 0's challenge)."""
    reader, writer = await _dial(address, source)
    signature = KEYS[replica].sign(hello_transcript(await _challenge(reader), replica, 0))
    writer.write(encode_frame(pack({"v": HELLO_VERSION, "from": replica, "sig": signature})))
    return reader, writer


def test_a_replica_gets_one_connection_and_its_partial_frames_go_with_the_others() -> None:
    """Replica 1's key holder dials ten times, each connection holding a partial frame:
    only the newest connection stays, and it still delivers."""

    async def go() -> tuple[list[bool], Got]:
        async with Replicas([0]) as r:
            conns = []
            for _ in range(10):
                reader, writer = await _hello_as(1, r.addresses[0])
                writer.write(struct.pack(">I", MIB) + os.urandom(100_000))
                await writer.drain()
                conns.append((reader, writer))
            closed = [await _closed(reader) for reader, _ in conns[:-1]]
            _, newest = conns[-1]
            newest.write(os.urandom(MIB - 100_000) + encode_frame(b"newest"))
            assert await _until(lambda: (1, b"newest") in r.got[0])
            for _, writer in conns:
                writer.close()
            return closed, r.got[0][-1:]

    closed, got = _run(go())
    assert closed == [True] * 9
    assert got == [(1, b"newest")]


def test_a_silent_link_is_closed_and_a_talking_one_is_not() -> None:
    async def go() -> tuple[bool, bool, int]:
        # Idle after 2 s, heartbeats every 100 ms: a stall of the loop up to ~1.9 s is fine.
        async with Replicas([0], limits=PeerLimits(idle_timeout_ms=2000)) as r:
            silent, _ = await _hello_as(1, r.addresses[0])
            talking_reader, talking = await _hello_as(2, r.addresses[0], "127.0.0.3")
            for i in range(40):  # 4 s of heartbeats, one per 100 ms
                talking.write(encode_frame(f"status {i}".encode()))
                await asyncio.sleep(0.1)
            silent_closed = await _closed(silent, 10)
            talking_closed = await _closed(talking_reader, 0.1)
            return silent_closed, talking_closed, sum(p == 2 for p, _ in r.got[0])

    silent_closed, talking_closed, heartbeats = _run(go())
    assert silent_closed
    assert not talking_closed
    assert heartbeats == 40


def test_a_frame_never_finished_closes_the_link() -> None:
    async def go() -> bool:
        limits = PeerLimits(idle_timeout_ms=60_000, read_timeout_ms=500)
        async with Replicas([0], limits=limits) as r:
            reader, writer = await _hello_as(1, r.addresses[0])
            writer.write(struct.pack(">I", 1000) + b"x" * 10)
            return await _closed(reader, 10)

    assert _run(go())


async def _challenges_then_never_reads(
    writers: list[asyncio.StreamWriter],
) -> tuple[asyncio.Server, str]:
    """A peer that sends its challenge and then reads nothing: a Byzantine replica (or a stuck
    one) whose socket buffers fill with what it is sent."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(encode_frame(pack({"v": HELLO_VERSION, "challenge": os.urandom(32)})))
        writers.append(writer)
        with contextlib.suppress(ConnectionError):
            await asyncio.sleep(3600)

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, f"127.0.0.1:{server.sockets[0].getsockname()[1]}"


def _dialling(addresses: dict[int, str]) -> PeerNetwork:
    """Replica 1's links to peers that are not there: each dials, is refused, backs off."""
    return PeerNetwork(
        1, addresses, lambda p, b: None, signing_key=KEYS[1], verify_keys=VERIFY_KEYS
    )


@contextlib.asynccontextmanager
async def _linked_to_a_stuck_peer() -> AsyncIterator[PeerNetwork]:
    """Replica 1 started, its link to replica 0 answered by `_challenges_then_never_reads`."""
    writers: list[asyncio.StreamWriter] = []
    stuck, stuck_address = await _challenges_then_never_reads(writers)
    addresses = _loopback_addresses()
    net1 = _dialling({**addresses, 0: stuck_address})
    await net1.start(addresses[1])
    try:
        assert await _until(lambda: writers != [])
        yield net1
    finally:
        await net1.stop()
        stuck.close()
        for writer in writers:
            writer.transport.abort()


def test_a_peer_that_never_reads_does_not_hold_up_stopping() -> None:
    """Replica 1 has megabytes queued for a peer that stopped reading; stopping replica 1
    (its SIGTERM, a restart) returns at once instead of waiting for the peer to drain them."""

    async def go() -> float:
        async with _linked_to_a_stuck_peer() as net1:
            for _ in range(64):  # 64 MiB: far more than the socket buffers on both sides hold
                net1.send(0, b"x" * MIB)
                await asyncio.sleep(0)
            began = time.monotonic()
            await asyncio.wait_for(net1.stop(), 30)
            return time.monotonic() - began

    assert _run(go()) < 2.0


def test_stopping_a_link_passes_on_its_callers_cancellation() -> None:
    """A caller cancelled while it stops a link is cancelled, not resumed as if it had not
    been (a shutdown with a deadline must be able to give up)."""

    async def go() -> bool:
        async with _linked_to_a_stuck_peer() as net1:
            stopping = asyncio.get_running_loop().create_task(net1.stop())
            await asyncio.sleep(0)
            stopping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stopping
            return stopping.cancelled()

    assert _run(go())


def test_a_link_stopped_while_its_dial_is_refused_stops() -> None:
    """Stopped at any moment of its redial loop, a link ends. On Python 3.11 `asyncio.wait_for`
    drops a cancellation that lands as the dial fails and hands back the dial's error, which
    the loop took for a refused dial, and redialled for ever: with `wait_for` and links that
    end by aborting, 6 of these 200 stops never ended."""

    async def go() -> int:
        rng = random.Random(7)
        stuck = 0
        for _ in range(200):
            addresses = _loopback_addresses()
            net = _dialling(addresses)
            await net.start(addresses[1])
            await asyncio.sleep(rng.random() * 0.03)
            try:
                await asyncio.wait_for(net.stop(), 1.0)
            except TimeoutError:
                stuck += 1
        return stuck

    assert _run(go()) == 0


def test_a_stop_in_a_cancelled_tasks_clean_up_stops_every_link() -> None:
    """A replica's owner task cancelled, its clean-up stops the network: every link and the
    listener end, not only those before the first await."""

    async def go() -> tuple[list[bool], bool]:
        addresses = _loopback_addresses()
        net = _dialling(addresses)

        async def owner() -> None:
            await net.start(addresses[1])
            try:
                await asyncio.sleep(3600)
            finally:
                await net.stop()

        task = asyncio.get_running_loop().create_task(owner())
        await asyncio.sleep(0.1)
        task.cancel()
        await asyncio.wait([task])
        links = [s._task is not None and s._task.done() for s in net._senders.values()]
        server = net._listener._server
        return links, server is not None and server.is_serving()

    links, serving = _run(go())
    assert links == [True, True, True]
    assert not serving


# -- real replica processes --------------------------------------------------------------


def _rss_bytes(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} for pid {pid}")


@pytest.fixture()
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    params = {"batch_size_max": 50, "batch_wait_ms": 2}
    with Cluster(tmp_path / "ledger", 4, base_port=ports.cluster_block(4), params=params) as c:
        c.start()
        c.wait_ready()
        yield c


def _impostors(address: str, count: int, announced: int, sent: int) -> list[socket.socket]:
    """`count` connections, each claiming a replica in its hello, announcing a frame of
    `announced` bytes and sending `sent` of them."""
    host, port = split_address(address)
    socks = []
    for i in range(count):
        s = socket.socket()
        s.bind((f"127.0.0.{2 + i % 3}", 0))
        s.settimeout(10)
        s.connect((host, port))
        socks.append(s)
        hello = {"v": HELLO_VERSION, "from": 1 + i % 3, "sig": bytes(64)}
        with contextlib.suppress(OSError):
            s.sendall(encode_frame(pack(hello)) + struct.pack(">I", announced) + bytes(sent))
    return socks


def _silent(address: str, hosts: int, per_host: int) -> list[socket.socket]:
    host, port = split_address(address)
    socks = []
    for h in range(hosts):
        for _ in range(per_host):
            s = socket.socket()
            s.bind((f"127.0.0.{10 + h}", 0))
            s.settimeout(10)
            with contextlib.suppress(OSError):
                s.connect((host, port))
            socks.append(s)
    return socks


def _submit(cluster: Cluster, key: bytes) -> Receipt:
    async def go() -> Receipt:
        transport = cluster.client_transport()
        client = AsyncLedgerClient(
            transport, cluster.genesis.public_keys(), cluster.genesis.f, timeout_ms=60_000
        )
        try:
            return await client.submit(encode_set(key, b"under attack"))
        finally:
            await transport.close()

    return asyncio.run(go())


@pytest.mark.e2e
def test_impostors_on_the_peer_port_neither_grow_a_replica_nor_stop_commits(
    cluster: Cluster,
) -> None:
    """Twelve connections claiming replicas 1-3, each sending 16 MiB of a 256 MiB frame, and
    200 silent connections from 20 hosts, on replica 0's peer port: replica 0 does not hold
    the frames, and the cluster, replica 0 included, still commits."""
    address = cluster.genesis.validators[0].address
    pid = cluster.pid(0)
    before, peak_before = _rss_bytes(pid), _rss_bytes(pid, "VmHWM")
    socks = _silent(address, 20, 10)
    try:
        socks += _impostors(address, 12, 256 * MIB - 1, 16 * MIB)
        receipt = _submit(cluster, b"fresh")
        assert receipt.block_height >= 1
        deadline = time.monotonic() + 30
        while (cluster.status(0) or {}).get("height", 0) < receipt.block_height:
            assert time.monotonic() < deadline, "replica 0 did not commit"
            time.sleep(0.1)
        grown = max(_rss_bytes(pid) - before, _rss_bytes(pid, "VmHWM") - peak_before)
        assert grown < 64 * MIB, f"replica 0 grew by {grown // MIB} MiB"
        # The operator sees it: the refusals are counted in the replica's status.
        peer_port = (cluster.status(0) or {})["peer_port"]
        assert peer_port["protocol_errors"] + peer_port["evicted_unauthenticated"] >= 12
    finally:
        for s in socks:
            s.close()
