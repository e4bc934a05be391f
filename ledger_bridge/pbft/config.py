"""Cluster parameters every replica must agree on (they come from the genesis file).

Why each limit exists:
- `checkpoint_interval` K: a CHECKPOINT every K sequence numbers (TOCS §4.3); smaller K means
  less log kept and cheaper catch-up, more (cheap: a digest and a shallow copy) checkpoints.
- `durable_snapshot_txs`: not agreed on, each replica's own durability trade-off: writing the
  whole state costs O(state), re-executing the log above it after a restart O(transactions).
- `log_window` L: the primary assigns sequence numbers only in (h, h + L] where h is the last
  stable checkpoint, so the log, and memory, stay bounded (TOCS §4.3 watermarks). L >= 2K so
  the primary keeps proposing while the next checkpoint stabilises.
- `batch_size_max`, `batch_wait_ms`: a batch closes at this many requests or when its oldest
  request waited this long (TOCS §5.1 batching); a primary with no batch in flight and
  clients that take turns proposes at once (`Replica._propose_now`).
- `request_bytes_max`, `batch_bytes_max`: a request's transaction may be this large, a batch
  holds at most this many bytes of requests (a single request always fits). Counting requests
  alone let a hundred 1 MiB requests make a PRE-PREPARE no replica could put in a frame, and
  the VIEW-CHANGE that carries it neither, which halted the cluster for good. Every message a
  replica builds is bounded by these two and the window (`peer_frame_bytes_max`).
- `batches_in_flight_max`: the primary proposes a new batch only while fewer than this many
  are proposed and not yet executed (the BFT library's sliding window, TOCS §5.1.4 "batch
  while busy"): every batch costs each replica a PRE-PREPARE, 2f+1 signed votes and an fsync,
  so under load requests should pile into the next batch, not into many small ones.
- `view_change_timeout_ms`: a backup that knows of a request not executed for this long (or
  has not heard from the primary) starts a view change; doubled per consecutive failed view
  change (TOCS §4.5.2 liveness).
- `heartbeat_ms`: every replica sends STATUS this often; the primary's STATUS is the heartbeat.
- `block_time_skew_ms`: backups accept a proposed block time within this distance of their clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ledger_bridge.crypto import PUBLIC_KEY_BYTES, VerifyKey
from ledger_bridge.pbft.messages import MESSAGE_BYTES_MAX, TX_BYTES_MAX

# Sizes of what surrounds a transaction, from the canonical encoding (messages.py): a request
# adds its client key, id and signature with their headers; a PREPARE, COMMIT or CHECKPOINT is
# a few integers, two digests and a signature.
REQUEST_OVERHEAD_BYTES = 128
VOTE_BYTES_MAX = 192


@dataclass(frozen=True)
class ClusterConfig:
    n: int
    f: int
    public_keys: tuple[bytes, ...]  # index = validator id (0..n-1)
    checkpoint_interval: int = 32
    log_window: int = 128
    batch_size_max: int = 100
    request_bytes_max: int = 256 * 1024
    batch_bytes_max: int = 512 * 1024
    batch_wait_ms: int = 2
    batches_in_flight_max: int = 2
    view_change_timeout_ms: int = 1000
    view_change_timeout_max_ms: int = 30_000
    heartbeat_ms: int = 100
    block_time_skew_ms: int = 5_000
    pending_requests_max: int = 10_000  # requests waiting to be ordered, per replica
    clients_max: int = 100_000  # reply-cache entries (one per client), deterministic eviction
    state_transfer_blocks_max: int = 256  # recent blocks shipped with a snapshot
    # A durable snapshot (the whole state written to disk) at the first stable checkpoint
    # after this many executed transactions; a restart re-executes at most about this many.
    durable_snapshot_txs: int = 8_192
    verify_keys: tuple[VerifyKey, ...] = field(default=(), compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.f < 1 or self.n != 3 * self.f + 1:
            raise ValueError("need n = 3f+1 replicas with f >= 1")
        if len(self.public_keys) != self.n or len(set(self.public_keys)) != self.n:
            raise ValueError("need n distinct validator public keys")
        if any(len(k) != PUBLIC_KEY_BYTES for k in self.public_keys):
            raise ValueError("validator public keys are 32 bytes")
        if self.checkpoint_interval < 1 or self.log_window < 2 * self.checkpoint_interval:
            raise ValueError("need checkpoint_interval >= 1, log_window >= 2 * it")
        if self.batch_size_max < 1 or self.batch_wait_ms < 0 or self.batches_in_flight_max < 1:
            raise ValueError(
                "need batch_size_max >= 1, batch_wait_ms >= 0 and batches_in_flight_max >= 1"
            )
        if not 0 < self.request_bytes_max <= TX_BYTES_MAX:
            raise ValueError(f"need 0 < request_bytes_max <= {TX_BYTES_MAX}")
        if self.batch_bytes_max < self.request_bytes(self.request_bytes_max):
            raise ValueError("need batch_bytes_max to hold at least one largest request")
        if self.peer_frame_bytes_max > MESSAGE_BYTES_MAX:
            raise ValueError(
                f"log_window x batch_bytes_max make a NEW-VIEW of up to "
                f"{self.peer_frame_bytes_max} bytes, over the {MESSAGE_BYTES_MAX}-byte limit"
            )
        if self.durable_snapshot_txs < 1:
            raise ValueError("need durable_snapshot_txs >= 1")
        if self.heartbeat_ms < 1 or self.view_change_timeout_ms <= self.heartbeat_ms:
            raise ValueError("need 1 <= heartbeat_ms < view_change_timeout_ms")
        object.__setattr__(self, "verify_keys", tuple(VerifyKey(k) for k in self.public_keys))

    @classmethod
    def create(cls, public_keys: list[bytes], f: int | None = None, **params: Any) -> ClusterConfig:
        """From genesis: keys in validator-id order; unknown parameter names are an error."""
        n = len(public_keys)
        known = {f.name for f in cls.__dataclass_fields__.values()} - {"n", "f", "public_keys"}
        unknown = set(params) - known - {"verify_keys"}
        if unknown:
            raise ValueError(f"unknown cluster parameters: {sorted(unknown)}")
        return cls(
            n=n,
            f=(n - 1) // 3 if f is None else f,
            public_keys=tuple(bytes(k) for k in public_keys),
            **params,
        )

    @property
    def quorum(self) -> int:
        """2f+1: any two quorums intersect in a correct replica (TOCS §4.1)."""
        return 2 * self.f + 1

    @staticmethod
    def request_bytes(tx_bytes: int) -> int:
        """What a request with a transaction of `tx_bytes` counts against `batch_bytes_max`:
        an upper bound of its encoding."""
        return tx_bytes + REQUEST_OVERHEAD_BYTES

    @property
    def pre_prepare_bytes_max(self) -> int:
        """The largest PRE-PREPARE: a full batch plus the header and signature."""
        return self.batch_bytes_max + 256

    @property
    def view_change_bytes_max(self) -> int:
        """The largest VIEW-CHANGE: a prepared certificate (a PRE-PREPARE and 2f PREPAREs) for
        every sequence number of the window, and the stable checkpoint's 2f+1 votes."""
        cert = self.pre_prepare_bytes_max + 2 * self.f * VOTE_BYTES_MAX
        return self.log_window * cert + self.quorum * VOTE_BYTES_MAX + 256

    @property
    def peer_frame_bytes_max(self) -> int:
        """The largest message a correct replica sends another (TOCS §4.4): a NEW-VIEW, 2f+1
        VIEW-CHANGEs and a PRE-PREPARE per sequence number of the window. STATE-DATA is cut
        to fit it (its blocks are optional; see `Replica`). Peers are the validators, so a
        frame this large costs memory only for a key holder."""
        return (
            self.quorum * self.view_change_bytes_max
            + self.log_window * self.pre_prepare_bytes_max
            + 256
        )

    def primary(self, view: int) -> int:
        return view % self.n
