"""Governance by colleges: one college, one vote; each college decides by a majority of its
voting members.

The white paper's SCIC has three colleges (data providers, service providers, citizens); a
proposal passes only when every college approves, so no college, however numerous, can decide
for the others. These tests build the founding cooperative of `Chain.new()`:
providers = {vault, validator 1, validator 4}, services = {DPO, validator 2},
citizens = {validator 3}. Residents registered by their own key are members at once but vote
only once governance admits them to voting (tests/security/test_sybil.py attacks that rule).
"""

from __future__ import annotations

from typing import Any

from ledger_bridge.contracts import bodies, rules
from tests.ledger_bridge.contracts.harness import DAY, Chain, Member, standard


def propose(chain: Chain, author: Member, action: dict[str, Any]) -> int:
    result = chain.ok(
        author, "governance.propose", {"action": action, "voting_ends": chain.time_ms + DAY}
    )
    return int(result["proposal"])


def vote(chain: Chain, voter: Member, pid: int, approve: bool = True) -> dict[str, Any]:
    return chain.one(voter, "governance.vote", {"proposal": pid, "approve": approve})


def founders(chain: Chain) -> dict[str, list[Member]]:
    v = chain.validators
    return {
        "providers": [chain.vault, v[0], v[3]],
        "services": [chain.dpo, v[1]],
        "citizens": [v[2]],
    }


def test_a_proposal_passes_only_when_every_college_has_a_majority() -> None:
    chain = Chain.new()
    col = founders(chain)
    pid = propose(chain, chain.vault, {"kind": "approve_purpose", "purpose": "air-quality-study"})
    # providers: 2 of 3 is a majority; services: 1 of 2 is not (a majority is more than half)
    for voter in [*col["providers"][:2], col["services"][0]]:
        assert vote(chain, voter, pid)["status"] == "open"
    assert "air-quality-study" not in chain.query(q="status")["purposes"]
    assert vote(chain, col["services"][1], pid)["status"] == "open"  # citizens have not voted
    assert vote(chain, col["citizens"][0], pid)["status"] == "passed"
    assert "air-quality-study" in chain.query(q="status")["purposes"]
    assert chain.query(q="proposal", proposal=pid)["status"] == "passed"
    # a vote after the decision changes nothing
    assert vote(chain, col["providers"][2], pid)["code"] == "closed"


def test_one_college_one_vote_a_numerous_college_cannot_outvote_a_small_one() -> None:
    chain = Chain.new()
    col = founders(chain)
    citizens = [*col["citizens"]]
    for _ in range(3):  # 4 citizens with a vote
        resident = chain.subject()
        chain.admit_to_voting(resident, *citizens[1:])
        citizens.append(resident)
    pid = propose(chain, chain.dpo, {"kind": "approve_purpose", "purpose": "air-quality-study"})
    for voter in col["providers"] + col["services"]:
        vote(chain, voter, pid)
    # every legal entity approves; 2 of 4 citizens is half, not a majority
    for voter in citizens[:2]:
        assert vote(chain, voter, pid)["status"] == "open"
    assert vote(chain, citizens[2], pid)["status"] == "passed"

    # and the smallest college can block alone: half of the citizens against rejects
    pid2 = propose(chain, chain.vault, {"kind": "approve_purpose", "purpose": "marketing"})
    for voter in col["providers"] + col["services"]:
        vote(chain, voter, pid2)
    assert vote(chain, citizens[0], pid2, approve=False)["status"] == "open"
    assert vote(chain, citizens[1], pid2, approve=False)["status"] == "rejected"
    assert "marketing" not in chain.query(q="status")["purposes"]


def test_a_legal_entity_cannot_admit_itself() -> None:
    chain = Chain.new()
    col = founders(chain)
    fleet = chain.fresh("provider", "providers")
    assert (
        chain.ok(fleet, "member.register", {"role": "provider", "college": "providers"})["status"]
        == "pending"
    )
    # it cannot propose its own admission, nor vote, nor pass itself off as a resident
    admit = {"kind": "admit_member", "member": fleet.pub}
    assert (
        chain.one(
            fleet, "governance.propose", {"action": admit, "voting_ends": chain.time_ms + DAY}
        )["code"]
        == "not_admitted"
    )
    pid = propose(chain, chain.vault, admit)
    assert vote(chain, fleet, pid)["code"] == "not_admitted"
    assert (
        chain.one(fleet, "member.register", {"role": "subject", "college": "citizens"})["code"]
        == "exists"
    )
    # the providers and services approve, the citizens refuse: it stays pending
    for voter in col["providers"] + col["services"]:
        assert vote(chain, voter, pid)["status"] == "open"
    assert vote(chain, col["citizens"][0], pid, approve=False)["status"] == "rejected"
    assert chain.query(q="member", key=fleet.pub)["status"] == "pending"
    assert chain.query(q="status")["colleges"]["providers"] == 3


def test_a_legal_entity_registering_as_a_resident_is_refused() -> None:
    chain = Chain.new()
    sneaky = chain.fresh("provider", "providers")
    # residents are admitted at once, but only into the resident college
    assert (
        chain.one(sneaky, "member.register", {"role": "subject", "college": "providers"})["code"]
        == "invalid"
    )
    assert chain.query(q="member", key=sneaky.pub) is None


def test_a_consumer_whose_membership_was_never_approved_gets_nothing() -> None:
    chain = Chain.new()
    col = founders(chain)
    provider = chain.fresh("provider", "providers")
    chain.admit_by_vote(provider)
    chain.dataset(provider, "meters")
    chain.anchor("meters", "u1", chain.time_ms // DAY + 10)
    bank = chain.fresh("consumer", "services")
    chain.ok(bank, "member.register", {"role": "consumer", "college": "services"})
    pid = propose(chain, chain.vault, {"kind": "admit_member", "member": bank.pub})
    vote(chain, col["services"][0], pid, approve=False)  # 1 of 2 against: rejected
    assert chain.query(q="proposal", proposal=pid)["status"] == "rejected"

    s = chain.subject()
    chain.ok(
        s,
        "consent.grant",
        {
            "subject": s.subject,
            "consumer": bank.pub,
            "purpose": "billing",
            "valid_until": chain.time_ms + 10 * DAY,
            "dataset": "meters",
        },
    )
    body = {
        "consumer": bank.pub,
        "dataset": "meters",
        "purpose": "billing",
        "subjects": [s.subject],
    }
    assert chain.one(bank, "access.request", body)["code"] == "not_admitted"
    # nor through the vault acting for it
    assert chain.one(chain.vault, "access.request", body)["code"] == "not_admitted"
    assert chain.query(q="accesses", consumer=bank.pub) == []


def test_members_admitted_after_a_proposal_do_not_vote_on_it_and_nobody_votes_twice() -> None:
    chain = Chain.new()
    col = founders(chain)
    resident = chain.subject()
    pid = propose(chain, chain.vault, {"kind": "approve_purpose", "purpose": "air-quality-study"})
    late = chain.fresh("provider", "providers")
    chain.admit_by_vote(late)  # admitted after the proposal
    chain.admit_to_voting(resident)  # given a vote after the proposal
    assert vote(chain, resident, pid)["code"] == "not_eligible"
    assert vote(chain, late, pid)["code"] == "not_eligible"
    assert vote(chain, col["citizens"][0], pid)["status"] == "open"
    assert vote(chain, col["citizens"][0], pid)["code"] == "duplicate"
    assert chain.query(q="proposal", proposal=pid)["yes"]["citizens"] == 1


def test_voting_closes_at_its_deadline() -> None:
    chain = Chain.new()
    col = founders(chain)
    pid = propose(chain, chain.vault, {"kind": "approve_purpose", "purpose": "air-quality-study"})
    chain.time_ms += DAY + 1
    assert vote(chain, col["citizens"][0], pid)["code"] == "closed"
    assert (
        chain.one(
            chain.vault,
            "governance.propose",
            {
                "action": {"kind": "approve_purpose", "purpose": "x"},
                "voting_ends": chain.time_ms + 91 * DAY,
            },
        )["code"]
        == "invalid"
    )


def test_a_college_without_members_cannot_be_outvoted_by_absence() -> None:
    chain = Chain.new(colleges=["providers", "services", "citizens", "researchers"])
    assert (
        chain.one(
            chain.vault,
            "governance.propose",
            {
                "action": {"kind": "approve_purpose", "purpose": "air-quality-study"},
                "voting_ends": chain.time_ms + DAY,
            },
        )["code"]
        == "college_empty"
    )


def everyone_approves(chain: Chain, pid: int) -> str:
    status = "open"
    for voter in [m for ms in founders(chain).values() for m in ms]:
        r = vote(chain, voter, pid)
        status = r.get("status", status)
        if status != "open":
            break
    return status


def test_a_purpose_must_be_approved_before_a_dataset_may_allow_it() -> None:
    chain = Chain.new()
    provider = chain.fresh("provider", "providers")
    chain.admit_by_vote(provider)
    body = {
        "dataset": "noise",
        "owner": provider.pub,
        "category": "environment",
        "purposes": ["urban-planning-study"],
        "retention_days": 30,
        "legal_basis": "public_task",
    }
    assert chain.one(chain.vault, "dataset.register", body)["code"] == "purpose_not_approved"
    pid = propose(chain, provider, {"kind": "approve_purpose", "purpose": "urban-planning-study"})
    assert everyone_approves(chain, pid) == "passed"
    assert chain.ok(chain.vault, "dataset.register", body)


def test_an_unapproved_purpose_is_refused_with_one_code_and_message_wherever_it_is_used() -> None:
    chain, provider, consumer = standard()
    s = chain.subject()
    chain.dataset(provider, "d1", purposes=["billing"])
    refusals = [
        chain.one(
            chain.vault,
            "dataset.register",
            {
                "dataset": "noise",
                "owner": provider.pub,
                "category": "environment",
                "purposes": ["urban-planning-study"],
                "retention_days": 30,
                "legal_basis": "public_task",
            },
        ),
        chain.one(
            s,
            "consent.grant",
            {
                "subject": s.subject,
                "consumer": consumer.pub,
                "purpose": "urban-planning-study",
                "valid_until": chain.time_ms + DAY,
                "category": "environment",
            },
        ),
    ]
    # No transaction withdraws an approved purpose, yet an access checks again (a purpose a
    # dataset lists must still be approved): the state is edited to reach that check.
    chain.app.state.delete("purpose", "billing")
    access = {"consumer": consumer.pub, "dataset": "d1", "purpose": "billing"}
    refusals.append(chain.one(consumer, "access.request", access))
    assert [(r["code"], r["message"]) for r in refusals] == [
        ("purpose_not_approved", "purpose urban-planning-study is not approved by governance"),
        ("purpose_not_approved", "purpose urban-planning-study is not approved by governance"),
        ("purpose_not_approved", "purpose billing is not approved by governance"),
    ]


def test_every_governance_action_has_its_rules_and_its_body_shape() -> None:
    """A new kind of action is one entry in `rules.ACTIONS` and one shape in bodies.py: a kind
    with a shape and no rules would fail every proposal as a rule bug (`internal`), a kind
    with rules and no shape could never be proposed."""
    assert set(rules.ACTIONS) == set(bodies.PROPOSAL_ACTIONS.variants)


def _anchor_body(upload: str, day: int) -> dict[str, Any]:
    return {
        "upload": upload,
        "dataset": "meters",
        "record_count": 1,
        "merkle_root": b"\x11" * 32,
        "key_commitments_root": b"\x22" * 32,
        "key_commitment_count": 1,
        "retention_day": day,
    }


def test_an_anchor_keeping_records_past_the_registered_retention_is_refused() -> None:
    """The attack: the vault (or a provider) anchors an upload whose retention day lies past
    what the dataset's registration allows, keeping records longer than the cooperative
    agreed; after a set_retention vote shortens the period, the old period no longer counts.
    The bound is the anchoring block's day plus the registered retention_days."""
    chain = Chain.new()
    provider = chain.fresh("provider", "providers")
    chain.admit_by_vote(provider)
    chain.dataset(provider, "meters", retention_days=30)
    # The block that executes the next transaction is one second later than chain.time_ms.
    today = (chain.time_ms + 1000) // DAY
    anchored_day = today + 30
    refused = chain.one(chain.vault, "upload.anchor", _anchor_body("u-late", today + 31))
    assert refused["code"] == "retention_exceeded"
    assert chain.query(q="upload", upload="u-late") is None
    assert chain.ok(chain.vault, "upload.anchor", _anchor_body("u-30", today + 30))["ok"]
    assert chain.ok(chain.vault, "upload.anchor", _anchor_body("u-past", today - 3))["ok"]

    pid = propose(
        chain, chain.dpo, {"kind": "set_retention", "dataset": "meters", "retention_days": 7}
    )
    assert everyone_approves(chain, pid) == "passed"
    today = (chain.time_ms + 1000) // DAY
    assert (
        chain.one(chain.vault, "upload.anchor", _anchor_body("u-old-period", today + 30))["code"]
        == "retention_exceeded"
    )
    assert chain.ok(chain.vault, "upload.anchor", _anchor_body("u-7", today + 7))["ok"]
    # An upload anchored before the vote keeps the day it was anchored with.
    assert chain.query(q="upload", upload="u-30")["retention_day"] == anchored_day


def test_retention_change_and_validator_set_are_enacted_only_when_passed() -> None:
    chain = Chain.new()
    provider = chain.fresh("provider", "providers")
    chain.admit_by_vote(provider)
    chain.dataset(provider, "meters", retention_days=30)
    pid = propose(
        chain, chain.dpo, {"kind": "set_retention", "dataset": "meters", "retention_days": 7}
    )
    assert chain.query(q="dataset", dataset="meters")["retention_days"] == 30
    assert everyone_approves(chain, pid) == "passed"
    assert chain.query(q="dataset", dataset="meters")["retention_days"] == 7

    new_set = [
        {"public_key": m.pub, "college": m.college, "address": f"10.0.0.{i}:7000"}
        for i, m in enumerate(chain.validators)
    ]
    bad = {"kind": "set_validators", "validators": new_set[:3]}
    assert (
        chain.one(
            chain.vault, "governance.propose", {"action": bad, "voting_ends": chain.time_ms + DAY}
        )["code"]
        == "invalid"
    )
    pid = propose(chain, chain.vault, {"kind": "set_validators", "validators": new_set})
    assert everyone_approves(chain, pid) == "passed"
    assert [v["address"] for v in chain.query(q="status")["validators"]] == [
        r["address"] for r in new_set
    ]


def test_a_parameter_reads_its_default_until_governance_sets_another_within_its_bounds() -> None:
    chain = Chain.new()
    assert chain.query(q="parameters") == {
        "commission_bp": 500,
        "k_anonymity": 10,
        "token_expiry_days": 0,
    }
    # Outside its own bounds (k below 2 would publish single subjects): refused when proposed.
    low = {"kind": "set_parameter", "parameter": "k_anonymity", "value": 1}
    refused = chain.one(
        chain.dpo, "governance.propose", {"action": low, "voting_ends": chain.time_ms + DAY}
    )
    assert (refused["code"], refused["message"]) == ("invalid", "k_anonymity must be in [2, 1000]")
    unknown = {"kind": "set_parameter", "parameter": "interest_rate", "value": 1}
    assert (
        chain.one(
            chain.dpo, "governance.propose", {"action": unknown, "voting_ends": chain.time_ms + DAY}
        )["code"]
        == "invalid"
    )
    pid = propose(
        chain, chain.dpo, {"kind": "set_parameter", "parameter": "commission_bp", "value": 750}
    )
    assert chain.query(q="parameters")["commission_bp"] == 500  # proposed is not decided
    assert everyone_approves(chain, pid) == "passed"
    assert chain.query(q="parameters")["commission_bp"] == 750
