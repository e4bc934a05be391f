"""Blocks: each committed batch, chained by hash and certified by 2f+1 COMMIT signatures.

Anyone holding only the validator public keys can check a chain (`verify_chain`): heights are
consecutive, each `prev_hash` is the hash of the previous header, each `batch_digest` is
recomputed from the block time and the digests of the batch's requests (a refused request's
body is left out, its digest stays), every request held carries its client's valid
signature, and 2f+1 distinct validators signed COMMIT for (view, height, batch_digest). 2f+1
COMMITs mean the batch committed at that height in some view (TOCS §4.2, committed-local at a
correct replica), and no other batch can commit at that height.
"""

from __future__ import annotations

from collections.abc import Sequence

from ledger_bridge.crypto import VerifyKey, digest
from ledger_bridge.pbft import messages as m
from ledger_bridge.pbft.messages import Block

__all__ = ["GENESIS_HASH", "Block", "block_hash", "results_digest", "verify_block", "verify_chain"]

GENESIS_HASH = b"\0" * 32


def block_hash(block: Block) -> bytes:
    """See `Block.header_hash`."""
    return block.header_hash()


def results_digest(results: Sequence[bytes]) -> bytes:
    return digest(m._pack(list(results)))


def _keys(validators: Sequence[VerifyKey] | Sequence[bytes]) -> list[VerifyKey]:
    return [k if isinstance(k, VerifyKey) else VerifyKey(k) for k in validators]


def certificate_ok(block: Block, keys: Sequence[VerifyKey]) -> bool:
    """2f+1 distinct validators signed COMMIT for this block's (view, height, batch digest)."""
    n = len(keys)
    quorum = 2 * ((n - 1) // 3) + 1
    if len(block.signers) != len(block.certificate) or len(set(block.signers)) < quorum:
        return False
    good: set[int] = set()
    for signer, sig in zip(block.signers, block.certificate, strict=True):
        if signer in good or not 0 <= signer < n:
            return False
        vote = m.Commit(block.view, block.height, block.batch_digest, signer, sig)
        if not m.verify_signed(vote, keys):
            return False
        good.add(signer)
    return len(good) >= quorum


def verify_block(block: Block, keys: Sequence[VerifyKey]) -> bool:
    """One block on its own: batch digest (over the bodies it holds and the digests of those
    it leaves out), the held requests' client signatures, commit certificate."""
    if block.height < 1:
        return False
    digests = block.request_digests()
    if digests is None or m.digests_batch_digest(block.time_ms, digests) != block.batch_digest:
        return False
    if not all(m.verify_request(r) for r in block.requests):
        return False
    return certificate_ok(block, keys)


def verify_chain(
    blocks: Sequence[Block],
    validators: Sequence[VerifyKey] | Sequence[bytes],
    anchor: bytes | None = None,
) -> bool:
    """True when `blocks` is a valid contiguous chain segment.

    `anchor` is the hash of the block before the first one, when the caller knows it; a
    segment starting at height 1 is anchored at `GENESIS_HASH` regardless.
    """
    keys = _keys(validators)
    prev: bytes | None = anchor
    for i, block in enumerate(blocks):
        if i > 0 and block.height != blocks[i - 1].height + 1:
            return False
        if i == 0 and block.height == 1:
            prev = GENESIS_HASH
        if prev is not None and block.prev_hash != prev:
            return False
        if not verify_block(block, keys):
            return False
        prev = block_hash(block)
    return True
