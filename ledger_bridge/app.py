"""The application interface a PBFT replica executes (ABCI-like).

Why an interface: the replica orders opaque transactions; what they mean lives in an
application (the consent contracts in production, a key-value store in tests and benchmarks),
so another consensus engine could host the same contracts later.

Every method must be deterministic: no I/O, no wall clock (use `BlockContext.time_ms`), no
randomness, no iteration over unordered containers into results. Two replicas that executed the
same blocks from the same snapshot return byte-identical results and state roots.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol


@dataclass(frozen=True, slots=True)
class BlockContext:
    """What a transaction may know about the block it executes in."""

    height: int  # 1-based block height
    time_ms: int  # block time proposed by the primary, checked by backups (ms since epoch)
    prev_hash: bytes  # hash of the previous block header (32 zero bytes for the first)
    # The batch index of each transaction handed to `execute`, in order: the replica skips
    # requests it executed before (exactly once), so a transaction's index in the list is not
    # always its index in the batch, and a redaction names the batch position. Empty means
    # the transactions are the whole batch in order (callers outside the replica).
    positions: tuple[int, ...] = ()

    def position(self, i: int) -> int:
        """The batch index of `txs[i]`."""
        return self.positions[i] if self.positions else i


class Redaction(NamedTuple):
    """One stored request the replicas must forget: the request at batch index `index` of
    block `height`, decided by the block at height `since` (its erasure). Entry `n` of a
    sequence numbered 1, 2, ... in the order the application decided them."""

    n: int
    height: int
    # Shadows `tuple.index`: the batch index is what the blocks call it (`Omission.index`).
    index: int  # type: ignore[assignment]
    since: int


class Application(Protocol):
    """A deterministic state machine replicated by PBFT."""

    def execute(self, txs: Sequence[bytes], block: BlockContext) -> tuple[list[bytes], bytes]:
        """Apply a committed batch in order; return one result per tx and the new state root.

        A transaction the application rejects still gets a result (an encoded error): the
        replica never drops a committed transaction, so all replicas agree on every result.
        """
        ...

    def check(self, tx: bytes) -> bytes | None:
        """Admission before ordering: None to admit `tx`, or the result that refuses it.

        Called by the replica that receives a client's request, before it may enter a batch,
        and again on each waiting request after every block (a nonce spent meanwhile). It
        reads committed state and must not change it. It filters; it does not decide: a
        transaction it admits may still be refused by `execute`, which alone is agreed on.
        """
        ...

    def refusal_code(self, result: bytes) -> bytes | None:
        """The short code of `result` if it refuses its transaction, else None. The replica
        asks it of the results of the block `execute` has just returned, and only of those.

        A refused transaction's body never enters a block: the block keeps its digest and
        this code. Anyone could otherwise write anything into the permanent chain by sending
        a transaction the contracts refuse."""
        ...

    def query(self, request: bytes) -> bytes:
        """Answer a read-only query from committed state. Must not change state."""
        ...

    def may_read(self, reader: bytes, request: bytes | None) -> bool:
        """Whether the proven Ed25519 key `reader` may have the answer to query `request`
        (None: a block), by committed state. Must not change state nor raise.

        The node asks it only for keys that are neither validators nor readers its operator
        listed, which read everything; so an application that answers False keeps its reads
        to those (the replica client port serves no one else but `status`)."""
        ...

    def state_root(self) -> bytes:
        """32-byte digest of the whole state (the same after restore(snapshot())).

        It must be collision resistant: the replicas' checkpoints certify the state by this
        root alone, and a lagging replica accepts a snapshot from a peer if it restores to it.
        It should be incremental: the replica asks for it after every block.
        """
        ...

    def snapshot(self) -> bytes:
        """Canonical bytes of the whole state, for state transfer and durable snapshots."""
        ...

    def freeze(self) -> Callable[[], bytes]:
        """A function returning, when called later, `snapshot()` of the state as it is now.

        The replica freezes its state at every checkpoint and serialises it only when a peer
        needs it or its node writes a durable snapshot, so this must cost far less than
        `snapshot()` (a shallow copy, or copy-on-write).
        """
        ...

    def redactions(self, after: int, limit: int) -> list[Redaction]:
        """At most `limit` redaction entries with n > `after`, in order of n (none for an
        application that never redacts).

        The replica applies them once their `since` block is at or below a stable checkpoint,
        and counts how many it has applied: entries are never removed nor renumbered, and
        `since` never decreases with `n` (entries are appended as blocks execute), so the
        count alone says what remains. They are part of the state (and of `snapshot()`): a
        replica restored from a peer's snapshot learns from them which of its older blocks
        to redact."""
        ...

    def redacted_at(self, height: int) -> frozenset[int]:
        """The batch indices of block `height` whose requests are redacted (empty if none).

        The replica applies it to a block a peer sends it, at a height it has executed,
        before storing or serving that block."""
        ...

    def restore(self, snapshot: bytes, expected_root: bytes | None = None) -> None:
        """Replace the whole state with one produced by `snapshot()`.

        Raise ValueError, leaving the state as it was, if `snapshot` is not such bytes or,
        given `expected_root`, if the state it holds does not have that root: a snapshot from
        a peer is trusted only through the root its checkpoint certificate names.
        """
        ...
