"""Backfill: a replica fetches the blocks its store lacks from its peers, in the background.

What it is for: state transfer (`Replica._on_state_data`) brings a lagging replica to the
cluster's checkpoint with a snapshot and only the newest blocks (`state_transfer_blocks_max`),
so the blocks between its old head and those are missing from its store. It can execute
without them, but a store with holes cannot serve or prove what was committed there, and
every acknowledged transaction in a hole lives on fewer replicas than the protocol promises.
This task finds the holes and fills them, until the store is contiguous from height 1.

How a block is trusted: a peer may be Byzantine, so nothing is stored on its word. A hole is
filled from the top down, starting under a block this replica stores, and each fetched block
must (1) hash to the `prev_hash` of the verified block above it, which fixes every header field
including those the certificate does not cover (results, state root), and (2) carry a commit
certificate of 2f+1 validators (`verify_block`). The bottom of a hole must link to the stored
block under it; a mismatch there is this store's inconsistency, logged and counted.

Why rate-limited: each block is one read on a peer's client port, the port clients commit
through. `BLOCKS_PER_S` keeps a replica refilling thousands of heights from taking a visible
share of its peers' loop; the spread over every peer (height modulo peer) divides it further.

What it must never do: overwrite a stored block or store at or above the top height (those are
the core's, see `Storage.fill_holes`), block the node's loop on a peer (every read is an
awaited call with a timeout), store a block that fails either check, or store a body the
application redacted (`redacted_at`: a subject's erasure; every height filled is one the
core executed, so its state knows): such a body is replaced by its digest before the block
is stored (the hash and certificate still verify) and counted, since an honest peer whose
checkpoint passed the erasure no longer serves it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from ledger_bridge.client import LedgerError, TcpClientTransport
from ledger_bridge.crypto import SigningKey, VerifyKey
from ledger_bridge.genesis import Genesis
from ledger_bridge.pbft import messages as m
from ledger_bridge.pbft.blocks import GENESIS_HASH, block_hash, verify_block
from ledger_bridge.storage import Storage

log = logging.getLogger("ledger_bridge.backfill")

CHUNK_BLOCKS = 32  # fetched concurrently, then verified top-down and stored in one commit
BLOCKS_PER_S = 200  # reads of peers per second while holes remain (each may cost the peer a commit)
IDLE_S = 2.0  # between scans of a contiguous store: holes appear only after a state transfer
RETRY_S = 1.0  # after a round in which no peer served a block that verifies
HOLES_SCANNED_MAX = 64

# Fetch(peer, height) -> the encoded block, or None when that peer has none or cannot answer.
Fetch = Callable[[int, int], Awaitable[bytes | None]]


@dataclass
class BackfillStats:
    missing: int = 0  # heights missing below the top at the last scan
    filled: int = 0
    refused: int = 0  # fetched blocks that failed the link or certificate check
    unlinked: int = 0  # filled holes whose bottom does not link to the stored block under it
    unredacted_refused: int = 0  # bodies peers served at redacted positions (not stored)


class Backfill:
    """Fills the holes of one replica's store from `peers` through `fetch`."""

    def __init__(
        self,
        storage: Storage,
        keys: Sequence[VerifyKey],
        peers: Sequence[int],
        fetch: Fetch,
        *,
        blocks_per_s: float = BLOCKS_PER_S,
        chunk_blocks: int = CHUNK_BLOCKS,
        close: Callable[[], Awaitable[None]] | None = None,
        head: Callable[[], tuple[int, bytes]] | None = None,
        redacted_at: Callable[[int], frozenset[int]] | None = None,
    ) -> None:
        assert peers and chunk_blocks >= 1 and blocks_per_s > 0
        self.storage = storage
        self.keys = list(keys)
        self.peers = list(peers)
        self.fetch = fetch
        self.chunk_blocks = chunk_blocks
        self.chunk_s = chunk_blocks / blocks_per_s
        self.stats = BackfillStats()
        self._contiguous = 0  # every height 1..this is stored (blocks are never deleted)
        self._rotation = 0  # shifts which peer serves which height after a refused block
        self._close = close
        # The core's (last executed height, its block's hash): blocks it executed but never
        # stored (a state transfer ships only the newest) are holes too, anchored by the hash.
        self._head_of = head
        self._head = (0, GENESIS_HASH)
        # The application's `redacted_at`: which bodies of a height must not be stored.
        self.redacted_at = redacted_at

    def status(self) -> dict[str, int]:
        """For the node's `status`: `missing_blocks` says whether the store is still being
        filled. Counted afresh (a scan from the contiguous prefix up is cheap), so a reader
        never sees 0 between a state transfer and the next round."""
        self.scan()
        s = self.stats
        return {
            "missing_blocks": s.missing,
            "backfilled": s.filled,
            "backfill_refused": s.refused,
            "backfill_unlinked": s.unlinked,
        }

    def scan(self) -> list[tuple[int, int]]:
        if self._head_of is not None:
            self._head = self._head_of()
        executed = self._head[0]
        holes = self.storage.holes(self._contiguous + 1, HOLES_SCANNED_MAX, executed)
        self._contiguous = holes[0][0] - 1 if holes else self.storage.last_height()
        # A scan capped at HOLES_SCANNED_MAX holes undercounts; later scans correct it.
        self.stats.missing = sum(hi - lo + 1 for lo, hi in holes)
        return holes

    async def run(self) -> None:
        """Until cancelled: scan, fill the highest hole one chunk at a time, at the rate."""
        loop = asyncio.get_running_loop()
        while True:
            holes = self.scan()
            if not holes:
                await asyncio.sleep(IDLE_S)
                continue
            started = loop.time()
            lo, hi = holes[-1]  # the top one: its upper neighbour is recent and certain
            progressed = await self.fill_chunk(lo, hi)
            pause = self.chunk_s - (loop.time() - started)
            await asyncio.sleep(max(pause, 0.0) if progressed else RETRY_S)

    async def fill_chunk(self, lo: int, hi: int) -> bool:
        """Fetch up to `chunk_blocks` heights at the top of hole [lo, hi], store those that
        link down from the stored block hi + 1; True when at least one was stored."""
        above = self.storage.block(hi + 1) if hi != self._head[0] else None
        if above is not None:
            expected = m.decode_block(above).prev_hash  # our own block: decodes, or we crash
        else:
            assert hi == self._head[0], "a hole ends under a stored or an executed block"
            expected = self._head[1]
        heights = list(range(hi, max(lo, hi - self.chunk_blocks + 1) - 1, -1))
        fetched = await asyncio.gather(*(self._fetch_certified(h) for h in heights))
        good: list[tuple[int, bytes]] = []
        for height, got in zip(heights, fetched, strict=True):
            if got is None:
                break
            block, raw = got
            if block_hash(block) != expected:
                # Certified batch, altered header (results or state root): ask another peer
                # for these heights next round.
                self._refuse(height, "does not hash to the next block's prev_hash")
                self._rotation += 1
                break
            good.append((height, self._redacted(block, raw)))
            expected = block.prev_hash
        if good and good[-1][0] == lo:
            self._check_bottom(lo, expected)
        self.stats.filled += self.storage.fill_holes(good, self._head[0])
        return bool(good)

    async def _fetch_certified(self, height: int) -> tuple[m.Block, bytes] | None:
        """The block at `height` with a valid commit certificate, from one peer (height modulo
        peers spreads the reads), and from the next ones only when that one fails."""
        start = height + self._rotation
        for k in range(len(self.peers)):
            raw = await self.fetch(self.peers[(start + k) % len(self.peers)], height)
            if raw is None:
                continue
            try:
                block = m.decode_block(raw)
            except m.RemoteProtocolError:
                self._refuse(height, "not a block")
                continue
            if block.height != height or not verify_block(block, self.keys):
                self._refuse(height, "wrong height or invalid certificate")
                continue
            return block, raw
        return None

    def _redacted(self, block: m.Block, raw: bytes) -> bytes:
        """`raw`, or the block re-encoded without the bodies the application redacted."""
        if self.redacted_at is None:
            return raw
        redacted, removed = m.redact_block(block, self.redacted_at(block.height))
        if not removed:
            return raw
        self.stats.unredacted_refused += removed
        log.warning("a peer served %d redacted body(ies) at height %d", removed, block.height)
        return m.encode_block(redacted)

    def _refuse(self, height: int, why: str) -> None:
        self.stats.refused += 1
        log.warning("refused a backfilled block at height %d: %s", height, why)

    def _check_bottom(self, lo: int, prev_hash: bytes) -> None:
        """The filled hole's lowest block must name the stored block under it."""
        below = GENESIS_HASH if lo == 1 else self.storage.block(lo - 1)
        if below is None:
            return  # the store lost it since the scan: the next scan sees a hole there
        if (below if lo == 1 else block_hash(m.decode_block(below))) != prev_hash:
            self.stats.unlinked += 1
            log.error("backfilled block %d does not link to stored block %d", lo, lo - 1)

    async def close(self) -> None:
        if self._close is not None:
            await self._close()


def for_node(
    storage: Storage,
    genesis: Genesis,
    replica_id: int,
    head: Callable[[], tuple[int, bytes]],
    reader: SigningKey,
) -> Backfill:
    """A backfill reading the other validators' client ports (`{"op": "block"}`) with this
    replica's validator key `reader` (validators read blocks); `head` gives the core's last
    executed height and its block's hash."""
    transport = TcpClientTransport.for_genesis(genesis, reader)

    async def fetch(peer: int, height: int) -> bytes | None:
        try:
            answer = await transport.call(peer, "block", {"height": height})
        except LedgerError:
            return None
        raw = answer.get("block")
        return raw if isinstance(raw, bytes) else None

    peers = [v.id for v in genesis.validators if v.id != replica_id]
    keys = genesis.public_keys()
    return Backfill(storage, keys, peers, fetch, close=transport.close, head=head)
