"""Ledger verification: every replica's chain as that replica serves it, checked and compared.

Each block's commit certificate is checked against the genesis validator keys, and the
replicas' headers must agree at every height (ledger_bridge/audit.py does the checking). The
chains are read per replica (api/services/replicas.py), never through the gateway's client,
which would hide a bad block by asking another replica.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, Field

from api.services.gateway import LedgerGateway
from api.services.replicas import LedgerStatus, ReplicaReader, ledger_status
from ledger_bridge.audit import Position, verify_replicas
from ledger_bridge.pbft.blocks import block_hash

VERIFY_BLOCKS_MAX = 10_000
REDACTIONS_PAGE = 1000  # redaction entries per ledger query (its most)


class LedgerFindingOut(BaseModel):
    code: str = Field(
        description="invalid-block | broken-link | diverging-header | holes | lagging "
        "| unreachable | no-quorum | unredacted (the replica, its stable checkpoint past an "
        "erasure, still serves a transaction the erasure ordered forgotten)"
    )
    severity: Literal["error", "warning"]
    replica: int | None
    height: int | None
    detail: str


class ReplicaVerification(BaseModel):
    id: int
    college: str
    reachable: bool
    verified_height: int | None = Field(description="highest height verified in this range")
    state_root: str | None = Field(description="state root at common_height, as served")


class LedgerVerification(BaseModel):
    ok: bool = Field(description="no error finding (lagging and unreachable are warnings)")
    from_height: int
    to_height: int
    next_from_height: int | None
    common_height: int | None = Field(description="highest height every verified replica has")
    state_roots_equal: bool
    replicas: list[ReplicaVerification]
    findings: list[LedgerFindingOut]


_WARNINGS = ("lagging", "unreachable")


def redactions_in(gateway: LedgerGateway, from_height: int, to_height: int) -> list[Position]:
    """The positions the contracts ordered redacted at heights in the range, from any replica
    (the list is replicated state; a replica that lies about it can only hide a finding
    about another, and the per-replica verification still runs)."""
    out: list[Position] = []
    after = 0
    while True:
        page = gateway.query("redactions", after=after, limit=REDACTIONS_PAGE)["result"]
        out += [
            Position(r["height"], r["index"], r["since"])
            for r in page
            if from_height <= r["height"] <= to_height
        ]
        if len(page) < REDACTIONS_PAGE:
            return out
        after = page[-1]["redaction"]


def _read_chains(
    gateway: LedgerGateway,
    reachable: list[int],
    from_height: int,
    to_height: int,
    finding: Callable[[str, int | None, int | None, str], None],
) -> tuple[dict[int, list[Any]], dict[int, bytes]]:
    """Each reachable replica's blocks in the range, and the header hash of its block just
    below the range (which anchors the range's first link), reporting what it failed to
    serve."""
    chains: dict[int, list[Any]] = {}
    anchors: dict[int, bytes] = {}
    if to_height < from_height:
        return {r: [] for r in reachable}, anchors
    first = max(1, from_height - 1)
    for chain in ReplicaReader(gateway).chains(reachable, first, to_height):
        blocks = chain.blocks
        if from_height > 1 and blocks and blocks[0].height == from_height - 1:
            anchors[chain.replica] = block_hash(blocks[0])
            blocks = blocks[1:]
        chains[chain.replica] = blocks
        if chain.unreachable:
            finding("unreachable", chain.replica, None, "stopped answering during the read")
        if chain.undecodable_at is not None:
            finding(
                "invalid-block",
                chain.replica,
                chain.undecodable_at,
                "the replica served bytes that are not a block",
            )
    return chains, anchors


class _Findings(list[LedgerFindingOut]):
    """The findings of one verification, each with its severity from its code."""

    def __call__(self, code: str, replica: int | None, height: int | None, detail: str) -> None:
        severity: Literal["error", "warning"] = "warning" if code in _WARNINGS else "error"
        self.append(
            LedgerFindingOut(
                code=code, severity=severity, replica=replica, height=height, detail=detail
            )
        )


def _reachability(status: LedgerStatus, reachable: list[int], finding: _Findings) -> None:
    """Findings from the status alone: replicas that did not answer, a quorum that did not."""
    for r in status.replicas:
        if not r.reachable:
            finding("unreachable", r.id, None, "the replica did not answer its status")
    if len(reachable) < status.quorum:
        finding(
            "no-quorum",
            None,
            None,
            f"{len(reachable)} replica(s) answered; {status.quorum} are needed to trust the "
            "comparison",
        )


def _state_roots(chains: dict[int, list[Any]], height: int) -> dict[int, str]:
    """Each replica's state root at `height`, as it served it (hex)."""
    return {
        replica: b.state_root.hex()
        for replica, blocks in chains.items()
        for b in blocks
        if b.height == height
    }


def verify_ledger(gateway: LedgerGateway, from_height: int, limit: int) -> LedgerVerification:
    """Blocks `from_height` .. `from_height + limit - 1` (at most the tip) of every replica."""
    status = ledger_status(gateway)
    reachable = [r.id for r in status.replicas if r.reachable]
    finding = _Findings()
    tip = status.height or 0
    to_height = min(tip, from_height + limit - 1)
    chains, anchors = _read_chains(gateway, reachable, from_height, to_height, finding)
    # The reader stops at a replica's first missing block: its own top tells a hole (blocks
    # missing below what it stored) from lag.
    tops = {r.id: min(r.height, to_height) for r in status.replicas if r.height is not None}
    stables = {r.id: r.stable_seq for r in status.replicas if r.stable_seq is not None}
    result = verify_replicas(
        chains,
        gateway.genesis.public_keys(),
        start=from_height,
        anchors=anchors,
        tops=tops,
        redactions=redactions_in(gateway, from_height, to_height),
        stables=stables,
    )
    for f in result.findings:
        finding(f.code, f.replica, f.height, f.detail)
    _reachability(status, reachable, finding)
    verified = dict(result.heights)
    common = min(verified.values(), default=None)
    in_range = common is not None and common >= from_height
    roots = _state_roots(chains, common) if common is not None and in_range else {}
    replicas = [
        ReplicaVerification(
            id=s.id,
            college=s.college,
            reachable=s.reachable,
            verified_height=verified.get(s.id),
            state_root=roots.get(s.id),
        )
        for s in status.replicas
    ]
    return LedgerVerification(
        ok=not [f for f in finding if f.severity == "error"],
        from_height=from_height,
        to_height=to_height,
        next_from_height=to_height + 1 if to_height < tip else None,
        common_height=common if in_range else None,
        state_roots_equal=len(set(roots.values())) <= 1,
        replicas=replicas,
        findings=list(finding),
    )
