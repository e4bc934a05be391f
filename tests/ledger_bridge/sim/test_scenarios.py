"""The named fault scenarios, each on the real replica code in the seeded simulator.

Every test runs the full checkers (agreement, prefix consistency, equal checkpoint digests,
exactly-once, only signed requests, liveness after stabilisation, bounded memory) and then
asserts that the defence the scenario targets actually fired, so a scenario that silently
stopped exercising its fault fails.
"""

from __future__ import annotations

from collections import Counter

from ledger_bridge.sim.checkers import Report, check
from ledger_bridge.sim.core import Scenario, Simulator

NEVER_MS = 10**9


def _run(sc: Scenario) -> tuple[Simulator, Report, Counter[str]]:
    sim = Simulator(sc).run()
    report = check(sim)
    assert report.ok, f"seed {sc.seed}: {report.violations}"
    stats: Counter[str] = Counter()
    for i in sim.honest():
        stats.update(sim.nodes[i].replica.stats)
    return sim, report, stats


def _caught_up(sim: Simulator, nodes: list[int]) -> None:
    """Same height and state everywhere: a replica that fell behind (even one alone in a
    higher view it escalated to) catches up by state transfer and commit certificates."""
    heights = {i: max(sim.nodes[i].blocks, default=0) for i in nodes}
    top = max(heights.values())
    assert all(h == top for h in heights.values()), heights
    roots = {sim.nodes[i].replica.app.state_root() for i in nodes}
    assert len(roots) == 1


def test_primary_crash_view_change_loses_no_committed_request() -> None:
    """TOCS §4.4: the primary dies mid-load; backups time out, change view, and every
    acknowledged request stays in the chain (the checker verifies each receipt's height)."""
    sc = Scenario(seed=101, clients=3, requests_per_client=8, crashes=[(0, 150, NEVER_MS)])
    sim, _, stats = _run(sc)
    assert stats["new views installed"] >= 3
    assert all(sim.nodes[i].replica.view >= 1 for i in (1, 2, 3))
    _caught_up(sim, [1, 2, 3])


def test_backup_crash_and_restart_from_durable_state() -> None:
    """A backup crashes, restarts from its persisted records, and catches up."""
    sc = Scenario(seed=102, clients=3, requests_per_client=8, crashes=[(2, 100, 900)])
    sim, _, stats = _run(sc)
    assert stats["restarts"] == 1
    _caught_up(sim, [0, 1, 2, 3])


def test_partition_and_heal() -> None:
    """The primary is cut off with no replica; the majority side changes view; after the heal
    the isolated replica joins the new view (via NEW-VIEW retransmission) and catches up."""
    sc = Scenario(
        seed=103,
        clients=2,
        requests_per_client=8,
        partitions=[(100, 1_500, [{0}])],
        fault_end_ms=1_500,
    )
    sim, _, stats = _run(sc)
    assert stats["new views installed"] >= 3
    _caught_up(sim, [0, 1, 2, 3])


def test_twenty_percent_message_loss() -> None:
    """20 % of all messages dropped for the whole run: retransmission keeps it live."""
    sc = Scenario(
        seed=104,
        clients=3,
        requests_per_client=8,
        drop_p=0.2,
        dup_p=0.05,
        delay_ms=(1, 20),
        fault_end_ms=20_000,
    )
    _, report, _ = _run(sc)
    assert report.finished_ms is not None and report.finished_ms < 20_000


def test_equivocating_primary() -> None:
    """TOCS §4.2 (Twins style): the primary sends two different PRE-PREPAREs for one sequence
    number, one to each half of the backups; at most one can prepare."""
    sc = Scenario(
        seed=105,
        clients=3,
        requests_per_client=6,
        byzantine=0,
        behaviours=frozenset({"equivocate"}),
    )
    _, _, stats = _run(sc)
    assert stats["equivocating pre-prepare"] + stats["prepare for another digest"] > 0


def test_forged_signatures_and_certificates() -> None:
    """Votes signed by the wrong key or with garbage signatures are ignored, and a
    VIEW-CHANGE carrying a forged prepared certificate is rejected (TOCS §4.4)."""
    sc = Scenario(
        seed=106,
        clients=3,
        requests_per_client=6,
        byzantine=3,
        behaviours=frozenset({"forge_sigs", "forge_certs"}),
        partitions=[(200, 1_200, [{0}])],
        fault_end_ms=1_200,
    )
    _, _, stats = _run(sc)
    assert stats["bad prepare signature"] + stats["bad commit signature"] > 0
    assert stats["view-change with a forged proof"] > 0


def test_sequence_numbers_outside_the_watermarks() -> None:
    """TOCS §4.3: messages for sequence numbers above h + L are ignored."""
    sc = Scenario(
        seed=107, clients=2, requests_per_client=6, byzantine=0, behaviours=frozenset({"watermark"})
    )
    _, _, stats = _run(sc)
    assert stats["pre-prepare outside the watermarks"] > 0


def test_censoring_primary() -> None:
    """TOCS §4.5.2: the primary keeps sending heartbeats but never orders requests; the
    backups' request timers force a view change."""
    sc = Scenario(
        seed=108, clients=2, requests_per_client=5, byzantine=0, behaviours=frozenset({"censor"})
    )
    sim, _, stats = _run(sc)
    assert stats["view-change timeout"] > 0
    assert all(sim.nodes[i].replica.view >= 1 for i in sim.honest())


def test_forged_new_view() -> None:
    """TOCS §4.4: the new primary (Byzantine) adds a batch to O that no VIEW-CHANGE holds;
    backups recompute O, reject it, and move on to the next view."""
    sc = Scenario(
        seed=109,
        clients=2,
        requests_per_client=5,
        byzantine=1,
        behaviours=frozenset({"forge_new_view"}),
        partitions=[(100, 900, [{0}])],
        fault_end_ms=900,
    )
    sim, _, stats = _run(sc)
    assert stats["new-view O differs from the recomputed one"] > 0
    assert all(sim.nodes[i].replica.view >= 2 for i in sim.honest())


def test_corrupted_checkpoint_digest() -> None:
    """TOCS §4.3: one replica's CHECKPOINTs carry a wrong digest; the 2f+1 honest ones still
    make checkpoints stable and garbage collection proceeds."""
    sc = Scenario(
        seed=110,
        clients=3,
        requests_per_client=8,
        byzantine=2,
        behaviours=frozenset({"corrupt_checkpoint"}),
    )
    sim, _, _ = _run(sc)
    for i in sim.honest():
        r = sim.nodes[i].replica
        assert r.h >= sc.checkpoint_interval
        assert 2 not in {c.replica_id for c in r.stable.proof}


def test_replayed_client_requests() -> None:
    """TOCS §4.1: replayed requests are answered from the reply cache, never re-executed
    (the exactly-once checker looks at every execution of every replica)."""
    sc = Scenario(
        seed=111,
        clients=3,
        requests_per_client=8,
        replay_requests=True,
        dup_p=0.2,
        fault_end_ms=3_000,
    )
    _, _, stats = _run(sc)
    assert stats["old request"] > 0


def test_poisoned_state_transfer() -> None:
    """TOCS §5.3: a Byzantine replica offers a lagging replica snapshots that do not match
    the certified checkpoint: a reply cache the digest does not cover, an application state
    that does not restore to the certified root; it rejects both and takes a correct one."""
    sc = Scenario(
        seed=112,
        clients=3,
        requests_per_client=10,
        byzantine=1,
        behaviours=frozenset({"poison_state"}),
        # Cut off first; then for a second it hears only the poisoner (replica 1).
        partitions=[(30, 2_500, [{3}]), (2_500, 3_500, [{0, 2}])],
        fault_end_ms=3_500,
    )
    sim, _, _ = _run(sc)
    lagger = sim.nodes[3].replica.stats
    assert lagger["state-data not certified by a stable checkpoint"] > 0
    assert lagger["state-data state does not match its certified root"] > 0
    assert lagger["state transfers applied"] > 0
    _caught_up(sim, [0, 2, 3])


def test_replica_lagging_past_the_log_window_catches_up() -> None:
    """TOCS §4.3, §5.3: a replica cut off while the others move more than L sequence numbers
    ahead cannot use the log (garbage-collected); it catches up by certified state transfer."""
    sc = Scenario(
        seed=113,
        clients=3,
        requests_per_client=10,
        partitions=[(30, 2_500, [{3}])],
        fault_end_ms=2_500,
    )
    sim, _, _ = _run(sc)
    lagger = sim.nodes[3].replica.stats
    assert lagger["state transfers applied"] > 0
    assert max(sim.nodes[0].blocks) > sc.log_window
    _caught_up(sim, [0, 1, 2, 3])


def test_seven_replicas_with_a_crash_and_a_byzantine_primary() -> None:
    """n = 7, f = 2: an equivocating primary and a crashed backup at the same time."""
    sc = Scenario(
        seed=114,
        n=7,
        clients=3,
        requests_per_client=6,
        byzantine=0,
        behaviours=frozenset({"equivocate", "forge_sigs"}),
        crashes=[(5, 100, NEVER_MS)],
    )
    sim, _, stats = _run(sc)
    assert stats["equivocating pre-prepare"] + stats["bad prepare signature"] > 0
    _caught_up(sim, [1, 2, 3, 4, 6])


def test_seven_replicas_with_two_byzantine_replicas() -> None:
    """n = 7, f = 2: two colluding Byzantine replicas (an equivocating primary and a backup
    forging certificates and NEW-VIEWs) cannot break agreement, and 5 honest make progress."""
    sc = Scenario(
        seed=115,
        n=7,
        clients=3,
        requests_per_client=6,
        byzantine=0,
        also_byzantine=(1,),
        behaviours=frozenset({"equivocate", "forge_certs", "forge_new_view", "forge_sigs"}),
    )
    sim, _, stats = _run(sc)
    assert sim.honest() == [2, 3, 4, 5, 6]
    assert stats["equivocating pre-prepare"] + stats["prepare for another digest"] > 0
    _caught_up(sim, sim.honest())
