"""The checkers catch what they claim to: each test breaks one property of a good run."""

from __future__ import annotations

import dataclasses

from ledger_bridge.pbft import messages as m
from ledger_bridge.sim.checkers import check
from ledger_bridge.sim.core import Scenario, Simulator


def _good_run() -> Simulator:
    sim = Simulator(Scenario(seed=7, clients=2, requests_per_client=6)).run()
    assert check(sim).ok
    return sim


def test_agreement_violation_is_reported() -> None:
    sim = _good_run()
    node = sim.nodes[2]
    b = node.blocks[2]
    node.blocks[2] = dataclasses.replace(b, state_root=b"\x01" * 32)
    violations = check(sim).violations
    assert any("agreement violated at height 2" in v for v in violations)
    assert any("replica 2: chain" in v for v in violations)  # the next block no longer links


def test_double_execution_is_reported() -> None:
    sim = _good_run()
    log = sim.nodes[1].executed_log
    some_tx = log[1][0]
    log[max(log)].append(some_tx)
    assert any("executed at heights" in v for v in check(sim).violations)


def test_forged_request_in_a_chain_is_reported() -> None:
    sim = _good_run()
    forged = sim._forged_request()
    node = sim.nodes[0]
    top = max(node.blocks)
    node.blocks[top] = dataclasses.replace(node.blocks[top], requests=(forged,))
    violations = check(sim).violations
    assert any("forged request" in v for v in violations)


def test_missing_liveness_and_lost_receipts_are_reported() -> None:
    sim = _good_run()
    sim.clients[0].index -= 1
    rid, height, _ = sim.clients[1].done[0]
    for node in sim.nodes:
        b = node.blocks[height]
        node.blocks[height] = dataclasses.replace(
            b, requests=tuple(r for r in b.requests if r.request_id != rid)
        )
    violations = check(sim).violations
    assert any(v.startswith("liveness") for v in violations)
    assert any(f"acknowledged request {rid}" in v for v in violations)


def test_checkpoint_disagreement_and_memory_are_reported() -> None:
    sim = _good_run()
    seq = min(sim.checkpoint_digests)
    sim.checkpoint_digests[seq][3] = b"\x02" * 32
    sim.memory_violations.append("replica 0: slots 99 > 8")
    violations = check(sim).violations
    assert any(f"checkpoint {seq}" in v for v in violations)
    assert "replica 0: slots 99 > 8" in violations
    assert isinstance(sim.nodes[0].blocks[1], m.Block)


def test_a_kept_or_served_redacted_body_is_reported() -> None:
    """An honest replica past an erasure's checkpoint that still holds a listed body (in its
    store or in memory), or served one in a state transfer, is a violation."""
    sim = Simulator(Scenario(seed=7, clients=2, requests_per_client=9, forget_every=3)).run()
    assert check(sim).ok
    node = sim.nodes[1]
    due = [e for e in node.app.redactions(0, 1_000) if e.since <= node.replica.h]
    assert due
    e = due[0]
    node.blocks[e.height] = sim._unredact(node.blocks[e.height])
    violations = check(sim).violations
    assert f"replica 1: body at {e.height}/{e.index} kept in its store" in violations
    assert not any("kept in its memory" in v for v in violations)
    recent = node.replica.recent_blocks
    k = next(k for k, b in enumerate(recent) if b.height == e.height)
    recent[k] = sim._unredact(recent[k])
    assert f"replica 1: body at {e.height}/{e.index} kept in its memory" in check(sim).violations
    sim.redaction_violations.append("replica 2 served a redacted body at height 3")
    assert "replica 2 served a redacted body at height 3" in check(sim).violations
