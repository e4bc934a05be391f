"""The DPO's ledger verification: honest replicas pass; a block altered in one replica fails."""

from __future__ import annotations

import dataclasses

from ledger_bridge.audit import verify_replicas
from ledger_bridge.pbft.messages import Block
from ledger_bridge.sim.core import Scenario, Simulator


def _chains() -> tuple[dict[int, list[Block]], list[bytes]]:
    sim = Simulator(Scenario(seed=7, clients=2, requests_per_client=6)).run()
    chains = {i: [node.blocks[h] for h in sorted(node.blocks)] for i, node in enumerate(sim.nodes)}
    assert all(len(c) >= 3 for c in chains.values())
    return chains, [bytes(k.public_key) for k in sim.keys]


def test_honest_replicas_agree() -> None:
    chains, validators = _chains()
    audit = verify_replicas(chains, validators)
    assert audit.ok, audit.findings
    assert len(set(audit.heights.values())) == 1


def test_altered_state_root_in_one_replica_is_found() -> None:
    chains, validators = _chains()
    last = chains[2][-1]
    chains[2][-1] = dataclasses.replace(last, state_root=bytes(32))
    audit = verify_replicas(chains, validators)
    assert not audit.ok
    assert [(f.code, f.replica, f.height) for f in audit.findings] == [
        ("diverging-header", 2, last.height)
    ]


def test_altered_result_mid_chain_breaks_the_link() -> None:
    chains, validators = _chains()
    chains[1][0] = dataclasses.replace(chains[1][0], results_digest=bytes(32))
    codes = {(f.code, f.replica) for f in verify_replicas(chains, validators).findings}
    assert ("diverging-header", 1) in codes and ("broken-link", 1) in codes


def test_forged_request_fails_the_certificate() -> None:
    chains, validators = _chains()
    block = chains[3][1]
    forged = dataclasses.replace(block, requests=block.requests[:-1] or block.requests * 2)
    findings = verify_replicas(chains | {3: [chains[3][0], forged]}, validators).findings
    assert ("invalid-block", 3, block.height) in {(f.code, f.replica, f.height) for f in findings}


def test_missing_block_and_lagging_replica() -> None:
    chains, validators = _chains()
    chains[0] = chains[0][:1] + chains[0][2:]
    chains[3] = chains[3][:2]
    audit = verify_replicas(chains, validators)
    findings = {(f.code, f.replica) for f in audit.findings}
    assert findings == {("holes", 0), ("lagging", 3)}
    assert not audit.ok


def test_a_replica_at_the_top_with_holes_is_not_lagging_and_not_ok() -> None:
    """What the fault campaign found: a replica back from state transfer holds the newest
    blocks and lacks those in between. It is at the top: not lagging. Its holes mean acked
    transactions live on fewer replicas: the audit is not ok until they are filled."""
    chains, validators = _chains()
    top = chains[1][-1].height
    full = list(chains[1])
    chains[1] = full[:1] + full[-1:]  # heights 1 and top only
    audit = verify_replicas(chains, validators)
    assert [(f.code, f.replica, f.height) for f in audit.findings] == [("holes", 1, 2)]
    assert audit.missing == {1: top - 2} and not audit.ok
    assert audit.heights[1] == 1  # what is verified contiguously from the start

    # A caller that stops reading at the first missing height passes the replica's own top.
    chains[1] = full[:1]
    truncated = verify_replicas(chains, validators, tops={1: top})
    assert [(f.code, f.replica) for f in truncated.findings] == [("holes", 1)]
    assert not truncated.ok
    # Without it, the same chain looks like lag, which is a warning only.
    lag = verify_replicas(chains, validators)
    assert [(f.code, f.replica) for f in lag.findings] == [("lagging", 1)] and lag.ok

    # Filled (what backfill does): ok again.
    chains[1] = full
    assert verify_replicas(chains, validators, tops={1: top}).ok


def test_a_forged_block_above_a_hole_is_still_found() -> None:
    chains, validators = _chains()
    last = chains[2][-1]
    forged = dataclasses.replace(last, signers=last.signers[:1], certificate=last.certificate[:1])
    chains[2] = [*chains[2][:1], forged]
    codes = {(f.code, f.replica) for f in verify_replicas(chains, validators).findings}
    assert ("invalid-block", 2) in codes and ("holes", 2) in codes


def _redact(block: Block, index: int) -> Block:
    """`block` with the body at batch position `index` replaced by its digest."""
    from ledger_bridge.pbft import messages as m

    kept = [i for i in range(block.size) if i not in {o.index for o in block.omitted}]
    request = block.requests[kept.index(index)]
    omission = m.Omission(index, m.request_digest(request), b"redacted")
    return dataclasses.replace(
        block,
        requests=tuple(r for r in block.requests if r is not request),
        omitted=tuple(sorted((*block.omitted, omission), key=lambda o: o.index)),
    )


def test_a_replica_still_serving_a_redacted_body_is_found() -> None:
    """The contracts ordered position (h, 0) redacted by an erasure at height `since`. Every
    replica past `since` redacted it but one: that one gets an `unredacted` finding; the
    redacted chains still verify; a replica not yet at `since` is not late."""
    from ledger_bridge.audit import Position

    chains, validators = _chains()
    height = chains[0][1].height
    since = chains[0][2].height
    for r in (0, 1, 3):
        chains[r][1] = _redact(chains[r][1], 0)
    redactions = [Position(height, 0, since)]
    past = {r: since for r in chains}
    audit = verify_replicas(chains, validators, redactions=redactions, stables=past)
    assert [(f.code, f.replica, f.height) for f in audit.findings] == [("unredacted", 2, height)]
    assert not audit.ok

    # Control: the same replica, its stable checkpoint still below the erasure, is not late.
    early = past | {2: since - 1}
    assert verify_replicas(chains, validators, redactions=redactions, stables=early).ok
    # And once it redacts, the audit is clean: redaction keeps the chain verifiable.
    chains[2][1] = _redact(chains[2][1], 0)
    assert verify_replicas(chains, validators, redactions=redactions, stables=past).ok
