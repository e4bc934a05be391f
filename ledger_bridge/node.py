"""The replica process: an asyncio shell around the pure `Replica`.

What it is for: the only place where consensus meets sockets, clocks and disks. Its loop is
short on purpose; every decision is the replica core's. Incoming frames are decoded and
`step`ped into the replica as they arrive; a single "flush" scheduled on the event loop then
drains every pending `Ready`, following the order its fields document (etcd-raft style):

1. `persist`  — written to SQLite, and when `must_sync` says so fsynced BEFORE anything below
   leaves the process, so a replica never sends a vote it could forget in a crash (PBFT §4.1;
   which writes need it is the core's decision, see `Ready`), except the first
   `early_messages` / `early_replies`, which the core produced before the write that needs
   the fsync and which leave first;
2. `blocks`   — committed blocks with their certificates, stored (same transaction as 1);
3. `messages` — sent to peers (best effort; the protocol retransmits);
4. `replies`  — sent to the clients whose connections asked.

Batching falls out of this shape: all frames that arrived in one event-loop turn are stepped
before one fsync covers all of them.

What it must never do: block on a peer (queues are bounded and drop), execute anything the
core did not commit, or log a private key or a transaction body.

Run: `python -m ledger_bridge.node --config node-0.toml` (or `civis-vault node --config ...`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import dataclasses
import importlib
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from ledger_bridge import backfill, eventloop, tls
from ledger_bridge import genesis as gen
from ledger_bridge.app import Application
from ledger_bridge.crypto import SessionKey, mac, session_transcript
from ledger_bridge.gc_tuning import tune_gc
from ledger_bridge.pbft import messages as m
from ledger_bridge.pbft.config import ClusterConfig
from ledger_bridge.pbft.replica import (
    ClientReply,
    DurableDelta,
    DurableState,
    Outbound,
    Ready,
    Replica,
)
from ledger_bridge.storage import Batch, Storage
from ledger_bridge.transport import ClientConnection, ClientListener, PeerNetwork

log = logging.getLogger("ledger_bridge.node")

TICK_MS = 5  # timer resolution while requests wait for a batch or a view is changing
# ...and otherwise: heartbeats are 100 ms and timeouts 1 s and up, so 25 ms is plenty. At
# TICK_MS an idle replica would wake 200 times a second, 40 ms of CPU per second each
# (measured), four of them sharing two cores with the replicas that do have work.
IDLE_TICK_MS = 25
# Writes that need no fsync wait in memory for the next one that does (and land in its
# transaction), or this long at most. A kill loses at most this window of them, which a power
# cut could lose anyway and the core tolerates (see `Ready.must_sync`).
LAZY_WRITE_MS = 20
TRACE_EVENTS_MAX = 500_000  # ~100 s of an unbatched load, ~50 MB: a trace is a diagnosis
# Stopping: closing links waits at most STOP_LINKS_S (a paused peer never acknowledges a close),
# and whatever else hangs, the process exits STOP_DEADLINE_S after the signal, before the
# launcher's SIGKILL (`cluster.STOP_TIMEOUT_S`, 5 s). An exit there loses only unsynced
# writes, which a kill -9 loses too and the core tolerates (`Ready.must_sync`).
STOP_LINKS_S = 1.0
STOP_DEADLINE_S = 4.0
# A query is answered only by a replica in touch with a quorum within this long (at least ten
# heartbeats): `Replica.serves_current`. Long enough that a lossy WAN's TCP retransmissions
# (200 ms and up) do not bounce reads, short enough to bound how stale an answer can be.
READ_CURRENT_WITHIN_MS = 2_000
APPS = {"kv": "ledger_bridge.kvapp:KVApp", "contracts": "ledger_bridge.contracts.app:ConsentApp"}


def load_app(name: str, genesis: gen.Genesis | None = None) -> Application:
    """Build the application named in the genesis `params.app`.

    An application with a founding state (the consent contracts) has a `from_genesis`
    constructor; it gets the chain id, the validators and the `[app_genesis]` table, which are
    the same on every host, so every replica starts from the same state root.
    """
    target = APPS.get(name, name)
    module, _, attr = target.partition(":")
    cls = getattr(importlib.import_module(module), attr)
    factory = getattr(cls, "from_genesis", None)
    app: Application = factory(genesis) if factory is not None and genesis is not None else cls()
    return app


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def cluster_config(genesis: gen.Genesis) -> ClusterConfig:
    params = {k: v for k, v in genesis.params.items() if k != "app"}
    return ClusterConfig.create(
        public_keys=[bytes(k) for k in genesis.public_keys()], f=genesis.f, **params
    )


def to_batch(
    delta: DurableDelta, blocks: list[Any], redact: tuple[tuple[int, tuple[int, ...]], ...] = ()
) -> Batch:
    """One SQLite transaction for a Ready's durable delta, its committed blocks and its
    redactions (with the count of them applied, which the delta carries)."""
    return Batch(
        put=tuple(delta.put),
        delete=tuple(delta.delete),
        delete_kind_below=tuple(delta.delete_below),
        blocks=tuple((b.height, m.encode_block(b)) for b in blocks),
        redact=redact,
    )


def load_state(storage: Storage) -> DurableState | None:
    kinds = storage.kinds()
    if not kinds and storage.last_height() == 0:
        return None
    return DurableState(records={k: list(storage.records(k)) for k in kinds})


class Node:
    def __init__(self, config: gen.NodeConfig, *, synchronous: str = "FULL") -> None:
        self.config = config
        self.genesis = config.genesis()
        self.storage = Storage(config.data_dir, synchronous=synchronous)
        self.backfill = backfill.for_node(
            self.storage, self.genesis, config.id, self._head, config.signing_key()
        )
        self.app = load_app(str(self.genesis.params.get("app", "kv")), self.genesis)
        self.replica = Replica(
            cluster_config(self.genesis),
            config.id,
            config.signing_key(),
            self.app,
            durable=load_state(self.storage),
            # `_send` signs a reply only for a client that checks signatures: one that agreed a
            # MAC key checks the MAC (Castro and Liskov, TOCS 2002 §5), and a signature costs
            # ~30 µs for a small result, ~60 µs for a 7 KB one (docs/BENCHMARKS.md, "Access").
            sign_replies=False,
        )
        self.backfill.redacted_at = self.app.redacted_at  # no redacted body from a peer stored
        self.frame_bytes_max = self.replica.config.peer_frame_bytes_max
        files = config.tls_files(self.genesis)
        self.network = PeerNetwork(
            config.id,
            {v.id: v.address for v in self.genesis.validators},
            self._on_peer_frame,
            signing_key=config.signing_key(),
            verify_keys=self.genesis.public_keys(),
            server_ssl=tls.server_context(files) if files else None,
            client_ssl=tls.client_context(files) if files else None,
            frame_bytes_max=self.frame_bytes_max,
        )
        self.clients = self._client_listener(config, files)
        # Keys that read everything: the validators and the readers the operator listed.
        # Any other proven key reads what the application's `may_read` allows.
        self._full_readers = frozenset(
            bytes(k) for k in (*self.genesis.public_keys(), *config.readers)
        )
        self._client_conns: dict[bytes, ClientConnection] = {}
        self._flush_scheduled = False
        self._lazy: list[Batch] = []  # written, in order, before or with the next write
        self._lazy_timer: asyncio.TimerHandle | None = None
        self._batch_timer: asyncio.TimerHandle | None = None  # see `_arm_batch_timer`
        self._batch_due_ms = 0
        self._stopping = asyncio.Event()
        # CIVIS_NODE_TRACE=<dir>: CLOCK_MONOTONIC stamps (comparable across processes on one
        # host) of each frame in, message or reply out and fsync, as [ns, event, message type,
        # seq or height, peer], written to <dir>/trace-<id>.json at stop; `python -m
        # bench.ledger --timeline` turns them into where an unbatched transaction's time goes.
        trace_dir = os.environ.get("CIVIS_NODE_TRACE")
        self._trace_dir = Path(trace_dir) if trace_dir else None
        self._trace: list[tuple[int, str, str, int, int]] | None = [] if trace_dir else None
        self.dropped_peer = 0
        self.dropped_client = 0
        self.dropped_oversize = 0
        self.refused_reads = 0
        self.stale_reads = 0
        self._current_within_ms = max(READ_CURRENT_WITHIN_MS, 10 * self.replica.config.heartbeat_ms)

    def _client_listener(
        self, config: gen.NodeConfig, files: tls.TlsFiles | None
    ) -> ClientListener:
        """TLS with the replica's certificate (clients pin the cluster CA), or plain TCP only
        when the node file says `client_port.insecure = true`: a plain port lets anyone on
        the path read what a reader proved its right to, and take its connection over."""
        if config.insecure_client_port:
            log.warning("client port on plain TCP (client_port.insecure): development only")
            return ClientListener(self._on_client_frame)
        if files is None:
            raise gen.GenesisError(
                "the client port needs TLS (the node's tls cert and key, the genesis CA), "
                "or `client_port.insecure = true` for local development"
            )
        return ClientListener(
            self._on_client_frame,
            tls.client_port_context(files),
            channel=tls.fingerprint(files.cert),
        )

    # -- inputs ---------------------------------------------------------------------------

    def _on_peer_frame(self, peer: int, payload: bytes) -> None:
        try:
            msg = m.decode(payload)
        except m.RemoteProtocolError:
            self.dropped_peer += 1
            return
        if self._trace is not None:
            self._stamp("rx", type(msg).__name__, getattr(msg, "seq", -1), peer)
        self.replica.step(msg, now_ms())
        self._schedule_flush()

    def _on_client_frame(self, frame: Any, conn: ClientConnection) -> None:
        op = frame.get("op") if isinstance(frame, dict) else None
        if op == "submit":
            self._on_submit(frame.get("request"), conn)
        elif op == "session":
            self._on_session(frame.get("key"), conn)
        elif op == "auth":
            if conn.prove(frame.get("key"), frame.get("sig"), self.genesis.chain_id):
                conn.send({"op": "auth", "id": frame.get("id"), "ok": True})
            else:
                self._refuse(conn)
        elif op == "status":
            conn.send({"op": op, "id": frame.get("id"), **self._read(op, frame)})
        elif op in ("block", "query"):
            self._on_read(op, frame, conn)
        else:
            self._refuse(conn)

    def _refuse(self, conn: ClientConnection) -> None:
        """A malformed or unauthenticated frame closes its connection, unanswered: a client
        that sends one is broken or hostile, and only its own connection pays."""
        self.dropped_client += 1
        conn.close()

    def _on_read(self, op: str, frame: dict[str, Any], conn: ClientConnection) -> None:
        """A block or a query, for a connection that proved a key with the right to it.

        Unproven: the connection closes (only `status` is anyone's). Proven without the
        right: an error naming no data, and the connection stays (a subject's client may
        ask for its own consents next)."""
        reader = conn.reader
        request = frame.get("request")
        if reader is None or (op == "query" and not isinstance(request, bytes)):
            self._refuse(conn)
            return
        if not self._may_read(reader, request if op == "query" else None):
            self.refused_reads += 1
            conn.send({"op": op, "id": frame.get("id"), "error": "forbidden"})
            return
        conn.send({"op": op, "id": frame.get("id"), **self._read(op, frame)})

    def _may_read(self, reader: bytes, request: bytes | None) -> bool:
        if reader in self._full_readers:
            return True
        try:
            return bool(self.app.may_read(reader, request))
        except Exception:  # a policy that fails refuses; the node stays up
            log.exception("may_read failed")
            return False

    def _on_submit(self, raw: Any, conn: ClientConnection) -> None:
        if not isinstance(raw, bytes):
            self._refuse(conn)
            return
        try:
            request = m.decode(raw)
        except m.RemoteProtocolError:
            self._refuse(conn)
            return
        if not isinstance(request, m.Request):
            self._refuse(conn)
            return
        if self._trace is not None:
            self._stamp("request", "Request", request.request_id, -1)
        # Replies go to the latest connection that proved the client's key: a request whose
        # signature does not verify would otherwise divert that client's replies to whoever
        # sent it (the verification is cached, so the core does not pay for it again).
        if not m.verify_request(request):
            self._refuse(conn)
            return
        # A key proven: this connection may send frames as large as a replica admits.
        conn.authenticate()
        self._client_conns[request.client_id] = conn
        if len(self._client_conns) > 10_000:
            self._client_conns = {k: c for k, c in self._client_conns.items() if not c.closed}
        self.replica.step(request, now_ms())
        self._schedule_flush()

    def _on_session(self, client_public: Any, conn: ClientConnection) -> None:
        """Agree a reply MAC key with this connection (see `crypto.SessionKey`): replies on it
        then carry an HMAC the client checks instead of our signature."""
        if not isinstance(client_public, bytes):
            self._refuse(conn)
            return
        mine = SessionKey()
        transcript = session_transcript(self.config.id, client_public, mine.public)
        mac_key = mine.mac_key(client_public, transcript)
        if mac_key is None:
            self._refuse(conn)
            return
        conn.mac_key = mac_key
        conn.send({"op": "session", "key": mine.public, "sig": self.replica.key.sign(transcript)})

    def _read(self, op: str, frame: dict[str, Any]) -> dict[str, Any]:
        self._write_lazy()  # a block this replica committed is readable once it replied
        if op == "status":
            return {"status": self.status()}
        if op == "block":
            height = frame.get("height")
            if not isinstance(height, int) or not 0 <= height < 1 << 62:
                return {"error": "height must be an integer in [0, 2^62)"}
            return {"block": self.storage.block(height)}
        request = frame.get("request")
        if not isinstance(request, bytes):
            return {"error": "request must be bytes"}
        # Blocks carry their certificates and never change; a query answers from the state
        # this replica executed, which is the chain's only if it is in touch with a quorum.
        behind = self.replica.serves_current(now_ms(), self._current_within_ms)
        if behind is not None:
            self.stale_reads += 1
            return {"error": "stale", "reason": behind, "height": self.replica.last_executed}
        try:
            # With the height of the state it reflects: a client that saw a later block (its
            # own write's receipt) knows this answer is old, whatever this replica believes.
            return {"result": self.app.query(request), "height": self.replica.last_executed}
        except Exception as exc:  # the app refuses a malformed query; the node stays up
            return {"error": type(exc).__name__}

    def status(self) -> dict[str, Any]:
        stats = self.network.stats
        return {
            "id": self.config.id,
            "chain_id": self.genesis.chain_id,
            "view": self.replica.view,
            "primary": self.replica.view % self.genesis.n,
            "height": self.storage.last_height(),
            "writes": self.storage.writes,
            "fsyncs": self.storage.syncs,
            "frames_sent": stats.frames_sent,
            "frames_received": stats.frames_received,
            "dropped_queue_full": stats.dropped_queue_full,
            "protocol_errors": stats.protocol_errors,
            "dropped_peer": self.dropped_peer,
            "dropped_client": self.dropped_client,
            "dropped_oversize": self.dropped_oversize,
            "refused_reads": self.refused_reads,
            "stale_reads": self.stale_reads,  # queries refused: not in touch with a quorum
            "client_port": dataclasses.asdict(self.clients.stats),
            "peer_port": dataclasses.asdict(stats),
            "refused_at_admission": self.replica.stats["refused at admission"],
            # Is this replica voting? Active in its view, not muted after a restart, and
            # executing near the top (`bench ledger`'s faults section reads these).
            "view_active": self.replica.active,
            "muted": self.replica.muted,
            "last_executed": self.replica.last_executed,
            "stable_seq": self.replica.h,  # its low watermark: it executes no block above + L
            # Redaction (docs/PBFT.md): entries applied to the store, entries the executed
            # state holds beyond those (applied once a checkpoint past their erasure is
            # stable), and bodies peers served at redacted positions (never stored).
            "redactions_applied": self.replica.redactions_applied,
            "redactions_pending": self.replica.redactions_known - self.replica.redactions_applied,
            "unredacted_refused": (
                self.replica.unredacted_refused + self.backfill.stats.unredacted_refused
            ),
            **self.backfill.status(),
        }

    # -- the Ready loop ---------------------------------------------------------------------

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        while self.replica.has_ready():
            ready = self.replica.ready()
            self._handle(ready)
            self.replica.advance(ready)
        self._arm_batch_timer()

    def _arm_batch_timer(self) -> None:
        """Wake the replica when its waiting batch is due (`Replica.batch_due_ms`): the ticker
        may be in its idle sleep, and a batch left to the next tick would wait up to
        `IDLE_TICK_MS` beyond `batch_wait_ms`."""
        due = self.replica.batch_due_ms()
        if due is None or (self._batch_timer is not None and self._batch_due_ms <= due):
            return
        if self._batch_timer is None and due <= self._batch_due_ms:
            return  # woken for it already and nothing was proposed: the ticker retries
        if self._batch_timer is not None:
            self._batch_timer.cancel()
        self._batch_due_ms = due
        # now_ms() counts whole milliseconds: waking half a millisecond late never finds the
        # batch a millisecond short of its wait.
        delay_s = max(0.0, (due - now_ms() + 0.5) / 1000)
        self._batch_timer = asyncio.get_running_loop().call_later(delay_s, self._on_batch_due)

    def _on_batch_due(self) -> None:
        self._batch_timer = None
        if self._stopping.is_set():
            return  # no new batch while the links close and the store is shut
        self.replica.tick(now_ms())
        self._schedule_flush()

    def _handle(self, ready: Ready) -> None:
        # 1 + 2: durable first, in one transaction, fsynced when the core says so. When it
        # need not be synced, nothing below depends on it: send first and hold the write
        # back, so it joins the next fsynced transaction (or the lazy timer's) instead of
        # paying a commit of its own. The writes stay in order either way.
        if ready.must_sync:
            # What the core produced before the write that needs the fsync leaves first.
            self._send(ready.messages[: ready.early_messages], ready.replies[: ready.early_replies])
            self._lazy.append(to_batch(ready.persist, ready.blocks, ready.redact))
            if self._trace is not None:
                self._stamp("fsync", "", -1, -1)
            self._write_lazy(sync=True)
            if self._trace is not None:
                self._stamp("fsynced", "", -1, -1)
            self._send(ready.messages[ready.early_messages :], ready.replies[ready.early_replies :])
            return
        # Replies and votes first: encoding the log records and blocks for SQLite is on
        # nobody's critical path (sent after it, they would sit on the client's, between COMMIT
        # and REPLY).
        self._send(ready.messages, ready.replies)
        batch = to_batch(ready.persist, ready.blocks, ready.redact)
        if not batch.empty():
            self._lazy.append(batch)
            if self._lazy_timer is None:
                self._lazy_timer = asyncio.get_running_loop().call_later(
                    LAZY_WRITE_MS / 1000, self._write_lazy
                )

    def _write_lazy(self, sync: bool = False) -> None:
        """Write every held-back batch in one transaction (fsynced with `sync`)."""
        if self._lazy_timer is not None:
            self._lazy_timer.cancel()
            self._lazy_timer = None
        if self._lazy:
            batches, self._lazy = self._lazy, []
            self.storage.write_many(batches, sync=sync)

    def _send(self, messages: list[Outbound], replies: list[ClientReply]) -> None:
        # 3: peers.
        for out in messages:
            if self._trace is not None:
                self._stamp("tx", type(out.msg).__name__, getattr(out.msg, "seq", -1), -1)
            payload = m.encode(out.msg)
            if len(payload) > self.frame_bytes_max:
                self._oversize(out.msg, len(payload))
                continue
            if out.to is None:
                for v in self.genesis.validators:
                    if v.id != self.config.id:
                        self.network.send(v.id, payload)
            elif out.to != self.config.id:
                self.network.send(out.to, payload)
        # 4: clients.
        for reply in replies:
            if self._trace is not None:
                self._stamp("reply", "Reply", reply.reply.block_height, -1)
            conn = self._client_conns.get(reply.client_id)
            if conn is None or conn.closed:
                continue
            if conn.mac_key is not None:  # the client checks the MAC: no signature to make
                encoded = m.encode(reply.reply)
                tag = mac(conn.mac_key, encoded)
                conn.send({"op": "reply", "client": reply.client_id, "reply": encoded, "mac": tag})
            else:
                signed = m.encode(self.replica.signed_reply(reply.reply))
                conn.send({"op": "reply", "client": reply.client_id, "reply": signed})

    def _oversize(self, msg: m.Message, size: int) -> None:
        """A message over the peer frame limit is dropped, never sent and never fatal: the
        core bounds every message by the cluster's parameters (`ClusterConfig`), so this is a
        bug or a state written by an older version, and the protocol's retransmission and
        view changes get past a lost message."""
        self.dropped_oversize += 1
        log.error(
            "not sending a %s of %d bytes: over the %d-byte peer frame limit",
            type(msg).__name__,
            size,
            self.frame_bytes_max,
        )

    def _stamp(self, event: str, kind: str, seq: int, peer: int) -> None:
        assert self._trace is not None
        if len(self._trace) < TRACE_EVENTS_MAX:
            self._trace.append((time.monotonic_ns(), event, kind, seq, peer))

    async def _ticker(self) -> None:
        while True:
            busy = bool(self.replica.pending) or not self.replica.active
            await asyncio.sleep((TICK_MS if busy else IDLE_TICK_MS) / 1000)
            self.replica.tick(now_ms())
            self._schedule_flush()

    async def run(self) -> None:
        await self.network.start(self.config.listen)
        await self.clients.start(self.config.client_listen)
        ticker = asyncio.get_running_loop().create_task(self._ticker())
        filler = asyncio.get_running_loop().create_task(self.backfill.run())
        log.info(
            "replica %d of %s up: peers on %s, clients on %s, height %d",
            self.config.id,
            self.genesis.chain_id,
            self.config.listen,
            self.config.client_listen,
            self.storage.last_height(),
        )
        try:
            await self._stopping.wait()
        finally:
            ticker.cancel()
            filler.cancel()
            if self._batch_timer is not None:
                self._batch_timer.cancel()
            try:
                await asyncio.wait_for(self._close_links(), STOP_LINKS_S)
            except TimeoutError:
                log.warning("links not closed in %.1f s; stopping anyway", STOP_LINKS_S)
            self._write_lazy()
            self.storage.close()
            if self._trace_dir is not None and self._trace is not None:
                out = self._trace_dir / f"trace-{self.config.id}.json"
                out.write_text(json.dumps(self._trace))
            log.info("replica %d stopped", self.config.id)

    def _head(self) -> tuple[int, bytes]:
        """For the backfill: what the core executed. Held-back blocks are written first, or
        the newest ones would look missing and be fetched from the peers for nothing."""
        self._write_lazy()
        return self.replica.last_executed, self.replica.head_hash

    async def _close_links(self) -> None:
        # Both ports are closed together: each stop closes its listener before it awaits
        # anything, so a deadline that cuts the stop short leaves no frame on its way to a
        # core whose storage is about to close.
        await asyncio.gather(self.clients.stop(), self.network.stop())
        await self.backfill.close()

    def stop(self) -> None:
        self._stopping.set()


def _exit_at_deadline() -> None:
    log.error("not stopped %.1f s after the signal: exiting without a clean stop", STOP_DEADLINE_S)
    os._exit(3)


async def serve(config_path: Path) -> None:
    node = Node(gen.load_node_config(config_path))
    tune_gc()  # once the state is restored: it stays out of every collection
    loop = asyncio.get_running_loop()

    def on_signal(signum: int, frame: object) -> None:
        # A plain handler, not `loop.add_signal_handler`: that one runs only when the loop
        # gets control back, and a loop stuck in a long step would never stop. This one runs
        # between bytecodes; the watchdog thread covers a loop stuck for good.
        if not node._stopping.is_set():
            watchdog = threading.Timer(STOP_DEADLINE_S, _exit_at_deadline)
            watchdog.daemon = True
            watchdog.start()
        loop.call_soon_threadsafe(node.stop)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    # A launcher may have blocked them around our fork (`Cluster.start`); one sent meanwhile
    # is pending and lands here.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})
    await node.run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ledger_bridge.node", description=__doc__)
    parser.add_argument("--config", type=Path, required=True, help="node-<i>.toml")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Opt-in CPU profile of this replica process (bench/ledger.py's multi-process analysis):
    # CIVIS_NODE_PROFILE=<dir> writes <dir>/node-<pid>.prof when the node stops (SIGTERM).
    profile_dir = os.environ.get("CIVIS_NODE_PROFILE")
    profiler = cProfile.Profile(time.process_time) if profile_dir else None
    if profiler is not None:
        profiler.enable()
    try:
        eventloop.run(serve(args.config))
    except gen.GenesisError as exc:
        log.error("%s", exc)
        return 2
    finally:
        if profiler is not None and profile_dir:
            profiler.disable()
            profiler.dump_stats(str(Path(profile_dir) / f"node-{os.getpid()}.prof"))
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
