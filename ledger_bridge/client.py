"""The ledger client: submit a transaction, get a receipt backed by f+1 replicas; fetch blocks
and check their commit certificates against the genesis validator keys alone.

Why f+1 matching replies (PBFT §4.1): at most f replicas lie, so f+1 equal answers include a
correct replica's, and a correct replica only replies after the request committed. The client
never trusts one replica, and `get_block` never trusts the replica that served the block: the
certificate (2f+1 validator signatures) is checked here.

Retries (PBFT §4.1, §4.4): a request goes to the replica the client believes is primary, and
to each replica that could not yet send this client's replies back (a replica sends them to
the connection on which the client's request last reached it: `introduce_to`); when
no f+1 matching replies come within the retry time, it is re-sent to every replica (a backup
that sees a request the primary sits on starts its view-change timer), with exponential
back-off, until `timeout_ms`. The retry time is `retry_ms` or three times the smoothed commit
latency this client observed, whichever is longer, at most 5 s (TCP's RTO idea): under load
a commit takes longer than `retry_ms`, and re-sending every slow request to all replicas
would multiply the work of an already saturated cluster (each repeat costs every replica a
signature check).
Re-sending is safe: the replicas execute a (client, request id) once and answer repeats from
their reply cache.

Replies are checked lazily: a reply's signature is verified only once f+1 replies agree on
the same answer (PBFT §4.1 needs f+1 *valid* matching replies); the others are never paid for.
Over TCP a reply is authenticated by a MAC instead (PBFT's authenticators, TOCS 2002 §5):
on connecting, the client and each replica agree a session key (ephemeral X25519, the
replica's half signed by its validator key, see `crypto.SessionKey`), and the node attaches
HMAC-SHA256(key, reply) to every reply on that connection. A reply whose MAC fails is
dropped like one whose signature fails. Replies stay signed by the replica core, so blocks,
the simulator and clients without a session check signatures as before.

Reads need a right: a replica answers blocks and queries only on a connection that proved a
member key (`TcpClientTransport`'s `reader`: on connecting, it signs the replica's challenge,
bound to the TLS certificate it saw and the chain id, see `transport.reader_transcript`), and
then only what that key may read (validators, the vault and the DPO everything; others what
names them). Over TLS (`TcpClientTransport.for_genesis`) the replica's certificate is checked
against the cluster CA as `node-<j>`. Submitting needs no proof: a request is signed.

The transport is swappable (httpx's `MockTransport` pattern): `TcpClientTransport` talks to
node processes; `InProcessTransport` drives `Replica` objects directly, for fast tests.

`LedgerClient` is synchronous (the vault's outbox relay and CLI are); it runs the asynchronous
`AsyncLedgerClient` on a private event-loop thread. One client key has one request in flight
at a time, as in the paper: the replicas' reply cache keeps the latest request id per client.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import ssl
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

from ledger_bridge import eventloop, tls
from ledger_bridge.crypto import (
    SessionKey,
    SigningKey,
    VerifyKey,
    digest,
    mac_ok,
    session_transcript,
)
from ledger_bridge.height_floor import HeightFloor
from ledger_bridge.pbft import messages as m
from ledger_bridge.pbft.blocks import Block, verify_chain
from ledger_bridge.pbft.replica import Ready, Replica
from ledger_bridge.transport import (
    CHALLENGE_BYTES,
    FRAME_BYTES_MAX,
    NO_CHANNEL,
    FrameBuffer,
    RemoteProtocolError,
    encode_frame,
    pack,
    reader_transcript,
    set_nodelay,
    split_address,
    unpack,
)

if TYPE_CHECKING:
    from ledger_bridge.genesis import Genesis

log = logging.getLogger(__name__)

T = TypeVar("T")
RETRY_MS = 400
RETRY_MAX_MS = 5_000  # however slow commits were, a request is re-sent within this
TIMEOUT_MS = 30_000
CALL_TIMEOUT_MS = 5_000
# A connection's TCP and TLS handshakes and the replica's challenge, under one deadline. Over
# Linux's initial retransmission timeout (1 s, with no RTT measured yet): a lost SYN, or a
# lost handshake segment after it, is sent again at 1 s, and a deadline at that second would
# fail about one connection in fifty over a WAN with 1 % loss.
CONNECT_TIMEOUT_MS = 3_000
# For this long after a failed connection attempt, a replica is sent no request only to
# introduce a client; it still gets one as the primary, or in a retry to all.
INTRODUCE_BACKOFF_S = 1.0
# A query every replica answered `stale` is asked again every STALE_RETRY_MS for this long.
STALE_WAIT_MS = 5_000
STALE_RETRY_MS = 100
PENDING_CALLS_MAX = 1024

# handler(replica id, encoded reply, authenticated): `authenticated` is True when the
# transport checked the reply's MAC under a session key agreed with that replica, so the
# client may skip the reply's signature.
ReplyHandler = Callable[[int, bytes, bool], None]


class LedgerError(Exception):
    """The ledger could not give an answer we can trust (timeout, bad certificate)."""


class LedgerTimeout(LedgerError):
    pass


class CertificateError(LedgerError):
    """A block served by a replica does not verify against the genesis validator keys."""


@dataclass(frozen=True, slots=True)
class Receipt:
    """Proof-of-commit summary: f+1 replicas agreed on this result at this height."""

    tx_id: str  # hex SHA-256 of the signed request: stable across retries of the same request
    block_height: int
    result: bytes
    request_id: int
    # The encoded PBFT Request this client sent (its digest is what a block commits to): what
    # an erasure receipt hands the subject, since the block may later hold only the digest.
    request: bytes = b""


class ClientTransport(Protocol):
    """How requests reach replicas and replies come back."""

    n: int
    # The highest block height the clients of this transport saw committed (their receipts,
    # the blocks they verified): an answer from an older state is not current.
    height_seen: int

    def on_reply(self, client_id: bytes, handler: ReplyHandler | None) -> None:
        """Route encoded replies for `client_id` to `handler(replica_id, reply_bytes,
        authenticated)`."""
        ...

    def send_now(self, replica: int, request: bytes, client: bytes = b"") -> bool:
        """`send` at once, without waiting for anything: False when that cannot be (no
        connection to the replica yet), and then nothing was sent."""
        ...

    async def send(self, replica: int, request: bytes, client: bytes = b"") -> None:
        """Best-effort delivery of an encoded request of `client` (its id: the replica then
        knows where to send that client's replies, see `introduce_to`); loss is handled by
        retries."""
        ...

    def introduce_to(self, client: bytes) -> list[int]:
        """The replicas that cannot send `client`'s replies here yet: a replica sends them to
        the connection on which a request of that client last reached it, so a request sent
        to the primary alone is answered by the primary alone, f replies short of f+1."""
        ...

    async def call(self, replica: int, op: str, args: dict[str, Any]) -> dict[str, Any]:
        """A read endpoint (`status`, `block`, `query`) on one replica."""
        ...

    async def close(self) -> None: ...


class _HeightSeen:
    """`ClientTransport.height_seen`, kept in a `HeightFloor`: this transport's own, or one
    shared with the other processes of an instance (ledger_bridge/height_floor.py)."""

    _floor: HeightFloor

    @property
    def height_seen(self) -> int:
        return self._floor.height

    @height_seen.setter
    def height_seen(self, height: int) -> None:
        """Raise the floor to `height`; it never goes down (another process may have raised
        it further since this one read it)."""
        self._floor.raise_to(height)


class _Conn(asyncio.Protocol):
    """One connection to a replica's client port. Frames are handed to the transport's
    `_dispatch` in the call that read them (`FrameBuffer`: no task wake-up per reply)."""

    def __init__(self, owner: TcpClientTransport, replica: int) -> None:
        self._owner = owner
        self._replica = replica
        self._frames = FrameBuffer(owner._frame_bytes_max)
        self.transport: asyncio.Transport | None = None
        self.session: SessionKey | None = None  # ours, while the replica's answer is due
        self.mac_key: bytes | None = None  # agreed with the replica: its replies carry MACs
        self.introduced: set[bytes] = set()  # clients whose request went out here
        # The replica's first frame: what a reader signs to prove its key on this connection.
        self.challenge: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        set_nodelay(self.transport)

    def connection_lost(self, exc: Exception | None) -> None:
        log.debug("replica %d connection lost: %s", self._replica, type(exc).__name__)
        if not self.challenge.done():
            self.challenge.set_exception(ConnectionError("closed before its challenge"))
        self._owner._drop(self._replica, self)

    def channel(self) -> bytes:
        """SHA-256 of the certificate the replica showed in our TLS handshake (what our proof
        binds to), or `NO_CHANNEL` on plain TCP."""
        t = self.transport
        ssl_object = t.get_extra_info("ssl_object") if t is not None else None
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        return hashlib.sha256(der).digest() if der else NO_CHANNEL

    def data_received(self, data: bytes) -> None:
        try:
            for payload in self._frames.frames(data):
                self._owner._dispatch(
                    self._replica, unpack(payload, self._owner._frame_bytes_max), self
                )
        except RemoteProtocolError as exc:
            log.debug("replica %d sent garbage: %s", self._replica, exc)
            self._owner._drop(self._replica, self)

    def write(self, frame: bytes) -> bool:
        """Queue `frame`; False when the connection is going away (reconnect next time)."""
        t = self.transport
        if t is None or t.is_closing():
            return False
        t.write(frame)
        return True

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class TcpClientTransport(_HeightSeen):
    """One connection per replica's client port, opened lazily, re-opened after a failure.

    `reader` is the key this transport reads with (None: status only), `chain_id` the chain
    its proof names; `ssl_context` is `tls.reader_context` of the cluster CA, or None for a
    replica whose client port is plain TCP (development). `for_genesis` picks both from a
    genesis. `height_floor` is where `height_seen` is kept: this transport's own by default,
    or one shared with the other processes of an instance (ledger_bridge/height_floor.py)."""

    def __init__(
        self,
        addresses: Sequence[str],
        ssl_context: ssl.SSLContext | None = None,
        frame_bytes_max: int = FRAME_BYTES_MAX,
        *,
        reader: SigningKey | None = None,
        chain_id: str = "",
        height_floor: HeightFloor | None = None,
    ) -> None:
        self.n = len(addresses)
        self._floor = height_floor or HeightFloor()
        self._addresses = list(addresses)
        self._ssl = ssl_context
        self._reader = reader
        self._chain_id = chain_id
        self._frame_bytes_max = frame_bytes_max
        self._conns: dict[int, _Conn] = {}
        self._dialling: dict[int, asyncio.Future[_Conn]] = {}  # one connect at a time each
        self._unreachable_until: dict[int, float] = {}  # monotonic time: no introduction before
        self._waiting_sends: dict[int, set[bytes]] = {}  # clients whose send awaits a connection
        self._handlers: dict[bytes, ReplyHandler] = {}
        self._calls: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._call_ids = itertools.count(1)
        self._validators: list[VerifyKey] | None = None
        self._closed = False  # `close` is final: a send after it opens nothing
        self.forged_replies = 0  # replies whose MAC did not verify: dropped

    @classmethod
    def for_genesis(
        cls, genesis: Genesis, reader: SigningKey | None = None, **kwargs: Any
    ) -> TcpClientTransport:
        """The client ports of a genesis: TLS pinned to its CA when it names one (plain TCP
        otherwise, which only a replica with `client_port.insecure` serves)."""
        context = tls.reader_context(genesis.tls_ca) if genesis.tls_ca is not None else None
        return cls(
            [v.client_address for v in genesis.validators],
            context,
            reader=reader,
            chain_id=genesis.chain_id,
            **kwargs,
        )

    def enable_reply_macs(self, validators: Sequence[VerifyKey]) -> None:
        """Agree a MAC key with each replica on connection (`crypto.SessionKey`); its replies
        are then checked by HMAC, not by signature. A replica that does not answer the
        session request keeps sending signed replies without MACs, which still count."""
        self._validators = list(validators)

    def on_reply(self, client_id: bytes, handler: ReplyHandler | None) -> None:
        if handler is None:
            self._handlers.pop(client_id, None)
            for conn in self._conns.values():
                conn.introduced.discard(client_id)
        else:
            self._handlers[client_id] = handler

    def introduce_to(self, client: bytes) -> list[int]:
        """Replicas with no open connection on which a request of `client` went out, except
        those a request of `client` waits for a connection to (it goes out on it) and those
        whose last connection attempt failed within INTRODUCE_BACKOFF_S: a request that went
        to every replica at each submit would queue a send per request behind a slow
        connection, and cost a dead replica's connection attempt each time. A retry still
        tries them all."""
        now = time.monotonic()
        return [
            r
            for r in range(self.n)
            if (conn := self._conns.get(r)) is None or client not in conn.introduced
            if client not in self._waiting_sends.get(r, ())
            if self._unreachable_until.get(r, 0.0) <= now
        ]

    async def _conn(self, replica: int) -> _Conn:
        """The replica's connection, made if there is none. Every caller waiting for it shares
        the one attempt under way, and its deadline: a replica out of reach costs each of them
        at most CONNECT_TIMEOUT_MS, however many wait."""
        conn = self._conns.get(replica)
        if conn is not None:
            return conn
        if self._closed:
            raise ConnectionError("transport closed")
        dialling = self._dialling.get(replica)
        if dialling is None:
            dialling = asyncio.ensure_future(self._dial(replica))
            self._dialling[replica] = dialling
            dialling.add_done_callback(lambda done: self._dialled(replica, done))
        # Shielded: a caller that gives up (its own deadline) leaves the attempt to the others.
        return await asyncio.shield(dialling)

    def _dialled(self, replica: int, done: asyncio.Future[_Conn]) -> None:
        if self._dialling.get(replica) is done:
            del self._dialling[replica]
        # Retrieved: with no caller left waiting, asyncio would log it.
        if done.cancelled() or done.exception() is not None:
            self._unreachable_until[replica] = time.monotonic() + INTRODUCE_BACKOFF_S
        else:
            self._unreachable_until.pop(replica, None)

    async def _dial(self, replica: int) -> _Conn:
        host, port = split_address(self._addresses[replica])
        async with asyncio.timeout(CONNECT_TIMEOUT_MS / 1000):
            _, fresh = await asyncio.get_running_loop().create_connection(
                lambda: _Conn(self, replica),
                host,
                port,
                ssl=self._ssl,
                server_hostname=f"node-{replica}" if self._ssl else None,
            )
            try:  # a timeout cancels the future: a late close finds it done
                challenge = await fresh.challenge
                if self._closed:  # closed while this connection was being made
                    raise ConnectionError("transport closed")
            except BaseException:
                fresh.close()
                raise
        if self._reader is not None:
            # Before any read on this connection: the replica handles frames in order.
            transcript = reader_transcript(challenge, fresh.channel(), self._chain_id)
            key, sig = bytes(self._reader.public_key), self._reader.sign(transcript)
            fresh.write(encode_frame(pack({"op": "auth", "key": key, "sig": sig})))
        if self._validators is not None:
            fresh.session = SessionKey()
            fresh.write(encode_frame(pack({"op": "session", "key": fresh.session.public})))
        self._conns[replica] = fresh
        return fresh

    def _drop(self, replica: int, conn: _Conn) -> None:
        if self._conns.get(replica) is conn:
            del self._conns[replica]
        conn.close()

    def _dispatch(self, replica: int, frame: Any, conn: _Conn) -> None:
        if not isinstance(frame, dict):
            return
        op = frame.get("op")
        if op == "reply":
            reply = frame.get("reply")
            client = frame.get("client")
            if not isinstance(reply, bytes) or not isinstance(client, bytes):
                return
            tag = frame.get("mac")
            authenticated = False
            if tag is not None:
                # A MAC that does not verify is a forgery, like a bad signature: drop it.
                if conn.mac_key is None or not isinstance(tag, bytes):
                    self.forged_replies += 1
                    return
                if not mac_ok(conn.mac_key, reply, tag):
                    self.forged_replies += 1
                    return
                authenticated = True
            handler = self._handlers.get(client)
            if handler is not None:
                handler(replica, reply, authenticated)
            return
        if op == "session":
            self._on_session(replica, frame, conn)
            return
        if op == "challenge":
            challenge = frame.get("challenge")
            if (
                isinstance(challenge, bytes)
                and len(challenge) == CHALLENGE_BYTES
                and not conn.challenge.done()
            ):
                conn.challenge.set_result(challenge)
            return
        call_id = frame.get("id")
        fut = self._calls.pop(call_id, None) if isinstance(call_id, int) else None
        if fut is not None and not fut.done():
            fut.set_result(frame)

    def _on_session(self, replica: int, frame: dict[str, Any], conn: _Conn) -> None:
        """The replica's half of the key agreement, signed by its validator key."""
        mine, theirs, sig = conn.session, frame.get("key"), frame.get("sig")
        conn.session = None  # one answer per connection
        if mine is None or self._validators is None or not 0 <= replica < len(self._validators):
            return
        if not isinstance(theirs, bytes) or not isinstance(sig, bytes):
            return
        transcript = session_transcript(replica, mine.public, theirs)
        if not self._validators[replica].verify(transcript, sig):
            log.warning("replica %d: session answer not signed by its validator key", replica)
            return
        conn.mac_key = mine.mac_key(theirs, transcript)

    def send_now(self, replica: int, request: bytes, client: bytes = b"") -> bool:
        conn = self._conns.get(replica)
        if conn is None:
            return False
        if not conn.write(encode_frame(pack({"op": "submit", "request": request}))):
            self._drop(replica, conn)  # the peer went away: reconnect on the next try
        elif client:
            conn.introduced.add(client)
        return True  # sent, or lost with the connection: the retries see to it alike

    async def send(self, replica: int, request: bytes, client: bytes = b"") -> None:
        waiting = self._waiting_sends.setdefault(replica, set())
        waiting.add(client)
        try:
            await self._conn(replica)
        except (OSError, TimeoutError, ConnectionError, ssl.SSLError) as exc:
            log.debug("send to replica %d failed: %s", replica, type(exc).__name__)
            return
        finally:
            waiting.discard(client)
        # A connection lost since is a loss the retries cover.
        self.send_now(replica, request, client)

    async def call(self, replica: int, op: str, args: dict[str, Any]) -> dict[str, Any]:
        if len(self._calls) >= PENDING_CALLS_MAX:
            raise LedgerError("too many pending calls")
        call_id = next(self._call_ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._calls[call_id] = fut
        try:
            conn = await self._conn(replica)
            if not conn.write(encode_frame(pack({"op": op, "id": call_id, **args}))):
                self._drop(replica, conn)
                raise ConnectionError("connection closing")
            return await asyncio.wait_for(fut, CALL_TIMEOUT_MS / 1000)
        except (OSError, TimeoutError, ConnectionError, ssl.SSLError) as exc:
            raise LedgerError(f"replica {replica}: {op} failed ({type(exc).__name__})") from None
        finally:
            self._calls.pop(call_id, None)

    async def close(self) -> None:
        """Drop every connection, for good: a submission still in flight, or one sent later,
        fails instead of opening connections nothing would close."""
        self._closed = True
        for replica, conn in list(self._conns.items()):
            self._drop(replica, conn)


class InProcessTransport(_HeightSeen):
    """Drives `Replica` objects in this process: the client's code path without sockets.

    Messages between replicas are delivered synchronously (in order, no loss) until every
    replica is quiet; a background task ticks the replicas on the real clock so batch waits,
    heartbeats and view changes happen. `crash(i)` silences a replica, for retry tests.
    """

    def __init__(
        self,
        replicas: Sequence[Replica],
        tick_ms: int = 2,
        on_ready: Callable[[int, Ready], None] | None = None,
        height_floor: HeightFloor | None = None,
    ) -> None:
        self.on_ready = on_ready  # e.g. persist a replica's Ready the way a node does
        self.n = len(replicas)
        self._floor = height_floor or HeightFloor()
        self.replicas = list(replicas)
        self.down: set[int] = set()
        self.blocks: dict[int, dict[int, Block]] = {i: {} for i in range(self.n)}
        self._handlers: dict[bytes, ReplyHandler] = {}
        self._tick_ms = tick_ms
        self._ticker: asyncio.Task[None] | None = None

    def on_reply(self, client_id: bytes, handler: ReplyHandler | None) -> None:
        if handler is None:
            self._handlers.pop(client_id, None)
        else:
            self._handlers[client_id] = handler

    def crash(self, replica: int) -> None:
        self.down.add(replica)

    def _pump(self) -> None:
        inbox: list[tuple[int, m.Message]] = []
        for _ in range(100_000):  # a limit on everything: a livelock is a bug, not a hang
            for i, replica in enumerate(self.replicas):
                if i in self.down:
                    continue
                while replica.has_ready():
                    ready = replica.ready()
                    if self.on_ready is not None:
                        self.on_ready(i, ready)
                    for block in ready.blocks:
                        self.blocks[i][block.height] = block
                    for out in ready.messages:
                        targets = range(self.n) if out.to is None else [out.to]
                        inbox += [(t, out.msg) for t in targets if t != i]
                    for cr in ready.replies:
                        handler = self._handlers.get(cr.client_id)
                        if handler is not None:
                            handler(i, m.encode(cr.reply), False)
                    replica.advance(ready)
            if not inbox:
                return
            batch, inbox = inbox, []
            now = time.time_ns() // 1_000_000
            for to, msg in batch:
                if to not in self.down:
                    self.replicas[to].step(msg, now)
        raise AssertionError("in-process cluster never went quiet")

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self._tick_ms / 1000)
            now = time.time_ns() // 1_000_000
            for i, replica in enumerate(self.replicas):
                if i not in self.down:
                    replica.tick(now)
            self._pump()

    def send_now(self, replica: int, request: bytes, client: bytes = b"") -> bool:
        """Delivered, and the cluster run until quiet, before this returns."""
        if self._ticker is None:
            self._ticker = asyncio.get_running_loop().create_task(self._tick())
        if replica not in self.down:
            self.replicas[replica].step(m.decode(request), time.time_ns() // 1_000_000)
            self._pump()
        return True

    async def send(self, replica: int, request: bytes, client: bytes = b"") -> None:
        self.send_now(replica, request, client)

    def introduce_to(self, client: bytes) -> list[int]:
        """None: replies reach a client's handler from every replica here."""
        return []

    async def call(self, replica: int, op: str, args: dict[str, Any]) -> dict[str, Any]:
        if replica in self.down:
            raise LedgerError(f"replica {replica} is down")
        r = self.replicas[replica]
        if op == "status":
            return {"status": {"id": replica, "view": r.view, "primary": r.primary}}
        if op == "block":
            block = self.blocks[replica].get(int(args["height"]))
            return {"block": None if block is None else m.encode_block(block)}
        if op == "query":  # with the height of the state it reflects, as a node answers
            return {"result": r.app.query(args["request"]), "height": r.last_executed}
        raise LedgerError(f"unknown op {op}")

    async def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()


class AsyncLedgerClient:
    """Submits signed requests and collects f+1 matching replies (see the module docstring)."""

    def __init__(
        self,
        transport: ClientTransport,
        validators: Sequence[VerifyKey],
        f: int,
        signing_key: SigningKey | None = None,
        *,
        retry_ms: int = RETRY_MS,
        timeout_ms: int = TIMEOUT_MS,
        shared_key: bool = False,
    ) -> None:
        """`shared_key`: other processes send with `signing_key` too (the vault's relay key,
        which every API worker and the DPO's commands load). A replica sends the key's
        replies to whichever process sent it the key's last request, which this client's
        transport cannot know, so every request goes to every replica."""
        assert len(validators) == transport.n == 3 * f + 1
        self.transport = transport
        self.validators = list(validators)
        self.f = f
        self.key = signing_key or SigningKey.generate()
        self.client_id = bytes(self.key.public_key)
        self.retry_ms = retry_ms
        self.timeout_ms = timeout_ms
        self.shared_key = shared_key
        # Request ids must grow across restarts of a client with the same key (the replicas
        # ignore an id below the last one they executed for us): start from the wall clock.
        self._next_request_id = time.time_ns() // 1000
        self._lock = asyncio.Lock()
        self._view = 0
        self._waiting: dict[int, m.Reply] | None = None  # replica -> its unverified reply
        self._waiting_id = -1
        self._authenticated: set[int] = set()  # replicas whose waiting reply came with a MAC
        self._rtt_ms: float | None = None  # smoothed commit latency (first attempts only)
        self._read_from = 0  # the replica that answered the last read: the next one starts there
        self._done: asyncio.Future[tuple[int, bytes]] | None = None
        self._sending: set[asyncio.Future[list[BaseException | None]]] = set()
        transport.on_reply(self.client_id, self._on_reply)
        enable_macs = getattr(transport, "enable_reply_macs", None)
        if enable_macs is not None:
            enable_macs(self.validators)

    def _primary(self) -> int:
        return self._view % self.transport.n

    def _on_reply(self, replica: int, payload: bytes, authenticated: bool = False) -> None:
        waiting, done = self._waiting, self._done
        if waiting is None or done is None or done.done():
            return  # nothing asked, or f+1 agreed already: the late replies are not decoded
        try:
            reply = m.decode(payload)
        except m.RemoteProtocolError:
            return
        if not isinstance(reply, m.Reply):
            return
        if reply.request_id != self._waiting_id or reply.client_id != self.client_id:
            return
        if reply.replica_id != replica:
            return  # a replica cannot answer for another
        waiting[replica] = reply
        if authenticated:  # its MAC, under a key agreed with that replica, checked out
            self._authenticated.add(replica)
        else:
            self._authenticated.discard(replica)
        answer = (reply.block_height, reply.result)
        agreeing = [r for r in waiting.values() if (r.block_height, r.result) == answer]
        if len(agreeing) < self.f + 1:
            return
        for r in agreeing:  # f+1 claim the same answer: now check that they really said it
            if r.replica_id in self._authenticated:
                continue
            if not m.verify_reply(r, self.validators):
                del waiting[r.replica_id]
        verified = [r for r in waiting.values() if (r.block_height, r.result) == answer]
        if len(verified) >= self.f + 1:
            self._view = max(self._view, *(r.view for r in verified))
            done.set_result(answer)

    async def submit(self, tx: bytes, request_id: int | None = None) -> Receipt:
        """Order `tx`; return once f+1 replicas report the same height and result."""
        async with self._lock:
            rid = request_id if request_id is not None else self._next_request_id
            self._next_request_id = max(self._next_request_id, rid) + 1
            request = m.make_request(self.key, rid, tx)
            encoded = m.encode(request)
            self._waiting, self._waiting_id = {}, rid
            self._authenticated = set()
            self._done = asyncio.get_running_loop().create_future()
            started = time.monotonic()
            deadline = started + self.timeout_ms / 1000
            wait_ms = min(max(self.retry_ms, 3 * (self._rtt_ms or 0.0)), RETRY_MAX_MS)
            retried = False
            targets = self._first_targets()
            try:
                while True:
                    self._send(targets, encoded)
                    left_s = deadline - time.monotonic()
                    if left_s <= 0:
                        raise LedgerTimeout(f"no f+1 matching replies in {self.timeout_ms} ms")
                    try:
                        height, result = await asyncio.wait_for(
                            asyncio.shield(self._done), min(wait_ms / 1000, left_s)
                        )
                        break
                    except TimeoutError:
                        targets = list(range(self.transport.n))
                        wait_ms = min(wait_ms * 2, RETRY_MAX_MS)
                        retried = True
                if not retried:
                    rtt_ms = (time.monotonic() - started) * 1000
                    srtt = self._rtt_ms
                    self._rtt_ms = rtt_ms if srtt is None else srtt + (rtt_ms - srtt) / 8
            finally:
                self._waiting, self._done = None, None
            self.transport.height_seen = height  # a raise: it never lowers the floor
            return Receipt(
                tx_id=digest(encoded).hex(),
                block_height=height,
                result=result,
                request_id=rid,
                request=encoded,
            )

    def _first_targets(self) -> list[int]:
        """The primary, and the replicas that could not send our replies back otherwise."""
        primary = self._primary()
        if self.shared_key:
            others = [r for r in range(self.transport.n) if r != primary]
        else:
            others = [r for r in self.transport.introduce_to(self.client_id) if r != primary]
        return [primary, *others]

    def _send(self, targets: list[int], encoded: bytes) -> None:
        """`encoded` to each of `targets`, never waiting: at once where a connection is open,
        else in the background once one is made. A replica out of reach takes the connect
        deadline to give up, and holds up neither the other sends nor the wait for replies."""
        client = self.client_id
        later = [r for r in targets if not self.transport.send_now(r, encoded, client)]
        if not later:
            return
        sending = asyncio.gather(
            *(self.transport.send(r, encoded, client) for r in later), return_exceptions=True
        )
        self._sending.add(sending)
        sending.add_done_callback(self._sent)

    def _sent(self, sending: asyncio.Future[list[BaseException | None]]) -> None:
        self._sending.discard(sending)
        if sending.cancelled():
            return
        for failure in sending.result():
            if failure is not None:  # `send` handles a network failure itself: a bug
                log.error("a background send failed", exc_info=failure)

    async def _ask(self, op: str, args: dict[str, Any], replica: int | None) -> dict[str, Any]:
        """A read from one replica, falling back to the others when it does not answer or
        says its state is not current (`stale`: cut off from a quorum, or behind; see
        `Replica.serves_current`). Reads start at `replica`, else at the replica that
        answered last, so a replica that stopped answering costs one timeout, not one per
        read. An answer from a state older than a block this transport saw committed is
        stale too (`_older_than_seen`). When every replica answering is stale (a cluster just
        started, or a partition with no quorum anywhere), it asks again until
        `STALE_WAIT_MS` passed."""
        first = replica if replica is not None else self._read_from
        order = [first] + [r for r in range(self.transport.n) if r != first]
        deadline = time.monotonic() + STALE_WAIT_MS / 1000
        while True:
            last: Exception | None = None
            stale = 0
            for r in order:
                try:
                    answer = await self.transport.call(r, op, args)
                except LedgerError as exc:
                    last = exc
                    continue
                if answer.get("error") == "stale" or self._older_than_seen(answer):
                    stale += 1
                    continue
                if replica is None:
                    self._read_from = r
                return answer
            if not stale or time.monotonic() >= deadline:
                break
            await asyncio.sleep(STALE_RETRY_MS / 1000)
        if stale:
            raise LedgerError(f"no replica in touch with a quorum answered {op}")
        raise LedgerError(f"no replica answered {op}: {last}")

    def _older_than_seen(self, answer: dict[str, Any]) -> bool:
        """A query answer from a state below a height this transport's clients saw committed
        (a replica that has not heard yet: just back from a partition or a stall).

        The answer's height does not raise that floor: it is one replica's word, where a
        receipt's is f+1 replicas' and a block's its certificate's. A lying replica could
        otherwise answer at height 2^63 and have every later read refused as stale, by every
        worker sharing the floor, until the instance restarts."""
        height = answer.get("height")
        if "result" not in answer or type(height) is not int:
            return False
        return height < self.transport.height_seen

    async def status(self, replica: int) -> dict[str, Any]:
        answer = await self.transport.call(replica, "status", {})
        status = answer.get("status")
        if not isinstance(status, dict):
            raise LedgerError("malformed status")
        return status

    async def query(self, request: bytes, replica: int | None = None) -> bytes:
        answer = await self._ask("query", {"request": request}, replica)
        result = answer.get("result")
        if not isinstance(result, bytes):
            raise LedgerError(str(answer.get("error", "malformed query answer")))
        return result

    async def get_block(self, height: int, replica: int | None = None) -> Block:
        """The block at `height`, its commit certificate checked against the genesis keys.

        A replica that serves no block or a bad one is skipped (it may be Byzantine); the
        error names the worst thing seen."""
        order = [replica] if replica is not None else []
        order += [r for r in range(self.transport.n) if r not in order]
        forged = False
        for r in order:
            try:
                raw = (await self.transport.call(r, "block", {"height": height})).get("block")
            except LedgerError:
                continue
            if not isinstance(raw, bytes):
                continue
            try:
                block = m.decode_block(raw)
            except m.RemoteProtocolError:
                forged = True
                continue
            if block.height == height and verify_chain([block], self.validators):
                self.transport.height_seen = height  # certified: 2f+1 replicas committed it
                return block
            forged = True
        if forged:
            raise CertificateError(f"block {height} does not carry a valid certificate")
        raise LedgerError(f"no block at height {height}")

    async def close(self) -> None:
        self.transport.on_reply(self.client_id, None)
        for sending in list(self._sending):
            sending.cancel()


class LedgerClient:
    """Synchronous facade: the same client on a private event-loop thread."""

    def __init__(
        self,
        make_transport: Callable[[], ClientTransport],
        validators: Sequence[VerifyKey],
        f: int,
        signing_key: SigningKey | None = None,
        **kwargs: Any,
    ) -> None:
        """`kwargs`: `AsyncLedgerClient`'s keyword arguments."""
        self._loop = eventloop.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

        async def build() -> AsyncLedgerClient:
            return AsyncLedgerClient(make_transport(), validators, f, signing_key, **kwargs)

        self._client = self._run(build())

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    @property
    def client_id(self) -> bytes:
        return self._client.client_id

    def submit(self, tx: bytes, request_id: int | None = None) -> Receipt:
        return self._run(self._client.submit(tx, request_id))

    def status(self, replica: int) -> dict[str, Any]:
        return self._run(self._client.status(replica))

    def query(self, request: bytes, replica: int | None = None) -> bytes:
        return self._run(self._client.query(request, replica))

    def get_block(self, height: int, replica: int | None = None) -> Block:
        return self._run(self._client.get_block(height, replica))

    def close(self) -> None:
        async def shut() -> None:
            await self._client.close()
            await self._client.transport.close()

        with contextlib.suppress(Exception):
            self._run(shut())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def __enter__(self) -> LedgerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
