"""Asyncio TCP between replicas and to clients: length-prefixed frames, bounded everywhere.

What it is for: moving opaque byte payloads (encoded PBFT messages, client requests) between
processes. It never interprets a payload beyond the frame header and the connection hello, and
it never decides anything about consensus: loss is fine (PBFT retransmits through its own
timers), so a full queue drops rather than blocks the replica loop.

Wire format: each frame is a 4-byte big-endian length followed by that many bytes. The first
frame a dialling replica sends is a msgpack hello `{"v": 1, "from": <replica id>}`. A frame
longer than `frame_bytes_max` is a remote protocol error: the connection is closed (the bytes
cannot be skipped safely without reading them, and a peer that sends them is broken or
hostile). With TLS the hello's id must match the certificate's common name `node-<id>`, so a
replica cannot speak for another.

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
import ssl
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import msgpack

log = logging.getLogger(__name__)

HEADER = struct.Struct(">I")
FRAME_BYTES_MAX = 16 * 1024 * 1024  # a batch of 500 x 1 KiB txs with signatures fits easily
HELLO_VERSION = 1
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


def set_nodelay(conn: asyncio.StreamWriter | asyncio.BaseTransport) -> None:
    """Latency matters more than packet count here: three protocol phases per commit."""
    sock = conn.get_extra_info("socket")
    if sock is not None:
        import socket

        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


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


@dataclass
class PeerSender:
    """The outbound half to one peer: frames go straight into the socket's buffer.

    Why no queue and writer task: a task wake-up per frame cost more CPU than the frame
    itself (measured by `bench ledger`). `writer.write` never blocks; the socket's write buffer
    is the bounded queue (over `write_buffer_bytes_max` we drop, PBFT retransmits). While
    disconnected, up to `queue_max` frames wait in a deque (oldest dropped first) and are
    written on reconnect. A task only dials, with exponential back-off, and watches for EOF.
    """

    self_id: int
    peer_id: int
    address: str
    stats: TransportStats
    ssl_context: ssl.SSLContext | None = None
    queue_max: int = SEND_QUEUE_MAX
    frame_bytes_max: int = FRAME_BYTES_MAX
    write_buffer_bytes_max: int = 64 * 1024 * 1024
    _pending: collections.deque[bytes] = field(init=False)
    _writer: asyncio.StreamWriter | None = field(init=False, default=None)
    _task: asyncio.Task[None] | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self._pending = collections.deque()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

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
        while True:
            try:
                host, port = split_address(self.address)
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(
                        host,
                        port,
                        ssl=self.ssl_context,
                        server_hostname=f"node-{self.peer_id}" if self.ssl_context else None,
                    ),
                    CONNECT_TIMEOUT_MS / 1000,
                )
            except (OSError, TimeoutError, ssl.SSLError) as exc:
                self.stats.connect_failures += 1
                log.debug("dial %s failed: %s", self.peer_id, type(exc).__name__)
                await asyncio.sleep(backoff_ms / 1000)
                backoff_ms = min(backoff_ms * 2, BACKOFF_MAX_MS)
                continue
            self.stats.connects += 1
            backoff_ms = BACKOFF_MIN_MS
            set_nodelay(writer)
            try:
                writer.write(encode_frame(pack({"v": HELLO_VERSION, "from": self.self_id})))
                while self._pending:
                    writer.write(self._pending.popleft())
                    self.stats.frames_sent += 1
                self._writer = writer
                await reader.read(1)  # the peer never writes to us: EOF or error = gone
            except (OSError, ConnectionError, ssl.SSLError) as exc:
                log.debug("link to %s broke: %s", self.peer_id, type(exc).__name__)
            finally:
                self._writer = None
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()


FrameHandler = Callable[[int, bytes], None]


class PeerListener:
    """Accepts replica connections; every frame after the hello goes to `on_frame(peer, bytes)`.

    With TLS, `ssl_context` requires a client certificate from the cluster CA and the hello id
    must match it; without TLS the id is only a routing hint (the replica core authenticates
    every message by signature or MAC anyway).

    Why a `Protocol` and not a `StreamReader` loop: frames are cut out of each chunk the socket
    delivers and handed over in the same call, so a chunk holding several frames costs one
    event-loop turn, not two task wake-ups per frame (`readexactly` for the header, then the
    body). Nothing is buffered beyond one partial frame.
    """

    def __init__(
        self,
        on_frame: FrameHandler,
        stats: TransportStats,
        n_replicas: int,
        ssl_context: ssl.SSLContext | None = None,
        frame_bytes_max: int = FRAME_BYTES_MAX,
    ) -> None:
        self._on_frame = on_frame
        self._stats = stats
        self._n = n_replicas
        self._ssl = ssl_context
        self._frame_bytes_max = frame_bytes_max
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.BaseTransport] = set()

    async def start(self, address: str) -> None:
        host, port = split_address(address)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _PeerProtocol(self), host, port, ssl=self._ssl, reuse_address=True
        )

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for t in list(self._conns):
            t.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    def _hello(self, raw: bytes, transport: asyncio.BaseTransport) -> int:
        hello = unpack(raw, 1024)
        if not isinstance(hello, dict) or hello.get("v") != HELLO_VERSION:
            raise RemoteProtocolError("bad hello")
        peer = hello.get("from")
        if not isinstance(peer, int) or isinstance(peer, bool) or not 0 <= peer < self._n:
            raise RemoteProtocolError("hello names no replica of this cluster")
        if self._ssl is not None:
            cert_id = certificate_node_id(transport)
            if cert_id != peer:
                raise RemoteProtocolError(f"hello says {peer}, certificate says {cert_id}")
        return peer


class _PeerProtocol(asyncio.Protocol):
    """One inbound replica connection: the hello (within HELLO_TIMEOUT_MS), then frames."""

    def __init__(self, listener: PeerListener) -> None:
        self._listener = listener
        self._frames = FrameBuffer(1024)  # the hello's limit; then the listener's
        self._peer: int | None = None
        self._transport: asyncio.Transport | None = None
        self._hello_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (asyncio's or another loop's, which need not subclass it).
        self._transport = cast(asyncio.Transport, transport)
        self._listener._conns.add(transport)
        set_nodelay(transport)
        self._hello_timer = asyncio.get_running_loop().call_later(
            HELLO_TIMEOUT_MS / 1000, self._transport.close
        )

    def connection_lost(self, exc: Exception | None) -> None:
        if self._hello_timer is not None:
            self._hello_timer.cancel()
        if self._transport is not None:
            self._listener._conns.discard(self._transport)

    def data_received(self, data: bytes) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        listener = self._listener
        try:
            for payload in self._frames.frames(data):
                if self._peer is None:
                    self._peer = listener._hello(payload, transport)
                    self._frames.limit = listener._frame_bytes_max
                    if self._hello_timer is not None:
                        self._hello_timer.cancel()
                        self._hello_timer = None
                    continue
                listener._stats.frames_received += 1
                listener._on_frame(self._peer, payload)
                if transport.is_closing():
                    return
        except RemoteProtocolError as exc:
            listener._stats.protocol_errors += 1
            log.warning("closing a replica connection: %s", exc)
            transport.close()


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
        server_ssl: ssl.SSLContext | None = None,
        client_ssl: ssl.SSLContext | None = None,
        queue_max: int = SEND_QUEUE_MAX,
        frame_bytes_max: int = FRAME_BYTES_MAX,
    ) -> None:
        """`frame_bytes_max` bounds frames both ways: the largest message a correct replica
        sends, which the node derives from the cluster's parameters."""
        self.stats = TransportStats()
        self.self_id = self_id
        self._senders = {
            pid: PeerSender(self_id, pid, addr, self.stats, client_ssl, queue_max, frame_bytes_max)
            for pid, addr in peer_addresses.items()
            if pid != self_id
        }
        self._listener = PeerListener(
            on_frame, self.stats, max(peer_addresses) + 1, server_ssl, frame_bytes_max
        )

    async def start(self, listen: str) -> None:
        await self._listener.start(listen)
        for sender in self._senders.values():
            sender.start()

    async def stop(self) -> None:
        for sender in self._senders.values():
            await sender.stop()
        await self._listener.stop()

    def send(self, to: int, payload: bytes) -> None:
        sender = self._senders.get(to)
        assert sender is not None, f"no link to replica {to}"
        sender.send(payload)


# -- request/response connections (clients) ------------------------------------------------

ClientHandler = Callable[[Any, "ClientConnection"], None]

KIB = 1024
MIB = 1024 * KIB
# The reason for each value is in `ClientListener`'s docstring.
CLIENT_FRAME_BYTES_MAX = 2 * MIB
CLIENT_UNAUTHENTICATED_FRAME_BYTES_MAX = 264 * KIB
CLIENT_CONNECTIONS_MAX = 1024
CLIENT_CONNECTIONS_PER_HOST_MAX = 64
CLIENT_BUFFERED_BYTES_MAX = 64 * MIB
CLIENT_BUFFERED_BYTES_PER_HOST_MAX = 8 * MIB
CLIENT_IDLE_TIMEOUT_MS = 120_000
CLIENT_READ_TIMEOUT_MS = 30_000
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
        self._on_request = on_request
        self._ssl = ssl_context
        self._frame_bytes_max = frame_bytes_max
        self._unauthenticated_frame_bytes_max = unauthenticated_frame_bytes_max
        self._connections_max = connections_max
        self._connections_per_host_max = connections_per_host_max
        self._buffered_bytes_max = buffered_bytes_max
        self._buffered_bytes_per_host_max = buffered_bytes_per_host_max
        self._idle_timeout_s = idle_timeout_ms / 1000
        self._read_timeout_s = read_timeout_ms / 1000
        self._sweep_s = max(0.01, min(self._idle_timeout_s, self._read_timeout_s) / 10)
        self._write_buffer_bytes_max = write_buffer_bytes_max
        self._server: asyncio.Server | None = None
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

    async def start(self, address: str) -> None:
        host, port = split_address(address)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _ClientProtocol(self), host, port, ssl=self._ssl, reuse_address=True
        )
        self._sweep_timer = loop.call_later(self._sweep_s, self._sweep)

    async def stop(self) -> None:
        if self._sweep_timer is not None:
            self._sweep_timer.cancel()
            self._sweep_timer = None
        if self._server is not None:
            self._server.close()
        for proto in list(self._protocols):
            proto.close()

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
    chunk, and a frame counter the listener's sweep reads for the timeouts."""

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

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        listener = self._listener
        stream = cast(asyncio.Transport, transport)
        self._host_key = host_key(stream.get_extra_info("peername"))
        self._host = listener._admit(self._host_key)
        if self._host is None:
            log.debug("refusing a client connection: connection limit")
            stream.close()
            return
        listener._protocols.add(self)
        set_nodelay(stream)
        self._conn = ClientConnection(
            stream, self._frames, listener._frame_bytes_max, listener._write_buffer_bytes_max
        )
        self._active_at = asyncio.get_running_loop().time()

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
