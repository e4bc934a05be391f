"""Asyncio TCP between replicas and to clients: length-prefixed frames, bounded everywhere.

What it is for: moving opaque byte payloads (encoded PBFT messages, client requests) between
processes. It never interprets a payload beyond the frame header and the connection hello, and
it never decides anything about consensus: loss is fine (PBFT retransmits through its own
timers), so a full queue drops rather than blocks the replica loop.

Wire format: each frame is a 4-byte big-endian length followed by that many bytes. A frame
longer than the connection's limit is a remote protocol error: the connection is closed (the
bytes cannot be skipped safely without reading them, and a peer that sends them is broken or
hostile).

Between replicas, the listener's first frame is a msgpack challenge `{"v": 2, "challenge":
<32 random bytes>}`; the dialling replica answers with the hello `{"v": 2, "from": <id>, "sig":
<Ed25519 signature over hello_transcript(challenge, id, listener id)>}` made with its validator
key. Until that hello verifies against the genesis key of the replica it names, a connection
may send frames of `HELLO_BYTES_MAX` only, and it counts against small per-host and global
limits; after, it is that replica's one link, with the cluster's frame limit. With TLS the
hello's id must also match the certificate's common name `node-<id>`. So whoever merely
reaches the peer port cannot speak for a replica nor make it buffer a large frame, TLS or not.

Shape: one `PeerSender` per remote replica (its own bounded queue and a task that dials with
exponential back-off and writes), and one listener that reads frames from whoever dials in and
hands `(sender id, payload)` to a callback.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ipaddress
import logging
import os
import socket
import ssl
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import msgpack

from ledger_bridge.crypto import SigningKey, VerifyKey

log = logging.getLogger(__name__)

HEADER = struct.Struct(">I")
FRAME_BYTES_MAX = 16 * 1024 * 1024  # a batch of 500 x 1 KiB txs with signatures fits easily
HELLO_VERSION = 2  # 2: the listener challenges, the hello is signed
HELLO_BYTES_MAX = 1024  # challenge and hello frames: a few dozen bytes
HELLO_DOMAIN = b"civis-pbft-v1:peer-hello:"
CHALLENGE_BYTES = 32
SEND_QUEUE_MAX = 4096  # frames waiting for one peer; beyond this we drop (PBFT retransmits)
BACKOFF_MIN_MS = 20
BACKOFF_MAX_MS = 1000
CONNECT_TIMEOUT_MS = 2000
HELLO_TIMEOUT_MS = 2000


class RemoteProtocolError(Exception):
    """The other end broke the framing protocol (oversized or malformed frame, bad hello)."""


class FrameTooLarge(RemoteProtocolError):
    pass


def encode_frame(payload: bytes, frame_bytes_max: int = FRAME_BYTES_MAX) -> bytes:
    """Header + payload. Sending a frame we would refuse to read is our bug, hence assert."""
    assert len(payload) <= frame_bytes_max, "local frame over the limit"
    return HEADER.pack(len(payload)) + payload


async def read_frame(
    reader: asyncio.StreamReader, frame_bytes_max: int = FRAME_BYTES_MAX
) -> bytes | None:
    """Next frame's payload, or None on a clean end of stream between frames.

    Raises FrameTooLarge before reading the body, so a hostile length never makes us
    allocate; a stream cut inside a frame raises RemoteProtocolError.
    """
    try:
        header = await reader.readexactly(HEADER.size)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise RemoteProtocolError("stream ended inside a frame header") from None
        return None
    (length,) = HEADER.unpack(header)
    if length > frame_bytes_max:
        raise FrameTooLarge(f"frame of {length} bytes over the limit of {frame_bytes_max}")
    try:
        return await reader.readexactly(length)
    except asyncio.IncompleteReadError:
        raise RemoteProtocolError("stream ended inside a frame body") from None


class FrameBuffer:
    """Cuts frames out of a byte stream that arrives in chunks of any size.

    Why: a protocol's `data_received` gets what the socket had, a piece of a frame or several
    frames; handing each whole frame over in the same call costs one event-loop turn per chunk
    instead of two task wake-ups per frame (`read_frame`'s `readexactly`s). `limit` may change
    between frames (a hello is small, later frames are not), hence a generator.
    """

    __slots__ = ("_buf", "limit")

    def __init__(self, limit: int) -> None:
        self._buf = bytearray()
        self.limit = limit

    @property
    def buffered(self) -> int:
        """Bytes held between calls: less than one frame of `limit` plus its header, since
        whole frames leave in the call that completed them (within a call, one chunk more)."""
        return len(self._buf)

    def clear(self) -> None:
        """Drop a partial frame (the connection is going away): its memory is freed now."""
        self._buf = bytearray()

    def frames(self, data: bytes) -> Iterator[bytes]:
        """Whole frames completed by `data`, in order. Raises FrameTooLarge on a header over
        the limit, before its body is buffered; the buffer is then unusable (close)."""
        buf = self._buf
        buf += data
        pos, size = 0, len(buf)
        try:
            while size - pos >= HEADER.size:
                (length,) = HEADER.unpack_from(buf, pos)
                if length > self.limit:
                    raise FrameTooLarge(f"frame of {length} bytes over the limit of {self.limit}")
                end = pos + HEADER.size + length
                if size < end:
                    break
                payload = bytes(buf[pos + HEADER.size : end])
                pos = end
                yield payload
        finally:
            del buf[:pos]


def pack(obj: Any) -> bytes:
    """msgpack with bin/str kept apart, the one encoding of control frames."""
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return data


def unpack(data: bytes, max_len: int = FRAME_BYTES_MAX) -> Any:
    """Decode a control frame; any decoding failure is the peer's fault."""
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=False,
            max_bin_len=max_len,
            max_str_len=max_len,
            max_array_len=1_000_000,
            max_map_len=100_000,
        )
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise RemoteProtocolError(f"malformed msgpack: {type(exc).__name__}") from None


# A connection whose sent data stays unacknowledged this long is aborted by the kernel
# (TCP_USER_TIMEOUT). Without it, a link across a partition keeps retransmitting with
# exponential back-off, and once the partition heals the next retransmission may be seconds
# away: the replica stayed cut off after the heal. Aborted, the link is redialled at once and
# again and again (its sender's back-off stops at 1 s), so it is back within about a second of
# the heal. Heartbeats leave data in flight every 100 ms, so a live link is never this late
# unless four retransmissions of one segment are lost in a row.
UNACKED_TIMEOUT_MS = 5_000


def set_nodelay(conn: asyncio.StreamWriter | asyncio.BaseTransport) -> None:
    """Latency matters more than packet count here: three protocol phases per commit. And a
    link across a partition is given up on (`UNACKED_TIMEOUT_MS`) rather than waited for."""
    sock = conn.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        user_timeout = getattr(socket, "TCP_USER_TIMEOUT", None)  # Linux
        if user_timeout is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, user_timeout, UNACKED_TIMEOUT_MS)


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"address {address!r} is not host:port")
    return host.strip("[]"), int(port)


@dataclass
class TransportStats:
    """Counters an operator can read from `status`: what we dropped and why."""

    frames_sent: int = 0
    frames_received: int = 0
    dropped_queue_full: int = 0
    protocol_errors: int = 0
    connects: int = 0
    connect_failures: int = 0
    refused_over_host_unauthenticated_max: int = 0
    evicted_unauthenticated: int = 0
    closed_hello_timeout: int = 0
    closed_idle: int = 0
    closed_read_timeout: int = 0
    replaced_links: int = 0


def hello_transcript(challenge: bytes, from_id: int, to_id: int) -> bytes:
    """What a dialling replica signs: the listener's fresh challenge binds it to this one
    connection (a captured hello is useless later), and both ids bind it to this pair (a
    hello for one replica cannot be shown to another)."""
    return HELLO_DOMAIN + challenge + from_id.to_bytes(4, "big") + to_id.to_bytes(4, "big")


@dataclass(frozen=True)
class PeerLimits:
    """What one connection to the peer port may hold, and for how long.

    - `hello_timeout_ms` (2 s): a connection that has not authenticated by then is closed.
      The hello is one round trip after the TCP (and TLS) handshake.
    - `unauthenticated_per_host_max` (8) and `unauthenticated_max` (64): connections that
      have not yet authenticated, from one host (`host_key`) and in all. A host over its
      share is refused at once; when the total is reached, the oldest unauthenticated
      connection is closed for the new one, so holding the slots needs a new connection per
      slot faster than a replica completes its hello, not one per hello timeout. 8 per host
      lets a development cluster of up to 9 replicas on one host dial all at once.
    - `idle_timeout_ms` (30 s): an authenticated link that completes no frame and holds no
      partial frame for this long is closed. A correct replica sends STATUS every
      `heartbeat_ms` (100 ms by default), so only a dead or hostile peer is silent this long;
      its sender reconnects.
    - `read_timeout_ms` (10 min): a frame started and not finished within this long closes
      the link. The largest frame (256 MiB at n = 4 with the defaults) fits at 3.6 Mbit/s.

    Authenticated links are one per validator (a newer one replaces the older), each holding
    at most one partial frame of the listener's frame limit: a key holder's budget.
    Unauthenticated ones hold at most a hello (`HELLO_BYTES_MAX`).
    """

    hello_timeout_ms: int = HELLO_TIMEOUT_MS
    unauthenticated_per_host_max: int = 8
    unauthenticated_max: int = 64
    idle_timeout_ms: int = 30_000
    read_timeout_ms: int = 600_000

    def __post_init__(self) -> None:
        if not 0 < self.unauthenticated_per_host_max <= self.unauthenticated_max:
            raise ValueError("need 0 < unauthenticated_per_host_max <= unauthenticated_max")
        if min(self.hello_timeout_ms, self.idle_timeout_ms, self.read_timeout_ms) <= 0:
            raise ValueError("need positive timeouts")

    @property
    def sweep_s(self) -> float:
        """How often the listener checks the timeouts: a tenth of the shortest, so a
        connection is closed at most a tenth of its timeout (plus a sweep) late."""
        shortest = min(self.hello_timeout_ms, self.idle_timeout_ms, self.read_timeout_ms)
        return max(0.01, shortest / 10_000)


@dataclass
class PeerSender:
    """The outbound half to one peer: frames go straight into the socket's buffer.

    Why no queue and writer task: a task wake-up per frame cost more CPU than the frame
    itself (measured by `bench ledger`). `writer.write` never blocks; the socket's write buffer
    is the bounded queue (over `write_buffer_bytes_max` we drop, PBFT retransmits). While
    disconnected, up to `queue_max` frames wait in a deque (oldest dropped first) and are
    written on reconnect. A task only dials, answers the listener's challenge, and watches
    for EOF; it backs off exponentially while links fail young, so a listener that refuses
    it (full, or a key mismatch) is not redialled in a tight loop.
    """

    self_id: int
    peer_id: int
    address: str
    stats: TransportStats
    signing_key: SigningKey
    ssl_context: ssl.SSLContext | None = None
    queue_max: int = SEND_QUEUE_MAX
    frame_bytes_max: int = FRAME_BYTES_MAX
    write_buffer_bytes_max: int = 64 * 1024 * 1024
    hello_timeout_ms: int = HELLO_TIMEOUT_MS
    _pending: collections.deque[bytes] = field(init=False)
    _writer: asyncio.StreamWriter | None = field(init=False, default=None)
    _task: asyncio.Task[None] | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self._pending = collections.deque()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def stop(self) -> None:
        """Cancel the link and wait for it to end. Waiting with `asyncio.wait` never raises
        the link's own cancellation, and does raise the caller's, so a shutdown with a deadline
        can still give up, and one run from a cancelled task's clean-up still finishes."""
        self.cancel()
        if self._task is not None:
            await asyncio.wait([self._task])

    def send(self, payload: bytes) -> None:
        frame = encode_frame(payload, self.frame_bytes_max)
        writer = self._writer
        if writer is not None and not writer.is_closing():
            if writer.transport.get_write_buffer_size() > self.write_buffer_bytes_max:
                self.stats.dropped_queue_full += 1
                return
            writer.write(frame)
            self.stats.frames_sent += 1
            return
        if len(self._pending) >= self.queue_max:
            self._pending.popleft()  # newer protocol state supersedes older
            self.stats.dropped_queue_full += 1
        self._pending.append(frame)

    async def _run(self) -> None:
        backoff_ms = BACKOFF_MIN_MS
        loop = asyncio.get_running_loop()
        while True:
            try:
                host, port = split_address(self.address)
                # `asyncio.timeout`, not `wait_for`: on Python 3.11 a cancellation that lands
                # as the dial fails is lost inside `wait_for` (it returns the dial's error), and
                # the link would go on redialling after its stop.
                async with asyncio.timeout(CONNECT_TIMEOUT_MS / 1000):
                    reader, writer = await asyncio.open_connection(
                        host,
                        port,
                        ssl=self.ssl_context,
                        server_hostname=f"node-{self.peer_id}" if self.ssl_context else None,
                    )
            except (OSError, TimeoutError, ssl.SSLError) as exc:
                self.stats.connect_failures += 1
                log.debug("dial %s failed: %s", self.peer_id, type(exc).__name__)
                await asyncio.sleep(backoff_ms / 1000)
                backoff_ms = min(backoff_ms * 2, BACKOFF_MAX_MS)
                continue
            self.stats.connects += 1
            opened_at = loop.time()
            await self._serve(reader, writer)
            if loop.time() - opened_at >= BACKOFF_MAX_MS / 1000:
                backoff_ms = BACKOFF_MIN_MS  # a link that lived: its peer went away, redial
            else:
                await asyncio.sleep(backoff_ms / 1000)
                backoff_ms = min(backoff_ms * 2, BACKOFF_MAX_MS)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Answer the challenge, flush what waited, then carry frames until the link ends."""
        set_nodelay(writer)
        try:
            async with asyncio.timeout(self.hello_timeout_ms / 1000):  # see `_run`
                raw = await read_frame(reader, HELLO_BYTES_MAX)
            challenge = _challenge(raw)
            signature = self.signing_key.sign(
                hello_transcript(challenge, self.self_id, self.peer_id)
            )
            hello = {"v": HELLO_VERSION, "from": self.self_id, "sig": signature}
            writer.write(encode_frame(pack(hello)))
            while self._pending:
                writer.write(self._pending.popleft())
                self.stats.frames_sent += 1
            self._writer = writer
            await reader.read(1)  # the peer writes nothing after its challenge: EOF = gone
        except (OSError, ssl.SSLError, TimeoutError, RemoteProtocolError) as exc:
            log.debug("link to %s broke: %s", self.peer_id, type(exc).__name__)
        finally:
            self._writer = None
            # Aborted, not closed: what is still queued for the peer is of no use once the link
            # ends (PBFT retransmits), and a close would wait for a peer that stopped reading
            # to drain it, holding up a stop or the next dial.
            writer.transport.abort()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


def _challenge(raw: bytes | None) -> bytes:
    """The listener's challenge out of its first frame; anything else is its fault."""
    if raw is None:
        raise RemoteProtocolError("closed before its challenge")
    frame = unpack(raw, HELLO_BYTES_MAX)
    if not isinstance(frame, dict) or frame.get("v") != HELLO_VERSION:
        raise RemoteProtocolError("bad challenge")
    challenge = frame.get("challenge")
    if not isinstance(challenge, bytes) or len(challenge) != CHALLENGE_BYTES:
        raise RemoteProtocolError("bad challenge")
    return challenge


FrameHandler = Callable[[int, bytes], None]


class PeerListener:
    """Accepts replica connections; every frame after the hello goes to `on_frame(peer, bytes)`.

    Authentication, with or without TLS: on accept the listener sends a fresh random
    challenge; the dialler answers with a hello signed by its validator key over
    `hello_transcript` (challenge, its id, ours), checked against the genesis key of the
    replica it claims. Only then does the frame limit rise from `HELLO_BYTES_MAX` to
    `frame_bytes_max`. With TLS the hello's id must also match the client certificate.
    Without TLS an attacker on the path can still relay a real replica's connection (TLS is
    what prevents that); one who merely reaches the port cannot speak for a replica.

    Every resource a connection holds is bounded (`PeerLimits`): the unauthenticated ones
    per host and in all, one authenticated link per validator, and timeouts checked by one
    timer per listener, so the per-frame path pays nothing for them.

    Why a `Protocol` and not a `StreamReader` loop: frames are cut out of each chunk the socket
    delivers and handed over in the same call, so a chunk holding several frames costs one
    event-loop turn, not two task wake-ups per frame (`readexactly` for the header, then the
    body). Nothing is buffered beyond one partial frame.
    """

    def __init__(
        self,
        self_id: int,
        verify_keys: Sequence[VerifyKey],
        on_frame: FrameHandler,
        stats: TransportStats,
        ssl_context: ssl.SSLContext | None = None,
        frame_bytes_max: int = FRAME_BYTES_MAX,
        limits: PeerLimits = PeerLimits(),
    ) -> None:
        self._self_id = self_id
        self._verify_keys = tuple(verify_keys)
        self._on_frame = on_frame
        self._stats = stats
        self._ssl = ssl_context
        self._frame_bytes_max = frame_bytes_max
        self._limits = limits
        self._server: asyncio.Server | None = None
        self._sweep_timer: asyncio.TimerHandle | None = None
        # Insertion order is age order: the first is the one to evict.
        self._unauthenticated: dict[_PeerProtocol, None] = {}
        self._per_host: dict[str, int] = {}
        self._links: dict[int, _PeerProtocol] = {}

    @property
    def connections(self) -> int:
        """Connections held: unauthenticated ones and authenticated links."""
        return len(self._unauthenticated) + len(self._links)

    async def start(self, address: str) -> None:
        host, port = split_address(address)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _PeerProtocol(self),
            host,
            port,
            ssl=self._ssl,
            reuse_address=True,
            # A TLS handshake is not yet a connection_made: bound it like the hello.
            ssl_handshake_timeout=self._limits.hello_timeout_ms / 1000 if self._ssl else None,
        )
        self._sweep_timer = loop.call_later(self._limits.sweep_s, self._sweep)

    async def stop(self) -> None:
        if self._sweep_timer is not None:
            self._sweep_timer.cancel()
            self._sweep_timer = None
        if self._server is not None:
            self._server.close()
        for proto in [*self._unauthenticated, *self._links.values()]:
            proto.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        limits = self._limits
        hello_s = limits.hello_timeout_ms / 1000
        for proto in list(self._unauthenticated):
            if now - proto.opened_at < hello_s:
                break  # age order: the rest are younger
            self._stats.closed_hello_timeout += 1
            proto.close()
        idle_s, read_s = limits.idle_timeout_ms / 1000, limits.read_timeout_ms / 1000
        for proto in list(self._links.values()):
            proto.check_timeouts(now, idle_s, read_s)
        self._sweep_timer = loop.call_later(limits.sweep_s, self._sweep)

    def _admit(self, proto: _PeerProtocol) -> bool:
        """Count a new connection as unauthenticated, or refuse it (False)."""
        held = self._per_host.get(proto.host, 0)
        if held >= self._limits.unauthenticated_per_host_max:
            self._stats.refused_over_host_unauthenticated_max += 1
            return False
        if len(self._unauthenticated) >= self._limits.unauthenticated_max:
            self._stats.evicted_unauthenticated += 1
            next(iter(self._unauthenticated)).close()
        self._unauthenticated[proto] = None
        self._per_host[proto.host] = self._per_host.get(proto.host, 0) + 1
        return True

    def _release(self, proto: _PeerProtocol) -> None:
        """Give back whatever `proto` holds (idempotent)."""
        if proto in self._unauthenticated:
            del self._unauthenticated[proto]
            left = self._per_host[proto.host] - 1
            if left:
                self._per_host[proto.host] = left
            else:
                del self._per_host[proto.host]
        if proto.peer is not None and self._links.get(proto.peer) is proto:
            del self._links[proto.peer]

    def _authenticate(self, proto: _PeerProtocol, raw: bytes) -> int:
        """The replica `proto`'s hello proves it is, made its one link; or RemoteProtocolError."""
        peer = self._check_hello(raw, proto.challenge, proto.transport)
        self._release(proto)
        proto.peer = peer
        older = self._links.get(peer)
        self._links[peer] = proto
        if older is not None:
            # A restarted replica, or its old half-open link: the newer link is the live one.
            self._stats.replaced_links += 1
            older.close()
        return peer

    def _check_hello(
        self, raw: bytes, challenge: bytes, transport: asyncio.BaseTransport | None
    ) -> int:
        hello = unpack(raw, HELLO_BYTES_MAX)
        if not isinstance(hello, dict) or hello.get("v") != HELLO_VERSION:
            raise RemoteProtocolError("bad hello")
        peer, signature = hello.get("from"), hello.get("sig")
        if (
            not isinstance(peer, int)
            or isinstance(peer, bool)
            or not 0 <= peer < len(self._verify_keys)
            or peer == self._self_id
        ):
            raise RemoteProtocolError("hello names no other replica of this cluster")
        if not isinstance(signature, bytes) or not self._verify_keys[peer].verify(
            hello_transcript(challenge, peer, self._self_id), signature
        ):
            raise RemoteProtocolError(f"hello for replica {peer} not signed by its key")
        if self._ssl is not None:
            cert_id = certificate_node_id(transport) if transport is not None else None
            if cert_id != peer:
                raise RemoteProtocolError(f"hello says {peer}, certificate says {cert_id}")
        return peer


class _PeerProtocol(asyncio.Protocol):
    """One inbound replica connection: counted as unauthenticated until its hello verifies
    (frames up to `HELLO_BYTES_MAX`), then the link of one replica (the listener's frame
    limit), with a frame counter the listener's sweep reads for the timeouts."""

    def __init__(self, listener: PeerListener) -> None:
        self._listener = listener
        self._frames = FrameBuffer(HELLO_BYTES_MAX)
        self.transport: asyncio.Transport | None = None
        self.host = ""
        self.peer: int | None = None
        self.challenge = b""
        self.opened_at = 0.0
        self._closed = False
        self._frames_done = 0
        self._frames_seen = 0  # `_frames_done` at the sweep that last saw it move
        self._active_at = 0.0  # loop time a frame was last known complete
        self._partial_at: float | None = None  # loop time the current partial frame was seen

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (asyncio's or another loop's, which need not subclass it).
        stream = self.transport = cast(asyncio.Transport, transport)
        self.host = host_key(stream.get_extra_info("peername"))
        if not self._listener._admit(self):
            log.debug("refusing a peer connection: unauthenticated connection limit")
            self._closed = True
            stream.close()
            return
        set_nodelay(stream)
        self.opened_at = asyncio.get_running_loop().time()
        self.challenge = os.urandom(CHALLENGE_BYTES)
        stream.write(encode_frame(pack({"v": HELLO_VERSION, "challenge": self.challenge})))

    def connection_lost(self, exc: Exception | None) -> None:
        self.close()

    def close(self) -> None:
        """Close and give back the slot and the partial frame's memory at once."""
        if self._closed:
            return
        self._closed = True
        if self.transport is not None:
            self.transport.close()
        self._listener._release(self)
        self._frames.clear()

    def data_received(self, data: bytes) -> None:
        if self._closed:
            return
        transport = self.transport
        assert transport is not None, "data before connection_made"
        listener = self._listener
        on_frame, peer = listener._on_frame, self.peer
        done = 0  # locals, not attributes, on the path of every frame
        try:
            for payload in self._frames.frames(data):
                if peer is None:
                    peer = listener._authenticate(self, payload)
                    self._frames.limit = listener._frame_bytes_max
                    self._active_at = asyncio.get_running_loop().time()
                    continue
                done += 1
                on_frame(peer, payload)
                if transport.is_closing():
                    break
        except RemoteProtocolError as exc:
            listener._stats.protocol_errors += 1
            log.warning("closing a replica connection: %s", exc)
            self.close()
        self._frames_done += done
        listener._stats.frames_received += done

    def check_timeouts(self, now: float, idle_s: float, read_s: float) -> None:
        """Called by the listener's sweep on authenticated links. Times are the sweep's,
        never earlier than the events they stand for, so a link is never closed before its
        timeout. A partial frame is under the read timeout, not the idle one: a large frame
        on a slow link completes no frame for a long time and is not idle."""
        if self._frames_done != self._frames_seen:
            self._frames_seen = self._frames_done
            self._active_at = now
            self._partial_at = None  # any partial frame now began after that frame
        if self._frames.buffered:
            if self._partial_at is None:
                self._partial_at = now
            elif now - self._partial_at >= read_s:
                self._listener._stats.closed_read_timeout += 1
                log.info("closing the link of replica %s: frame not finished", self.peer)
                self.close()
            return
        self._partial_at = None
        if now - self._active_at >= idle_s:
            self._listener._stats.closed_idle += 1
            log.info("closing the link of replica %s: idle", self.peer)
            self.close()


def certificate_node_id(conn: asyncio.StreamWriter | asyncio.BaseTransport) -> int | None:
    """The replica id in the peer certificate's common name `node-<id>`, if any."""
    cert = conn.get_extra_info("peercert")
    if not cert:
        return None
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName" and value.startswith("node-") and value[5:].isdigit():
                return int(value[5:])
    return None


class PeerNetwork:
    """All links of one replica: a listener plus one sender per other replica."""

    def __init__(
        self,
        self_id: int,
        peer_addresses: dict[int, str],
        on_frame: FrameHandler,
        *,
        signing_key: SigningKey,
        verify_keys: Sequence[VerifyKey],
        server_ssl: ssl.SSLContext | None = None,
        client_ssl: ssl.SSLContext | None = None,
        queue_max: int = SEND_QUEUE_MAX,
        frame_bytes_max: int = FRAME_BYTES_MAX,
        limits: PeerLimits = PeerLimits(),
    ) -> None:
        """`frame_bytes_max` bounds frames both ways: the largest message a correct replica
        sends, which the node derives from the cluster's parameters. `signing_key` is this
        replica's validator key, `verify_keys` the genesis keys in validator-id order: the
        hello of each link is signed by one and checked with the other."""
        if signing_key.public_key != verify_keys[self_id]:
            raise ValueError(f"signing key is not validator {self_id}'s")
        self.stats = TransportStats()
        self.self_id = self_id
        self._senders = {
            pid: PeerSender(
                self_id,
                pid,
                addr,
                self.stats,
                signing_key,
                client_ssl,
                queue_max,
                frame_bytes_max,
                hello_timeout_ms=limits.hello_timeout_ms,
            )
            for pid, addr in peer_addresses.items()
            if pid != self_id
        }
        self._listener = PeerListener(
            self_id, verify_keys, on_frame, self.stats, server_ssl, frame_bytes_max, limits
        )

    async def start(self, listen: str) -> None:
        await self._listener.start(listen)
        for sender in self._senders.values():
            sender.start()

    async def stop(self) -> None:
        """Every link cancelled and the listener closed before anything is awaited, so a stop
        cut short (a deadline, a cancelled caller) leaves nothing delivering frames."""
        for sender in self._senders.values():
            sender.cancel()
        try:
            await self._listener.stop()
        finally:
            for sender in self._senders.values():
                await sender.stop()

    def send(self, to: int, payload: bytes) -> None:
        sender = self._senders.get(to)
        assert sender is not None, f"no link to replica {to}"
        sender.send(payload)


# -- request/response connections (clients) ------------------------------------------------

READER_DOMAIN = b"civis-vault/client-port/reader/v1:"
NO_CHANNEL = bytes(32)  # the channel binding of a plain-TCP client port (development only)


def reader_transcript(challenge: bytes, channel: bytes, chain_id: str) -> bytes:
    """What a reader signs with its member key to be bound to one client connection: the
    replica's fresh challenge (a captured signature is useless on another connection), the
    SHA-256 of the server certificate's DER bytes as the reader saw it (a signature relayed
    by a man in the middle names his certificate, not the replica's), and the chain id (one
    chain's proof is nothing to another's)."""
    return READER_DOMAIN + challenge + channel + chain_id.encode()


ClientHandler = Callable[[Any, "ClientConnection"], None]

KIB = 1024
MIB = 1024 * KIB
# The reason for each value is in `ClientListener`'s docstring.
CLIENT_FRAME_BYTES_MAX = 2 * MIB
CLIENT_UNAUTHENTICATED_FRAME_BYTES_MAX = 264 * KIB
CLIENT_CONNECTIONS_MAX = 1024
CLIENT_CONNECTIONS_PER_HOST_MAX = 64
# The kernel's queue of connections not yet accepted. A flood of connections fills a short
# queue (asyncio's default is 100) faster than the loop accepts and sheds them, and the kernel
# then drops new handshakes, an honest client's among them, which retries after 1 s, then 3.
# The kernel caps it at net.core.somaxconn (4096 on current kernels, 128 before Linux 5.4).
CLIENT_ACCEPT_BACKLOG = CLIENT_CONNECTIONS_MAX
CLIENT_BUFFERED_BYTES_MAX = 64 * MIB
CLIENT_BUFFERED_BYTES_PER_HOST_MAX = 8 * MIB
CLIENT_IDLE_TIMEOUT_MS = 120_000
CLIENT_READ_TIMEOUT_MS = 30_000
CLIENT_HANDSHAKE_TIMEOUT_MS = 10_000
CLIENT_WRITE_BUFFER_BYTES_MAX = 16 * MIB


def host_key(peername: Any) -> str:
    """The bucket a client's connections and bytes are counted in: its IPv4 address, or its
    IPv6 /64, since one host commonly owns a whole /64 and would otherwise have 2^64 buckets.
    An IPv4-mapped IPv6 address counts as the IPv4 host it is."""
    if not isinstance(peername, tuple) or not peername:
        return ""  # not an IP socket: all such peers share one bucket
    try:
        ip = ipaddress.ip_address(peername[0])
    except ValueError:
        return str(peername[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class ClientConnection:
    """One client's connection to a node: msgpack frames in both directions.

    Outbound frames go straight into the socket's write buffer (as `PeerSender` does: a task
    wake-up per reply cost more than the reply). The buffer is bounded so a slow client
    cannot grow the node's memory: a client more than `write_buffer_bytes_max` behind is
    disconnected (it will reconnect and retry, which PBFT's reply cache answers).

    Inbound frames are limited to the listener's unauthenticated size until the node calls
    `authenticate()`, then to its authenticated size (see `ClientListener`).
    """

    def __init__(
        self,
        transport: asyncio.Transport,
        frames: FrameBuffer,
        authenticated_frame_bytes_max: int = CLIENT_FRAME_BYTES_MAX,
        write_buffer_bytes_max: int = CLIENT_WRITE_BUFFER_BYTES_MAX,
    ) -> None:
        self._transport = transport
        self._frames = frames
        self._authenticated_frame_bytes_max = authenticated_frame_bytes_max
        self._write_buffer_bytes_max = write_buffer_bytes_max
        self.closed = False
        self.authenticated = False
        self.mac_key: bytes | None = None  # set by the node once a reply session is agreed
        self.challenge = b""  # sent on connect; a reader signs it (`prove`)
        self.channel = NO_CHANNEL  # SHA-256 of our certificate's DER bytes, with TLS
        self.reader: bytes | None = None  # the member key this connection proved, if any

    def prove(self, key: Any, signature: Any, chain_id: str) -> bool:
        """Bind this connection to the Ed25519 `key` if `signature` signs its
        `reader_transcript`; False (bind nothing) otherwise. A connection reads for one key
        only: a second proof is refused, so what it was answered never mixes two readers."""
        if self.reader is not None or not isinstance(key, bytes) or len(key) != 32:
            return False
        if not isinstance(signature, bytes) or not self.challenge:
            return False
        transcript = reader_transcript(self.challenge, self.channel, chain_id)
        if not VerifyKey(key).verify(transcript, signature):
            return False
        self.reader = key
        self.authenticate()
        return True

    def authenticate(self) -> None:
        """Let this connection send frames up to the authenticated limit from its next frame
        header on, even one already received in the same chunk. The node calls it once the
        connection has sent a request whose signature verifies: from then on, a client's
        frames are bounded by what a replica admits, not by what a stranger may send."""
        self.authenticated = True
        self._frames.limit = max(self._frames.limit, self._authenticated_frame_bytes_max)

    def send(self, obj: Any) -> None:
        if self.closed:
            return
        if self._transport.is_closing():
            self.close()
            return
        if self._transport.get_write_buffer_size() > self._write_buffer_bytes_max:
            self.close()
            return
        payload = pack(obj)
        if len(payload) > FRAME_BYTES_MAX:
            # An answer no client could take (a block stored by an older version, before
            # batches were bounded by bytes): the client sees the connection end, the node
            # goes on.
            log.warning("closing a client connection: a %d-byte answer", len(payload))
            self.close()
            return
        self._transport.write(encode_frame(payload))

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._transport.close()


@dataclass
class ClientStats:
    """Why client connections were refused or closed, for an operator (`status`)."""

    refused_over_connections_max: int = 0
    refused_over_host_connections_max: int = 0
    closed_over_buffer_budget: int = 0
    closed_idle: int = 0
    closed_read_timeout: int = 0
    protocol_errors: int = 0


class _Host:
    """What one host (`host_key`) holds of the listener: connections and partial-frame bytes."""

    __slots__ = ("buffered", "connections")

    def __init__(self) -> None:
        self.connections = 0
        self.buffered = 0


class ClientListener:
    """Serves client connections: each decoded msgpack frame goes to `on_request`, in the
    call that read it (a `FrameBuffer` protocol, as `PeerListener`).

    On accept the listener sends `{"op": "challenge", "challenge": <32 random bytes>}`; a
    reader answers with its member key's signature over `reader_transcript` (the node checks
    it with `ClientConnection.prove`) and the connection reads for that key from then on.
    With TLS (`ssl_context`) the signature is bound to the channel by `channel`, the SHA-256
    of the certificate's DER bytes; without, `channel` is `NO_CHANNEL` and anyone on the path
    can take the connection over, which is why a plain port is for development only.

    The client port is open to whoever can reach it, so every resource a connection can hold
    is bounded, per connection, per host and in total. Each limit is a parameter:

    - `connections_max` (1,024): all client connections together; each costs a descriptor
      and a few KiB. Over it, a new connection is closed at once.
    - `connections_per_host_max` (64): one host's connections (`host_key`: an IPv4 address
      or an IPv6 /64). An API process keeps one connection per replica, so 64 serves 64 API
      processes behind one address, while a single host can take at most 1/16 of the
      slots; filling them all needs 16 hosts. Over it, a new connection is closed at once.
    - `unauthenticated_frame_bytes_max` (264 KiB) until the node calls
      `ClientConnection.authenticate()`, then `frame_bytes_max` (2 MiB). A session
      handshake and a status, query or block read are under 1 KiB, and a client's first
      frame is normally a submit, which must fit before the node has checked anything: 264
      KiB holds a request with a transaction of the default `request_bytes_max` (256 KiB)
      with its signature, ids and envelope. 2 MiB holds a request with the largest
      transaction any configuration admits (`pbft.messages.TX_BYTES_MAX`, 1 MiB); nothing
      larger ever flows into a replica from a client (blocks flow out). The two limits
      bound what one connection can hold; they cannot bound the total, because proving a
      key costs an attacker one fresh key pair wherever any key may submit. The budgets do.
    - `buffered_bytes_per_host_max` (8 MiB) and `buffered_bytes_max` (64 MiB): bytes of
      partial frames held for one host and for everybody, checked after each chunk. The
      connection whose chunk overruns a budget is closed (the one growing, not an innocent
      one); an honest client reconnects and retransmits, which PBFT's reply cache answers.
      8 MiB lets a host have four of the largest frames in flight at once; 64 MiB bounds
      what partial frames can cost a replica whatever the number of connections (24
      connections holding near-16 MiB frames grew a replica from 69 to 432 MB without it).
      A partial frame holds its bytes for at most the read timeout.
    - `idle_timeout_ms` (120 s): a connection that completes no frame for this long is
      closed, so silent sockets give their slots back. An idle API pays one reconnection on
      its next call (`TcpClientTransport` reopens lazily).
    - `read_timeout_ms` (30 s): a frame started and not finished within this long closes
      the connection (slowloris). The largest frame needs about 0.6 Mbit/s to make it.

    The timeouts cost nothing per frame: the protocol counts frames, and one timer for the
    whole listener sweeps the connections every tenth of the shorter timeout, so a
    connection is closed between one timeout and one timeout plus two sweeps after the
    fact, never before.
    """

    def __init__(
        self,
        on_request: ClientHandler,
        ssl_context: ssl.SSLContext | None = None,
        frame_bytes_max: int = CLIENT_FRAME_BYTES_MAX,
        connections_max: int = CLIENT_CONNECTIONS_MAX,
        *,
        channel: bytes = NO_CHANNEL,
        unauthenticated_frame_bytes_max: int = CLIENT_UNAUTHENTICATED_FRAME_BYTES_MAX,
        connections_per_host_max: int = CLIENT_CONNECTIONS_PER_HOST_MAX,
        buffered_bytes_max: int = CLIENT_BUFFERED_BYTES_MAX,
        buffered_bytes_per_host_max: int = CLIENT_BUFFERED_BYTES_PER_HOST_MAX,
        idle_timeout_ms: int = CLIENT_IDLE_TIMEOUT_MS,
        read_timeout_ms: int = CLIENT_READ_TIMEOUT_MS,
        write_buffer_bytes_max: int = CLIENT_WRITE_BUFFER_BYTES_MAX,
    ) -> None:
        if not 0 < unauthenticated_frame_bytes_max <= frame_bytes_max:
            raise ValueError("need 0 < unauthenticated_frame_bytes_max <= frame_bytes_max")
        if not 0 < connections_per_host_max <= connections_max:
            raise ValueError("need 0 < connections_per_host_max <= connections_max")
        if not frame_bytes_max + HEADER.size <= buffered_bytes_per_host_max <= buffered_bytes_max:
            raise ValueError(
                "need frame_bytes_max + header <= buffered_bytes_per_host_max"
                " <= buffered_bytes_max, or no host could send a largest frame"
            )
        if idle_timeout_ms <= 0 or read_timeout_ms <= 0:
            raise ValueError("need positive idle_timeout_ms and read_timeout_ms")
        if ssl_context is not None and channel == NO_CHANNEL:
            raise ValueError("a TLS client port needs its certificate's fingerprint as channel")
        self._on_request = on_request
        self._ssl = ssl_context
        self._channel = channel
        self._frame_bytes_max = frame_bytes_max
        self._unauthenticated_frame_bytes_max = unauthenticated_frame_bytes_max
        self._connections_max = connections_max
        self._connections_per_host_max = connections_per_host_max
        self._buffered_bytes_max = buffered_bytes_max
        self._buffered_bytes_per_host_max = buffered_bytes_per_host_max
        self._idle_timeout_s = idle_timeout_ms / 1000
        self._read_timeout_s = read_timeout_ms / 1000
        # A handshake is a round trip or two: one not done by then is stalling.
        self._handshake_timeout_s = min(self._read_timeout_s, CLIENT_HANDSHAKE_TIMEOUT_MS / 1000)
        self._sweep_s = max(0.01, min(self._idle_timeout_s, self._read_timeout_s) / 10)
        self._write_buffer_bytes_max = write_buffer_bytes_max
        self._server: asyncio.Server | None = None  # plain TCP
        self._socket: socket.socket | None = None  # TLS: accepted by `_accept`
        self._accepting: asyncio.Task[None] | None = None
        self._handshakes: set[asyncio.Task[None]] = set()
        self._sweep_timer: asyncio.TimerHandle | None = None
        self._protocols: set[_ClientProtocol] = set()
        self._hosts: dict[str, _Host] = {}
        self._buffered = 0
        self.stats = ClientStats()

    @property
    def connections(self) -> int:
        return len(self._protocols)

    @property
    def buffered_bytes(self) -> int:
        """Bytes of partial frames held for all connections (what the budget counts)."""
        return self._buffered

    @property
    def port(self) -> int:
        """The port listened on (what an address with port 0 got)."""
        if self._server is not None:
            return int(self._server.sockets[0].getsockname()[1])
        assert self._socket is not None, "not started"
        return int(self._socket.getsockname()[1])

    async def start(self, address: str) -> None:
        host, port = split_address(address)
        loop = asyncio.get_running_loop()
        if self._ssl is None:
            self._server = await loop.create_server(
                lambda: _ClientProtocol(self),
                host,
                port,
                reuse_address=True,
                backlog=CLIENT_ACCEPT_BACKLOG,
            )
        else:
            # With TLS, connections are accepted here, admitted by the limits, and only then
            # shake hands: a server that handshakes before its protocol sees the connection
            # lets one host hold any number of unfinished handshakes, a descriptor each.
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            self._socket = socket.create_server(
                (host, port), family=family, backlog=CLIENT_ACCEPT_BACKLOG
            )
            self._socket.setblocking(False)
            self._accepting = loop.create_task(self._accept(self._socket))
        self._sweep_timer = loop.call_later(self._sweep_s, self._sweep)

    async def stop(self) -> None:
        if self._sweep_timer is not None:
            self._sweep_timer.cancel()
            self._sweep_timer = None
        if self._server is not None:
            self._server.close()
        if self._accepting is not None:
            self._accepting.cancel()
            self._accepting = None
        if self._socket is not None:
            self._socket.close()
        for task in list(self._handshakes):
            task.cancel()
        for proto in list(self._protocols):
            proto.close()

    async def _accept(self, listening: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, peer = await loop.sock_accept(listening)
            except OSError as exc:  # out of descriptors, say: the next accept may succeed
                log.warning("client port accept failed: %s", exc)
                await asyncio.sleep(0.05)
                continue
            proto = _ClientProtocol(self)
            if not proto.admit(host_key(peer)):
                sock.close()
                continue
            task = loop.create_task(self._handshake(proto, sock))
            self._handshakes.add(task)  # held: the loop keeps only weak references to tasks
            task.add_done_callback(self._handshakes.discard)

    async def _handshake(self, proto: _ClientProtocol, sock: socket.socket) -> None:
        """TLS on an admitted connection, bounded by the handshake timeout; then `proto`
        has it (its `connection_made`). A failure gives the slot back."""
        assert self._ssl is not None
        try:
            await asyncio.get_running_loop().connect_accepted_socket(
                lambda: proto,
                sock,
                ssl=self._ssl,
                ssl_handshake_timeout=self._handshake_timeout_s,
            )
        except BaseException as exc:
            log.debug("closing a client connection: TLS handshake failed (%r)", exc)
            sock.close()
            proto.close()
            if isinstance(exc, asyncio.CancelledError):
                raise

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        for proto in list(self._protocols):
            proto.check_timeouts(now, self._idle_timeout_s, self._read_timeout_s)
        self._sweep_timer = loop.call_later(self._sweep_s, self._sweep)

    def _admit(self, key: str) -> _Host | None:
        """The host's account with one more connection counted, or None: refuse it."""
        if len(self._protocols) >= self._connections_max:
            self.stats.refused_over_connections_max += 1
            return None
        host = self._hosts.get(key)
        if host is None:
            host = self._hosts[key] = _Host()
        if host.connections >= self._connections_per_host_max:
            self.stats.refused_over_host_connections_max += 1
            return None
        host.connections += 1
        return host


class _ClientProtocol(asyncio.Protocol):
    """One client connection: admitted at accept by the connection limits, then frames cut
    under the connection's limit, its partial frame charged to the byte budgets after each
    chunk, and a frame counter the listener's sweep reads for the timeouts. With TLS the
    listener admits it (`admit`) before its handshake, and `connection_made` comes after."""

    def __init__(self, listener: ClientListener) -> None:
        self._listener = listener
        self._frames = FrameBuffer(listener._unauthenticated_frame_bytes_max)
        self._conn: ClientConnection | None = None
        self._host: _Host | None = None  # None: refused, or released
        self._host_key = ""
        self._charged = 0  # bytes of the partial frame counted against the budgets
        self._frames_done = 0
        self._frames_seen = 0  # `_frames_done` at the sweep that last saw it move
        self._active_at = 0.0  # loop time a frame was last known complete
        self._partial_at: float | None = None  # loop time the current partial frame was seen
        self._admitted = False

    def admit(self, key: str) -> bool:
        """Count this connection against the limits of host `key`; False: refuse it."""
        listener = self._listener
        self._host_key = key
        self._host = listener._admit(key)
        if self._host is None:
            log.debug("refusing a client connection: connection limit")
            return False
        self._admitted = True
        listener._protocols.add(self)
        self._active_at = asyncio.get_running_loop().time()
        return True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        listener = self._listener
        stream = cast(asyncio.Transport, transport)
        if not self._admitted and not self.admit(host_key(stream.get_extra_info("peername"))):
            stream.close()
            return
        if self._host is None:  # released while it shook hands (the listener stopped)
            stream.close()
            return
        set_nodelay(stream)
        self._active_at = asyncio.get_running_loop().time()
        conn = self._conn = ClientConnection(
            stream, self._frames, listener._frame_bytes_max, listener._write_buffer_bytes_max
        )
        conn.channel = listener._channel
        conn.challenge = os.urandom(CHALLENGE_BYTES)
        conn.send({"op": "challenge", "challenge": conn.challenge})

    def connection_lost(self, exc: Exception | None) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection and give back its slot and budget at once, so the next
        chunk from another connection is measured against what is really held."""
        if self._conn is not None:
            self._conn.close()
        host = self._host
        if host is None:
            return
        self._host = None
        listener = self._listener
        listener._protocols.discard(self)
        listener._buffered -= self._charged
        host.buffered -= self._charged
        self._charged = 0
        host.connections -= 1
        if host.connections == 0:
            del listener._hosts[self._host_key]
        self._frames.clear()

    def data_received(self, data: bytes) -> None:
        conn, listener = self._conn, self._listener
        if conn is None or conn.closed:
            return
        done = 0  # a local: an attribute increment per frame costs more
        try:
            for payload in self._frames.frames(data):
                done += 1
                listener._on_request(unpack(payload, listener._frame_bytes_max), conn)
                if conn.closed:
                    return
        except RemoteProtocolError as exc:
            listener.stats.protocol_errors += 1
            log.info("closing a client connection: %s", exc)
            self.close()
            return
        self._frames_done += done
        if self._frames.buffered != self._charged:
            self._charge(self._frames.buffered)

    def _charge(self, buffered: int) -> None:
        """Count this connection's partial frame against its host's and the listener's
        budgets; close it if its growth overruns either."""
        listener, host = self._listener, self._host
        assert host is not None, "data on a released connection"
        grown = buffered - self._charged
        self._charged = buffered
        host.buffered += grown
        listener._buffered += grown
        if grown > 0 and (
            host.buffered > listener._buffered_bytes_per_host_max
            or listener._buffered > listener._buffered_bytes_max
        ):
            listener.stats.closed_over_buffer_budget += 1
            log.debug("closing a client connection: partial frames over the byte budget")
            self.close()

    def check_timeouts(self, now: float, idle_s: float, read_s: float) -> None:
        """Called by the listener's sweep. Times are the sweep's, never earlier than the
        events they stand for, so a connection is never closed before its timeout."""
        if self._frames_done != self._frames_seen:
            self._frames_seen = self._frames_done
            self._active_at = now
            self._partial_at = None  # any partial frame now began after that frame
        if not self._frames.buffered:
            self._partial_at = None
        elif self._partial_at is None:
            self._partial_at = now
        elif now - self._partial_at >= read_s:
            self._listener.stats.closed_read_timeout += 1
            log.debug("closing a client connection: frame not finished in time")
            self.close()
            return
        if now - self._active_at >= idle_s:
            self._listener.stats.closed_idle += 1
            log.debug("closing a client connection: idle")
            self.close()
