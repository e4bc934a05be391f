"""The application interface a PBFT replica executes (ABCI-like).

Why an interface: the replica orders opaque transactions; what they mean lives in an
application (the consent contracts in production, a key-value store in tests and benchmarks),
so another consensus engine could host the same contracts later.

Every method must be deterministic: no I/O, no wall clock (use `BlockContext.time_ms`), no
randomness, no iteration over unordered containers into results. Two replicas that executed the
same blocks from the same snapshot return byte-identical results and state roots.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class BlockContext:
    """What a transaction may know about the block it executes in."""

    height: int  # 1-based block height
    time_ms: int  # block time proposed by the primary, checked by backups (ms since epoch)
    prev_hash: bytes  # hash of the previous block header (32 zero bytes for the first)


class Application(Protocol):
    """A deterministic state machine replicated by PBFT."""

    def execute(self, txs: Sequence[bytes], block: BlockContext) -> tuple[list[bytes], bytes]:
        """Apply a committed batch in order; return one result per tx and the new state root.

        A transaction the application rejects still gets a result (an encoded error): the
        replica never drops a committed transaction, so all replicas agree on every result.
        """
        ...

    def query(self, request: bytes) -> bytes:
        """Answer a read-only query from committed state. Must not change state."""
        ...

    def state_root(self) -> bytes:
        """32-byte digest of the whole state (the same after restore(snapshot()))."""
        ...

    def snapshot(self) -> bytes:
        """Canonical bytes of the whole state, for checkpoints and state transfer."""
        ...

    def restore(self, snapshot: bytes) -> None:
        """Replace the whole state with one produced by `snapshot()`."""
        ...
