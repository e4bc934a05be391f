"""Redaction in the replica core (docs/PBFT.md, "Redaction"): once a checkpoint at or past an
erasure is stable, every body the application lists is replaced by its digest in everything
the replica holds or serves, the chain still verifies, and a peer's unredacted body is never
taken in. The application is the KV store: "forget" lists a key's writers (`kvapp`)."""

from __future__ import annotations

import dataclasses

import msgpack

from ledger_bridge.crypto import SigningKey, digest
from ledger_bridge.kvapp import encode_forget, encode_set
from ledger_bridge.pbft import messages as m
from ledger_bridge.pbft.blocks import verify_chain
from ledger_bridge.pbft.records import KIND_LOG, KIND_META, META_REDACTIONS, META_SNAPSHOT
from tests.ledger_bridge.pbft.harness import Net, key

MARKER = b"MARKER-subject-0123456789abcdef!"


def _client(i: int) -> SigningKey:
    return SigningKey(digest(b"redaction-client-%d" % i))


# One request per block (batch_size_max 1), a checkpoint every 4: heights 1..4, forget at 4.
SCRIPT = [
    encode_set(b"subject", MARKER),
    encode_set(b"other", b"kept"),
    encode_set(b"subject", b"again " + MARKER),
    encode_forget(b"subject"),
]
REDACTED_AT = {1: (0,), 3: (0,), 4: (0,)}


def _run(net: Net, txs: list[bytes], first_client: int = 0) -> None:
    for i, tx in enumerate(txs):
        net.submit(m.make_request(_client(first_client + i), 1, tx))
        net.deliver_all()


def _holds_marker(obj: object) -> bool:
    return MARKER in repr(obj).encode() or MARKER in (obj if isinstance(obj, bytes) else b"")


def _records_hold_marker(net: Net, i: int) -> bool:
    return any(MARKER in v for rows in net.records[i].values() for v in rows.values())


def test_a_forget_is_applied_everywhere_once_its_checkpoint_is_stable() -> None:
    net = Net(params={"durable_snapshot_txs": 1_000_000})  # the log holds every body so far
    _run(net, SCRIPT[:3])
    assert all(_records_hold_marker(net, i) for i in range(4))  # control: the log has it
    _run(net, SCRIPT[3:], first_client=3)
    assert net.heights() == [4] * 4
    for i, r in enumerate(net.replicas):
        assert r.h == 4 and r.redactions_applied == 3 and r.redactions_known == 3
        for h, b in net.blocks[i].items():
            gone = [o.index for o in b.omitted if o.code == m.REDACTED]
            assert gone == list(REDACTED_AT.get(h, ()))
            assert not any(MARKER in tx for tx in b.txs)
        assert [b for b in r.recent_blocks] == [net.blocks[i][h] for h in (1, 2, 3, 4)]
        blocks = [net.blocks[i][h] for h in sorted(net.blocks[i])]
        assert verify_chain(blocks, net.config.public_keys)
        # The stored records: the count, a snapshot at the checkpoint, no log at or below it,
        # and the marker nowhere (neither in a logged batch nor in the snapshot's state).
        meta = net.records[i][KIND_META]
        assert msgpack.unpackb(meta[META_REDACTIONS]) == 3
        assert msgpack.unpackb(meta[META_SNAPSHOT])[0] == 4
        assert all(int.from_bytes(k, "big") > 4 for k in net.records[i].get(KIND_LOG, {}))
        assert not _records_hold_marker(net, i)
        # Reply cache: every result at or below the erasure is the marker, the same on all.
        assert {res for _, _, res in r.reply_cache.values()} == {m.REDACTED}
    assert len({r.stable.digest for r in net.replicas}) == 1


def test_nothing_is_redacted_before_the_erasures_checkpoint_is_stable() -> None:
    """Below a stable checkpoint no peer executes from our blocks; above it a peer may: a
    body is dropped only once the checkpoint at or past its erasure is stable. Checked before
    every message delivered, on every replica."""
    net = Net(params={"checkpoint_interval": 8, "log_window": 16})
    seen: list[tuple[int, int]] = []

    def early_redaction(src: int, dst: int, msg: m.Message) -> bool:
        for r in net.replicas:
            seen.append((r.h, r.redactions_applied))
            assert r.redactions_applied == 0 or r.h >= 4, (r.id, r.h, r.redactions_applied)
        return True

    net.filter = early_redaction
    _run(net, SCRIPT)
    assert (0, 0) in seen and (8, 3) in seen  # the check ran on both sides of the checkpoint
    for i, r in enumerate(net.replicas):
        assert r.h == 8 and r.redactions_applied == 3
        assert [h for h, b in sorted(net.blocks[i].items()) if b.omitted] == [1, 3, 4]


def test_a_quiet_ledger_reaches_the_erasures_checkpoint_with_null_batches() -> None:
    """Nothing else is submitted after the erasure: the primary orders null batches up to the
    next checkpoint (8), and no further, so the redaction does not wait for traffic."""
    net = Net(params={"checkpoint_interval": 8, "log_window": 16})
    _run(net, SCRIPT)
    net.tick(500)
    assert net.heights() == [8] * 4
    for i, r in enumerate(net.replicas):
        assert r.h == 8 and r.redactions_applied == 3
        assert all(net.blocks[i][h].size == 0 for h in range(5, 9))
    # Traffic after it is ordered as usual; no null batch is added once nothing waits.
    _run(net, [encode_set(b"pad", b"x")], first_client=10)
    net.tick(500)
    assert net.heights() == [9] * 4
    assert net.replicas[0].stats["null batches to a checkpoint"] == 4


def test_a_replica_whose_crash_lost_the_redaction_applies_it_after_restart() -> None:
    """The count and the rewrite are one transaction: a crash loses both (here the store as
    it was before the erasure executed), and the restarted replica applies the entries
    above its count once it is past the checkpoint again."""
    net = Net()
    _run(net, SCRIPT[:3])
    unredacted = dict(net.blocks[3])
    records = {k: dict(v) for k, v in net.records[3].items()}
    _run(net, SCRIPT[3:], first_client=3)
    assert net.replicas[3].redactions_applied == 3
    net.blocks[3] = unredacted
    net.records[3] = records
    net.restart(3)
    assert net.replicas[3].redactions_applied == 0 and _records_hold_marker(net, 3)
    net.tick(1_000)
    assert net.replicas[3].h == 4 and net.replicas[3].redactions_applied == 3
    assert [h for h, b in sorted(net.blocks[3].items()) if b.omitted] == [1, 3, 4]
    assert not _records_hold_marker(net, 3)
    blocks = [net.blocks[3][h] for h in sorted(net.blocks[3])]
    assert verify_chain(blocks, net.config.public_keys)


def test_a_replica_rebuilt_from_a_peers_snapshot_redacts_its_own_older_blocks() -> None:
    """Replica 3 stored the marker's block, then fell behind the erasure and its checkpoint:
    the state transfer brings the entries, and it redacts the blocks it held from before.
    Attack: the peer's STATE-DATA carries the blocks unredacted; they are stored redacted,
    the bodies counted, and never served again."""
    net = Net()
    _run(net, SCRIPT[:1])
    original = dict(net.blocks[0])
    net.down.add(3)
    _run(net, SCRIPT[1:], first_client=1)
    _run(net, [encode_set(b"pad%d" % k, b"x") for k in range(8)], first_client=10)
    src = net.replicas[0]
    assert src.h == 12 and net.blocks[3][1].txs == [SCRIPT[0]]
    # A Byzantine replica 0 serves its stable state with the blocks as they were executed.
    full = {**original, **{h: b for h, b in _unredacted(net).items()}}
    blocks = tuple(full[h] for h in range(2, 13))
    assert src.stable.state is not None
    data = m.StateData(src.h, src.stable.proof, src.stable.state.packed(), blocks, 0)
    net.down.discard(3)
    lagger = net.replicas[3]
    lagger.step(m.sign(data, key(0)), net.now_ms)
    net.drain(3)
    assert lagger.last_executed == 12 and lagger.redactions_applied == 3
    assert lagger.unredacted_refused == 2  # the bodies at heights 3 and 4 it was sent
    assert [h for h, b in sorted(net.blocks[3].items()) if b.omitted] == [1, 3, 4]
    assert verify_chain([net.blocks[3][h] for h in range(1, 13)], net.config.public_keys)
    assert not any(_holds_marker(tx) for b in lagger.recent_blocks for tx in b.txs)


def _unredacted(net: Net) -> dict[int, m.Block]:
    """Replica 0's blocks with the redacted bodies put back (what a Byzantine replica kept)."""
    bodies = {
        3: m.make_request(_client(2), 1, SCRIPT[2]),
        4: m.make_request(_client(3), 1, SCRIPT[3]),
    }
    out = {}
    for h, b in net.blocks[0].items():
        if h in bodies:
            b = dataclasses.replace(b, requests=(bodies[h],), omitted=())
        out[h] = b
    return out


def test_a_request_ordered_again_after_its_execution_leaves_no_body() -> None:
    """Attack: after the forget and its checkpoint, a primary (faulty, or honest when a
    client's retry reaches it) orders again a request executed long before, one that wrote
    the marker. It executes nowhere (the reply cache says it ran), so no redaction entry will
    ever list its new position: its body must not be stored in a block at all, only its
    digest. (The log keeps the batch, as every batch, until the next durable snapshot.)"""
    net = Net(params={"checkpoint_interval": 4, "log_window": 8, "durable_snapshot_txs": 1})
    _run(net, SCRIPT)
    assert all(r.h == 4 and r.redactions_applied == 3 for r in net.replicas)
    old = m.make_request(_client(0), 1, SCRIPT[0])
    primary = net.replicas[0]
    assert primary.is_primary
    primary._propose((old,))
    net.deliver_all()
    _run(net, [encode_set(b"pad%d" % k, b"x") for k in range(4)], first_client=20)
    for i in range(4):
        again = net.blocks[i][5]
        assert [(o.index, o.code) for o in again.omitted] == [(0, m.DUPLICATE)]
        assert not any(MARKER in tx for b in net.blocks[i].values() for tx in b.txs)
        assert not _records_hold_marker(net, i)
        blocks = [net.blocks[i][h] for h in sorted(net.blocks[i])]
        assert verify_chain(blocks, net.config.public_keys)


def test_a_forget_drops_the_signed_replies_the_shell_had_made() -> None:
    """A shell that signs replies itself (the node, for a client that agreed no MAC key) has
    the core keep each client's last signed REPLY for its retries: no new signature per
    retry, and the erasure drops each one with the cached result it signs, so no copy of a
    forgotten result outlives it in the replica."""
    net = Net(params={"durable_snapshot_txs": 1_000_000})
    for r in net.replicas:
        r.sign_replies = False
    _run(net, SCRIPT[:3])
    assert net.replies and all(reply.signature == b"" for reply in net.replies)
    for reply in net.replies:
        r = net.replicas[reply.replica_id]
        signed = r.signed_reply(reply)
        assert m.verify_reply(signed, net.config.verify_keys)
        assert r.signed_reply(reply) is signed  # a retry: the same signature
    assert all(len(r.signed_replies) == 3 for r in net.replicas)  # control: kept
    seen = len(net.replies)
    _run(net, SCRIPT[3:], first_client=3)
    for reply in net.replies[seen:]:
        # Signed after the step that executed the erasure, as the node signs a Ready's
        # replies: the erasure's own reply carries a result the cache has forgotten already.
        net.replicas[reply.replica_id].signed_reply(reply)
    for r in net.replicas:
        forgotten = {c for c, (_, _, res) in r.reply_cache.items() if res == m.REDACTED}
        assert len(forgotten) == 4
        assert not forgotten & set(r.signed_replies)
