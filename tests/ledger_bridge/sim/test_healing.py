"""One fault, healed, then another: the healed replica must be a spare again.

A replica that restarted, or that was cut off from the primary, is back to voting in the
cluster's view once it caught up, so a second single fault (a backup crash) leaves 2f+1
voters in that view and the cluster commits on without a view change. Each scenario runs the
full checkers too.
"""

from __future__ import annotations

from collections import Counter

from ledger_bridge.sim.checkers import check
from ledger_bridge.sim.core import Scenario, Simulator

NEVER_MS = 10**9
SECOND_FAULT_MS = 1_800
REQUESTS = 150  # per client: about 3 s of virtual time, the second fault mid-way


def _run(sc: Scenario) -> tuple[Simulator, Counter[str]]:
    sim = Simulator(sc).run()
    report = check(sim)
    assert report.ok, f"seed {sc.seed}: {report.violations}"
    stats: Counter[str] = Counter()
    for i in sim.honest():
        stats.update(sim.nodes[i].replica.stats)
    return sim, stats


def test_a_restarted_backup_votes_again_before_the_next_fault() -> None:
    """Backup 2 crashes and restarts (muted in view 0 for the sequence numbers it may have
    voted on before); once the cluster passed them it votes again, so when backup 3 crashes
    for good the cluster still has 2f+1 voters in view 0: no view change, every request
    done."""
    sc = Scenario(
        seed=201,
        clients=3,
        requests_per_client=REQUESTS,
        crashes=[(2, 100, 150), (3, SECOND_FAULT_MS, NEVER_MS)],
        fault_end_ms=SECOND_FAULT_MS + 100,
    )
    sim, stats = _run(sc)
    restarted = sim.nodes[2].replica.stats
    assert restarted["restarts"] == 1 and restarted["muted after restart"] > 0
    assert restarted["voting again after restart"] == 1
    assert stats["new views installed"] == 0, "a view change: the healed replica was no spare"
    assert all(sim.nodes[i].replica.view == 0 for i in (0, 1, 2))
    assert not sim.nodes[2].replica.muted
    assert sim.finished_ms is not None and sim.finished_ms > SECOND_FAULT_MS + 500


def test_a_replica_cut_off_from_the_primary_votes_again_after_the_heal() -> None:
    """Backup 1 is cut off (it stops hearing the primary and suspects it) and the others,
    who hear the primary, do not follow; after the heal it votes in view 0 again, so when
    backup 3 crashes for good the cluster orders on in view 0."""
    sc = Scenario(
        seed=202,
        clients=3,
        requests_per_client=REQUESTS,
        partitions=[(100, 1_200, [{1}])],
        crashes=[(3, SECOND_FAULT_MS, NEVER_MS)],
        fault_end_ms=SECOND_FAULT_MS + 100,
    )
    sim, stats = _run(sc)
    assert stats["primary silent"] >= 1
    assert stats["new views installed"] == 0, "a view change: the healed replica was no spare"
    assert all(sim.nodes[i].replica.view == 0 for i in (0, 1, 2))
    assert sim.finished_ms is not None and sim.finished_ms > SECOND_FAULT_MS + 500
