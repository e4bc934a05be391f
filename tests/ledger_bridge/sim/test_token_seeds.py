"""A Byzantine replica, primary or not, cannot mint, double-spend or redeem twice.

Each seed runs the token economy (`Scenario.tokens`): the consent contracts replicated on
n = 4 (n = 7 for two colluders), clients racing rewards, transfers that together overdraw,
coupons redeemed twice, spent twice (signed again, or the same spend sent to another replica
by another client) or by the rival partner, claims rewarded in two requests; messages lost,
duplicated, delayed, partitioned. The Byzantine replicas stuff their batches with made-up
transactions (rewards they author, claims crediting themselves under a device's forged
signature, genuine rewards altered after signing, transfers and redemptions in a subject's
name, spends of coupons they saw), repeat requests, answer clients with made-up results,
and may draw any other lie of the simulator (forged certificates, corrupt checkpoints, a
state transfer planting a fortune in their account...). Every checker holds, including the
token checks (`ledger_bridge/sim/token_checks.py`), and the controls below show those checks
fail when a state is corrupted, the contracts are wrong, or a client believes a lie.

Default run: ~30 s; `--campaign` runs thousands of seeds.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any

import pytest

from ledger_bridge.contracts import rules
from ledger_bridge.sim.checkers import Report, check
from ledger_bridge.sim.core import Scenario, Simulator
from ledger_bridge.sim.token_checks import check_tokens
from ledger_bridge.sim.tokens import RecordingConsent

SEEDS = {"primary": 24, "backup": 24, "colluding": 8, "none": 6}
CAMPAIGN_SEEDS = {"primary": 2_000, "backup": 2_000, "colluding": 1_000}
# the refusals that show double-spend attempts reached the contracts and lost
DOUBLE_SPENDS = (
    "event.reward:duplicate_event",
    "token.transfer:insufficient_tokens",
    "token.redeem:duplicate",
    "coupon.spend:coupon_spent",
    "coupon.spend:not_your_coupon",
)


def _run(byzantine: str, seeds: range) -> tuple[list[str], Counter[str], Counter[str]]:
    failures: list[str] = []
    stats: Counter[str] = Counter()
    lies: Counter[str] = Counter()
    for seed in seeds:
        sc = Scenario.tokens(seed, byzantine)
        sim = Simulator(sc).run()
        report = check(sim)
        if not report.ok:
            failures.append(f"tokens seed {seed} ({byzantine}): {report.violations[:3]}")
        stats.update(report.stats)
        lies.update(sim.token_lies_told)
        lies.update(f"behaviour {b}" for b in sc.behaviours)
    return failures, stats, lies


def _assert_exercised(
    stats: Counter[str], lies: Counter[str], *, byzantine: bool, every_attempt: bool = True
) -> None:
    """Not vacuous: tokens were minted, transferred, redeemed and spent; double-spend
    attempts lost; the Byzantine replicas' made-up transactions reached execution (those
    the contracts' admission lets through) and were refused there, and their lies were
    told. With `every_attempt`, each kind of double-spend attempt lost at least once."""
    for ok in ("event.reward:ok", "token.transfer:ok", "token.redeem:ok", "coupon.spend:ok"):
        assert stats[ok] > 0, ok
    assert sum(stats[code] for code in DOUBLE_SPENDS) > 0, stats
    if every_attempt:
        assert all(stats[code] > 0 for code in DOUBLE_SPENDS), stats
    if byzantine:
        assert stats["lies executed"] > 0 and lies["lying reply"] > 0, (stats, lies)
        assert stats["event.reward:unauthorized"] > 0  # its own rewards


def test_byzantine_primary_seeds() -> None:
    failures, stats, lies = _run("primary", range(SEEDS["primary"]))
    assert failures == []
    _assert_exercised(stats, lies, byzantine=True)
    assert lies["batch stuffed"] > 0 and lies["request repeated in a batch"] > 0
    # Only a primary puts a transaction admission would refuse (a forged author's
    # signature, a reward altered after signing) before the contracts themselves.
    assert stats["event.reward:bad_signature"] + stats["token.transfer:bad_signature"] > 0


def test_byzantine_backup_seeds() -> None:
    failures, stats, lies = _run("backup", range(SEEDS["backup"]))
    assert failures == []
    _assert_exercised(stats, lies, byzantine=True)
    assert lies["sent as a client"] > 0


def test_two_colluding_byzantine_replicas_seeds() -> None:
    failures, stats, lies = _run("colluding", range(SEEDS["colluding"]))
    assert failures == []
    _assert_exercised(stats, lies, byzantine=True, every_attempt=False)


def test_honest_cluster_seeds() -> None:
    failures, stats, lies = _run("none", range(SEEDS["none"]))
    assert failures == []
    _assert_exercised(stats, lies, byzantine=False, every_attempt=False)


def test_state_transfers_plant_no_fortune() -> None:
    """Seeds where a Byzantine replica served a state transfer with a fortune planted in its
    account under a genuine root: refused, every checker holds."""
    planted = 0
    for seed in range(40):
        sc = Scenario.tokens(seed, "backup")
        sc.behaviours |= {"poison_state"}
        sc.partitions = [(100, sc.fault_end_ms + 800, [{(sc.byzantine or 0) % 3 + 1}])]
        sim = Simulator(sc).run()
        assert check(sim).ok, seed
        planted += sim.token_lies_told["planted state"]
        if planted:
            return
    raise AssertionError("no seed served a planted state")


# -- controls: the token checks fail when something is wrong ---------------------------------


def _honest_run(seed: int = 3) -> Simulator:
    return Simulator(Scenario.tokens(seed, "primary")).run()


def _app(sim: Simulator, i: int) -> RecordingConsent:
    app = sim.nodes[i].app
    assert isinstance(app, RecordingConsent)
    return app


def test_control_a_corrupted_honest_state_is_caught() -> None:
    sim = _honest_run()
    assert check_tokens(sim).violations == []
    i = sim.honest()[0]
    state = _app(sim, i).state
    account = next(a for (a,) in state.group("lots", "all") if state.get("lots", a))
    [day, mtok], *rest = state.get("lots", account)
    state.put("lots", account, [[day, mtok + 1_000], *rest])
    violations = check_tokens(sim).violations
    height = sim.nodes[i].replica.last_executed
    assert f"replica {i}: its state at height {height} is not the replay's" in violations
    assert any("does not add up" in x for x in violations)
    assert any("balances differ from the books" in x for x in violations)


def test_control_a_coupon_spent_twice_by_a_buggy_contract_is_caught(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A contract that forgets a coupon was spent: the replicas agree with each other and
    with the replay (the bug is everywhere), the books do not."""
    real = rules.HANDLERS["coupon.spend"]

    def forgetful(c: rules.Ctx) -> dict[str, Any]:
        result = real(c)
        coupon = result["coupon"]
        c.state.put("coupon", coupon, {**c.state.get("coupon", coupon), "status": "issued"})
        return result

    monkeypatch.setitem(rules.HANDLERS, "coupon.spend", forgetful)
    reports = [check(Simulator(Scenario.tokens(seed, "none")).run()) for seed in range(3, 9)]
    violations = [x for r in reports for x in r.violations]
    assert any("a coupon spent twice or never issued" in x for x in violations), violations
    assert not any("not the replay's" in x for x in violations)


def test_control_an_event_rewarded_twice_by_a_buggy_contract_is_caught(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = rules.HANDLERS["event.reward"]

    def amnesic(c: rules.Ctx) -> dict[str, Any]:
        result = real(c)
        for claim in c.tx.body["claims"]:
            c.state.delete("event", claim["device"], claim["event"])
        return result

    monkeypatch.setitem(rules.HANDLERS, "event.reward", amnesic)
    reports = [check(Simulator(Scenario.tokens(seed, "none")).run()) for seed in range(2, 6)]
    violations = [x for r in reports for x in r.violations]
    assert any("an event rewarded twice" in x for x in violations), violations


def test_control_a_transfer_that_overdraws_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """A transfer that credits the recipient but takes nothing from the sender when the
    sender cannot pay: the supply no longer adds up, and the books see the overdraft."""
    real = rules.HANDLERS["token.transfer"]

    def lenient(c: rules.Ctx) -> dict[str, Any]:
        try:
            return real(c)
        except rules.Reject as r:
            if r.code != "insufficient_tokens":
                raise
        to = c.tx.body["to"].hex()
        amount = c.tx.body["amount_mtok"]
        c.state.put("balance", to, (c.state.get("balance", to) or 0) + amount)
        c.state.put("lots", to, [*(c.state.get("lots", to) or []), [0, amount]])
        return {"ok": True}

    monkeypatch.setitem(rules.HANDLERS, "token.transfer", lenient)
    reports = [check(Simulator(Scenario.tokens(seed, "none")).run()) for seed in range(4)]
    violations = [x for r in reports for x in r.violations]
    assert any("overdrawn" in x for x in violations), violations
    assert any("does not add up" in x for x in violations), violations


def test_control_a_client_believing_more_than_f_liars_is_caught() -> None:
    """Two liars in four replicas are more than f = 1: their f + 1 matching made-up replies
    convince the client, and the checks say the client accepted what no block said."""
    sc = dataclasses.replace(
        Scenario.tokens(5, "none"),
        byzantine=1,
        also_byzantine=(2,),
        behaviours=frozenset({"lie_replies"}),
    )
    report: Report = check(Simulator(sc).run())
    assert any("a client accepted" in x for x in report.violations), report.violations


# -- campaigns -----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("byzantine", list(CAMPAIGN_SEEDS))
def test_token_campaign(byzantine: str) -> None:
    start = SEEDS[byzantine]
    failures = _run(byzantine, range(start, start + CAMPAIGN_SEEDS[byzantine]))[0]
    assert failures == []
