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
    findings = {(f.code, f.replica) for f in verify_replicas(chains, validators).findings}
    assert ("broken-link", 0) in findings and ("lagging", 3) in findings
