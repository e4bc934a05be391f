"""Frames between replicas: limits, malformed input, the signed hello, delivery, reconnection
and mutual TLS."""

from __future__ import annotations

import asyncio
import itertools
import ssl
import struct
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger_bridge import tls
from ledger_bridge.crypto import SigningKey
from ledger_bridge.transport import (
    HEADER,
    HELLO_BYTES_MAX,
    HELLO_VERSION,
    ClientListener,
    FrameBuffer,
    FrameTooLarge,
    PeerLimits,
    PeerListener,
    PeerNetwork,
    RemoteProtocolError,
    TransportStats,
    encode_frame,
    hello_transcript,
    host_key,
    pack,
    read_frame,
    unpack,
)

T = TypeVar("T")
KEYS = [SigningKey(bytes([i + 1]) * 32) for i in range(4)]
VERIFY_KEYS = [k.public_key for k in KEYS]


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 20))


def _reader(data: bytes) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    return reader


def test_frames_round_trip_and_a_clean_eof_is_none() -> None:
    async def go() -> list[bytes | None]:
        reader = _reader(encode_frame(b"abc") + encode_frame(b"") + encode_frame(b"x" * 1000))
        return [await read_frame(reader) for _ in range(4)]

    assert run(go()) == [b"abc", b"", b"x" * 1000, None]


def test_an_oversized_length_is_refused_before_the_body_is_read() -> None:
    async def go() -> None:
        # Header claims 1 GiB; only 3 bytes follow. We must refuse on the header alone.
        await read_frame(_reader(struct.pack(">I", 1 << 30) + b"abc"), 1024)

    with pytest.raises(FrameTooLarge):
        run(go())


@pytest.mark.parametrize("data", [b"\x00\x00", b"\x00\x00\x00\x05ab"])
def test_a_stream_cut_inside_a_frame_is_a_protocol_error(data: bytes) -> None:
    async def go() -> bytes | None:
        return await read_frame(_reader(data))

    with pytest.raises(RemoteProtocolError):
        run(go())


def test_garbage_msgpack_is_a_protocol_error_not_a_crash() -> None:
    with pytest.raises(RemoteProtocolError):
        unpack(b"\xc1\xc1\xc1")
    assert unpack(pack({"a": b"\x00"})) == {"a": b"\x00"}


async def _listener(
    got: list[tuple[int, bytes]], ssl_ctx: ssl.SSLContext | None = None
) -> tuple[PeerListener, int, TransportStats]:
    stats = TransportStats()
    lst = PeerListener(
        0, VERIFY_KEYS, lambda p, b: got.append((p, b)), stats, ssl_ctx, frame_bytes_max=1024
    )
    await lst.start("127.0.0.1:0")
    assert lst._server is not None
    port = lst._server.sockets[0].getsockname()[1]
    return lst, port, stats


async def _signed_hello(
    reader: asyncio.StreamReader, replica: int, key: SigningKey | None = None, to: int = 0
) -> bytes:
    """The hello frame `replica` answers the listener's challenge with (signed by `key`,
    replica's own by default, for listener `to`)."""
    frame = await asyncio.wait_for(read_frame(reader, HELLO_BYTES_MAX), 5)
    assert frame is not None
    challenge = unpack(frame)["challenge"]
    signature = (key or KEYS[replica]).sign(hello_transcript(challenge, replica, to))
    return encode_frame(pack({"v": HELLO_VERSION, "from": replica, "sig": signature}))


def test_an_oversized_frame_closes_the_connection_and_is_counted() -> None:
    async def go() -> tuple[list[tuple[int, bytes]], bytes, int]:
        got: list[tuple[int, bytes]] = []
        lst, port, stats = await _listener(got)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(await _signed_hello(reader, 2) + encode_frame(b"ok"))
        writer.write(struct.pack(">I", 5000) + b"y" * 5000)
        await writer.drain()
        tail = await asyncio.wait_for(reader.read(), 5)  # server closes: EOF
        await lst.stop()
        return got, tail, stats.protocol_errors

    got, tail, errors = run(go())
    assert got == [(2, b"ok")]
    assert tail == b""
    assert errors == 1


@given(
    frames=st.lists(st.binary(max_size=300), max_size=8),
    cuts=st.lists(st.integers(min_value=0, max_value=3000), max_size=12),
)
def test_a_frame_buffer_returns_the_frames_whatever_the_chunks(
    frames: list[bytes], cuts: list[int]
) -> None:
    stream = b"".join(encode_frame(f) for f in frames)
    bounds = sorted({0, len(stream), *(c for c in cuts if c < len(stream))})
    buffer = FrameBuffer(300)
    got = [frame for a, b in itertools.pairwise(bounds) for frame in buffer.frames(stream[a:b])]
    assert got == frames


@given(
    frames=st.lists(st.binary(max_size=300), max_size=8),
    cuts=st.lists(st.integers(min_value=0, max_value=3000), max_size=12),
)
def test_a_frame_buffer_holds_less_than_one_frame_between_chunks(
    frames: list[bytes], cuts: list[int]
) -> None:
    """What the client listener charges to its byte budgets is all it holds between reads."""
    stream = b"".join(encode_frame(f) for f in frames)
    bounds = sorted({0, len(stream), *(c for c in cuts if c < len(stream))})
    buffer = FrameBuffer(300)
    for a, b in itertools.pairwise(bounds):
        list(buffer.frames(stream[a:b]))
        assert buffer.buffered < HEADER.size + 300
    assert buffer.buffered == 0


def test_a_frame_buffer_refuses_an_oversized_header_before_its_body() -> None:
    frames = FrameBuffer(10).frames(encode_frame(b"0123456789") + struct.pack(">I", 11))
    assert next(frames) == b"0123456789"
    with pytest.raises(FrameTooLarge):
        next(frames)  # the header alone is enough: no body is waited for


def test_frames_arrive_whole_however_the_stream_is_cut() -> None:
    """The listener cuts frames out of whatever chunks TCP delivers: a byte at a time (a
    frame spread over many reads) or several frames in one write (many frames in one read)."""
    frames = [b"", b"a", b"bc" * 100, bytes(range(256)), b"z" * 1024]

    async def go() -> list[tuple[int, bytes]]:
        got: list[tuple[int, bytes]] = []
        lst, port, _ = await _listener(got)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        dribble = await _signed_hello(reader, 3) + b"".join(map(encode_frame, frames))
        for i in range(len(dribble)):
            writer.write(dribble[i : i + 1])
            await writer.drain()
            if i % 97 == 0:
                await asyncio.sleep(0.001)  # let the listener read what it has so far
        writer.write(b"".join(map(encode_frame, frames)))  # all at once
        await writer.drain()
        deadline = asyncio.get_running_loop().time() + 5
        while len(got) < 2 * len(frames) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        writer.close()
        await lst.stop()
        return got

    assert run(go()) == [(3, f) for f in frames] * 2


def _hello(replica: int, key: SigningKey, challenge: bytes, to: int = 0) -> bytes:
    signature = key.sign(hello_transcript(challenge, replica, to))
    return pack({"v": HELLO_VERSION, "from": replica, "sig": signature})


BAD_HELLOS: dict[str, Callable[[bytes], bytes]] = {
    "version 1, unsigned": lambda c: pack({"v": 1, "from": 1}),
    "unsigned": lambda c: pack({"v": HELLO_VERSION, "from": 1}),
    "signed by another replica": lambda c: _hello(1, KEYS[2], c),
    "signed by a stranger": lambda c: _hello(1, SigningKey.generate(), c),
    "signed for another listener": lambda c: _hello(1, KEYS[1], c, to=2),
    "signed over another challenge": lambda c: _hello(1, KEYS[1], bytes(len(c))),
    "from the listener itself": lambda c: _hello(0, KEYS[0], c),
    "from no replica": lambda c: _hello(9, KEYS[1], c),
    "not a map": lambda c: pack([1, 2]),
    "not msgpack": lambda c: b"\xc1",
}


@pytest.mark.parametrize("make", BAD_HELLOS.values(), ids=BAD_HELLOS.keys())
def test_a_bad_hello_is_refused(make: Callable[[bytes], bytes]) -> None:
    async def go() -> tuple[list[tuple[int, bytes]], int]:
        got: list[tuple[int, bytes]] = []
        lst, port, stats = await _listener(got)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        frame = await asyncio.wait_for(read_frame(reader, HELLO_BYTES_MAX), 5)
        assert frame is not None
        writer.write(encode_frame(make(unpack(frame)["challenge"])) + encode_frame(b"payload"))
        await writer.drain()
        await asyncio.wait_for(reader.read(), 5)
        await lst.stop()
        return got, stats.protocol_errors

    got, errors = run(go())
    assert got == []
    assert errors == 1


def test_a_correctly_signed_hello_is_accepted() -> None:
    """The control for the refusals above: the same exchange with the right key delivers."""

    async def go() -> list[tuple[int, bytes]]:
        got: list[tuple[int, bytes]] = []
        lst, port, _ = await _listener(got)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(await _signed_hello(reader, 1) + encode_frame(b"payload"))
        await writer.drain()
        deadline = asyncio.get_running_loop().time() + 5
        while not got and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        writer.close()
        await lst.stop()
        return got

    assert run(go()) == [(1, b"payload")]


def test_a_connection_without_a_hello_is_closed_at_the_hello_timeout() -> None:
    async def go() -> tuple[bytes, int]:
        stats = TransportStats()
        lst = PeerListener(
            0, VERIFY_KEYS, lambda p, b: None, stats, limits=PeerLimits(hello_timeout_ms=300)
        )
        await lst.start("127.0.0.1:0")
        assert lst._server is not None
        port = lst._server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        challenge = await asyncio.wait_for(read_frame(reader, HELLO_BYTES_MAX), 5)
        assert challenge is not None
        tail = await asyncio.wait_for(reader.read(), 10)  # nothing more, then EOF
        writer.close()
        await lst.stop()
        return tail, stats.closed_hello_timeout

    assert run(go()) == (b"", 1)


def test_an_unauthenticated_connection_may_not_send_more_than_a_hello() -> None:
    async def go() -> int:
        got: list[tuple[int, bytes]] = []
        lst, port, stats = await _listener(got)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(struct.pack(">I", HELLO_BYTES_MAX + 1))
        await asyncio.wait_for(reader.read(), 5)
        await lst.stop()
        return stats.protocol_errors

    assert run(go()) == 1


def _free_ports(k: int) -> list[int]:
    import socket

    socks = [socket.socket() for _ in range(k)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _keys(i: int) -> dict[str, Any]:
    return {"signing_key": KEYS[i], "verify_keys": VERIFY_KEYS}


def test_networks_deliver_in_order_and_reconnect_after_the_peer_restarts() -> None:
    async def go() -> tuple[list[tuple[int, bytes]], list[tuple[int, bytes]]]:
        p0, p1 = _free_ports(2)
        addrs = {0: f"127.0.0.1:{p0}", 1: f"127.0.0.1:{p1}"}
        got1: list[tuple[int, bytes]] = []
        net0 = PeerNetwork(0, addrs, lambda p, b: None, **_keys(0))
        net1 = PeerNetwork(1, addrs, lambda p, b: got1.append((p, b)), **_keys(1))
        await net0.start(addrs[0])
        await net1.start(addrs[1])
        for i in range(100):
            net0.send(1, f"m{i}".encode())
        while len(got1) < 100:
            await asyncio.sleep(0.01)
        first = list(got1)
        # Replica 1 restarts: 0 must dial again by itself and deliver new frames.
        await net1.stop()
        got1b: list[tuple[int, bytes]] = []
        net1 = PeerNetwork(1, addrs, lambda p, b: got1b.append((p, b)), **_keys(1))
        await net1.start(addrs[1])
        for _ in range(200):
            net0.send(1, b"again")
            await asyncio.sleep(0.02)
            if got1b:
                break
        await net0.stop()
        await net1.stop()
        return first, got1b

    first, after = run(go())
    assert first == [(0, f"m{i}".encode()) for i in range(100)]
    assert after and after[0] == (0, b"again")


def test_a_full_send_queue_drops_the_oldest_frames() -> None:
    async def go() -> tuple[int, list[bytes]]:
        (p0,) = _free_ports(1)
        got: list[bytes] = []
        # Peer 1 is not up: everything queues.
        net0 = PeerNetwork(
            0, {0: f"127.0.0.1:{p0}", 1: "127.0.0.1:1"}, lambda p, b: None, queue_max=3, **_keys(0)
        )
        sender = net0._senders[1]
        for i in range(5):
            sender.send(f"{i}".encode())
        while sender._pending:
            got.append(sender._pending.popleft()[4:])
        return net0.stats.dropped_queue_full, got

    dropped, left = run(go())
    assert dropped == 2
    assert left == [b"2", b"3", b"4"]


@pytest.fixture(scope="module")
def two_cas(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    good = tmp_path_factory.mktemp("good")
    evil = tmp_path_factory.mktemp("evil")
    for d in (good, evil):
        ca_cert, ca_key = tls.create_ca(d)
        for i in range(2):
            tls.issue_node_certificate(d, ca_cert, ca_key, i, ["127.0.0.1"])
    return good, evil


def _files(d: Path, i: int) -> tls.TlsFiles:
    return tls.TlsFiles(d / "ca.crt", d / f"node-{i}.crt", d / f"node-{i}.key")


def test_node_keys_are_private_files(two_cas: tuple[Path, Path]) -> None:
    good, _ = two_cas
    assert (good / "node-0.key").stat().st_mode & 0o777 == 0o600
    assert (good / "ca.key").stat().st_mode & 0o777 == 0o600


def _tls_exchange(server_dir: Path, client_dir: Path, client_id: int, hello_id: int) -> int:
    async def go() -> int:
        got: list[tuple[int, bytes]] = []
        lst, port, _ = await _listener(got, tls.server_context(_files(server_dir, 0)))
        delivered = 0
        try:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1",
                port,
                ssl=tls.client_context(_files(client_dir, client_id)),
                server_hostname="node-0",
            )
            writer.write(await _signed_hello(reader, hello_id) + encode_frame(b"hi"))
            await writer.drain()
            await asyncio.wait_for(reader.read(), 2)
        except (ssl.SSLError, ConnectionError, TimeoutError, RemoteProtocolError, AssertionError):
            # A foreign certificate is refused after the client's side of the TLS 1.3
            # handshake: the challenge never comes (EOF, reset or alert).
            pass
        await asyncio.sleep(0.05)
        delivered = len(got)
        await lst.stop()
        return delivered

    return asyncio.run(go())


def test_mutual_tls_within_the_cluster_ca_delivers(two_cas: tuple[Path, Path]) -> None:
    good, _ = two_cas
    assert _tls_exchange(good, good, client_id=1, hello_id=1) == 1


def test_a_certificate_from_a_foreign_ca_is_refused(two_cas: tuple[Path, Path]) -> None:
    good, evil = two_cas
    assert _tls_exchange(good, evil, client_id=1, hello_id=1) == 0


def test_a_replica_cannot_claim_another_id_than_its_certificate(
    two_cas: tuple[Path, Path],
) -> None:
    good, _ = two_cas
    # Replica 2's hello, signed by replica 2's key, over replica 1's certificate.
    assert _tls_exchange(good, good, client_id=1, hello_id=2) == 0


@pytest.mark.parametrize(
    ("peer", "key"),
    [
        (("192.0.2.7", 5000), "192.0.2.7"),
        (("2001:db8:1:2:aaaa::1", 5000, 0, 0), "2001:db8:1:2::/64"),
        (("2001:db8:1:2:bbbb::9", 6000, 0, 0), "2001:db8:1:2::/64"),
        (("::ffff:192.0.2.7", 5000, 0, 0), "192.0.2.7"),
        (None, ""),
    ],
)
def test_client_hosts_are_ipv4_addresses_or_ipv6_slash_64s(peer: object, key: str) -> None:
    assert host_key(peer) == key


@pytest.mark.parametrize(
    "limits",
    [
        {"unauthenticated_frame_bytes_max": 2 << 20, "frame_bytes_max": 1 << 20},
        {"connections_per_host_max": 2000},
        {"buffered_bytes_per_host_max": 1 << 20, "frame_bytes_max": 1 << 20},
        {"buffered_bytes_max": 4 << 20, "buffered_bytes_per_host_max": 8 << 20},
        {"read_timeout_ms": 0},
    ],
)
def test_client_limits_that_contradict_each_other_are_refused(limits: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        ClientListener(lambda frame, conn: None, **limits)


@pytest.mark.parametrize(
    "limits",
    [
        {"unauthenticated_per_host_max": 65, "unauthenticated_max": 64},
        {"unauthenticated_per_host_max": 0},
        {"idle_timeout_ms": 0},
        {"read_timeout_ms": -1},
        {"hello_timeout_ms": 0},
    ],
)
def test_peer_limits_that_contradict_each_other_are_refused(limits: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        PeerLimits(**limits)


def test_a_network_refuses_a_signing_key_that_is_not_its_validators() -> None:
    with pytest.raises(ValueError):
        PeerNetwork(0, {0: "127.0.0.1:1", 1: "127.0.0.1:2"}, lambda p, b: None, **_keys(1))
