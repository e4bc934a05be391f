"""Seeds where every crash is a power cut: a restarted replica finds on disk only what its
last fsynced `Ready` (`must_sync`) left, not the writes the node made without an fsync.

Why: the node fsyncs only the records that protect a vote (prepared certificates, the view;
TOCS §4.1, §4.4) and writes the rest lazily; a replica restarted while active in view v is
muted in v, so a PRE-PREPARE or PREPARE it sent and forgot cannot be contradicted. The stock
simulator keeps every write across a crash (a killed process loses nothing the OS has); this
one loses the unsynced ones, and the same checkers (agreement, verified chains, exactly once,
liveness) must hold: restores from partial records, muted replicas and the view changes that
un-mute them must not cost safety or liveness. (Random seeds rarely line up an equivocating
primary with a cut at the right instant: with muting switched off, 150 seeds still pass. The
counterexample muting exists for is pinned down in
`tests/ledger_bridge/pbft/test_replica.py::test_a_replica_that_lost_unsynced_votes_never_contradicts_them`.)
"""

from __future__ import annotations

from typing import Any

import pytest

from ledger_bridge.pbft.replica import Ready
from ledger_bridge.sim.checkers import check
from ledger_bridge.sim.core import Scenario, SimNode, Simulator

SEEDS = 60
CAMPAIGN_SEEDS = 2_000
Records = dict[str, dict[bytes, bytes]]


class PowerCutSimulator(Simulator):
    def __init__(self, scenario: Scenario, **overrides: Any) -> None:
        super().__init__(scenario, **overrides)
        self.synced: dict[int, Records] = {}
        self.lost_rows = 0  # rows a power cut took away, summed over restarts

    def _handle(self, i: int, node: SimNode, ready: Ready) -> None:
        super()._handle(i, node, ready)
        if ready.must_sync:
            self.synced[i] = {kind: dict(rows) for kind, rows in node.records.items()}

    def _new_node(self, i: int, old: SimNode | None) -> SimNode:
        if old is not None:
            on_disk = {kind: dict(rows) for kind, rows in self.synced.get(i, {}).items()}
            self.lost_rows += sum(
                1
                for kind, rows in old.records.items()
                for key, value in rows.items()
                if on_disk.get(kind, {}).get(key) != value
            )
            old.records = on_disk
        return super()._new_node(i, old)


def _run(seeds: range) -> tuple[list[str], int]:
    failures, lost = [], 0
    for seed in seeds:
        byzantine = seed % 3 == 0
        sim = PowerCutSimulator(Scenario.random(seed, byzantine=byzantine))
        sim.run()
        lost += sim.lost_rows
        report = check(sim)
        if not report.ok:
            failures.append(f"seed {seed} byzantine={byzantine}: {report.violations[:3]}")
    return failures, lost


def test_power_cuts_lose_unsynced_writes_and_the_checkers_still_hold() -> None:
    failures, lost = _run(range(SEEDS))
    assert failures == []
    assert lost > 0  # the cuts did take writes away: the test is not vacuous


@pytest.mark.slow
def test_power_cut_campaign() -> None:
    assert _run(range(SEEDS, SEEDS + CAMPAIGN_SEEDS))[0] == []
