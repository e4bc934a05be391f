"""A consent bounds what a consumer learns: the purpose's declaration, the consent's mode and
fields, and a budget of predicate questions (docs/CONTRACTS.md "Disclosure").

The founding purposes of `Chain.new()` are the ones every deployment starts with: proof of
address (yes/no, `eq`, the address, 10 questions a day), road maintenance (the fields
recorded_at, lat, lon, vibration, never whole records) and billing (whole records).
"""

from __future__ import annotations

from typing import Any

import pytest

from ledger_bridge.contracts.app import FOUNDING_DECLARATIONS, ConsentApp, GenesisInvalid
from tests.ledger_bridge.contracts.harness import CHAIN, DAY, Chain, Member, standard

ROADS = "road-maintenance"
ADDRESS = "proof-of-address"
COMMITMENT = b"\x05" * 32


@pytest.fixture()
def world() -> tuple[Chain, Member]:
    chain, provider, consumer = standard()
    chain.dataset(provider, "d1", purposes=[ADDRESS, ROADS, "billing", "research"])
    return chain, consumer


def grant(chain: Chain, s: Member, consumer: Member, purpose: str, **extra: Any) -> Any:
    body = {
        "subject": s.subject,
        "consumer": consumer.pub,
        "purpose": purpose,
        "valid_until": chain.time_ms + 10 * DAY,
        "dataset": "d1",
        **extra,
    }
    return chain.one(s, "consent.grant", body)


def ask(chain: Chain, consumer: Member, subjects: list[Member], purpose: str, **extra: Any) -> Any:
    body = {
        "consumer": consumer.pub,
        "dataset": "d1",
        "purpose": purpose,
        "subjects": [s.subject for s in subjects],
        **extra,
    }
    return chain.one(consumer, "access.request", body)


def question(field: str = "address", op: str = "eq") -> dict[str, Any]:
    return {"predicate": {"field": field, "op": op, "commitment": COMMITMENT}}


def test_a_new_consent_takes_the_narrowest_mode_its_purpose_allows(
    world: tuple[Chain, Member],
) -> None:
    chain, consumer = world
    s = chain.subject()
    out = grant(chain, s, consumer, ROADS)
    assert out["ok"] and out["mode"] == "projection"
    assert out["fields"] == sorted(FOUNDING_DECLARATIONS[ROADS]["fields"])
    out = grant(chain, s, consumer, ADDRESS)
    assert out["mode"] == "predicate" and out["fields"] == ["address"]
    out = grant(chain, s, consumer, "billing")
    assert out["mode"] == "full" and out["fields"] == []
    [roads] = [c for c in chain.query(q="consents", subject=s.subject) if c["purpose"] == ROADS]
    assert roads["mode"] == "projection" and "driver_id" not in roads["fields"]


def test_a_consent_cannot_exceed_its_purpose(world: tuple[Chain, Member]) -> None:
    chain, consumer = world
    s = chain.subject()
    refused = grant(chain, s, consumer, ROADS, mode="full")
    assert refused["code"] == "exceeds_purpose" and "projection" in refused["message"]
    refused = grant(chain, s, consumer, ROADS, fields=["lat", "driver_id"])
    assert refused["code"] == "exceeds_purpose" and "driver_id" in refused["message"]
    refused = grant(chain, s, consumer, ADDRESS, mode="projection")
    assert refused["code"] == "exceeds_purpose"
    refused = grant(chain, s, consumer, "billing", mode="full", fields=["kwh"])
    assert refused["code"] == "invalid"
    assert chain.query(q="consents", subject=s.subject) == []


def test_the_road_service_cannot_get_driver_id_even_if_it_asks(
    world: tuple[Chain, Member],
) -> None:
    chain, roads = world
    driver = chain.subject()
    grant(chain, driver, roads, ROADS)
    fine = ask(chain, roads, [driver], ROADS, fields=["lat", "lon", "vibration"])
    assert fine["granted"] == [driver.subject]
    for fields in (["lat", "driver_id"], ["driver_id"]):
        refused = ask(chain, roads, [driver], ROADS, fields=fields)
        assert refused["code"] == "exceeds_purpose" and "driver_id" in refused["message"]
    whole = ask(chain, roads, [driver], ROADS)  # no fields: whole records
    assert whole["code"] == "exceeds_purpose" and "never whole records" in whole["message"]
    # refused whole: nothing recorded as delivered
    assert [a["fields"] for a in chain.query(q="accesses", subject=driver.subject)] == [
        ["lat", "lon", "vibration"]
    ]


def test_a_request_beyond_one_subjects_consent_denies_that_subject(
    world: tuple[Chain, Member],
) -> None:
    chain, roads = world
    narrow, wide = chain.subject(), chain.subject()
    assert grant(chain, narrow, roads, ROADS, fields=["lat", "lon"])["ok"]
    assert grant(chain, wide, roads, ROADS)["ok"]
    out = ask(chain, roads, [narrow, wide], ROADS, fields=["lat", "vibration"])
    assert out["granted"] == [wide.subject]
    assert out["denied"] == [[narrow.subject, "exceeds_consent"]]
    out = ask(chain, roads, [narrow, wide], ROADS, fields=["lat"])
    assert out["granted"] == sorted([narrow.subject, wide.subject])


def test_a_proof_of_address_consent_answers_eq_about_the_address_only(
    world: tuple[Chain, Member],
) -> None:
    chain, bank = world
    citizen = chain.subject()
    grant(chain, citizen, bank, ADDRESS)
    assert ask(chain, bank, [citizen], ADDRESS, **question())["granted"] == [citizen.subject]
    whole = ask(chain, bank, [citizen], ADDRESS)
    assert whole["code"] == "exceeds_purpose" and "yes/no" in whole["message"]
    assert ask(chain, bank, [citizen], ADDRESS, fields=["address"])["code"] == "exceeds_purpose"
    for op in ("lt", "ge", "ne", "in"):
        refused = ask(chain, bank, [citizen], ADDRESS, **question(op=op))
        assert refused["code"] == "exceeds_purpose" and "operators: eq" in refused["message"]
    refused = ask(chain, bank, [citizen], ADDRESS, **question(field="birth_year"))
    assert refused["code"] == "exceeds_purpose" and "birth_year" in refused["message"]


def test_a_predicate_names_exactly_one_subject_and_no_fields(world: tuple[Chain, Member]) -> None:
    chain, bank = world
    a, b = chain.subject(), chain.subject()
    for s in (a, b):
        grant(chain, s, bank, ADDRESS)
    assert ask(chain, bank, [a, b], ADDRESS, **question())["code"] == "invalid"
    body = {"consumer": bank.pub, "dataset": "d1", "purpose": ADDRESS, **question()}
    assert chain.one(bank, "access.request", body)["code"] == "invalid"  # open: everyone
    both = ask(chain, bank, [a], ADDRESS, fields=["address"], **question())
    assert both["code"] == "invalid"


def test_predicate_questions_are_metered_per_subject_and_period(
    world: tuple[Chain, Member],
) -> None:
    chain, bank = world
    budget = FOUNDING_DECLARATIONS[ADDRESS]["questions"]
    citizen, neighbour = chain.subject(), chain.subject()
    for s in (citizen, neighbour):
        grant(chain, s, bank, ADDRESS)
    for _ in range(budget):
        assert ask(chain, bank, [citizen], ADDRESS, **question())["granted"] == [citizen.subject]
    spent = ask(chain, bank, [citizen], ADDRESS, **question())
    assert spent["granted"] == [] and spent["denied"] == [[citizen.subject, "budget_exhausted"]]
    # another subject's budget is their own
    assert ask(chain, bank, [neighbour], ADDRESS, **question())["granted"] == [neighbour.subject]
    # a question denied for no consent spends nothing
    stranger = chain.subject()
    assert ask(chain, bank, [stranger], ADDRESS, **question())["denied"][0][1] == "no_consent"
    assert chain.app.state.get("questions", stranger.subject, bank.pub, ADDRESS) is None
    # the next period starts afresh
    chain.block(advance_ms=DAY)
    assert ask(chain, bank, [citizen], ADDRESS, **question())["granted"] == [citizen.subject]


def test_budget_entries_are_keyed_by_subject_for_forgetting(world: tuple[Chain, Member]) -> None:
    from ledger_bridge.contracts.state import SUBJECT_TABLES

    chain, bank = world
    citizen = chain.subject()
    grant(chain, citizen, bank, ADDRESS)
    ask(chain, bank, [citizen], ADDRESS, **question())
    keys = [k for k, _ in chain.app.state.items() if k[0] == "questions"]
    assert keys == [("questions", citizen.subject, bank.pub, ADDRESS)]
    assert "questions" in SUBJECT_TABLES


def test_an_undeclared_purpose_discloses_nothing_until_governance_declares_it(
    world: tuple[Chain, Member],
) -> None:
    chain, consumer = world
    s = chain.subject()
    out = grant(chain, s, consumer, "research")  # founding, declares nothing
    assert out["ok"] and out["mode"] is None
    for extra in ({}, {"fields": ["lat"]}, question()):
        refused = ask(chain, consumer, [s], "research", **extra)
        assert refused["code"] == "exceeds_purpose" and "declares no" in refused["message"]
    declaration = {
        "fields": ["lat", "lon"],
        "modes": ["projection", "full"],
        "operators": [],
        "questions": 0,
        "period_days": 1,
    }
    action = {"kind": "approve_purpose", "purpose": "research", "declaration": declaration}
    pass_proposal(chain, action)
    [shown] = [p for p in chain.query(q="purposes") if p["purpose"] == "research"]
    assert shown["declaration"]["modes"] == ["projection", "full"]
    # the consent follows the declaration, at its narrowest
    assert ask(chain, consumer, [s], "research", fields=["lat"])["granted"] == [s.subject]
    denied = ask(chain, consumer, [s], "research")
    assert denied["denied"] == [[s.subject, "exceeds_consent"]]
    # declared once: a second declaration is refused
    again = {**action, "declaration": {**declaration, "modes": ["full"]}}
    body = {"action": again, "voting_ends": chain.time_ms + DAY}
    assert chain.one(chain.vault, "governance.propose", body)["code"] == "exists"


def test_a_declaration_must_be_consistent(world: tuple[Chain, Member]) -> None:
    chain, _ = world
    bad = [
        {"fields": [], "modes": ["projection"], "operators": [], "questions": 0},
        {"fields": ["a"], "modes": ["predicate"], "operators": [], "questions": 5},
        {"fields": ["a"], "modes": ["predicate"], "operators": ["eq"], "questions": 0},
    ]
    for declaration in bad:
        action = {
            "kind": "approve_purpose",
            "purpose": "new-study",
            "declaration": {**declaration, "period_days": 1},
        }
        body = {"action": action, "voting_ends": chain.time_ms + DAY}
        assert chain.one(chain.vault, "governance.propose", body)["code"] == "invalid"


def test_a_genesis_declares_purposes_or_names_them(world: tuple[Chain, Member]) -> None:
    declared = {"purpose": "audit", **FOUNDING_DECLARATIONS["billing"]}
    app = ConsentApp(CHAIN, [], {"purposes": ["plain", declared]})
    assert app.state.get("purpose_terms", "plain") is None
    assert app.state.get("purpose_terms", "audit")["modes"] == ["full"]
    with pytest.raises(GenesisInvalid, match="operators"):
        ConsentApp(
            CHAIN,
            [],
            {"purposes": [{"purpose": "x", **FOUNDING_DECLARATIONS[ADDRESS], "operators": []}]},
        )


def pass_proposal(chain: Chain, action: dict[str, Any]) -> None:
    pid = chain.ok(
        chain.vault, "governance.propose", {"action": action, "voting_ends": chain.time_ms + DAY}
    )["proposal"]
    for voter in [chain.vault, chain.dpo, *chain.validators]:
        if (
            chain.one(voter, "governance.vote", {"proposal": pid, "approve": True}).get("status")
            == "passed"
        ):
            return
    raise AssertionError("the proposal did not pass")
