"""Hostile clients against the replica core: floods of maximal requests, junk, refused bodies.

The attacks, and what each would do without its defence:
- forty 1 MiB requests would make every replica build a PRE-PREPARE (and the VIEW-CHANGE
  carrying it) too large for a frame, halting the cluster for good, restarts included;
- a transaction the contracts refuse would be stored whole in a block, so anyone could write
  anything, personal data included, into the permanent chain;
- a refused transaction could be replayed once the reason for its refusal was gone.

Here on the in-process cluster (tests/ledger_bridge/pbft/harness.py) and the simulator; the
same attacks on real replica processes are in test_ledger_processes.py.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from ledger_bridge.contracts import codec, tx
from ledger_bridge.crypto import SigningKey, digest
from ledger_bridge.kvapp import encode_del, encode_set, encode_set_sized
from ledger_bridge.pbft import messages as m
from ledger_bridge.pbft.blocks import verify_block, verify_chain
from ledger_bridge.pbft.config import ClusterConfig
from ledger_bridge.sim.checkers import check
from ledger_bridge.sim.core import Scenario, Simulator
from tests.ledger_bridge.contracts.harness import Chain, Member, standard
from tests.ledger_bridge.pbft.harness import CLIENT, Net

REQUEST_MAX = 8 * 1024
BATCH_MAX = 20 * 1024
SMALL = {
    "batch_size_max": 100,
    "request_bytes_max": REQUEST_MAX,
    "batch_bytes_max": BATCH_MAX,
}


def client(i: int) -> SigningKey:
    return SigningKey(digest(b"intake-client-%d" % i))


def big_set(i: int, size: int) -> bytes:
    return encode_set_sized(b"k%d" % i, size)


def pre_prepares(net: Net) -> list[m.PrePrepare]:
    return [msg for _, _, msg in net.sent if isinstance(msg, m.PrePrepare)]


def test_a_flood_of_maximal_requests_is_cut_into_batches_that_fit_their_frames() -> None:
    net = Net(params=SMALL)
    reqs = [m.make_request(client(i), 1, big_set(i, REQUEST_MAX)) for i in range(40)]
    for req in reqs:
        net.submit(req)
    net.tick(2_000)
    assert net.heights() == [net.heights()[0]] * 4 and net.heights()[0] >= 1
    executed = sum(len(b.requests) for b in net.blocks[0].values())
    assert executed == 40
    sizes = [len(m.encode(pp)) for pp in pre_prepares(net)]
    assert max(sizes) <= net.config.pre_prepare_bytes_max
    # Two maximal requests fit a batch, a third does not.
    assert max(len(pp.requests) for pp in pre_prepares(net)) == 2
    frame = net.config.peer_frame_bytes_max
    assert all(len(m.encode(msg)) <= frame for _, _, msg in net.sent)


def test_a_request_over_request_bytes_max_is_never_ordered() -> None:
    net = Net(params=SMALL)
    over = m.make_request(CLIENT, 1, big_set(0, REQUEST_MAX + 1))
    net.submit(over, to=[0, 1, 2, 3])
    net.tick(1_500)
    assert net.heights() == [0, 0, 0, 0]
    assert net.replicas[0].stats["request over request_bytes_max"] == 1
    assert not net.replies


def test_a_backup_refuses_a_pre_prepare_over_the_byte_bounds() -> None:
    """A Byzantine primary cannot force a batch its backups could not carry in a VIEW-CHANGE."""
    net = Net(params=SMALL)
    reqs = tuple(m.make_request(client(i), 1, big_set(i, REQUEST_MAX)) for i in range(3))
    pp = m.PrePrepare(0, 1, m.batch_digest(net.now_ms, reqs), net.now_ms, reqs, 0)
    pp = m.sign(pp, net.replicas[0].key)
    for i in (1, 2, 3):
        net.replicas[i].step(pp, net.now_ms)
        net.drain(i)
        assert net.replicas[i].stats["batch too large"] == 1
        assert net.replicas[i].slots[1].pre_prepare is None


def test_a_stuck_state_left_by_an_unbounded_batch_recovers_after_restart() -> None:
    """What the halted cluster had on disk: its primary accepted its own PRE-PREPARE of
    requests far over today's limits, and died sending it. Restarted with the bounds, the
    cluster moves on (a view change past the muted primary) and never sends the old batch."""
    net = Net(params=SMALL)
    old = tuple(m.make_request(client(i), 1, big_set(i, 4 * REQUEST_MAX)) for i in range(8))
    primary = net.replicas[0]
    pp = m.sign(
        m.PrePrepare(0, 1, m.batch_digest(net.now_ms, old), net.now_ms, old, 0), primary.key
    )
    primary._accept_pre_prepare(pp)
    net.queue.clear()
    net.sent.clear()
    net.drain(0)
    net.queue.clear()  # the old node died in the send: nobody received it
    for i in range(4):
        net.restart(i)
    for req in old:  # the clients retry their requests: refused at intake
        net.submit(req, to=[0, 1, 2, 3])
    fresh = [m.make_request(client(100 + i), 1, encode_set(b"f%d" % i, b"v")) for i in range(5)]
    for req in fresh:
        net.submit(req, to=[0, 1, 2, 3])
    net.tick(5_000)
    top = max(net.heights())
    assert top >= 1 and net.heights() == [top] * 4
    ordered = {m.request_digest(r) for b in net.blocks[1].values() for r in b.requests}
    assert {m.request_digest(r) for r in fresh} <= ordered
    assert not {m.request_digest(r) for r in old} & ordered
    frame = net.config.peer_frame_bytes_max
    assert all(len(m.encode(msg)) <= frame for _, _, msg in net.sent)


def test_a_refused_transaction_leaves_only_its_digest_and_code_in_the_block() -> None:
    net = Net()
    kept = m.make_request(client(1), 1, encode_set(b"a", b"1"))
    refused = m.make_request(client(2), 1, encode_del(b"never-set-secret-name"))
    net.submit(kept)
    net.submit(refused)
    net.tick(500)
    blocks = [b for b in net.blocks[2].values() if b.omitted]
    [block] = blocks
    [omission] = block.omitted
    assert omission.request_digest == m.request_digest(refused) and omission.code == b"absent"
    assert b"never-set-secret-name" not in m.encode(block)
    chain = [net.blocks[2][h] for h in sorted(net.blocks[2])]
    assert verify_chain(chain, net.config.verify_keys)
    # The digest is bound by the certificate: another one, or another position, breaks it.
    forged = dataclasses.replace(
        block, omitted=(dataclasses.replace(omission, request_digest=b"\x01" * 32),)
    )
    assert not verify_block(forged, net.config.verify_keys)
    reordered = dataclasses.replace(block, omitted=(dataclasses.replace(omission, index=5),))
    assert not verify_block(reordered, net.config.verify_keys)
    # The refusal reached the client as an ordered result, with its height.
    answers = {(r.block_height, r.result) for r in net.replies if r.client_id == refused.client_id}
    assert answers == {(block.height, b"err:absent")}


def test_a_lagging_replica_gets_refused_bodies_to_execute_but_never_stores_them() -> None:
    net = Net()
    net.down.add(3)
    for i in range(3):
        net.submit(m.make_request(client(i), 1, encode_del(b"gone-%d" % i)))
        net.tick(50)
    net.down.discard(3)
    net.tick(1_500)
    assert net.heights()[3] == net.heights()[0] >= 1
    stored = [b for b in net.blocks[3].values()]
    assert all(not b.requests and b.omitted for b in stored)
    assert net.replicas[3].stats["batches executed from certificates"] >= 1


def test_junk_the_application_can_never_apply_is_refused_before_ordering() -> None:
    net = Net()
    junk = m.make_request(client(5), 1, b"\xc1" * 600)  # not msgpack
    net.submit(junk, to=[0, 1, 2, 3])
    net.tick(1_000)
    assert net.heights() == [0, 0, 0, 0]
    refusals = {(r.replica_id, r.block_height, r.result) for r in net.replies}
    assert refusals == {(i, 0, b"err:malformed") for i in range(4)}
    assert all(r.stats["refused at admission"] == 1 for r in net.replicas)


@pytest.mark.parametrize("seed", range(12))
def test_simulated_floods_with_faults_commit_and_every_message_fits(seed: int) -> None:
    sc = Scenario.random(seed)
    sc = dataclasses.replace(
        sc,
        clients=6,
        requests_per_client=5,
        tx_bytes=REQUEST_MAX,
        refused_every=3,
        batch_size_max=100,
    )
    sim = Simulator(sc, request_bytes_max=REQUEST_MAX, batch_bytes_max=BATCH_MAX).run()
    report = check(sim)
    assert report.ok, report.violations
    assert sim.largest_message > REQUEST_MAX  # the flood did reach the replicas


def test_the_derived_frame_limit_refuses_parameters_it_cannot_carry() -> None:
    keys = [bytes(SigningKey(digest(b"v%d" % i)).public_key) for i in range(4)]
    with pytest.raises(ValueError, match="NEW-VIEW"):
        ClusterConfig.create(keys, batch_bytes_max=64 * 1024 * 1024, log_window=1024)
    with pytest.raises(ValueError, match="largest request"):
        ClusterConfig.create(keys, request_bytes_max=64 * 1024, batch_bytes_max=64 * 1024)


# -- the contracts' side: admission and spent nonces -------------------------------------------


def _dataset_body(provider: Member) -> dict[str, Any]:
    return {
        "dataset": "fleet-telemetry",
        "owner": provider.pub,
        "category": "telemetry",
        "purposes": ["road-maintenance"],
        "retention_days": 30,
        "legal_basis": "consent",
    }


def _code(refusal: bytes | None) -> str | None:
    return None if refusal is None else str(codec.decode(refusal)["code"])


def test_admission_refuses_non_members_junk_and_spent_nonces_but_lets_anyone_register() -> None:
    chain, provider, _ = standard()
    stranger = chain.fresh("subject", "citizens")
    app = chain.app
    assert _code(app.check(chain.sign(stranger, "dataset.register", _dataset_body(provider)))) == (
        "not_member"
    )
    register = chain.sign(stranger, "member.register", {"role": "subject", "college": "citizens"})
    assert app.check(register) is None
    padded = {"role": "subject", "college": "citizens", "profile": "x" * 300_000}
    assert _code(app.check(chain.sign(stranger, "member.register", padded))) == "invalid"
    assert _code(app.check(b"\x93junk" + b"x" * 1000)) == "malformed"
    forged = tx.decode(chain.sign(provider, "dataset.register", _dataset_body(provider)))
    forged = dataclasses.replace(forged, sig=b"\x00" * 64)
    assert _code(app.check(forged.encode())) == "bad_signature"
    signed = chain.sign(provider, "dataset.register", _dataset_body(provider))
    assert app.check(signed) is None
    assert chain.block(signed)[0]["ok"]
    assert _code(app.check(signed)) == "replayed"
    stale = chain.sign(provider, "dataset.register", _dataset_body(provider), valid_until=1)
    assert _code(app.check(stale)) == "expired"


def test_a_refused_transaction_cannot_be_replayed_once_its_refusal_no_longer_holds() -> None:
    """Signed before the provider was a member, refused; after governance admits it, the same
    bytes replayed within their validity must not register a dataset."""
    chain = Chain.new()
    provider = chain.fresh("provider", "providers")
    valid_until = chain.time_ms + 3_000_000
    early = chain.sign(
        provider, "dataset.register", _dataset_body(provider), valid_until=valid_until
    )
    assert chain.block(early)[0]["code"] == "not_member"
    chain.admit_by_vote(provider)
    assert chain.block(early)[0]["code"] == "replayed"
    assert chain.query(q="dataset", dataset="fleet-telemetry") is None
    burned = chain.query(q="nonce", author=provider.pub, nonce=tx.decode(early).nonce)
    assert burned["refused"] == "not_member"


def test_a_refusal_never_carries_a_long_field_name_back() -> None:
    chain = Chain.new()
    stranger = chain.fresh("subject", "citizens")
    body = {"role": "subject", "college": "citizens", "x" * 60_000: "made-up personal details"}
    result = chain.one(stranger, "member.register", body)
    assert result["code"] == "invalid"
    assert len(result["message"]) < 200
