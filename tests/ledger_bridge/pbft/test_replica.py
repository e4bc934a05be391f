"""Protocol tests of the replica core; each names the paper section it checks
(Castro & Liskov, "Practical Byzantine Fault Tolerance and Proactive Recovery", TOCS 2002)."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable
from typing import TypeVar

import msgpack
import pytest

from ledger_bridge.app import BlockContext
from ledger_bridge.kvapp import KVApp, encode_set
from ledger_bridge.pbft import messages as m
from ledger_bridge.pbft.blocks import block_hash, verify_chain
from ledger_bridge.pbft.errors import LocalProtocolError
from ledger_bridge.pbft.records import KIND_LOG, KIND_META, META_SNAPSHOT, META_STABLE, seq_key
from ledger_bridge.pbft.replica import LOAD_BATCHING, Ready, Replica
from tests.ledger_bridge.pbft.harness import CLIENT, Net, key, request

M = TypeVar("M")


def _sent(net: Net, kind: type[M]) -> list[M]:
    return [msg for _, _, msg in net.sent if isinstance(msg, kind)]


def test_normal_case_commits_executes_and_replies() -> None:
    """TOCS §4.2: pre-prepare, prepare, commit; every replica executes the batch as block 1
    with a 2f+1 commit certificate, and the client gets n matching signed replies (§4.1)."""
    net = Net()
    net.submit(request(1))
    net.deliver_all()
    assert net.heights() == [1, 1, 1, 1]
    hashes = {block_hash(b[1]) for b in net.blocks}
    assert len(hashes) == 1
    block = net.blocks[0][1]
    assert len(block.signers) == 3 and verify_chain([block], net.config.public_keys)
    replies = [r for r in net.replies if r.request_id == 1]
    assert len(replies) == 4 and {r.result for r in replies} == {b"ok"}
    assert all(m.verify_reply(r, net.config.verify_keys) for r in replies)


def test_unsigned_request_is_never_ordered() -> None:
    """TOCS §4.1: requests carry the client's signature; a tampered one is dropped."""
    net = Net()
    forged = dataclasses.replace(request(1), tx=b"something else")
    net.submit(forged, to=[0, 1, 2, 3])
    net.tick(50)
    assert net.heights() == [0, 0, 0, 0]
    assert net.replicas[0].stats["bad client signature"] == 1


def test_batching_adapts_to_load() -> None:
    """TOCS §5.1.4: an idle primary proposes at once; while a batch is in flight, requests
    accumulate until batch_size_max or batch_wait_ms (§5.1 batching)."""
    net = Net(params={"batch_size_max": 3, "batch_wait_ms": 50, "batches_in_flight_max": 4})
    net.filter = lambda src, dst, msg: not isinstance(msg, m.Commit)  # keep batch 1 in flight
    net.submit(request(1))
    net.deliver_all()
    assert [len(pp.requests) for pp in _sent(net, m.PrePrepare)] == [1]  # idle: no wait
    net.submit(request(2, client=key(9)))
    net.submit(request(3, client=key(10)))
    net.deliver_all()
    assert len(_sent(net, m.PrePrepare)) == 1  # busy: the two wait for more or for the timer
    net.tick(60)
    assert [len(pp.requests) for pp in _sent(net, m.PrePrepare)] == [1, 2]
    for i in range(3):
        net.submit(request(10 + i, client=key(20 + i)))
    net.deliver_all()
    assert [len(pp.requests) for pp in _sent(net, m.PrePrepare)] == [1, 2, 3]  # full: at once
    net.filter = lambda src, dst, msg: True
    net.tick(300)
    assert [len(b.requests) for b in net.blocks[1].values()] == [1, 2, 3]


def test_a_client_that_takes_turns_is_never_kept_waiting() -> None:
    """Adaptive batching: a client that waits for its answer before asking again would gain
    nothing from a wait, so however long `batch_wait_ms` is, each of its requests is proposed
    as it arrives (time never moves here: a request left to wait would not execute)."""
    net = Net(params={"batch_size_max": 20, "batch_wait_ms": 1_000})
    for rid in range(1, 21):
        net.submit(request(rid))
        assert net.replicas[0].batch_due_ms() is None
        net.deliver_all()
        assert net.heights() == [rid] * 4
    assert net.replicas[0].load == 0.0


def test_overlapping_requests_wait_to_share_a_batch_until_they_take_turns_again() -> None:
    """Adaptive batching: once most requests arrive while others wait or run, an idle primary
    waits up to `batch_wait_ms` for the batch to fill, and says when it is due; once they take
    turns again, or after a pause, it proposes at once again."""
    net = Net(params={"batch_size_max": 20, "batch_wait_ms": 50})
    primary = net.replicas[0]
    for i in range(12):  # twelve clients at once: the first is proposed, the rest overlap
        net.submit(request(1, client=key(100 + i)))
    assert primary.load >= LOAD_BATCHING
    net.deliver_all()
    assert net.heights() == [1] * 4  # idle again, but the other eleven wait for more
    net.tick(60)
    assert net.heights() == [2] * 4
    assert [len(b.requests) for b in net.blocks[0].values()] == [1, 11]
    waits = 0
    for rid in range(1, 10):  # one client taking turns: the load decays
        net.submit(request(rid))
        due = primary.batch_due_ms()
        if due is not None:
            waits += 1
            assert due == net.now_ms + 50
            net.deliver_all()
            assert net.heights() == [rid + 1] * 4  # waiting, not proposed
            net.tick(50)
        net.deliver_all()
        assert net.heights() == [rid + 2] * 4
    assert 1 <= waits < 9 and primary.load < LOAD_BATCHING
    for i in range(12):  # another burst...
        net.submit(request(1, client=key(200 + i)))
    net.deliver_all()
    net.tick(60)
    assert net.heights() == [13] * 4 and primary.load >= LOAD_BATCHING
    net.tick(3_000)  # ...then a pause: the client that comes back is proposed at once
    net.submit(request(10))
    assert primary.batch_due_ms() is None
    net.deliver_all()
    assert net.heights() == [14] * 4


def test_a_full_window_of_batches_makes_the_next_batch_bigger() -> None:
    """TOCS §5.1.4 (batch while busy, the BFT library's sliding window): with
    `batches_in_flight_max` batches proposed and not executed, the primary proposes nothing,
    even when the wait is over; what queued meanwhile goes into one batch once a batch
    executes, not into a batch per tick."""
    net = Net(params={"batch_size_max": 10, "batch_wait_ms": 5, "batches_in_flight_max": 2})
    net.filter = lambda src, dst, msg: not isinstance(msg, m.Commit)  # nothing executes
    net.submit(request(1))
    net.submit(request(2, client=key(9)))
    net.tick(20)

    def batches() -> list[int]:  # batch size per sequence number (retransmissions collapse)
        return [
            n for _, n in sorted({p.seq: len(p.requests) for p in _sent(net, m.PrePrepare)}.items())
        ]

    assert batches() == [1, 1]
    for i in range(5):
        net.submit(request(10 + i, client=key(20 + i)))
        net.tick(20)
    assert batches() == [1, 1]  # the window is full: the five wait
    net.filter = lambda src, dst, msg: True
    net.tick(300)  # STATUS-driven retransmission lets the first two batches commit
    assert batches() == [1, 1, 5]
    assert [len(b.requests) for b in net.blocks[2].values()] == [1, 1, 5]


def test_primary_never_proposes_above_the_high_watermark() -> None:
    """TOCS §4.3: sequence numbers stay in (h, h+L]; only a stable checkpoint moves h."""
    net = Net()
    net.filter = lambda src, dst, msg: not isinstance(msg, m.Checkpoint)
    for i in range(12):
        net.submit(request(1, client=key(100 + i)))
        net.deliver_all()
    assert max(pp.seq for pp in _sent(net, m.PrePrepare)) == 8  # h + L with h = 0
    # Requests wait, but no timer could let them go: the host is not woken in a loop for them.
    assert net.replicas[0].pending and net.replicas[0].batch_due_ms() is None
    net.filter = lambda src, dst, msg: True
    net.tick(300)  # STATUS makes peers re-send their CHECKPOINTs; h moves; batching resumes
    assert net.heights() == [12, 12, 12, 12]


def test_backup_ignores_pre_prepare_outside_the_watermarks() -> None:
    """TOCS §4.3: a PRE-PREPARE with n > h + L is not accepted (a faulty primary cannot
    exhaust the sequence space)."""
    net = Net()
    req = request(1)
    d = m.batch_digest(net.now_ms, (req,))
    pp = m.sign(m.PrePrepare(0, 9, d, net.now_ms, (req,), 0), key(0))
    net.replicas[1].step(pp, net.now_ms)
    net.drain(1)
    assert net.replicas[1].stats["pre-prepare outside the watermarks"] == 1
    assert _sent(net, m.Prepare) == []


@pytest.mark.parametrize("snapshot_txs", [5, 1_000])
def test_checkpoint_becomes_stable_and_log_is_garbage_collected(snapshot_txs: int) -> None:
    """TOCS §4.3: 2f+1 matching CHECKPOINTs make it stable; the log below h is discarded in
    memory, and in the durable records once a durable snapshot covers it (here after 5
    transactions, staggered by replica id: replica 0 at the checkpoint at 8, the others,
    whose first interval is shorter, at 4; with 1,000 not yet)."""
    net = Net(params={"durable_snapshot_txs": snapshot_txs})
    for i in range(9):
        net.submit(request(1, client=key(100 + i)))
        net.deliver_all()
    for i, r in enumerate(net.replicas):
        assert r.h == 8
        assert all(s > 8 for s in r.slots) and all(s > 8 for s in r.pcerts)
        assert len(r.stable.proof) == 3
        on_disk = sorted(net.records[i].get(KIND_LOG, {}))
        snapshot = net.records[i].get(KIND_META, {}).get(META_SNAPSHOT)
        if snapshot_txs == 5:
            snapshot_seq = 8 if i == 0 else 4
            assert msgpack.unpackb(snapshot)[0] == snapshot_seq
            assert on_disk == [seq_key(s) for s in range(snapshot_seq + 1, 10)]
        else:
            assert on_disk == [seq_key(s) for s in range(1, 10)] and snapshot is None


def test_checkpoints_serialise_no_state_until_a_peer_needs_it() -> None:
    """TOCS §5.3.1 (incremental checkpoints): a checkpoint digests the application's state
    root, not the serialised state; the state is serialised once, for the lagging replica."""
    calls = []

    class CountingKV(KVApp):
        def snapshot(self) -> bytes:  # what the frozen copy's serialisation amounts to
            calls.append(1)
            return super().snapshot()

        def freeze(self) -> Callable[[], bytes]:
            later = super().freeze()

            def produce() -> bytes:
                calls.append(1)
                return later()

            return produce

    net = Net()
    net.apps = [CountingKV() for _ in range(4)]
    net.replicas = [Replica(net.config, i, key(i), net.apps[i]) for i in range(4)]
    net.down.add(3)
    for i in range(13):
        net.submit(request(1, client=key(100 + i)))
        net.deliver_all()
    assert [r.h for r in net.replicas[:3]] == [12, 12, 12] and calls == []
    net.down.discard(3)
    net.tick(400)
    assert net.replicas[3].stats["state transfers applied"] == 1
    assert net.apps[3].state_root() == net.apps[0].state_root()
    assert 1 <= len(calls) <= 3  # one per replica that answered the laggard's STATUS


def test_restart_re_executes_from_the_durable_snapshot_through_the_stable_checkpoint() -> None:
    """TOCS §4.1, §4.3: the durable snapshot lags the stable checkpoint; a restarted replica
    re-executes the logged batches above it, checks it reaches the stable checkpoint's
    certified digest, sends no reply and stores no block twice, then keeps up."""
    net = Net(params={"durable_snapshot_txs": 9})  # replica 2: snapshots at 8, not 4 nor 12
    for i in range(14):
        net.submit(request(1, client=key(100 + i)))
        net.deliver_all()
    r = net.replicas[2]
    assert (r.h, r.snapshot_seq, r.last_executed) == (12, 8, 14)
    before = (r.head_hash, net.apps[2].state_root(), r.stable.digest, r.reply_cache)
    replies, blocks = len(net.replies), dict(net.blocks[2])
    net.blocks[2].clear()
    net.restart(2)
    r = net.replicas[2]
    assert (r.h, r.snapshot_seq, r.last_executed) == (12, 8, 14)
    assert (r.head_hash, net.apps[2].state_root(), r.stable.digest, r.reply_cache) == before
    # Above the stable checkpoint it replies and stores blocks again, as it always did.
    assert sorted(rep.block_height for rep in net.replies[replies:]) == [13, 14]
    assert sorted(net.blocks[2]) == [13, 14]
    net.blocks[2].update({h: b for h, b in blocks.items() if h <= 12})
    net.submit(request(1, client=key(200)))
    net.tick(400)
    assert net.heights() == [15, 15, 15, 15]
    assert len({a.state_root() for a in net.apps}) == 1


def test_restart_refuses_a_log_that_does_not_reach_the_stable_digest() -> None:
    """A restart that re-executes to a state other than the one 2f+1 replicas certified at
    the stable checkpoint is our bug or a damaged disk: stop, do not vote from it."""
    net = Net(params={"durable_snapshot_txs": 9})  # replica 2: snapshots at 8, not 4 nor 12
    for i in range(14):
        net.submit(request(1, client=key(100 + i)))
        net.deliver_all()
    meta = net.records[2][KIND_META]
    seq, _, proof = msgpack.unpackb(meta[META_STABLE])
    meta[META_STABLE] = msgpack.packb([seq, b"\x00" * 32, proof])
    with pytest.raises(LocalProtocolError, match="stable checkpoint"):
        net.restart(2)


def test_equivocating_pre_prepare_is_ignored() -> None:
    """TOCS §4.2: a backup accepts one PRE-PREPARE per (v, n); a second digest is ignored."""
    net = Net()
    r1, r2 = request(1), request(2, client=key(9))
    pps = [
        m.sign(m.PrePrepare(0, 1, m.batch_digest(net.now_ms, (r,)), net.now_ms, (r,), 0), key(0))
        for r in (r1, r2)
    ]
    for pp in pps:
        net.replicas[1].step(pp, net.now_ms)
        net.drain(1)
    assert net.replicas[1].stats["equivocating pre-prepare"] == 1
    assert len(_sent(net, m.Prepare)) == 1


def test_replayed_request_is_answered_from_the_reply_cache() -> None:
    """TOCS §4.1: a request is executed once; a repeat gets the cached reply."""
    net = Net()
    req = request(1)
    net.submit(req)
    net.deliver_all()
    replies_before = len(net.replies)
    net.submit(req, to=[0, 1, 2, 3])
    net.deliver_all()
    net.tick(50)
    assert net.heights() == [1, 1, 1, 1]
    assert len(net.replies) == replies_before + 4


def test_primary_crash_triggers_view_change() -> None:
    """TOCS §4.4, §4.5.2: backups holding an unexecuted request time out, move to view 1,
    the new primary sends NEW-VIEW and the request commits."""
    net = Net()
    net.down.add(0)
    net.submit(request(1), to=[1, 2, 3])
    net.tick(1_500)
    assert [r.view for r in net.replicas[1:]] == [1, 1, 1]
    assert net.heights()[1:] == [1, 1, 1]


def test_view_change_re_proposes_the_prepared_batch() -> None:
    """TOCS §4.4: a batch prepared in view 0 (COMMITs lost) is carried by the prepared
    certificates in VIEW-CHANGE and re-proposed in NEW-VIEW at the same sequence number."""
    net = Net()
    # Every view-0 COMMIT is lost, including STATUS-driven retransmissions.
    net.filter = lambda src, dst, msg: not (isinstance(msg, m.Commit) and msg.view == 0)
    req = request(1)
    net.submit(req)
    net.deliver_all()
    assert all(1 in r.pcerts for r in net.replicas) and net.heights() == [0, 0, 0, 0]
    digest0 = net.replicas[1].pcerts[1].pre_prepare.batch_digest
    net.down.add(0)
    net.tick(1_500)
    assert net.heights()[1:] == [1, 1, 1]
    block = net.blocks[1][1]
    assert block.batch_digest == digest0 and block.view == 1
    new_views = _sent(net, m.NewView)
    assert new_views and new_views[0].pre_prepares[0].batch_digest == digest0


def test_forged_new_view_is_rejected() -> None:
    """TOCS §4.4: backups recompute O from V; a NEW-VIEW whose O differs is rejected even
    when correctly signed by the new primary."""
    net = Net()
    net.down.add(0)
    net.filter = lambda src, dst, msg: not isinstance(msg, m.NewView)
    net.submit(request(1), to=[1, 2, 3])
    net.tick(600)
    genuine = next(nv for nv in _sent(net, m.NewView))
    extra = request(7, client=key(30))
    bogus_pp = m.sign(m.PrePrepare(1, 1, m.batch_digest(0, (extra,)), 0, (extra,), 1), key(1))
    forged = m.sign(dataclasses.replace(genuine, pre_prepares=(bogus_pp,)), key(1))
    target = net.replicas[2]
    target.step(forged, net.now_ms)
    assert target.stats["new-view O differs from the recomputed one"] == 1
    assert not target.active
    target.step(genuine, net.now_ms)
    assert target.active and target.view == 1


def test_view_change_timeout_backs_off_exponentially() -> None:
    """TOCS §4.5.2: with no NEW-VIEW, each further view change waits twice as long."""
    net = Net()
    # Only STATUS (suspicions) and VIEW-CHANGEs get through: 2f+1 replicas want each view,
    # but no NEW-VIEW arrives.
    net.filter = lambda src, dst, msg: isinstance(msg, m.ViewChange | m.Status)
    net.submit(request(1), to=[1, 2, 3])
    starts = []
    last_view = 0
    for _ in range(800):
        net.tick(10)
        if net.replicas[1].view != last_view:
            last_view = net.replicas[1].view
            starts.append(net.now_ms)
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert len(gaps) >= 2 and all(g2 >= 2 * g1 - 20 for g1, g2 in itertools.pairwise(gaps))


def test_alone_a_replica_suspects_the_primary_but_stays_in_its_view_and_votes() -> None:
    """TOCS §4.5.2 (liveness without a lone view change): a cut-off replica whose timer
    expires announces a suspicion and keeps voting in its view; it sends no VIEW-CHANGE (one
    it could never take back) without 2f+1 suspicions. After the heal it is a voter again."""
    net = Net()
    net.filter = lambda src, dst, msg: 1 not in (src, dst)
    net.submit(request(1), to=[1])
    net.tick(5_000)
    r1 = net.replicas[1]
    assert r1.view == 0 and r1.active and r1.suspecting
    assert not _sent(net, m.ViewChange)
    assert r1.stats["suspicions"] == 1  # sticky: announced once, re-sent in every STATUS
    assert not any(r.suspecting for r in net.replicas if r is not r1)
    net.filter = lambda src, dst, msg: True
    net.sent.clear()
    net.tick(200)
    net.submit(request(1))  # the client's retry
    net.submit(request(2, client=key(50)))
    net.deliver_all()
    assert net.heights() == [2, 2, 2, 2]
    assert any(isinstance(msg, m.Commit) and src == 1 and msg.view == 0 for src, _, msg in net.sent)
    assert all(r.view == 0 for r in net.replicas)


def test_f_suspicions_change_nothing_f_plus_1_make_every_replica_suspect() -> None:
    """TOCS §4.5.2's f+1 rule, applied to suspicions: f replicas (all perhaps faulty) cannot
    start a view change; f+1 include a correct one, so the others join, and with 2f+1
    suspicions every replica sends VIEW-CHANGE."""
    net = Net()
    r3 = net.replicas[3]

    def suspicion(i: int) -> m.Status:
        return m.sign(m.Status(0, True, True, 0, 0, i), key(i))

    r3.step(suspicion(1), net.now_ms)
    assert not r3.suspecting and r3.view == 0
    r3.step(suspicion(2), net.now_ms)
    assert r3.stats["joined f+1 suspicions"] == 1
    assert r3.view == 1 and not r3.active and r3.my_view_change is not None  # 2f+1 with r3


def test_replica_joins_after_f_plus_1_view_changes() -> None:
    """TOCS §4.5.2: f+1 VIEW-CHANGEs for a higher view make a replica join without waiting
    for its own timer."""
    net = Net()
    for i in (1, 2):
        vc = m.sign(m.ViewChange(1, 0, (), (), i), key(i))
        net.replicas[3].step(vc, net.now_ms)
    assert net.replicas[3].view == 1 and not net.replicas[3].active


def test_heartbeat_silence_starts_a_view_change() -> None:
    """A dead primary is noticed without client traffic: its STATUS is the heartbeat."""
    net = Net()
    net.tick(200)
    net.down.add(0)
    net.tick(1_000)
    assert all(r.view >= 1 for r in net.replicas[1:])
    assert net.replicas[1].stats["primary silent"] >= 1


def test_restart_from_durable_state() -> None:
    """TOCS §4.1 (the log is stable storage): a replica restarted from its records reaches the
    same chain head and state, then keeps up."""
    net = Net()
    for i in range(6):
        net.submit(request(1, client=key(100 + i)))
        net.deliver_all()
    before = (net.replicas[2].head_hash, net.apps[2].state_root(), net.replicas[2].h)
    net.restart(2)
    assert (net.replicas[2].head_hash, net.apps[2].state_root(), net.replicas[2].h) == before
    net.submit(request(1, client=key(200)))
    net.deliver_all()
    # Muted in the view it restarted in, it does not vote, and follows by commit certificate.
    assert net.heights()[:2] == [7, 7] and net.replicas[2].stats["muted after restart"] > 0
    net.tick(400)
    assert net.heights() == [7, 7, 7, 7]


def test_only_votes_that_need_it_are_fsynced() -> None:
    """TOCS §4.1, §4.4: the Ready that carries a COMMIT (a claim of a prepared certificate a
    VIEW-CHANGE must report) or a VIEW-CHANGE asks for an fsync; the ones carrying only a
    PRE-PREPARE, PREPARE or REPLY do not."""
    net = Net()
    kinds_synced: dict[str, set[bool]] = {}
    first_view_change_synced: dict[int, bool] = {}  # later ones are retransmissions
    original = net.drain

    def drain(i: int) -> None:
        r = net.replicas[i]
        while r.has_ready():
            ready = r.ready()
            for out in ready.messages:
                kinds_synced.setdefault(type(out.msg).__name__, set()).add(ready.must_sync)
                if isinstance(out.msg, m.ViewChange):
                    first_view_change_synced.setdefault(i, ready.must_sync)
            net._apply(i, ready.persist)
            for b in ready.blocks:
                net.blocks[i][b.height] = b
            for out in ready.messages:
                targets = [j for j in range(net.n) if j != i] if out.to is None else [out.to]
                net.queue.extend((i, j, out.msg) for j in targets)
            net.replies += [cr.reply for cr in ready.replies]
            r.advance(ready)

    net.drain = drain  # type: ignore[method-assign]
    net.submit(request(1))
    net.deliver_all()
    assert kinds_synced["Commit"] == {True}
    assert kinds_synced["PrePrepare"] == {False} and kinds_synced["Prepare"] == {False}
    net.down.add(0)
    net.tick(2_000)
    assert first_view_change_synced == {1: True, 2: True, 3: True}
    net.drain = original  # type: ignore[method-assign]


def test_a_prepare_stepped_before_the_certificate_leaves_before_its_fsync() -> None:
    """TOCS §4.2, §4.4: a backup that reads another backup's PREPARE before the PRE-PREPARE
    it matches prepares as soon as it accepts the PRE-PREPARE, in the same Ready as its own
    PREPARE. The COMMIT claims the new certificate and must wait for the fsync; the PREPARE
    claims nothing durable and may leave before it (`Ready.early_messages`), otherwise the
    primary waits an fsync longer for the PREPAREs it needs."""
    net = Net()
    net.submit(request(1))  # the primary's PRE-PREPARE is now queued for 1, 2 and 3
    pre_prepare = next(msg for _, dst, msg in net.queue if dst == 1)
    net.queue.clear()
    net.replicas[2].step(pre_prepare, net.now_ms)
    r2 = net.replicas[2]
    ready = r2.ready()
    prepare_2 = ready.messages[0].msg
    assert isinstance(prepare_2, m.Prepare) and not ready.must_sync
    r2.advance(ready)
    r1 = net.replicas[1]
    r1.step(prepare_2, net.now_ms)  # backup 2's PREPARE first...
    r1.step(pre_prepare, net.now_ms)  # ...then the PRE-PREPARE: prepared at once
    ready = r1.ready()
    kinds = [type(out.msg) for out in ready.messages]
    assert ready.must_sync and kinds == [m.Prepare, m.Commit]
    assert ready.early_messages == 1 and ready.early_replies == 0
    r1.advance(ready)
    # A Ready that needs no fsync lets everything go first.
    r1.step(request(2), net.now_ms)
    ready = r1.ready()
    assert not ready.must_sync and ready.early_messages == len(ready.messages) == 1
    r1.advance(ready)


def test_a_replica_that_lost_unsynced_votes_never_contradicts_them() -> None:
    """TOCS §4.2 (a correct replica prepares one batch per (v, n)) with lazy writes: backup 1
    sent PREPARE for batch A, lost the PRE-PREPARE record in a power cut, and restarted. The
    equivocating primary now offers batch B for the same (v, n): the restarted replica is
    muted in that view and sends no PREPARE at all, so A and B cannot both gather votes from
    it. It votes again in the next view."""
    net = Net()
    a, b = request(1), request(1, client=key(300))
    for req in (a, b):
        assert m.verify_request(req)
    pp_a = m.sign(m.PrePrepare(0, 1, m.batch_digest(net.now_ms, (a,)), net.now_ms, (a,), 0), key(0))
    pp_b = m.sign(m.PrePrepare(0, 1, m.batch_digest(net.now_ms, (b,)), net.now_ms, (b,), 0), key(0))
    r1 = net.replicas[1]
    r1.step(pp_a, net.now_ms)
    net.drain(1)
    assert any(isinstance(msg, m.Prepare) and src == 1 for src, _, msg in net.sent)
    net.restart(1, power_cut=True)
    assert net.records[1].get("log", {}) == {}  # the accepted PRE-PREPARE did not survive
    net.sent.clear()
    net.replicas[1].step(pp_b, net.now_ms)
    net.drain(1)
    assert not any(isinstance(msg, m.Prepare) for _, _, msg in net.sent)
    assert net.replicas[1].stats["muted after restart"] == 1
    # The next view un-mutes it: the cluster (primary 0 silenced) moves on and r1 votes.
    net.queue.clear()
    net.down.add(0)
    net.tick(3_000)
    net.submit(request(2, client=key(301)), to=[1, 2, 3])
    net.tick(1_000)
    assert net.replicas[1].view >= 1 and not net.replicas[1].muted
    assert any(isinstance(msg, m.Prepare | m.Commit) and src == 1 for src, _, msg in net.sent)


def test_state_transfer_rejects_poisoned_snapshots() -> None:
    """TOCS §5.3: a snapshot is installed only if 2f+1 CHECKPOINT signatures certify its
    digest; a tampered one is rejected and the genuine one then accepted."""
    net = Net()
    net.down.add(3)
    for i in range(5):
        net.submit(request(1, client=key(100 + i)))
        net.deliver_all()
    src = net.replicas[0]
    s = src.stable
    assert s.state is not None
    packed = s.state.packed()
    genuine = m.sign(m.StateData(s.seq, s.proof, packed, (), 0), key(0))
    app_snapshot, cache, head, time_ms, root = msgpack.unpackb(packed)
    other = KVApp()
    other.restore(app_snapshot)
    other.execute([encode_set(b"planted", b"x")], BlockContext(99, time_ms, head))
    fields = {
        "unreadable": packed + b"x",
        "another reply cache": msgpack.packb([app_snapshot, [], head, time_ms, root]),
        "another state, same root": msgpack.packb([other.snapshot(), cache, head, time_ms, root]),
    }
    lagger = net.replicas[3]
    for poison in fields.values():
        lagger.step(m.sign(dataclasses.replace(genuine, snapshot=poison), key(0)), net.now_ms)
    assert lagger.stats["remote protocol error: snapshot does not parse"] == 1
    assert lagger.stats["state-data not certified by a stable checkpoint"] == 1
    assert lagger.stats["state-data state does not match its certified root"] == 1
    assert lagger.last_executed == 0 and net.apps[3].state_root() == KVApp().state_root()
    lagger.step(genuine, net.now_ms)
    assert lagger.last_executed == 4 and net.apps[3].state_root() == s.state.app_root


def test_ready_persists_before_sending_and_advance_checks_its_argument() -> None:
    """TOCS §4.1: the PRE-PREPARE a backup accepted is in `persist` of the same Ready that
    carries its PREPARE; `advance` with a foreign Ready is our bug, not the peer's."""
    net = Net()
    req = request(1)
    pp = m.sign(
        m.PrePrepare(0, 1, m.batch_digest(net.now_ms, (req,)), net.now_ms, (req,), 0), key(0)
    )
    r = net.replicas[1]
    r.step(pp, net.now_ms)
    ready = r.ready()
    assert any(kind == KIND_LOG and k == seq_key(1) for kind, k, _ in ready.persist.put)
    assert any(isinstance(o.msg, m.Prepare) for o in ready.messages)
    with pytest.raises(LocalProtocolError):
        r.advance(Ready(ready.persist, [], [], []))
    r.advance(ready)
    assert CLIENT is not None


def test_new_view_fills_gaps_with_null_requests() -> None:
    """TOCS §4.4: O holds, between min-s and max-s, the prepared batch where V has one and a
    null request where it has none; the null request executes as an empty block."""
    net = Net()
    req = request(1)
    pp2 = m.sign(
        m.PrePrepare(0, 2, m.batch_digest(net.now_ms, (req,)), net.now_ms, (req,), 0), key(0)
    )
    preps = tuple(m.sign(m.Prepare(0, 2, pp2.batch_digest, i), key(i)) for i in (1, 2))
    cert = m.PreparedCert(pp2, preps)
    vcs = [m.sign(m.ViewChange(1, 0, (), (cert,) if i == 2 else (), i), key(i)) for i in (1, 2, 3)]
    new_primary = net.replicas[1]
    for vc in vcs:
        new_primary.step(vc, net.now_ms)
    net.drain(1)
    nv = _sent(net, m.NewView)[0]
    assert [(pp.seq, len(pp.requests)) for pp in nv.pre_prepares] == [(1, 0), (2, 1)]
    assert nv.pre_prepares[1].batch_digest == pp2.batch_digest
    net.down.add(0)
    net.deliver_all()
    net.tick(200)
    assert net.heights()[1:] == [2, 2, 2]
    assert net.blocks[2][1].requests == () and net.blocks[2][2].requests == (req,)


def test_lagging_replica_executes_blocks_by_their_commit_certificates() -> None:
    """A replica that missed the whole normal case executes from the blocks its peers send
    in answer to its STATUS, checking each block's 2f+1 COMMIT signatures (TOCS §4.2)."""
    net = Net()
    net.filter = lambda src, dst, msg: dst != 3 or isinstance(msg, m.Block | m.Status)
    for i in range(3):
        net.submit(request(1, client=key(300 + i)))
        net.deliver_all()
    assert net.heights() == [3, 3, 3, 0]
    net.tick(300)
    assert net.heights() == [3, 3, 3, 3]
    assert net.replicas[3].stats["batches executed from certificates"] == 3
    assert net.apps[3].state_root() == net.apps[0].state_root()
    forged = dataclasses.replace(net.blocks[0][3], height=4, certificate=(bytes(64),) * 3)
    net.replicas[3].step(forged, net.now_ms)
    assert net.replicas[3].stats["block with an invalid certificate"] == 1


def test_block_time_outside_the_skew_is_refused() -> None:
    """Block time is the primary's proposal, accepted by a backup only within
    block_time_skew_ms of its own clock (DESIGN.md: "checked by backups")."""
    net = Net()
    req = request(1)
    late = net.now_ms + net.config.block_time_skew_ms + 1
    pp = m.sign(m.PrePrepare(0, 1, m.batch_digest(late, (req,)), late, (req,), 0), key(0))
    net.replicas[1].step(pp, net.now_ms)
    assert net.replicas[1].stats["block time outside the allowed skew"] == 1
    ok_time = net.now_ms - 10
    pp = m.sign(m.PrePrepare(0, 1, m.batch_digest(ok_time, (req,)), ok_time, (req,), 0), key(0))
    net.replicas[1].step(pp, net.now_ms)
    assert 1 in net.replicas[1].slots and net.replicas[1].slots[1].pre_prepare == pp


def test_restart_during_a_view_change_stays_in_it() -> None:
    """TOCS §4.4: a replica that sent VIEW-CHANGE for v+1 must not, after a crash, go back to
    accepting messages of view v; it restarts changing view and re-sends VIEW-CHANGE."""
    net = Net()
    net.submit(request(1))
    net.deliver_all()
    # Only STATUS among the backups: they suspect the silent primary and move to view 1.
    net.filter = lambda src, dst, msg: isinstance(msg, m.Status) and 0 not in (src, dst)
    net.tick(700)
    r1 = net.replicas[1]
    assert r1.view == 1 and not r1.active
    net.restart(1)
    r1 = net.replicas[1]
    assert r1.view == 1 and not r1.active
    assert any(isinstance(o[2], m.ViewChange) and o[0] == 1 for o in net.sent[-3:])
    req = request(2, client=key(40))
    pp = m.sign(
        m.PrePrepare(0, 2, m.batch_digest(net.now_ms, (req,)), net.now_ms, (req,), 0), key(0)
    )
    r1.step(pp, net.now_ms)
    assert r1.stats["pre-prepare for another view"] == 1
    assert net.heights()[1] == 1 and net.apps[1].state_root() == net.apps[0].state_root()


def test_a_retried_request_gets_the_reply_already_signed() -> None:
    """TOCS §4.1: a repeat of the last executed request is answered from the reply cache. A
    client's retry reaches every replica; each answers with the REPLY it signed at execution
    (the same object, no new signature), and the reply still verifies."""
    net = Net()
    req = request(1)
    net.submit(req)
    net.deliver_all()
    first = {r.replica_id: r for r in net.replies}
    assert set(first) == {0, 1, 2, 3}
    net.replies.clear()
    net.submit(req, to=[0, 1, 2, 3])
    assert {r.replica_id for r in net.replies} == {0, 1, 2, 3}
    assert all(r is first[r.replica_id] for r in net.replies)
    assert all(m.verify_reply(r, net.config.verify_keys) for r in net.replies)


def _heights_holding(blocks: dict[int, m.Block], req: m.Request) -> list[int]:
    want = m.request_digest(req)
    return sorted(
        h
        for h, b in blocks.items()
        if want in {m.request_digest(r) for r in b.requests}
        or want in {o.request_digest for o in b.omitted}
    )


def test_a_request_re_proposed_by_new_view_is_not_proposed_again() -> None:
    """TOCS §4.4 with §4.1: the new primary re-proposes the prepared batch in O; the same
    request, still waiting in its queue (a backup keeps a request until it executes, for its
    view-change timer), must not go into a second batch of the new view: one request, one
    block."""
    net = Net()
    net.filter = lambda src, dst, msg: not (isinstance(msg, m.Commit) and msg.view == 0)
    req = request(1)
    net.submit(req, to=[0, 1, 2, 3])
    net.deliver_all()
    assert all(1 in r.pcerts for r in net.replicas)
    net.down.add(0)
    net.tick(1_500)
    assert min(net.heights()[1:]) >= 1
    for i in (1, 2, 3):
        assert _heights_holding(net.blocks[i], req) == [1]


def test_a_restarted_replica_votes_again_above_what_it_may_have_voted_on() -> None:
    """TOCS §4.2 with lazy writes, and no spare lost: a replica restarted after a power cut
    may have sent PREPAREs it forgot, but only for sequence numbers up to the stable
    checkpoint it had + L, and that checkpoint was fsynced before any of them left. So it
    stays muted in its view up to there (its stable checkpoint on disk + L) and votes again
    in the same view above it, with no view change."""
    net = Net()
    for i in range(2):
        net.submit(request(1, client=key(400 + i)))
        net.deliver_all()
    net.restart(2, power_cut=True)
    r2 = net.replicas[2]
    assert r2.muted and r2.mute_through == 0 + net.config.log_window
    net.sent.clear()
    for i in range(2, 14):
        net.submit(request(1, client=key(400 + i)))
        net.deliver_all()
        net.tick(300)  # retransmission: r2 executes what it did not vote on by certificate
    votes = [msg.seq for src, _, msg in net.sent if src == 2 and isinstance(msg, m.Prepare)]
    assert votes and min(votes) > r2.mute_through and r2.stats["muted after restart"] > 0
    assert not r2.muted and r2.stats["voting again after restart"] == 1
    assert all(r.view == 0 for r in net.replicas) and net.heights() == [14] * 4
    # Every stable checkpoint was fsynced before anything produced after it left.
    for i in range(4):
        assert net.synced[i][KIND_META][META_STABLE] == net.records[i][KIND_META][META_STABLE]


def test_a_replica_behind_but_not_behind_the_checkpoint_catches_up_on_an_idle_cluster() -> None:
    """TOCS §5.2 retransmission: a replica that missed some batches above the stable
    checkpoint gets them as blocks with certificates (no state transfer: it is not behind h).
    With fewer recent blocks kept than the window holds, the oldest of those were dropped,
    and with no further traffic no checkpoint ever became stable to rescue it."""
    net = Net(params={"log_window": 16, "checkpoint_interval": 8, "state_transfer_blocks_max": 2})
    rid = 0
    for _ in range(8):
        rid += 1
        net.submit(request(rid))
        net.tick(20)
    net.down.add(3)
    for _ in range(6):
        rid += 1
        net.submit(request(rid))
        net.tick(20)
    net.down.discard(3)
    net.tick(3_000)  # idle: only STATUS and retransmissions
    assert [r.h for r in net.replicas] == [8, 8, 8, 8]
    assert net.heights() == [14, 14, 14, 14]
