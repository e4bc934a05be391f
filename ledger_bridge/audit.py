"""Ledger verification for the DPO: every replica's chain checked, and the replicas compared.

Why compare replicas and not only verify one chain: a commit certificate proves which requests
committed at a height, but the results and state root of a block are computed after the votes
(docs/PBFT.md, "deviations"), so one replica could serve a chain whose requests verify while
its recorded results or state roots were altered. With at most f faulty replicas, the 2f+1
correct ones agree on every header; any disagreement is a finding naming the replica and the
height, which is what the DPO needs to act on.

Holes are not lag. A replica brought back by state transfer stores the newest blocks and lacks
the ones in between until its backfill (`ledger_bridge.backfill`) fetches them: it is at the
top, yet every transaction in a hole lives on one replica fewer than the protocol promises.
Such a replica gets a `holes` finding, which is not `ok`; `lagging` (a warning) is kept for a
replica whose own top is below the others'. A replica's top comes from its chain when the
caller passes blocks above a hole, or from `tops` (its status) when the caller stops reading
at the first missing height.

Redactions are checked per replica too. After a subject's erasure, the contracts list the
batch positions of every transaction that named them (`{"q": "redactions"}`: height, index,
and `since`, the erasure's height), and each honest replica replaces those bodies by their
digests once its stable checkpoint reaches `since` (docs/PBFT.md, "Redaction"). The auditor
needs no personal data to check it: a replica whose stable checkpoint is at or past `since`
and still serves a body at a listed position gets an `unredacted` finding. A replica below
`since` is not late yet; it is not flagged.

Pure: takes blocks, returns findings; fetching them (client, HTTP) is the caller's job.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ledger_bridge.crypto import VerifyKey
from ledger_bridge.pbft.blocks import GENESIS_HASH, block_hash, verify_block
from ledger_bridge.pbft.messages import Block


@dataclass(frozen=True, slots=True)
class Position:
    """A batch position the contracts ordered redacted, and the erasure height that did."""

    height: int
    index: int
    since: int


@dataclass(frozen=True, slots=True)
class LedgerFinding:
    code: str  # invalid-block | broken-link | diverging-header | holes | lagging | unredacted
    replica: int
    height: int
    detail: str


@dataclass
class LedgerAudit:
    heights: dict[int, int]  # replica -> highest contiguous verified height
    findings: list[LedgerFinding] = field(default_factory=list)
    missing: dict[int, int] = field(default_factory=dict)  # replica -> heights in its holes

    @property
    def ok(self) -> bool:
        """No finding but lag: every replica that answered holds a verified, contiguous chain
        of identical headers (holes are not ok: see the module docstring)."""
        return not [f for f in self.findings if f.code != "lagging"]


def _chain_of(
    replica: int,
    blocks: Sequence[Block],
    keys: Sequence[VerifyKey],
    findings: list[LedgerFinding],
    start: int = 1,
    anchor: bytes = GENESIS_HASH,
) -> dict[int, bytes]:
    """Verify one replica's chain from `start` (whose previous header hash is `anchor`);
    return height -> header hash of the good part."""
    hashes: dict[int, bytes] = {}
    prev: bytes | None = anchor
    expected = start
    for block in sorted(blocks, key=lambda b: b.height):
        if block.height < expected:
            findings.append(
                LedgerFinding("broken-link", replica, block.height, "two blocks at this height")
            )
            break
        if block.height > expected:
            prev = None  # above a hole: the certificate vouches for the block, no link can
        expected = block.height + 1
        if prev is not None and block.prev_hash != prev:
            findings.append(
                LedgerFinding(
                    "broken-link", replica, block.height, "previous-block hash does not match"
                )
            )
            break
        if not verify_block(block, keys):
            findings.append(
                LedgerFinding(
                    "invalid-block",
                    replica,
                    block.height,
                    "batch digest, client signature or commit certificate does not verify",
                )
            )
            break
        prev = block_hash(block)
        hashes[block.height] = prev
    return hashes


def verify_replicas(
    chains: Mapping[int, Sequence[Block]],
    validators: Sequence[VerifyKey] | Sequence[bytes],
    *,
    start: int = 1,
    anchors: Mapping[int, bytes] | None = None,
    tops: Mapping[int, int] | None = None,
    redactions: Sequence[Position] = (),
    stables: Mapping[int, int] | None = None,
) -> LedgerAudit:
    """Check each replica's chain and compare the replicas' headers height by height.

    A long chain is audited in segments: `start` is the first height of every chain given,
    and `anchors[replica]` the header hash of that replica's block `start - 1` (verified by
    the previous segment's audit). A replica with no anchor starts from the genesis hash,
    which only a chain starting at height 1 matches. `tops[replica]` is the replica's own
    highest stored height (its status), for a caller that stops reading at a missing block.
    `redactions` are the positions the contracts ordered redacted and `stables[replica]` the
    replica's stable checkpoint (its status): see `unredacted`.
    """
    keys = [k if isinstance(k, VerifyKey) else VerifyKey(k) for k in validators]
    findings: list[LedgerFinding] = []
    anchors = anchors or {}
    verified = {
        r: _chain_of(r, blocks, keys, findings, start, anchors.get(r, GENESIS_HASH))
        for r, blocks in sorted(chains.items())
    }
    heights = {r: _contiguous(h, start) for r, h in verified.items()}
    top = max((max(h, default=start - 1) for h in verified.values()), default=start - 1)
    quorum = 2 * ((len(keys) - 1) // 3) + 1
    for height in range(start, top + 1):
        votes = Counter(h[height] for h in verified.values() if height in h)
        if len(votes) <= 1:
            continue
        majority, count = votes.most_common(1)[0]
        for replica, hashes in verified.items():
            if height in hashes and hashes[height] != majority:
                basis = "the other replicas" if count >= quorum else "the majority"
                findings.append(
                    LedgerFinding(
                        "diverging-header",
                        replica,
                        height,
                        f"results, state root or time differ from {basis} at this height",
                    )
                )
    missing = _holes_and_lag(chains, start, top, tops or {}, findings)
    findings.extend(unredacted(chains, redactions, stables or {}))
    return LedgerAudit(heights=heights, findings=findings, missing=missing)


def _contiguous(hashes: Mapping[int, bytes], start: int) -> int:
    height = start - 1
    while height + 1 in hashes:
        height += 1
    return height


def _holes_and_lag(
    chains: Mapping[int, Sequence[Block]],
    start: int,
    top: int,
    tops: Mapping[int, int],
    findings: list[LedgerFinding],
) -> dict[int, int]:
    """A `holes` finding for each replica missing heights below its own top (in this range),
    a `lagging` one for each whose own top is below the range's; returns the missing counts."""
    missing: dict[int, int] = {}
    for replica, blocks in sorted(chains.items()):
        present = {b.height for b in blocks}
        own_top = max(max(present, default=start - 1), tops.get(replica, start - 1))
        absent = [h for h in range(start, min(own_top, top) + 1) if h not in present]
        if absent:
            missing[replica] = len(absent)
            findings.append(
                LedgerFinding(
                    "holes",
                    replica,
                    absent[0],
                    f"{len(absent)} block(s) missing below its top height {own_top} (a "
                    "replica fills them from its peers; until then they are not replicated)",
                )
            )
        if own_top < top:
            findings.append(
                LedgerFinding("lagging", replica, own_top, f"{top - own_top} block(s) behind")
            )
    return missing


def body_positions(block: Block) -> set[int]:
    """The batch positions whose bodies `block` holds."""
    left_out = {o.index for o in block.omitted}
    return {i for i in range(block.size) if i not in left_out}


def unredacted(
    chains: Mapping[int, Sequence[Block]],
    redactions: Sequence[Position],
    stables: Mapping[int, int],
) -> list[LedgerFinding]:
    """An `unredacted` finding per replica and height where the replica, its stable checkpoint
    at or past the erasure (`since`), still serves a body the contracts ordered redacted.

    A body left out for another reason (refused) is as gone as a redacted one; what matters is
    that no body is there. A replica whose stable checkpoint is unknown is not judged: it did
    not answer its status, which is a finding of its own (`unreachable`)."""
    by_height: dict[int, list[Position]] = {}
    for p in redactions:
        by_height.setdefault(p.height, []).append(p)
    findings: list[LedgerFinding] = []
    for replica, blocks in sorted(chains.items()):
        stable = stables.get(replica)
        if stable is None:
            continue
        for block in blocks:
            due = {p.index for p in by_height.get(block.height, ()) if p.since <= stable}
            held = sorted(due & body_positions(block)) if due else []
            if held:
                findings.append(
                    LedgerFinding(
                        "unredacted",
                        replica,
                        block.height,
                        f"serves the body at batch position(s) {held} that an erasure "
                        "recorded at or below its stable checkpoint ordered redacted",
                    )
                )
    return findings
