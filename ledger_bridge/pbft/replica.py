"""The PBFT replica: a pure state machine (Castro & Liskov, OSDI '99; TOCS 2002).

Theory of operation
===================
Inputs are `step(msg, now_ms)` (a message from a peer or a client) and `tick(now_ms)` (time
passes). Outputs wait in `ready()` until the caller handles them and calls `advance()`.
Nothing here reads a clock, draws randomness or does I/O, so the simulator can replay any
schedule from a seed.

States. A replica is in view `view`, either *active* (normal case) or *changing* (it sent
VIEW-CHANGE for `view` and waits for NEW-VIEW). The primary of view v is v mod n.

Normal case (TOCS §4.2). The primary batches client requests (at most `batch_size_max`, at
most `batch_wait_ms` of waiting) and assigns each batch the next sequence number inside the
watermarks (h, h+L] (§4.3): PRE-PREPARE. A backup accepts the first valid PRE-PREPARE for
(v, n) (an equivocating primary's second one is ignored and counted), checks the block time
against its clock within `block_time_skew_ms` and every client signature, and sends PREPARE.
With the PRE-PREPARE and 2f matching PREPAREs a replica is *prepared* and sends COMMIT; with
2f+1 matching COMMITs it is *committed-local* and executes in sequence order. Each executed
batch becomes a `Block` whose certificate is those 2f+1 signed COMMITs.

Exactly once (§4.1). The reply cache keeps, per client, the last executed request id, its
result and height. A request at or below it is not executed again; a repeat of the last one
gets the cached result re-sent. The cache is part of the replicated state (and of the
checkpoint digest), so every replica skips the same duplicates.

Checkpoints (§4.3). After executing a multiple of K the replica freezes its state (a cheap
copy of the application's, the reply cache, the chain head) and broadcasts CHECKPOINT with the
state's digest: a hash over the application's incremental state root, the reply cache and the
head, so a checkpoint costs O(clients), not O(state) (the paper's incremental checkpoint
digests, §5.3.1). Once 2f+1 match, the checkpoint is *stable*: h moves up, the log below is
garbage-collected in memory, and its 2f+1 signatures are kept (durably) as proof. The frozen
state is serialised only when a lagging replica needs it (STATE-DATA) or for a durable
snapshot, written once `durable_snapshot_txs` transactions have executed since the last one.

View change (§4.4, §4.5.2). A backup that knows of a request not executed within the
view-change timeout, or has not heard the primary (its STATUS is the heartbeat) for that
long, *suspects* the view: it says so in its STATUS (sticky, durable) and goes on voting. f+1
replicas suspecting make a replica join the suspicion; with 2f+1 it moves to view+1: it sends
VIEW-CHANGE with its stable checkpoint proof and its prepared certificates. So a replica cut
off from the primary alone never leaves the view (see `_suspect` and docs/PBFT.md,
"Suspicion"). The timeout doubles per consecutive view change without progress (exponential
back-off); f+1 VIEW-CHANGEs for higher views make a replica join the smallest of them. The new
primary collects 2f+1 and sends NEW-VIEW with O; each backup re-verifies every VIEW-CHANGE
and recomputes O, rejecting a forged NEW-VIEW.

Retransmission and state transfer (§5.2, §5.3, simplified). Every replica sends STATUS each
`heartbeat_ms`. A receiver re-sends the NEW-VIEW of a view the sender missed, and, when the
sender made no progress since its previous STATUS, what it lacks: blocks it has not executed
(each with its commit certificate, which suffices to execute it whatever the receiver's view),
log messages and checkpoint votes, or, if it is behind the receiver's stable checkpoint, a
STATE-DATA with that checkpoint's 2f+1 proof, the snapshot (its digest must match the proof)
and recent blocks. Poisoned state and blocks with forged certificates are rejected.

Durability. `persist` holds the replica's durable records: its view, for each sequence
number the accepted PRE-PREPARE, its prepared certificate and the commit certificate once
committed, the stable checkpoint's proof, and a durable snapshot with the log records above it
(which hold the commit certificates needed to re-execute up to the stable checkpoint). Only
three of them protect a vote and
must be on disk before the messages of the same `Ready` leave (`Ready.must_sync`): the view
(VIEW-CHANGE, NEW-VIEW, a suspicion), a new prepared certificate (COMMIT: a replica that
committed must report the certificate in its next VIEW-CHANGE, §4.4) and the stable
checkpoint (it bounds the sequence numbers voted on: at most h + L). The rest may reach the
disk later: a replica restarted *while active in view v* sends no PRE-PREPARE, PREPARE or
COMMIT in v for sequence numbers up to its stable checkpoint on disk + L ("muted", it
executes them through commit certificates, and votes above them), so it cannot contradict a
PREPARE it sent and forgot; committed batches it forgot come back as
blocks with certificates, and re-execution is deterministic. After a restart the replica
restores the durable snapshot and re-executes the committed log entries above it; passing the
stable checkpoint, it checks that it reached the digest 2f+1 replicas signed.

Redaction. The application may list stored requests to forget (a subject's erasure,
`Application.redactions`). Once a stable checkpoint is at or past the block that listed
them, the replica replaces those bodies by their digests in every block it holds or serves
and, through `Ready.redact`, in its store (`_apply_redactions`); the chain still verifies,
since blocks commit to their requests' digests. See docs/PBFT.md, "Redaction".

Deviations from the paper are listed in docs/PBFT.md.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack

from ledger_bridge.app import Application, BlockContext, Redaction
from ledger_bridge.crypto import SigningKey, digest
from ledger_bridge.pbft import messages as m
from ledger_bridge.pbft.blocks import (
    GENESIS_HASH,
    block_hash,
    results_digest,
    verify_block,
    verify_chain,
)
from ledger_bridge.pbft.config import ClusterConfig
from ledger_bridge.pbft.errors import LocalProtocolError, RemoteProtocolError
from ledger_bridge.pbft.messages import (
    Block,
    Checkpoint,
    Commit,
    Message,
    NewView,
    Prepare,
    PreparedCert,
    PrePrepare,
    Reply,
    Request,
    StateData,
    Status,
    ViewChange,
)
from ledger_bridge.pbft.records import (
    KIND_LOG,
    KIND_META,
    META_REDACTIONS,
    META_SNAPSHOT,
    META_STABLE,
    META_VIEW,
    CheckpointRecord,
    Loaded,
    LogRecord,
    ViewRecord,
    encode_count,
    seq_key,
)

log = logging.getLogger(__name__)

NULL_TIME_MS = 0
# Adaptive batching (`Replica._propose_now`): `load` averages over about this many requests,
# and above this share of requests arriving busy, an idle primary waits for the batch to fill.
LOAD_REQUESTS = 8
LOAD_BATCHING = 0.5
LOAD_HALF_LIFE_MS = 1_000  # ...and it halves for each this long the primary was quiet
REDACTIONS_PAGE = 1024  # entries asked of the application at a time


def _pack(obj: Any) -> bytes:
    out: bytes = msgpack.packb(obj, use_bin_type=True)
    return out


CacheRows = list[tuple[bytes, int, int, bytes]]  # (client, request id, height, result)


def _cache_rows(raw: Any) -> CacheRows:
    """Reply-cache rows read from a snapshot; RemoteProtocolError for anything else."""
    if not isinstance(raw, list):
        raise RemoteProtocolError("reply cache is not a list")
    rows: CacheRows = []
    for row in raw:
        if not (isinstance(row, list) and len(row) == 4):
            raise RemoteProtocolError("reply-cache row is not [client, rid, height, result]")
        client, rid, height, result = row
        if not (type(client) is bytes and type(rid) is int and type(height) is int):
            raise RemoteProtocolError("reply-cache row has the wrong types")
        if type(result) is not bytes:
            raise RemoteProtocolError("reply-cache result is not bytes")
        rows.append((client, rid, height, result))
    return rows


@dataclass
class FrozenState:
    """The replicated state as of one checkpoint: what its digest covers, and the means to
    serialise it later (the application's `freeze()`), however far execution has moved on.

    The digest covers the application's state root (collision resistant, see
    `Application.state_root`), the reply cache (part of the replicated state: exactly-once
    depends on it, in its eviction order) and the chain head. A snapshot from a peer is
    accepted only if its fields hash to a certified digest and the application state restores
    to the root it names.
    """

    app_snapshot: Callable[[], bytes]
    app_root: bytes
    cache: CacheRows
    head_hash: bytes
    head_time_ms: int
    _packed: bytes | None = None

    def digest(self) -> bytes:
        cache = [list(row) for row in self.cache]
        return digest(
            _pack([b"civis-checkpoint", self.app_root, cache, self.head_hash, self.head_time_ms])
        )

    def packed(self) -> bytes:
        """The snapshot bytes STATE-DATA and the durable snapshot carry (made once)."""
        if self._packed is None:
            cache = [list(row) for row in self.cache]
            self._packed = _pack(
                [self.app_snapshot(), cache, self.head_hash, self.head_time_ms, self.app_root]
            )
        return self._packed

    @classmethod
    def unpack(cls, raw: bytes) -> tuple[FrozenState, bytes]:
        """(state, application snapshot) from `packed()` bytes; RemoteProtocolError if not."""
        try:
            fields = msgpack.unpackb(raw, raw=False)
        except Exception:
            raise RemoteProtocolError("snapshot does not parse") from None
        if not (isinstance(fields, list) and len(fields) == 5):
            raise RemoteProtocolError("snapshot is not [app, cache, head, time, root]")
        app_snapshot, cache, head_hash, head_time_ms, app_root = fields
        if not (type(app_snapshot) is bytes and type(head_hash) is bytes):
            raise RemoteProtocolError("snapshot fields have the wrong types")
        if type(head_time_ms) is not int or type(app_root) is not bytes:
            raise RemoteProtocolError("snapshot fields have the wrong types")
        frozen = cls(lambda: app_snapshot, app_root, _cache_rows(cache), head_hash, head_time_ms)
        frozen._packed = raw
        return frozen, app_snapshot


@dataclass(frozen=True)
class DurableDelta:
    """Changes to the replica's durable records, as simple rows the shell stores verbatim.

    Records are (kind, key, value) with opaque bytes, in the format `ledger_bridge.pbft.records`
    defines (the count under b"redactions" is written in the same Ready as `Ready.redact`).
    Apply `delete_below` first (drop keys < bound of that kind), then `delete`, then `put`.
    """

    put: list[tuple[str, bytes, bytes]] = field(default_factory=list)
    delete: list[tuple[str, bytes]] = field(default_factory=list)
    delete_below: list[tuple[str, bytes]] = field(default_factory=list)

    def empty(self) -> bool:
        return not (self.put or self.delete or self.delete_below)


@dataclass(frozen=True)
class DurableState:
    """What the node loaded from storage after a restart: kind -> [(key, value)] in key order,
    exactly the rows that the `DurableDelta`s it applied left behind."""

    records: dict[str, list[tuple[bytes, bytes]]]


@dataclass(frozen=True, slots=True)
class Outbound:
    """A message for one replica (`to`), or for every other replica (`to is None`)."""

    to: int | None
    msg: Message


@dataclass(frozen=True, slots=True)
class ClientReply:
    """A reply for the client whose public key is `client_id`."""

    client_id: bytes
    reply: Reply


@dataclass(frozen=True)
class Ready:
    """Work for the shell. Handle the fields IN THIS ORDER, then call `advance(ready)`.

    1. `persist`: apply to durable storage and fsync BEFORE sending anything below: a replica
       must never send a vote it could forget in a crash (TOCS §4.1, §4.4).
    2. `blocks`: committed blocks with their commit certificates; store them (the same
       transaction as `persist` is fine). Heights may repeat after a restart (idempotent put).
    3. `messages`: send to peers, best effort: the protocol retransmits what is lost.
    4. `replies`: send to clients, best effort: clients retry and hit the reply cache.

    `must_sync` (etcd-raft's `MustSync`): when True, step 1 must be fsynced before step 3;
    when False the writes may reach the disk later (the node holds them back to join the next
    fsynced transaction; a kill or a power cut may lose them, which the core tolerates, see
    the module docstring). Later writes are ordered after earlier ones either way.

    `redact`: (height, batch indices) of stored blocks whose bodies at those indices must be
    replaced by their digests (`messages.redact_block`), in the same transaction as
    `persist`, which carries the count of redaction entries applied: the store is never
    redacted without the count saying so, nor the count raised over an unredacted store.
    Heights the store lacks are skipped; an index already left out changes nothing.

    `early_messages` / `early_replies`: how many of the first messages and replies were
    produced before anything that needs the fsync, so may leave before it (and before step 1
    at all, as in a Ready without `must_sync`). Why: a shell flushes once per event-loop turn,
    and a backup that reads another backup's PREPARE just before the PRE-PREPARE it matches
    prepares at once; in one Ready its own PREPARE would sit behind the fsync of the certificate
    its COMMIT claims, and the primary, waiting for that PREPARE, would prepare an fsync later
    (measured with
    `python -m bench.ledger --timeline`). Same as two Readys, one cut before the first write
    that must be synced.
    """

    persist: DurableDelta
    blocks: list[Block]
    messages: list[Outbound]
    replies: list[ClientReply]
    must_sync: bool = True
    early_messages: int = 0
    early_replies: int = 0
    redact: tuple[tuple[int, tuple[int, ...]], ...] = ()


@dataclass
class _Slot:
    """One sequence number in the current view."""

    pre_prepare: PrePrepare | None = None
    prepares: dict[int, Prepare] = field(default_factory=dict)
    commits: dict[int, Commit] = field(default_factory=dict)
    prepared: bool = False
    committed: bool = False
    my_prepare: Prepare | None = None
    my_commit: Commit | None = None


@dataclass
class _Stable:
    seq: int
    digest: bytes
    proof: tuple[Checkpoint, ...]
    state: FrozenState | None  # None only for the genesis checkpoint (seq 0)


class Replica:
    """One PBFT replica; see the module docstring for the theory of operation."""

    def __init__(
        self,
        config: ClusterConfig,
        replica_id: int,
        signing_key: SigningKey,
        app: Application,
        *,
        durable: DurableState | None = None,
        sign_replies: bool = True,
    ) -> None:
        if not 0 <= replica_id < config.n:
            raise LocalProtocolError("replica id outside the cluster")
        if bytes(signing_key.public_key) != config.public_keys[replica_id]:
            raise LocalProtocolError("signing key does not match this replica's validator key")
        self.config = config
        self.id = replica_id
        self.key = signing_key
        self.app = app
        self.keys = config.verify_keys
        # False: REPLYs leave unsigned, and the shell has `signed_reply` sign the ones whose
        # client checks signatures (the node: a client that agreed a MAC key checks the MAC).
        self.sign_replies = sign_replies
        self.stats: Counter[str] = Counter()  # why inputs were ignored, and other events

        self.view = 0
        self.active = True
        self.now_ms = 0
        self._init_log()
        self._init_checkpoints()
        self._init_redaction()
        self._init_clients()
        self._init_view_change()
        self._clear_ready_buffers()
        self._handed: Ready | None = None
        # The view this replica was active in when it restarted: it sends no PRE-PREPARE,
        # PREPARE or COMMIT in it (it may have forgotten ones it sent; see the docstring)...
        self.muted_view: int | None = None
        # ...for sequence numbers up to this one: above the stable checkpoint on disk + L, it
        # cannot have voted before the restart (see `_make_stable`).
        self.mute_through = 0
        if durable is not None:
            self._restore(durable)

    # The `_init_*` helpers set up one concern's state each, so `__init__` reads as the list
    # of what a replica holds; they run once, from `__init__`, in this order.

    def _init_log(self) -> None:
        """The message log and certificates (bounded by the watermarks), and the chain."""
        self.slots: dict[int, _Slot] = {}
        self.pcerts: dict[int, PreparedCert] = {}
        # Committed batches with their certificates, executed or not, above h.
        self.committed_batches: dict[int, tuple[PrePrepare, tuple[Commit, ...]]] = {}
        self.last_executed = 0
        self.head_hash = GENESIS_HASH
        self.head_time_ms = 0
        self.recent_blocks: list[Block] = []

    def _init_checkpoints(self) -> None:
        self.h = 0  # low watermark: last stable checkpoint
        self.stable = _Stable(0, b"", (), None)
        self.own_snapshots: dict[int, tuple[bytes, FrozenState]] = {}  # seq -> (digest, state)
        self.checkpoint_votes: dict[int, dict[int, Checkpoint]] = {}
        # Durable snapshot: the stable checkpoint last written with its state, and the
        # transactions executed since (when they pass `durable_snapshot_txs`, write another).
        self.snapshot_seq = 0
        # Staggered by replica id: every replica reaches the same checkpoints at the same
        # moment, and writing the whole state pauses a replica; one at a time, the other
        # 2f+1 keep ordering.
        self.txs_since_snapshot = self.config.durable_snapshot_txs * self.id // self.config.n
        self._snapshot_due = False  # after a state transfer: the log below is not on disk
        # While restarting: the stable checkpoint re-execution must reach, and prove.
        self._replay_stable: tuple[int, bytes, tuple[Checkpoint, ...]] | None = None

    def _init_redaction(self) -> None:
        """See `_apply_redactions`: entries of the application's list applied to our blocks
        (durable), entries the executed state holds, and bodies a peer sent us at redacted
        positions (dropped). What the store must still redact waits in `_redact`."""
        self.redactions_applied = 0
        self.redactions_known = 0
        self.redaction_due = 0  # the highest `since` known (`_fill_to_checkpoint`)
        self.unredacted_refused = 0

    def _init_clients(self) -> None:
        self.reply_cache: dict[bytes, tuple[int, int, bytes]] = {}  # client -> (rid, height, r)
        # The signed REPLY last sent to each client in the reply cache: a client's retries
        # (sent to every replica) are answered without a new signature each time.
        self.signed_replies: dict[bytes, Reply] = {}
        self.pending: dict[tuple[bytes, int], tuple[Request, int]] = {}  # -> (req, arrival ms)
        # The primary's measure of concurrency (`_note_arrival`): the share of recent requests
        # that arrived while another was waiting or a batch was in flight.
        self.load = 0.0
        self.executed_ms = 0  # the local time of the last batch executed
        self.inflight: dict[tuple[bytes, int], Request] = {}  # primary: proposed, not executed
        self.next_seq = 1
        self.last_time_proposed_ms = 0
        self.proposal_floor = 0  # min-s of the view's NEW-VIEW: execute through it, then propose
        # Requests the view's NEW-VIEW orders again (its O): never in a batch of this primary's
        # own, even when O's PRE-PREPARE fell outside our window and its requests still wait.
        self.reordered: frozenset[tuple[bytes, int]] = frozenset()

    def _init_view_change(self) -> None:
        self.view_changes: dict[int, ViewChange] = {}  # latest valid VIEW-CHANGE per replica
        self.my_view_change: ViewChange | None = None
        self.new_view_msg: NewView | None = None
        self.vc_deadline_ms: int | None = None
        self.vc_attempts = 0
        self.last_primary_heard_ms: int | None = None  # set by the first tick
        self.next_status_ms = 0
        self.next_vc_resend_ms = 0
        self.last_answer_ms: dict[int, int] = {}
        self.peer_progress: dict[int, int] = {}  # last_executed each peer last reported
        # When each peer's STATUS (authentic) last arrived: whether this replica is in touch
        # with a quorum, for the node's reads (`serves_current`).
        self.peer_heard_ms: dict[int, int] = {}
        # Suspicion (see `_suspect`): ours of the primary of `view`, and per peer the view it
        # left or suspects (a peer at `left_below[r] > v` wants to leave view v).
        self.suspecting = False
        self.left_below: dict[int, int] = {}

    def _clear_ready_buffers(self) -> None:
        """What the next `ready()` hands out (it takes the buffers and clears them)."""
        self._messages: list[Outbound] = []
        self._replies: list[ClientReply] = []
        self._blocks: list[Block] = []
        self._dirty: set[int] = set()  # sequence numbers whose log record changed
        self._meta_dirty: set[bytes] = set()
        self._final_records: dict[int, bytes] = {}  # log records of seqs GC'd before ready()
        self._gc_below: int | None = None
        self._redact: dict[int, set[int]] = {}  # height -> batch indices, for `Ready.redact`
        self._must_sync = False
        self._sync_cut = (0, 0)  # (messages, replies) produced before `_must_sync` was set

    # ------------------------------------------------------------------------- public API

    @property
    def primary(self) -> int:
        return self.config.primary(self.view)

    @property
    def is_primary(self) -> bool:
        return self.primary == self.id

    @property
    def muted(self) -> bool:
        """Restarted while active in this view, and not yet past `mute_through`: no
        normal-case votes in it up to there (see the module docstring)."""
        return self.muted_view == self.view

    @property
    def high_watermark(self) -> int:
        return self.h + self.config.log_window

    def step(self, msg: Message, now_ms: int) -> None:
        """Handle one message from a peer replica or a client. Bad input is ignored and
        counted in `stats`, never raised."""
        self.now_ms = max(self.now_ms, now_ms)
        try:
            self._dispatch(msg)
        except RemoteProtocolError as exc:  # e.g. an undecodable snapshot inside STATE-DATA
            self._ignore(f"remote protocol error: {exc}")

    def tick(self, now_ms: int) -> None:
        """Advance timers: batch wait, view-change timeout, status/heartbeat, retransmission."""
        self.now_ms = max(self.now_ms, now_ms)
        now = self.now_ms
        if self.last_primary_heard_ms is None:
            self.last_primary_heard_ms = now  # a (re)started replica gives the primary a chance
        if self.active and self.is_primary:
            self._maybe_propose()
        if now >= self.next_status_ms:
            self._broadcast_status()
        if not self.active and self.my_view_change is not None and now >= self.next_vc_resend_ms:
            self.next_vc_resend_ms = now + 2 * self.config.heartbeat_ms
            self._broadcast(self.my_view_change)
        if self.active and not self.is_primary:
            if self.pending and self.vc_deadline_ms is None:
                self.vc_deadline_ms = now + self._timeout_ms()
            if not self.suspecting and now - self.last_primary_heard_ms > self._timeout_ms():
                self.stats["primary silent"] += 1
                self._suspect()
                return
        suspects = not (self.active and self.is_primary)  # a primary never suspects itself
        if suspects and self.vc_deadline_ms is not None and now >= self.vc_deadline_ms:
            self.stats["view-change timeout"] += 1
            self.vc_deadline_ms = None
            self._suspect()

    def _broadcast_status(self) -> None:
        self.next_status_ms = self.now_ms + self.config.heartbeat_ms
        # A muted primary says "not active", so the backups' heartbeat timer moves the
        # cluster to a view it can vote in; a muted backup still says "active" (peers would
        # otherwise keep re-sending it the NEW-VIEW of a view it is already in).
        active = self.active and not (self.muted and self.is_primary)
        status = Status(self.view, active, self.suspecting, self.h, self.last_executed, self.id)
        self._broadcast(m.sign(status, self.key))

    def has_ready(self) -> bool:
        return bool(
            self._messages
            or self._replies
            or self._blocks
            or self._dirty
            or self._meta_dirty
            or self._final_records
            or self._gc_below is not None
            or self._redact
        )

    def ready(self) -> Ready:
        """Hand out pending work; the buffers are now the caller's. Call `advance` next."""
        delta = DurableDelta()
        if self._gc_below is not None:
            delta.delete_below.append((KIND_LOG, seq_key(self._gc_below)))
        for seq, record in sorted(self._final_records.items()):
            if seq > self.snapshot_seq:
                delta.put.append((KIND_LOG, seq_key(seq), record))
        for seq in sorted(self._dirty):
            if seq > self.h:
                delta.put.append((KIND_LOG, seq_key(seq), self._log_record(seq)))
        delta.put.extend(self._meta_records())
        early = self._sync_cut if self._must_sync else (len(self._messages), len(self._replies))
        redact = tuple((h, tuple(sorted(idx))) for h, idx in sorted(self._redact.items()))
        ready = Ready(
            delta, self._blocks, self._messages, self._replies, self._must_sync, *early, redact
        )
        self._clear_ready_buffers()
        self._handed = ready
        return ready

    def _meta_records(self) -> list[tuple[str, bytes, bytes]]:
        """The changed "meta" records, in the order `ready()` has always put them."""
        dirty, s = self._meta_dirty, self.stable
        out: list[tuple[str, bytes, bytes]] = []
        if META_VIEW in dirty:
            view = ViewRecord(self.view, self.active, self.suspecting)
            out.append((KIND_META, META_VIEW, view.encode()))
        if META_SNAPSHOT in dirty and s.state is not None:
            snapshot = CheckpointRecord(s.seq, s.digest, s.proof, s.state.packed())
            out.append((KIND_META, META_SNAPSHOT, snapshot.encode()))
        if META_STABLE in dirty:
            stable = CheckpointRecord(s.seq, s.digest, s.proof)
            out.append((KIND_META, META_STABLE, stable.encode()))
        if META_REDACTIONS in dirty:
            out.append((KIND_META, META_REDACTIONS, encode_count(self.redactions_applied)))
        return out

    def advance(self, ready: Ready) -> None:
        """Acknowledge that `ready` was handled in the documented order."""
        if ready is not self._handed:
            raise LocalProtocolError("advance() with a Ready this replica did not hand out")
        self._handed = None

    # ------------------------------------------------------------------------- plumbing

    def _ignore(self, why: str) -> None:
        self.stats[why] += 1
        log.debug("replica %d ignored a message: %s", self.id, why)

    def _send(self, to: int, msg: Message) -> None:
        if to != self.id:
            self._messages.append(Outbound(to, msg))

    def _broadcast(self, msg: Message) -> None:
        self._messages.append(Outbound(None, msg))

    def _need_sync(self) -> None:
        """What is written from here on protects a vote: this Ready must be fsynced before
        anything produced from here on leaves (what was produced before may go first)."""
        if not self._must_sync:
            self._must_sync = True
            self._sync_cut = (len(self._messages), len(self._replies))

    def _view_changed(self) -> None:
        """The view record protects VIEW-CHANGE and NEW-VIEW: fsync it before they leave."""
        self._meta_dirty.add(META_VIEW)
        self._need_sync()

    def _timeout_ms(self) -> int:
        base = self.config.view_change_timeout_ms
        return min(base << min(self.vc_attempts, 16), self.config.view_change_timeout_max_ms)

    def _signed_by(self, msg: Message, rid: int) -> bool:
        return getattr(msg, "replica_id", -1) == rid and m.verify_signed(msg, self.keys)

    def _dispatch(self, msg: Message) -> None:
        if isinstance(msg, Request):
            self._on_request(msg)
        elif isinstance(msg, PrePrepare):
            self._on_pre_prepare(msg)
        elif isinstance(msg, Prepare):
            self._on_prepare(msg)
        elif isinstance(msg, Commit):
            self._on_commit(msg)
        elif isinstance(msg, Checkpoint):
            self._on_checkpoint(msg)
        elif isinstance(msg, ViewChange):
            self._on_view_change(msg)
        elif isinstance(msg, NewView):
            self._on_new_view(msg)
        elif isinstance(msg, Status):
            self._on_status(msg)
        elif isinstance(msg, StateData):
            self._on_state_data(msg)
        elif isinstance(msg, Block):
            self._on_block(msg)
        else:
            self._ignore(f"unexpected {type(msg).__name__}")

    def _in_window(self, seq: int) -> bool:
        return self.h < seq <= self.high_watermark

    def _slot(self, seq: int) -> _Slot:
        slot = self.slots.get(seq)
        if slot is None:
            slot = self.slots[seq] = _Slot()
        return slot

    # ------------------------------------------------------------------------- requests

    def _on_request(self, req: Request) -> None:
        """TOCS §4.1: the client's request; a backup relays it to the primary and starts its
        view-change timer (§4.5.2), the primary queues it for a batch."""
        cached = self.reply_cache.get(req.client_id)
        if cached is not None and cached[0] >= req.request_id:
            if cached[0] == req.request_id:
                self._reply(req.client_id, req.request_id, cached[1], cached[2])
            else:
                self.stats["old request"] += 1
            return
        key = (req.client_id, req.request_id)
        if key in self.pending or key in self.inflight:
            known = self.pending[key][0] if key in self.pending else self.inflight[key]
            if known != req:
                self._ignore("request conflicts with a known one")
            return
        if len(req.tx) > self.config.request_bytes_max:
            self._ignore("request over request_bytes_max")
            return
        if not m.verify_request(req):
            self._ignore("bad client signature")
            return
        if len(self.pending) >= self.config.pending_requests_max:
            self._ignore("pending requests full")
            return
        refusal = self.app.check(req.tx)
        if refusal is not None:
            self._refuse(req, refusal)
            return
        if self.active and self.is_primary:
            self._note_arrival()
        self.pending[key] = (req, self.now_ms)
        if self.active and self.is_primary:
            self._maybe_propose()
        elif self.active:
            self._send(self.primary, req)
            if self.vc_deadline_ms is None:
                self.vc_deadline_ms = self.now_ms + self._timeout_ms()

    def _refuse(self, req: Request, result: bytes) -> None:
        """Admission refused `req` (see `Application.check`): it is never ordered. The client
        hears why from every correct replica it asks, at height 0 (no block), so f+1 matching
        refusals reach it as an answer rather than a timeout."""
        self.stats["refused at admission"] += 1
        reply = Reply(self.view, req.request_id, req.client_id, self.id, result, 0)
        self._replies.append(ClientReply(req.client_id, self._signed(reply)))

    def _recheck_pending(self) -> None:
        """Admission again for every waiting request after a block (CometBFT's recheck): a
        nonce spent or a member removed by that block would otherwise leave a request that
        can only be refused waiting for a batch, and a backup's view-change timer running
        for a request a correct primary will not order."""
        for key, (req, _) in list(self.pending.items()):
            refusal = self.app.check(req.tx)
            if refusal is not None:
                del self.pending[key]
                self._refuse(req, refusal)

    def _signed(self, reply: Reply) -> Reply:
        return self.signed_reply(reply) if self.sign_replies else reply

    def _reply(self, client_id: bytes, request_id: int, height: int, result: bytes) -> None:
        reply = Reply(self.view, request_id, client_id, self.id, result, height)
        self._replies.append(ClientReply(client_id, self._signed(reply)))

    def signed_reply(self, reply: Reply) -> Reply:
        """`reply`, one of this replica's REPLYs (from a Ready), signed.

        The signature of the reply the reply cache holds for its client is kept, so the
        client's retries (answered from that cache, sent to every replica) cost no new
        signature each; an erasure drops it with the cached result (`_forget_cached_results`).
        Only while the cache holds that very result: a shell signs after the step that made
        the reply, and a later batch of the same step may have forgotten it already."""
        kept = self.signed_replies.get(reply.client_id)
        if kept is not None and dataclasses.replace(kept, signature=b"") == reply:
            return kept
        signed = m.sign(reply, self.key)
        cached = self.reply_cache.get(reply.client_id)
        if cached == (reply.request_id, reply.block_height, reply.result):
            self.signed_replies[reply.client_id] = signed
        return signed

    def _maybe_propose(self) -> None:
        """TOCS §5.1 batching: close a batch when full or when its oldest request waited
        `batch_wait_ms`; never assign a sequence number above the high watermark."""
        cfg = self.config
        while self.pending and self._may_propose():
            batch, oldest_ms, full = self._next_batch()
            if not batch or oldest_ms is None:
                return
            if not full and not self._propose_now() and self.now_ms - oldest_ms < cfg.batch_wait_ms:
                return
            self._propose(tuple(batch))
        if self._may_propose():
            self._fill_to_checkpoint()

    def _may_propose(self) -> bool:
        """Whether the primary may assign its next sequence number now, whatever waits in its
        queue and however long it waited (`_maybe_propose`, `batch_due_ms`)."""
        if self.muted:
            return False  # a restarted primary may have forgotten a PRE-PREPARE of this view
        if self.last_executed < self.proposal_floor:
            # Requests committed at or below the new view's min-s may still wait in our queue
            # until we execute them: proposing before then could order one twice.
            return False
        if self.next_seq > self.high_watermark:
            return False
        # A full window: requests gather for the next batch while these run.
        return self._in_flight < self.config.batches_in_flight_max

    @property
    def _in_flight(self) -> int:
        """Batches the primary has proposed and not executed yet (0 or less: none)."""
        return self.next_seq - 1 - self.last_executed

    def _note_arrival(self) -> None:
        """Update `load` with a request reaching the primary: busy if another request waits or
        a batch is in flight (an exponential average over about `LOAD_REQUESTS` requests).
        A request that finds the primary quiet also brings the load down by the quiet time
        (half every `LOAD_HALF_LIFE_MS`): a client that comes back after a pause is not kept
        waiting for the burst that went before it."""
        busy = bool(self.pending) or self._in_flight > 0
        if not busy and self.load:
            quiet_ms = max(0, self.now_ms - self.executed_ms)
            self.load *= 0.5 ** (quiet_ms / LOAD_HALF_LIFE_MS)
        self.load += ((1.0 if busy else 0.0) - self.load) / LOAD_REQUESTS

    def _propose_now(self) -> bool:
        """Whether a batch that is neither full nor due should be proposed all the same.

        Adaptive batching (the paper's "batch while busy", TOCS §5.1.4, with a rate signal):
        every batch costs each replica a PRE-PREPARE, 2f+1 signed votes and an fsync, whatever
        it holds. A primary with no batch in flight proposes at once when its clients take
        turns (`load` low: a client that waits for its answer before asking again gains
        nothing by the wait), and waits up to `batch_wait_ms` when they overlap, so
        concurrent requests share a batch instead of each paying for one: under load the
        replicas' CPU, not the wait, is what bounds the answers per second. With a batch in
        flight, requests always gather for the next one. Right after a burst, the first few
        requests of a client taking turns may each wait, until they have brought `load` down;
        after a pause (`LOAD_HALF_LIFE_MS`), none does."""
        return self._in_flight <= 0 and self.load < LOAD_BATCHING

    def batch_due_ms(self) -> int | None:
        """When the primary must propose the waiting requests even if no more come (None: it
        has nothing waiting, or cannot propose): the host's timer wakes it then."""
        if not (self.active and self.is_primary and self.pending and self._may_propose()):
            return None  # what it waits for then is not time: no timer could let it go
        # Entries go in as they arrive, stamped with `now_ms`, which only moves forward: the
        # first is the oldest (or one `_next_batch` will drop, which wakes the host early).
        _, oldest_ms = next(iter(self.pending.values()))
        return oldest_ms + self.config.batch_wait_ms

    def _propose(self, requests: tuple[Request, ...]) -> None:
        time_ms = max(self.now_ms, self.last_time_proposed_ms)
        self.last_time_proposed_ms = time_ms
        pp = PrePrepare(
            self.view,
            self.next_seq,
            m.batch_digest(time_ms, requests),
            time_ms,
            requests,
            self.id,
        )
        pp = m.sign(pp, self.key)
        self.next_seq += 1
        self._broadcast(pp)
        self._accept_pre_prepare(pp)

    def _fill_to_checkpoint(self) -> None:
        """Null batches (TOCS §4.4's null request) up to the checkpoint that covers an
        erasure, when nothing else waits.

        Replicas redact what an erasure forgets only once a stable checkpoint covers its block
        (`_apply_redactions`). On a quiet ledger the next checkpoint could be hours away, and
        the erased subject's transactions would stay on every disk until then. A null batch
        costs one round of the protocol and at most K - 1 of them are needed. A faulty primary
        may skip them; the redaction then waits for the traffic that reaches the checkpoint,
        which is what every replica does anyway."""
        if self.pending or self.redaction_due <= self.h:
            return
        k = self.config.checkpoint_interval
        target = min(-(-self.redaction_due // k) * k, self.high_watermark)
        while self.next_seq <= target:
            if self._in_flight >= self.config.batches_in_flight_max:
                return
            self.stats["null batches to a checkpoint"] += 1
            self._propose(())

    def _next_batch(self) -> tuple[list[Request], int | None, bool]:
        """The oldest waiting requests that fit one batch, by count and by bytes; the oldest
        arrival among them; whether the batch is full. Requests executed meanwhile leave."""
        cfg = self.config
        batch: list[Request] = []
        size = 0
        oldest_ms = None
        for key, (req, arrived_ms) in list(self.pending.items()):
            cached = self.reply_cache.get(req.client_id)
            if cached is not None and cached[0] >= req.request_id:
                del self.pending[key]
                continue
            if key in self.reordered:
                continue  # O holds it at its own sequence number: it leaves when executed
            need = cfg.request_bytes(len(req.tx))
            if batch and size + need > cfg.batch_bytes_max:
                return batch, oldest_ms, True
            batch.append(req)
            size += need
            oldest_ms = arrived_ms if oldest_ms is None else min(oldest_ms, arrived_ms)
            if len(batch) >= cfg.batch_size_max:
                return batch, oldest_ms, True
        return batch, oldest_ms, False

    # ------------------------------------------------------------------------- normal case

    def _on_pre_prepare(self, pp: PrePrepare) -> None:
        """TOCS §4.2: accept the first valid PRE-PREPARE for (v, n) and send PREPARE."""
        if not self.active or pp.view != self.view:
            self._ignore("pre-prepare for another view")
            return
        if self.muted and pp.seq <= self.mute_through:
            self.stats["muted after restart"] += 1
            return
        if not self._in_window(pp.seq):
            self._ignore("pre-prepare outside the watermarks")
            return
        if pp.replica_id != self.primary or not self._signed_by(pp, self.primary):
            self._ignore("pre-prepare not signed by the primary")
            return
        slot = self._slot(pp.seq)
        if slot.pre_prepare is not None:
            if slot.pre_prepare.batch_digest != pp.batch_digest:
                self._ignore("equivocating pre-prepare")
            return
        if len(pp.requests) > self.config.batch_size_max or not self._batch_fits(pp.requests):
            self._ignore("batch too large")
            return
        if abs(pp.time_ms - self.now_ms) > self.config.block_time_skew_ms:
            self._ignore("block time outside the allowed skew")
            return
        if m.batch_digest(pp.time_ms, pp.requests) != pp.batch_digest:
            self._ignore("pre-prepare digest does not match its batch")
            return
        keys = [(r.client_id, r.request_id) for r in pp.requests]
        if len(set(keys)) != len(keys):
            self._ignore("batch repeats a request")
            return
        for req, key in zip(pp.requests, keys, strict=True):
            known = self.pending.get(key)
            if (known is None or known[0] != req) and not m.verify_request(req):
                self._ignore("batch holds an unsigned request")
                return
        self.last_primary_heard_ms = self.now_ms
        self._accept_pre_prepare(pp)

    def _batch_fits(self, requests: tuple[Request, ...]) -> bool:
        """Within the limits every message's size is derived from (`ClusterConfig`)."""
        cfg = self.config
        if any(len(r.tx) > cfg.request_bytes_max for r in requests):
            return False
        return sum(cfg.request_bytes(len(r.tx)) for r in requests) <= cfg.batch_bytes_max

    def _accept_pre_prepare(self, pp: PrePrepare) -> None:
        slot = self._slot(pp.seq)
        if slot.pre_prepare is not None:
            raise LocalProtocolError("two pre-prepares accepted for one slot")
        slot.pre_prepare = pp
        self._dirty.add(pp.seq)
        if pp.replica_id == self.id:
            # Ours, from a batch or from O: its requests leave the queue, or the next batch
            # would order them a second time (a request in two blocks).
            for req in pp.requests:
                key = (req.client_id, req.request_id)
                if self.pending.pop(key, None) is not None or key not in self.inflight:
                    self.inflight[key] = req
        # Votes that arrived early for another digest are no use any more.
        slot.prepares = {
            r: p for r, p in slot.prepares.items() if p.batch_digest == pp.batch_digest
        }
        slot.commits = {r: c for r, c in slot.commits.items() if c.batch_digest == pp.batch_digest}
        if pp.replica_id != self.id:
            prepare = m.sign(Prepare(pp.view, pp.seq, pp.batch_digest, self.id), self.key)
            slot.my_prepare = prepare
            slot.prepares[self.id] = prepare
            self._broadcast(prepare)
        self._check_prepared(pp.seq)

    def _vote_guard(self, vote: Prepare | Commit, kind: str) -> _Slot | None:
        if not self.active or vote.view != self.view:
            self._ignore(f"{kind} for another view")
            return None
        if self.muted and vote.seq <= self.mute_through:
            self.stats["muted after restart"] += 1
            return None
        if not self._in_window(vote.seq):
            self._ignore(f"{kind} outside the watermarks")
            return None
        known = self.slots.get(vote.seq)
        if known is not None and (known.committed if kind == "commit" else known.prepared):
            # The quorum is complete: a further vote changes nothing, so do not pay for its
            # signature check (the largest CPU cost of the normal case).
            self.stats[f"{kind} after quorum"] += 1
            return None
        if not 0 <= vote.replica_id < self.config.n or not m.verify_signed(vote, self.keys):
            self._ignore(f"bad {kind} signature")
            return None
        slot = self._slot(vote.seq)
        if slot.pre_prepare is not None and slot.pre_prepare.batch_digest != vote.batch_digest:
            self._ignore(f"{kind} for another digest")
            return None
        return slot

    def _on_prepare(self, prepare: Prepare) -> None:
        """TOCS §4.2: collect PREPAREs from backups."""
        if prepare.replica_id == self.primary:
            self._ignore("prepare from the primary")
            return
        slot = self._vote_guard(prepare, "prepare")
        if slot is None or prepare.replica_id in slot.prepares:
            return
        slot.prepares[prepare.replica_id] = prepare
        self._check_prepared(prepare.seq)

    def _check_prepared(self, seq: int) -> None:
        """prepared(m, v, n, i): the pre-prepare plus 2f matching PREPAREs from backups."""
        slot = self.slots[seq]
        pp = slot.pre_prepare
        if slot.prepared or pp is None:
            return
        matching = [p for p in slot.prepares.values() if p.batch_digest == pp.batch_digest]
        if len(matching) < 2 * self.config.f:
            return
        slot.prepared = True
        chosen = tuple(sorted(matching, key=lambda p: p.replica_id)[: 2 * self.config.f])
        self.pcerts[seq] = PreparedCert(pp, chosen)
        self._dirty.add(seq)
        self._need_sync()  # the COMMIT below claims this certificate (TOCS §4.4)
        commit = m.sign(Commit(pp.view, seq, pp.batch_digest, self.id), self.key)
        slot.my_commit = commit
        slot.commits[self.id] = commit
        self._broadcast(commit)
        self._check_committed(seq)

    def _on_commit(self, commit: Commit) -> None:
        """TOCS §4.2: collect COMMITs; 2f+1 make the batch committed-local."""
        slot = self._vote_guard(commit, "commit")
        if slot is None or commit.replica_id in slot.commits:
            return
        slot.commits[commit.replica_id] = commit
        self._check_committed(commit.seq)

    def _check_committed(self, seq: int) -> None:
        slot = self.slots[seq]
        pp = slot.pre_prepare
        if slot.committed or not slot.prepared or pp is None:
            return
        matching = [c for c in slot.commits.values() if c.batch_digest == pp.batch_digest]
        if len(matching) < self.config.quorum:
            return
        slot.committed = True
        chosen = tuple(sorted(matching, key=lambda c: c.replica_id)[: self.config.quorum])
        self.committed_batches[seq] = (pp, chosen)
        self._dirty.add(seq)
        self._execute_ready()

    # ------------------------------------------------------------------------- execution

    def _execute_ready(self) -> None:
        executed = False
        while self.last_executed + 1 in self.committed_batches:
            seq = self.last_executed + 1
            pp, commits = self.committed_batches[seq]
            self._execute(seq, pp, commits)
            executed = True
        if executed and self.pending:
            self._recheck_pending()
        if executed and self.active and self.is_primary and (self.pending or self.redaction_due):
            # The pipeline drained: propose what queued meanwhile without waiting for a tick.
            self._maybe_propose()

    def _execute(self, seq: int, pp: PrePrepare, commits: tuple[Commit, ...]) -> None:
        """Execute a committed batch in order (TOCS §4.2), skipping requests the reply cache
        says were executed already (§4.1 exactly once)."""
        if seq != self.last_executed + 1:
            raise LocalProtocolError("execution out of order")
        time_ms = max(pp.time_ms, self.head_time_ms)  # block time never goes backwards
        self.executed_ms = self.now_ms  # `_note_arrival`: how long the replica has been quiet
        fresh: list[int] = []
        for i, req in enumerate(pp.requests):
            cached = self.reply_cache.get(req.client_id)
            if cached is None or cached[0] < req.request_id:
                fresh.append(i)
        ctx = BlockContext(seq, time_ms, self.head_hash, tuple(fresh))
        fresh_results, state_root = self.app.execute([pp.requests[i].tx for i in fresh], ctx)
        if len(fresh_results) != len(fresh):
            raise LocalProtocolError("the application returned the wrong number of results")
        # Re-executing, after a restart, what was executed before the stable checkpoint: the
        # replies went out then, and the blocks are stored.
        replaying = self._replay_stable is not None and seq <= self._replay_stable[0]
        self.txs_since_snapshot += len(fresh)
        results = [b""] * len(pp.requests)
        refused: dict[int, bytes] = {}
        refused.update((i, m.DUPLICATE) for i in set(range(len(pp.requests))) - set(fresh))
        for i, result in zip(fresh, fresh_results, strict=True):
            req = pp.requests[i]
            results[i] = result
            code = self.app.refusal_code(result)
            if code is not None:
                refused[i] = code
            self.reply_cache.pop(req.client_id, None)  # re-insert: eviction order = recency
            self.reply_cache[req.client_id] = (req.request_id, seq, result)
            if not replaying:
                self._reply(req.client_id, req.request_id, seq, result)
        while len(self.reply_cache) > self.config.clients_max:
            evicted = next(iter(self.reply_cache))
            del self.reply_cache[evicted]
            self.signed_replies.pop(evicted, None)
        for req in pp.requests:
            key = (req.client_id, req.request_id)
            self.pending.pop(key, None)
            self.inflight.pop(key, None)
        self._forget_cached_results(seq, pp)
        block = Block(
            height=seq,
            view=pp.view if not commits else commits[0].view,
            prev_hash=self.head_hash,
            time_ms=pp.time_ms,
            batch_digest=pp.batch_digest,
            requests=tuple(r for i, r in enumerate(pp.requests) if i not in refused),
            omitted=tuple(
                m.Omission(i, m.request_digest(pp.requests[i]), code)
                for i, code in sorted(refused.items())
            ),
            results_digest=results_digest(results),
            state_root=state_root,
            signers=tuple(c.replica_id for c in commits),
            certificate=tuple(c.signature for c in commits),
        )
        self._emit_block(block, store=not replaying)
        self.head_hash = block_hash(block)
        self.head_time_ms = time_ms
        self.last_executed = seq
        # committed_batches keeps executed entries until the next stable checkpoint: the log
        # record must still hold the commit certificate so a restart can re-execute them.
        if fresh:
            self.vc_attempts = 0  # progress: back-off starts over
        if self.active:  # while changing view, the NEW-VIEW deadline stays as it is
            self.vc_deadline_ms = self.now_ms + self._timeout_ms() if self.pending else None
        if seq % self.config.checkpoint_interval == 0:
            self._take_checkpoint(seq, state_root)

    def _emit_block(self, block: Block, *, store: bool = True) -> None:
        if store:
            self._blocks.append(block)
        self.recent_blocks.append(block)
        # Bounded by `state_transfer_blocks_max`, except the blocks above the stable
        # checkpoint: a peer behind us but not behind h gets no state transfer, only these
        # (by certificate), so dropping one would leave it stuck until the next checkpoint
        # stabilises, which an idle cluster never reaches. There are at most L of them.
        excess = len(self.recent_blocks) - self.config.state_transfer_blocks_max
        if excess > 0:
            droppable = 0
            while droppable < excess and self.recent_blocks[droppable].height <= self.h:
                droppable += 1
            del self.recent_blocks[:droppable]

    # ------------------------------------------------------------------------- checkpoints

    def _freeze(self, state_root: bytes) -> FrozenState:
        cache = [(c, rid, height, res) for c, (rid, height, res) in self.reply_cache.items()]
        return FrozenState(self.app.freeze(), state_root, cache, self.head_hash, self.head_time_ms)

    def _take_checkpoint(self, seq: int, state_root: bytes) -> None:
        """TOCS §4.3: freeze the state, digest it, CHECKPOINT to all."""
        if self._replay_stable is not None and seq <= self._replay_stable[0]:
            self._replayed_checkpoint(seq, state_root)
            return
        state = self._freeze(state_root)
        state_digest = state.digest()
        self.own_snapshots[seq] = (state_digest, state)
        cp = m.sign(Checkpoint(seq, state_digest, state_root, self.id), self.key)
        self._broadcast(cp)
        self._record_checkpoint(cp)

    def _replayed_checkpoint(self, seq: int, state_root: bytes) -> None:
        """Restarting: checkpoints below the stored stable one are proven already; at it,
        re-execution must have reached the digest 2f+1 replicas signed."""
        assert self._replay_stable is not None
        stable_seq, stable_digest, proof = self._replay_stable
        if seq < stable_seq:
            return
        state = self._freeze(state_root)
        if state.digest() != stable_digest:
            raise LocalProtocolError("re-execution did not reach the stable checkpoint's state")
        self._replay_stable = None
        self.own_snapshots[seq] = (stable_digest, state)
        self._make_stable(_Stable(seq, stable_digest, proof, state))

    def _on_checkpoint(self, cp: Checkpoint) -> None:
        if cp.seq % self.config.checkpoint_interval or cp.seq <= self.h:
            self._ignore("checkpoint not above the stable one")
            return
        if not 0 <= cp.replica_id < self.config.n or not m.verify_signed(cp, self.keys):
            self._ignore("bad checkpoint signature")
            return
        self._record_checkpoint(cp)

    def _record_checkpoint(self, cp: Checkpoint) -> None:
        votes = self.checkpoint_votes.setdefault(cp.seq, {})
        known = votes.get(cp.replica_id)
        if known is not None and not self._vote_replaces(known, cp):
            return
        votes[cp.replica_id] = cp
        # Memory bound: each replica keeps at most L/K + 2 checkpoint votes here.
        mine = sorted(s for s, v in self.checkpoint_votes.items() if cp.replica_id in v)
        for s in mine[
            : max(0, len(mine) - (self.config.log_window // self.config.checkpoint_interval + 2))
        ]:
            del self.checkpoint_votes[s][cp.replica_id]
            if not self.checkpoint_votes[s]:
                del self.checkpoint_votes[s]
        self._check_stable(cp.seq)

    def _vote_replaces(self, known: Checkpoint, cp: Checkpoint) -> bool:
        """A second CHECKPOINT from one signer for one sequence number replaces the first only
        if it matches our own state and the first does not. A Byzantine replica may send us
        a corrupt vote and a peer relay its genuine one (inside a stable proof): keeping the
        first left honest replicas one vote short of 2f+1 for good, at their window limit
        (simulator seed 538). Counting a signer that signed two digests is as safe as
        counting any faulty replica: a proof still needs 2f+1 signatures on one digest."""
        own = self.own_snapshots.get(cp.seq)
        if own is None or known.state_digest == own[0] or cp.state_digest != own[0]:
            return False
        self.stats["checkpoint vote replaced by one matching our state"] += 1
        return True

    def _check_stable(self, seq: int) -> None:
        votes = self.checkpoint_votes.get(seq)
        own = self.own_snapshots.get(seq)
        if votes is None or own is None:
            return  # a lagging replica waits for STATE-DATA (sent in answer to its STATUS)
        matching = [c for c in votes.values() if c.state_digest == own[0]]
        if len(matching) < self.config.quorum:
            return
        proof = tuple(sorted(matching, key=lambda c: c.replica_id)[: self.config.quorum])
        self._make_stable(_Stable(seq, own[0], proof, own[1]))

    def _make_stable(self, stable: _Stable) -> None:
        """The checkpoint is stable: move h, garbage-collect the log below it (TOCS §4.3).

        On disk the log is kept from the durable snapshot up (a restart re-executes it), and
        a durable snapshot is written once enough transactions ran since the last one: the
        cost of writing the state is paid every `durable_snapshot_txs`, not every K."""
        if stable.seq <= self.h:
            return
        self.stable = stable
        self.h = stable.seq
        self._meta_dirty.add(META_STABLE)
        # The new h lets us vote up to h + L: it is on disk before any such vote leaves, so a
        # restart knows every sequence number it may have voted on (`mute_through`).
        self._need_sync()
        if self.muted_view is not None and self.h >= self.mute_through:
            self.muted_view = None
            self.stats["voting again after restart"] += 1
        # Records of sequence numbers GC'd below before the shell saw them (committed and
        # stable within one step): still needed on disk to re-execute from the snapshot.
        for s in self._dirty:
            if s <= stable.seq:
                self._final_records[s] = self._log_record(s)
        if self._snapshot_due or self.txs_since_snapshot >= self.config.durable_snapshot_txs:
            self._snapshot_due = False
            self.txs_since_snapshot = 0
            self.snapshot_seq = stable.seq
            self._meta_dirty.add(META_SNAPSHOT)
            self._gc_below = stable.seq + 1
        for s in [s for s in self.slots if s <= stable.seq]:
            del self.slots[s]
        for s in [s for s in self.pcerts if s <= stable.seq]:
            del self.pcerts[s]
        for s in [s for s in self.committed_batches if s <= stable.seq]:
            del self.committed_batches[s]
        for s in [s for s in self.own_snapshots if s <= stable.seq]:
            del self.own_snapshots[s]
        for s in [s for s in self.checkpoint_votes if s <= stable.seq]:
            del self.checkpoint_votes[s]
        self._dirty = {s for s in self._dirty if s > stable.seq}
        self._apply_redactions()
        if self.active and self.is_primary:
            self.next_seq = max(self.next_seq, self.h + 1)
            self._maybe_propose()

    def _checkpoint_proof_ok(
        self, seq: int, state_digest: bytes, proof: tuple[Checkpoint, ...]
    ) -> bool:
        """2f+1 distinct replicas signed CHECKPOINT(seq, digest); seq 0 needs no proof."""
        if seq == 0:
            return not proof
        if seq % self.config.checkpoint_interval:
            return False
        signers: set[int] = set()
        for cp in proof:
            if cp.seq != seq or cp.state_digest != state_digest or cp.replica_id in signers:
                return False
            if not 0 <= cp.replica_id < self.config.n or not m.verify_signed(cp, self.keys):
                return False
            signers.add(cp.replica_id)
        return len(signers) >= self.config.quorum

    # ------------------------------------------------------------------------- view change

    def _suspect(self) -> None:
        """Our timer expired in this view (TOCS §4.5.2's trigger): announce it in STATUS, and
        send VIEW-CHANGE only once 2f+1 replicas suspect the view (`_check_suspicions`).

        Why not VIEW-CHANGE at once, as the paper does: a replica cut off from the primary
        alone would sit in view v+1 for good (its VIEW-CHANGE cannot be taken back, and going
        back to v would let a stale VIEW-CHANGE of it hide its later votes from a NEW-VIEW,
        §4.4), and the cluster would run with no spare replica. A suspicion binds nothing: the
        replica keeps voting in v. It is sticky until the view changes, and on disk before the
        STATUS that announces it leaves, so once an honest replica saw 2f+1 suspicions, f+1
        honest replicas keep announcing theirs, every honest replica joins (f+1), and none is
        left alone in the next view (docs/PBFT.md, "Suspicion")."""
        if self.suspecting:
            return
        self.suspecting = True
        self._view_changed()
        self.stats["suspicions"] += 1
        self._broadcast_status()
        self._check_suspicions()

    def _note_left(self, replica_id: int, below: int) -> None:
        """`replica_id` signed that it left, or suspects, every view below `below`."""
        if replica_id != self.id and below > self.left_below.get(replica_id, 0):
            self.left_below[replica_id] = below
            self._check_suspicions()

    def _check_suspicions(self) -> None:
        """f+1 replicas want to leave our view: one of them is correct, join the suspicion
        (TOCS §4.5.2's f+1 rule). 2f+1 (us included): change view, to the highest view that
        2f+1 replicas want to reach (a lagging replica skips the views the others left)."""
        wants = [b for r, b in self.left_below.items() if b > self.view]
        if not self.suspecting:
            if len(wants) >= self.config.f + 1:
                self.stats["joined f+1 suspicions"] += 1
                self._suspect()
            return
        wants.append(self.view + 1)
        if len(wants) >= self.config.quorum:
            target = sorted(wants, reverse=True)[self.config.quorum - 1]
            self._start_view_change(target)

    def _start_view_change(self, new_view: int) -> None:
        """TOCS §4.4: stop accepting messages of the old view, send VIEW-CHANGE for new_view."""
        if new_view <= self.view and not self.active:
            return
        if new_view < self.view or (new_view == self.view and self.active):
            return
        self.view = new_view
        self.active = False
        self.suspecting = False
        self._view_changed()
        for key, req in self.inflight.items():
            self.pending.setdefault(key, (req, self.now_ms))
        self.inflight.clear()
        self.slots.clear()
        prepared = tuple(self.pcerts[s] for s in sorted(self.pcerts) if s > self.h)
        vc = ViewChange(new_view, self.h, self.stable.proof, prepared, self.id)
        vc = m.sign(vc, self.key)
        self.my_view_change = vc
        self.view_changes[self.id] = vc
        self._broadcast(vc)
        self.next_vc_resend_ms = self.now_ms + 2 * self.config.heartbeat_ms
        self.vc_attempts += 1
        # TOCS §4.5.2: the NEW-VIEW timer starts only once 2f+1 replicas want this view, so a
        # replica alone (partitioned, or misled) does not run ahead through views it can
        # never complete; it follows by catch-up until the others join.
        self.vc_deadline_ms = None
        self._maybe_start_new_view_timer()
        self.stats["view changes started"] += 1
        if self.is_primary:
            self._try_new_view()

    def _maybe_start_new_view_timer(self) -> None:
        if self.active or self.vc_deadline_ms is not None:
            return
        backers = sum(1 for v in self.view_changes.values() if v.new_view >= self.view)
        if backers >= self.config.quorum:
            self.vc_deadline_ms = self.now_ms + self._timeout_ms()

    def _view_change_ok(self, vc: ViewChange) -> bool:
        """Checkpoint proof and every prepared certificate verify (TOCS §4.4)."""
        cfg = self.config
        stable_digest = vc.checkpoint_proof[0].state_digest if vc.checkpoint_proof else b""
        if not self._checkpoint_proof_ok(vc.stable_seq, stable_digest, vc.checkpoint_proof):
            return False
        seen: set[int] = set()
        for cert in vc.prepared:
            pp = cert.pre_prepare
            if pp.seq in seen or not vc.stable_seq < pp.seq <= vc.stable_seq + cfg.log_window:
                return False
            if pp.view >= vc.new_view or not self._pre_prepare_authentic(pp):
                return False
            signers: set[int] = set()
            for p in cert.prepares:
                if (p.view, p.seq, p.batch_digest) != (pp.view, pp.seq, pp.batch_digest):
                    return False
                if p.replica_id in signers or p.replica_id == cfg.primary(pp.view):
                    return False
                if not 0 <= p.replica_id < cfg.n or not m.verify_signed(p, self.keys):
                    return False
                signers.add(p.replica_id)
            if len(signers) < 2 * cfg.f:
                return False
            seen.add(pp.seq)
        return True

    def _pre_prepare_authentic(self, pp: PrePrepare) -> bool:
        if pp.replica_id != self.config.primary(pp.view):
            return False
        if m.batch_digest(pp.time_ms, pp.requests) != pp.batch_digest:
            return False
        return m.verify_signed(pp, self.keys)

    def _on_view_change(self, vc: ViewChange) -> None:
        if vc.new_view < self.view or (vc.new_view == self.view and self.active):
            self._ignore("view-change for an old view")
            return
        known = self.view_changes.get(vc.replica_id)
        if known is not None and known.new_view >= vc.new_view:
            return
        if not 0 <= vc.replica_id < self.config.n or not m.verify_signed(vc, self.keys):
            self._ignore("bad view-change signature")
            return
        if not self._view_change_ok(vc):
            self._ignore("view-change with a forged proof")
            return
        self.view_changes[vc.replica_id] = vc
        self._note_left(vc.replica_id, vc.new_view)
        self._maybe_start_new_view_timer()
        # TOCS §4.5.2: f+1 replicas want a higher view: join the smallest such view.
        higher = sorted(
            v.new_view
            for r, v in self.view_changes.items()
            if r != self.id
            and (v.new_view > self.view or (v.new_view == self.view and self.active))
        )
        if len(higher) >= self.config.f + 1:
            self._start_view_change(higher[0])
        if not self.active and self.is_primary:
            self._try_new_view()

    def _compute_o(self, vcs: tuple[ViewChange, ...], view: int) -> tuple[int, list[PrePrepare]]:
        """TOCS §4.4: min-s, and O re-proposing the highest-view prepared batch per seq
        (null requests in gaps). Deterministic, so backups can recompute it."""
        min_s = max(vc.stable_seq for vc in vcs)
        best: dict[int, PrePrepare] = {}
        for vc in vcs:
            for cert in vc.prepared:
                pp = cert.pre_prepare
                if pp.seq <= min_s:
                    continue
                cur = best.get(pp.seq)
                if cur is None or (pp.view, pp.batch_digest) > (cur.view, cur.batch_digest):
                    best[pp.seq] = pp
        max_s = max(best, default=min_s)
        primary = self.config.primary(view)
        o: list[PrePrepare] = []
        for seq in range(min_s + 1, max_s + 1):
            old = best.get(seq)
            if old is None:
                o.append(
                    PrePrepare(
                        view, seq, m.batch_digest(NULL_TIME_MS, ()), NULL_TIME_MS, (), primary
                    )
                )
            else:
                o.append(
                    PrePrepare(view, seq, old.batch_digest, old.time_ms, old.requests, primary)
                )
        return min_s, o

    def _try_new_view(self) -> None:
        vcs = tuple(
            sorted(
                (v for v in self.view_changes.values() if v.new_view == self.view),
                key=lambda v: v.replica_id,
            )
        )
        if len(vcs) < self.config.quorum:
            return
        vcs = vcs[: self.config.quorum]
        _, o = self._compute_o(vcs, self.view)
        signed = tuple(m.sign(pp, self.key) for pp in o)
        nv = m.sign(NewView(self.view, vcs, signed, self.id), self.key)
        self._broadcast(nv)
        self._install_new_view(nv, vcs)

    def _on_new_view(self, nv: NewView) -> None:
        """A backup re-verifies V and recomputes O (TOCS §4.4); a mismatch is a forgery."""
        if nv.view < self.view or (nv.view == self.view and self.active):
            self._ignore("new-view for an old view")
            return
        if nv.replica_id != self.config.primary(nv.view) or not m.verify_signed(nv, self.keys):
            self._ignore("new-view not signed by the view's primary")
            return
        signers = {vc.replica_id for vc in nv.view_changes}
        if len(signers) != len(nv.view_changes) or len(signers) < self.config.quorum:
            self._ignore("new-view without 2f+1 distinct view-changes")
            return
        for vc in nv.view_changes:
            if vc.new_view != nv.view or not 0 <= vc.replica_id < self.config.n:
                self._ignore("new-view holds a view-change for another view")
                return
            if not m.verify_signed(vc, self.keys) or not self._view_change_ok(vc):
                self._ignore("new-view holds a forged view-change")
                return
        _, o = self._compute_o(nv.view_changes, nv.view)
        if len(o) != len(nv.pre_prepares):
            self._ignore("new-view O differs from the recomputed one")
            return
        for mine, theirs in zip(o, nv.pre_prepares, strict=True):
            if m.encode(mine) != m.encode(dataclasses.replace(theirs, signature=b"")):
                self._ignore("new-view O differs from the recomputed one")
                return
            if not m.verify_signed(theirs, self.keys):
                self._ignore("new-view pre-prepare not signed")
                return
        self._install_new_view(nv, nv.view_changes)

    def _install_new_view(self, nv: NewView, vcs: tuple[ViewChange, ...]) -> None:
        min_s, _ = self._compute_o(vcs, nv.view)
        self.view = nv.view
        self.active = False  # until O is in the log: _make_stable below must not propose
        self.suspecting = False
        self.new_view_msg = nv
        self._view_changed()
        self.slots.clear()
        self.last_primary_heard_ms = self.now_ms
        self.view_changes = {r: v for r, v in self.view_changes.items() if v.new_view > nv.view}
        self.my_view_change = None
        self.vc_deadline_ms = self.now_ms + self._timeout_ms() if self.pending else None
        # The new stable checkpoint, if V proves one above ours and we reached it.
        if min_s > self.h:
            own = self.own_snapshots.get(min_s)
            for vc in vcs:
                if vc.stable_seq == min_s and own is not None and vc.checkpoint_proof:
                    if vc.checkpoint_proof[0].state_digest == own[0]:
                        self._make_stable(_Stable(min_s, own[0], vc.checkpoint_proof, own[1]))
                    break
        self.active = True
        self.reordered = frozenset(
            (r.client_id, r.request_id) for pp in nv.pre_prepares for r in pp.requests
        )
        max_s = min_s
        for pp in nv.pre_prepares:
            max_s = max(max_s, pp.seq)
            if self._in_window(pp.seq):
                self._accept_pre_prepare(pp)
        self.proposal_floor = min_s
        if self.is_primary:
            self.next_seq = max(max_s, self.h, self.last_executed) + 1
            self._maybe_propose()
        self.stats["new views installed"] += 1

    # ------------------------------------------------------------------------- status, state

    def _on_status(self, st: Status) -> None:
        """Retransmit what the sender lacks (TOCS §5.2); the primary's STATUS is its heartbeat.

        Each job is its own method, in this order: authenticate, take the heartbeat and the
        sender's suspicion, rate-limit the answer, re-send the view change it missed, and,
        only to a peer stuck since its previous STATUS, what it has not executed."""
        if not self._status_authentic(st):
            return
        self._heard_status(st)
        if not self._may_answer(st.replica_id):
            return  # rate limit: a Byzantine replica cannot make us stream state at it
        self._resend_view_change(st)
        if self._peer_stuck(st):
            self._resend_progress(st)

    def _status_authentic(self, st: Status) -> bool:
        if not 0 <= st.replica_id < self.config.n or st.replica_id == self.id:
            self._ignore("status from an unknown replica")
            return False
        if not m.verify_signed(st, self.keys):
            self._ignore("bad status signature")
            return False
        return True

    def _heard_status(self, st: Status) -> None:
        """The primary's heartbeat, and the view the sender left or suspects."""
        self.peer_heard_ms[st.replica_id] = self.now_ms
        if st.replica_id == self.primary and st.view == self.view and st.view_active:
            self.last_primary_heard_ms = self.now_ms
        self._note_left(st.replica_id, st.view + (1 if st.suspects else 0))

    def serves_current(self, now_ms: int, within_ms: int) -> str | None:
        """None when this replica's executed state may be read as the chain's current state,
        else why not. Current means: within `within_ms` it heard an authentic STATUS from 2f
        peers (with itself a quorum, so it is on the majority side of any partition), and
        fewer than f+1 of them reported executing more than `batches_in_flight_max` blocks
        beyond it (f+1 include a correct replica, so it really is behind). A replica cut off
        with a minority keeps its old state, and would otherwise serve it as the latest.
        Among the replicas in touch, the f+1 furthest ahead always qualify."""
        heard = [
            peer
            for peer, at in self.peer_heard_ms.items()
            if now_ms - at <= within_ms and peer != self.id
        ]
        if len(heard) < 2 * self.config.f:
            return f"in touch with {len(heard)} of {self.config.n - 1} replicas"
        slack = self.config.batches_in_flight_max
        ahead = [p for p in heard if self.peer_progress.get(p, 0) > self.last_executed + slack]
        if len(ahead) >= self.config.f + 1:
            return f"{len(ahead)} replicas executed beyond height {self.last_executed}"
        return None

    def _may_answer(self, to: int) -> bool:
        """At most one answer per peer each half heartbeat (and note this one)."""
        last = self.last_answer_ms.get(to)
        if last is not None and self.now_ms - last < self.config.heartbeat_ms // 2:
            return False
        self.last_answer_ms[to] = self.now_ms
        return True

    def _resend_view_change(self, st: Status) -> None:
        """The NEW-VIEW of a view the sender is behind, or our VIEW-CHANGE while we wait."""
        to = st.replica_id
        behind = st.view < self.view or (st.view == self.view and not st.view_active)
        if self.active and self.new_view_msg is not None and behind:
            self._send(to, self.new_view_msg)
        if not self.active and self.my_view_change is not None and st.view <= self.view:
            self._send(to, self.my_view_change)

    def _peer_stuck(self, st: Status) -> bool:
        """Whether the sender made no progress since its previous STATUS. Why only then:
        under load every peer is a little behind at any instant, and answering that with the
        in-flight batches would multiply the traffic."""
        to = st.replica_id
        stuck = self.peer_progress.get(to) == st.last_executed
        self.peer_progress[to] = st.last_executed
        return stuck

    def _resend_progress(self, st: Status) -> None:
        """A stuck peer gets our stable state if it is behind it; otherwise the blocks it has
        not executed, checkpoint votes, and our log messages of the view."""
        if st.last_executed < self.h and self.stable.state is not None:
            self._serve_state(st.replica_id, st.last_executed)
            return
        self._resend_blocks(st)
        self._resend_checkpoints(st)
        if not (self.active and st.view == self.view and st.view_active) or self.muted:
            return
        self._resend_log(st)

    def _resend_blocks(self, st: Status) -> None:
        """Blocks the sender has not executed: each carries its commit certificate, which is
        all a replica needs to execute, whatever view either of us is in."""
        sent = 0
        for b in self.recent_blocks:
            if st.last_executed < b.height and sent < self.config.log_window:
                full = self._executable(b)
                if full is None:
                    break  # its refused bodies are gone: state transfer will cover it
                self._send(st.replica_id, full)
                sent += 1

    def _resend_checkpoints(self, st: Status) -> None:
        """Help the sender make its checkpoints stable: our stable checkpoint's proof (votes
        we garbage-collected long ago; relayed, they still verify) and our newer votes."""
        to = st.replica_id
        if st.stable_seq < self.h:
            for cp in self.stable.proof:
                self._send(to, cp)
        for seq in sorted(self.checkpoint_votes):
            mine = self.checkpoint_votes[seq].get(self.id)
            if mine is not None and seq > st.stable_seq:
                self._send(to, mine)

    def _resend_log(self, st: Status) -> None:
        """Our PRE-PREPAREs and votes above what either of us executed, in this view."""
        for seq in sorted(self.slots):
            if seq <= max(st.last_executed, self.last_executed):
                continue
            slot = self.slots[seq]
            if slot.pre_prepare is not None and slot.pre_prepare.signature:
                self._send(st.replica_id, slot.pre_prepare)
            if slot.my_prepare is not None:
                self._send(st.replica_id, slot.my_prepare)
            if slot.my_commit is not None:
                self._send(st.replica_id, slot.my_commit)

    def _executable(self, block: Block) -> Block | None:
        """`block` with every request's body, for a peer that will execute it. The stored
        block leaves refused bodies out; the log keeps the committed batch until the next
        stable checkpoint, and a peer behind that gets a state transfer instead."""
        if not block.omitted:
            return block
        committed = self.committed_batches.get(block.height)
        if committed is None or committed[0].batch_digest != block.batch_digest:
            return None
        return dataclasses.replace(block, requests=committed[0].requests, omitted=())

    def _serve_state(self, to: int, their_head: int) -> None:
        """STATE-DATA for a peer behind our stable checkpoint, cut to fit a frame: the blocks
        are optional (the receiver counts the ones missing), the snapshot is not."""
        s = self.stable
        assert s.state is not None
        packed = s.state.packed()
        room = self.config.peer_frame_bytes_max - len(packed) - 64 * 1024
        if room < 0:
            self._ignore("state too large for one STATE-DATA frame")
            return
        blocks: list[Block] = []
        for b in reversed(self.recent_blocks):
            if not their_head < b.height <= self.h:
                continue
            room -= len(m.encode(b))
            if room < 0:
                self.stats["blocks left out of a state transfer"] += 1
                break
            blocks.append(b)
        data = StateData(s.seq, s.proof, packed, tuple(reversed(blocks)), self.id)
        self._send(to, m.sign(data, self.key))
        self.stats["state transfers served"] += 1

    def _on_block(self, block: Block) -> None:
        """Catch-up by commit certificate: 2f+1 signed COMMITs for (v, n, d) prove that the
        batch with digest d committed at n (TOCS §4.2, §4.4 safety: no other batch can commit
        at n in any view), so a replica may execute it without having voted, e.g. while it
        is alone in a higher view or lost the messages. The header fields the certificate does
        not cover (results, state root) are recomputed locally, never taken from the sender."""
        seq = block.height
        if seq <= self.last_executed or seq > self.high_watermark:
            # Above h + L we would execute without ever making a checkpoint stable, and hold
            # unbounded snapshots and certificates: beyond the window, state transfer it is.
            self.stats["block outside the catch-up window"] += 1
            return
        if seq in self.committed_batches:
            return
        if block.omitted:
            self._ignore("block without every body: it cannot be executed")
            return
        if not verify_block(block, self.keys):
            self._ignore("block with an invalid certificate")
            return
        pp = PrePrepare(
            block.view,
            seq,
            block.batch_digest,
            block.time_ms,
            block.requests,
            self.config.primary(block.view),
        )
        commits = tuple(
            Commit(block.view, seq, block.batch_digest, signer, sig)
            for signer, sig in zip(block.signers, block.certificate, strict=True)
        )
        self.committed_batches[seq] = (pp, commits)
        self._dirty.add(seq)
        self.stats["batches executed from certificates"] += 1
        self._execute_ready()

    def _on_state_data(self, data: StateData) -> None:
        """State transfer certified by a stable checkpoint (TOCS §5.3): accept the snapshot
        only if 2f+1 CHECKPOINT signatures certify its digest."""
        if data.seq <= self.last_executed:
            return
        if not 0 <= data.replica_id < self.config.n or not m.verify_signed(data, self.keys):
            self._ignore("bad state-data signature")
            return
        state, app_snapshot = FrozenState.unpack(data.snapshot)  # RemoteProtocolError: ignored
        state_digest = state.digest()
        if not self._checkpoint_proof_ok(data.seq, state_digest, data.checkpoint_proof):
            self._ignore("state-data not certified by a stable checkpoint")
            return
        try:
            # The digest certifies the root; the application checks the state has it.
            self.app.restore(app_snapshot, expected_root=state.app_root)
        except ValueError:
            self._ignore("state-data state does not match its certified root")
            return
        old_head = self.last_executed
        self._install_state(state)
        self.last_executed = data.seq
        # Blocks: emit those above our old head that chain up to the certified head.
        blocks = [b for b in data.blocks if b.height > old_head]
        if blocks and (
            blocks[-1].height != data.seq
            or block_hash(blocks[-1]) != self.head_hash
            or not verify_chain(blocks, self.keys)
        ):
            self._ignore("state-data blocks do not chain to the certified head")
            blocks = []
        for b in blocks:
            # Our state is the certified one: it lists every position redacted up to here,
            # and an honest peer left those bodies out. Whoever sent one is not relayed.
            b, removed = m.redact_block(b, self.app.redacted_at(b.height))
            if removed:
                self.unredacted_refused += removed
                self.stats["unredacted bodies refused in a state transfer"] += 1
            self._emit_block(b)
        if blocks and blocks[0].height > old_head + 1:
            self.stats["blocks missing after state transfer"] += blocks[0].height - old_head - 1
        self.own_snapshots[data.seq] = (state_digest, state)
        # The log below this checkpoint never reached our disk: a restart must start here.
        self._snapshot_due = True
        self._make_stable(_Stable(data.seq, state_digest, data.checkpoint_proof, state))
        for key in [k for k, (r, _) in self.pending.items() if self._executed(r)]:
            del self.pending[key]
        for key in [k for k, r in self.inflight.items() if self._executed(r)]:
            del self.inflight[key]
        self.stats["state transfers applied"] += 1
        self._execute_ready()

    def _install_state(self, state: FrozenState) -> None:
        """The replica's part of a restored state (the application's is restored already)."""
        self.reply_cache = {c: (rid, height, res) for c, rid, height, res in state.cache}
        self.signed_replies.clear()
        self.head_hash = state.head_hash
        self.head_time_ms = state.head_time_ms
        last = self._last_redaction()
        self.redactions_known = last.n if last is not None else 0
        self.redaction_due = last.since if last is not None else 0

    def _executed(self, req: Request) -> bool:
        cached = self.reply_cache.get(req.client_id)
        return cached is not None and cached[0] >= req.request_id

    # ------------------------------------------------------------------------- redaction

    def _redactions_after(self, after: int, since_max: int) -> list[Redaction]:
        """The application's redaction entries after the `after`-th, up to the first whose
        `since` is above `since_max` (entries come in the order of their `since`)."""
        out: list[Redaction] = []
        while True:
            page = self.app.redactions(after, REDACTIONS_PAGE)
            due = list(itertools.takewhile(lambda r: r.since <= since_max, page))
            out += due
            if len(due) < len(page) or len(page) < REDACTIONS_PAGE:
                return out
            after = page[-1].n

    def _last_redaction(self) -> Redaction | None:
        """The last redaction entry the application's state holds (its `n` is their count)."""
        last: Redaction | None = None
        while True:
            page = self.app.redactions(last.n if last is not None else 0, REDACTIONS_PAGE)
            last = page[-1] if page else last
            if len(page) < REDACTIONS_PAGE:
                return last

    def _forget_cached_results(self, seq: int, pp: PrePrepare) -> None:
        """Block `seq` just ordered redactions: reply-cache results at heights below it
        become `messages.REDACTED` (a result may name whom the erasure forgets), and at
        `seq` those of the redacted requests (the erasure's own among them: its replies
        have left already). The cache is replicated state, inside the checkpoint digest, so
        this runs at execution, where every replica runs it at the same point; its row order
        (the eviction order) stays. A client retrying an old request gets the marker."""
        decided = [r for r in self._redactions_after(self.redactions_known, seq) if r.since == seq]
        if not decided:
            return
        self.redactions_known = decided[-1].n
        self.redaction_due = seq
        here = {r.index for r in decided if r.height == seq}
        clients = {pp.requests[i].client_id for i in here if i < len(pp.requests)}
        for client, (rid, height, _result) in self.reply_cache.items():
            if height < seq or (height == seq and client in clients):
                self.reply_cache[client] = (rid, height, m.REDACTED)
                self.signed_replies.pop(client, None)

    def _apply_redactions(self) -> None:
        """Apply every redaction entry whose `since` the stable checkpoint has reached and
        that our blocks have not had applied: each body at a listed position becomes its
        digest, in the blocks we hold in memory (what STATE-DATA serves) and, through
        `Ready.redact`, in the store, with the new count in the same transaction.

        Why only once stable: below the stable checkpoint no peer executes from our blocks
        (a peer behind it gets a state transfer), so a body we drop is never one a correct
        replica still needs. The on-disk log still holds the committed batches from the
        durable snapshot up (a restart re-executes them), and that snapshot, older than the
        erasure, may hold state naming whom it forgets: a new durable snapshot is written at
        the stable checkpoint, which drops that log and replaces the older snapshot (only
        one is ever kept), unless the durable snapshot is already past the erasure."""
        if self.stable.state is None:
            return
        due = self._redactions_after(self.redactions_applied, self.h)
        if not due:
            return
        by_height: dict[int, set[int]] = {}
        for r in due:
            by_height.setdefault(r.height, set()).add(r.index)
        for blocks in (self.recent_blocks, self._blocks):
            for k, b in enumerate(blocks):
                if b.height in by_height:
                    blocks[k] = m.redact_block(b, by_height[b.height])[0]
        for height, indices in by_height.items():
            self._redact.setdefault(height, set()).update(indices)
        self.redactions_applied = due[-1].n
        self.redactions_known = max(self.redactions_known, self.redactions_applied)
        self._meta_dirty.add(META_REDACTIONS)
        if due[-1].since > self.snapshot_seq:
            # The durable snapshot predates the erasure: its state and reply cache may name
            # whom it forgets, and the log above it holds the bodies.
            self._snapshot_due = False
            self.txs_since_snapshot = 0
            self.snapshot_seq = self.h
            self._meta_dirty.add(META_SNAPSHOT)
            self._gc_below = self.h + 1
        self.stats["redactions applied"] += len(due)

    # ------------------------------------------------------------------------- durability

    def _log_record(self, seq: int) -> bytes:
        slot = self.slots.get(seq)
        pp = slot.pre_prepare if slot is not None else None
        record = LogRecord.of(pp, self.pcerts.get(seq), self.committed_batches.get(seq))
        return record.encode()

    def _restore(self, durable: DurableState) -> None:
        """Rebuild from storage: durable snapshot, view, log; re-execute committed entries,
        through the stable checkpoint (whose digest they must reach) and on."""
        loaded = Loaded.read(durable.records)
        if loaded.redactions_applied is not None:
            self.redactions_applied = loaded.redactions_applied
        if loaded.snapshot is not None:
            self._restore_snapshot(loaded.snapshot)
        stable_seq = self.h
        if loaded.stable is not None and loaded.stable.seq > self.h:
            st = loaded.stable
            self._replay_stable = (st.seq, st.digest, st.proof)
            stable_seq = st.seq
        suspecting = False
        if loaded.view is not None:
            self.view, self.active = loaded.view.view, loaded.view.active
            suspecting = loaded.view.suspecting
        if self.active:
            # We may have sent PRE-PREPAREs or PREPAREs in this view that never reached the
            # disk, but only up to the h we had + L, and that h was on disk before they left
            # (`_make_stable`): vote no more in this view up to there. (Inactive, we sent only
            # the VIEW-CHANGE, which is synced, and have voted nothing in this view yet.)
            self.muted_view = self.view
            self.mute_through = stable_seq + self.config.log_window
        for seq, record in loaded.log_records(above=self.h):
            self._restore_log_record(seq, record, stable_seq)
        self._replay()
        self._resume(suspecting)

    def _restore_snapshot(self, record: CheckpointRecord) -> None:
        """Restore the durable snapshot: it becomes the stable checkpoint, and h."""
        assert record.snapshot is not None
        try:
            state, app_snapshot = FrozenState.unpack(record.snapshot)
            self.app.restore(app_snapshot, expected_root=state.app_root)
        except (RemoteProtocolError, ValueError) as exc:
            raise LocalProtocolError(f"durable snapshot unreadable: {exc}") from None
        if state.digest() != record.digest:
            raise LocalProtocolError("durable snapshot does not match its digest")
        self._install_state(state)
        self.h = self.last_executed = self.snapshot_seq = record.seq
        self.stable = _Stable(record.seq, record.digest, record.proof, state)

    def _restore_log_record(self, seq: int, record: LogRecord, stable_seq: int) -> None:
        """One log record above h: its committed batch (to re-execute) and, above the stable
        checkpoint, the votes this replica must not contradict."""
        committed = record.committed_batch()
        if committed is not None:
            self.committed_batches[seq] = committed
        if seq <= stable_seq:
            return  # below the stable checkpoint only re-execution matters
        cert = record.prepared()
        if cert is not None:
            self.pcerts[seq] = cert
        if not self.active:
            return
        # Muted in this view: keep the accepted PRE-PREPAREs (so none conflicting is ever
        # accepted) but cast no vote again; the next view starts from scratch.
        pp = record.accepted()
        if pp is not None and pp.view == self.view:
            slot = self._slot(seq)
            slot.pre_prepare = pp
            slot.prepared = seq in self.pcerts
            slot.committed = seq in self.committed_batches
            self.next_seq = max(self.next_seq, seq + 1)
            self.last_time_proposed_ms = max(self.last_time_proposed_ms, pp.time_ms)

    def _replay(self) -> None:
        """Re-execute the restored committed batches, through the stable checkpoint (which
        this makes stable again) and on."""
        self._execute_ready()
        if self._replay_stable is not None:
            # The records stop short of it (they can only be lost as a suffix, with it, so
            # only a damaged disk does this): start from the snapshot, peers send the rest.
            self.stats["restart fell short of the stable checkpoint"] += 1
            self._replay_stable = None
            for s in [s for s in self.committed_batches if s > self.high_watermark]:
                del self.committed_batches[s]
        self.next_seq = max(self.next_seq, self.h + 1)

    def _resume(self, suspecting: bool) -> None:
        """Take up where the crash left off: the view change under way, the suspicion
        announced, the redactions due."""
        if not self.active:
            # We had sent VIEW-CHANGE for self.view: send it again (same content rules).
            self.view -= 1
            self.active = True
            self._start_view_change(self.view + 1)
            self.vc_attempts = 0
        self.suspecting = suspecting  # announced before the crash: it stays announced
        self._apply_redactions()  # those the crash cut short, or ours fell short of
        self.stats["restarts"] += 1


__all__ = [
    "ClientReply",
    "DurableDelta",
    "DurableState",
    "Outbound",
    "Ready",
    "Replica",
    "seq_key",
]
