"""Redaction under random schedules (`Scenario.forgetting`): clients write keys and forget
them, while messages are lost, delayed and duplicated, and either a replica crashes long
enough to come back by a peer's snapshot (it must redact the blocks it held from before), or
an honest replica is cut off while a Byzantine one serves the redacted bodies back in its
state transfers. Every checker holds (agreement, chains that verify, exactly once,
liveness), and the redaction checker: no honest replica past an erasure's checkpoint holds
or serves a body it lists. Also with power cuts (only the fsynced writes survive a crash).
"""

from __future__ import annotations

import functools

import pytest

from ledger_bridge.sim.checkers import check
from ledger_bridge.sim.core import Scenario, Simulator
from tests.ledger_bridge.sim.pool import each_seed
from tests.ledger_bridge.sim.test_power_cut import PowerCutSimulator

SEEDS = 200
POWER_CUT_SEEDS = 60
CAMPAIGN_SEEDS = 5_000
_KEYS = ("applied", "refused", "served", "rebuilt")


_Outcome = tuple[str | None, dict[str, int]]


def _outcome(seed: int, sim_class: type[Simulator] = Simulator) -> _Outcome:
    """One seed's failure (None if every checker held) and its redaction counts."""
    sim = sim_class(Scenario.forgetting(seed)).run()
    report = check(sim)
    failure = None if report.ok else f"forgetting seed {seed}: {report.violations[:3]}"
    honest = [sim.nodes[i].replica for i in sim.honest()]
    counts = {
        "applied": sum(r.redactions_applied for r in honest),
        "refused": sum(r.unredacted_refused for r in honest),
        "served": sim.unredacted_sent,
        "rebuilt": sum(
            1 for r in honest if r.stats["state transfers applied"] and r.redactions_applied
        ),
    }
    return failure, counts


def _run(seeds: range, sim_class: type[Simulator] = Simulator) -> tuple[list[str], dict[str, int]]:
    outcomes = each_seed(functools.partial(_outcome, sim_class=sim_class), seeds)
    failures = [failure for failure, _ in outcomes if failure is not None]
    totals = {key: sum(counts[key] for _, counts in outcomes) for key in _KEYS}
    return failures, totals


def test_forgetting_seeds() -> None:
    failures, totals = _run(range(SEEDS))
    assert failures == []
    # Not vacuous: redactions were applied, replicas were rebuilt from a peer's snapshot and
    # then redacted, and the Byzantine replicas did serve bodies that were refused.
    assert totals["applied"] > 0 and totals["rebuilt"] > 0
    assert totals["served"] > 0 and totals["refused"] > 0


def test_forgetting_seeds_with_power_cuts() -> None:
    failures, totals = _run(range(SEEDS, SEEDS + POWER_CUT_SEEDS), PowerCutSimulator)
    assert failures == []
    assert totals["applied"] > 0


@pytest.mark.slow
def test_forgetting_campaign() -> None:
    start = SEEDS + POWER_CUT_SEEDS
    assert _run(range(start, start + CAMPAIGN_SEEDS))[0] == []
    assert _run(range(start, start + CAMPAIGN_SEEDS // 5), PowerCutSimulator)[0] == []
