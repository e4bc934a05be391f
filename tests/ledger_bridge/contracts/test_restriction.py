"""Restriction (GDPR Art. 18) and objection (Art. 21) in the consent contracts, attacks first.

The scene: a utility's dataset `d1` under consent (the bank's proof-of-address) and a city
dataset `li` under legitimate interests, a subject who consented to the bank in both. Each
attack is played first and must change nothing: restricting or objecting in someone else's
name, a forged signature, a replay, lifting what is not set, an override or an exemption by
anyone but the vault or the DPO. Then what the rules promise: a restriction or an objection
not overridden denies the subject to every access from the next block, whatever the consents;
an override lets processing resume from the next block; an exemption never lets a consumer
in; an erasure everywhere forgets all of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from ledger_bridge.contracts import codec, tx
from ledger_bridge.contracts.app import ConsentApp, own_query
from ledger_bridge.contracts.bodies import GROUNDS_MAX_CHARS
from tests.ledger_bridge.contracts.harness import CHAIN, DAY, Chain, Member, standard
from tests.ledger_bridge.contracts.test_forget import erase_body, hits

GROUNDS = "Fraud prevention required by the banking licence, art. 12"


@dataclass
class Scene:
    chain: Chain
    provider: Member
    consumer: Member
    subject: Member
    other: Member


def consent(chain: Chain, s: Member, consumer: Member, dataset: str, purpose: str) -> None:
    body: dict[str, Any] = {"subject": s.subject, "consumer": consumer.pub, "purpose": purpose}
    body |= {"dataset": dataset, "valid_until": chain.time_ms + 10 * DAY, "mode": "full"}
    if purpose == "proof-of-address":
        body["mode"] = "predicate"
    chain.ok(s, "consent.grant", body)


@pytest.fixture()
def scene() -> Scene:
    chain, provider, consumer = standard()
    chain.dataset(provider, "d1")
    chain.dataset(provider, "li", legal_basis="legitimate_interests", purposes=["billing"])
    subject, other = chain.subject(), chain.subject()
    for s in (subject, other):
        consent(chain, s, consumer, "d1", "proof-of-address")
        consent(chain, s, consumer, "d1", "billing")
        consent(chain, s, consumer, "li", "billing")
    return Scene(chain, provider, consumer, subject, other)


def predicate(chain: Chain, consumer: Member, s: Member) -> bytes:
    """The bank asks whether `s` lives at an address (proof of address)."""
    body: dict[str, Any] = {"consumer": consumer.pub, "dataset": "d1"}
    body |= {"purpose": "proof-of-address", "subjects": [s.subject]}
    body["predicate"] = {"field": "address", "op": "eq", "commitment": b"\x05" * 32}
    return chain.sign(consumer, "access.request", body)


def records(chain: Chain, consumer: Member, dataset: str, *subjects: Member) -> bytes:
    body: dict[str, Any] = {"consumer": consumer.pub, "dataset": dataset, "purpose": "billing"}
    if subjects:
        body["subjects"] = [s.subject for s in subjects]
    return chain.sign(consumer, "access.request", body)


def standing(chain: Chain, s: Member) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = chain.query(q="restrictions", subject=s.subject)
    return out


def granted(chain: Chain, raw: bytes) -> dict[str, Any]:
    [r] = chain.block(raw)
    assert r["ok"], r
    return r


RESTRICT = {"dataset": "d1", "ground": "accuracy_contested"}


# -- attacks ---------------------------------------------------------------------------------


def test_nobody_restricts_or_objects_in_a_subjects_name(scene: Scene) -> None:
    """The body names no subject: the author is the one restricted. A key without the role
    subject cannot restrict (a provider hiding its own data, a consumer or the vault acting
    for a subject), and a subject's draft signed by another key does not verify."""
    chain, s = scene.chain, scene.subject
    for who in (scene.provider, scene.consumer, chain.vault, chain.dpo):
        for tx_type, body in (
            ("restriction.set", RESTRICT),
            ("objection.set", {"dataset": "li"}),
        ):
            assert chain.one(who, tx_type, body)["code"] == "unauthorized"
    forged = tx.sign(
        scene.other.key, CHAIN, "restriction.set", RESTRICT, valid_until=chain.time_ms + 60_000
    )
    envelope = codec.decode(forged.encode())
    envelope["author"] = s.pub  # the other subject's signature under the subject's name
    [r] = chain.block(codec.encode(envelope))
    assert r["code"] == "bad_signature"
    assert standing(chain, s) == []
    # the other subject restricts only themselves
    chain.ok(scene.other, "restriction.set", RESTRICT)
    assert standing(chain, s) == [] and len(standing(chain, scene.other)) == 1
    assert granted(chain, predicate(chain, scene.consumer, s))["granted"] == [s.subject]


def test_a_replay_and_lifting_what_is_not_set_change_nothing(scene: Scene) -> None:
    chain, s = scene.chain, scene.subject
    lift = chain.sign(s, "restriction.lift", {"dataset": "d1"})
    [r] = chain.block(lift)
    assert r["code"] == "not_restricted"
    withdraw = chain.one(s, "objection.withdraw", {"dataset": "li"})
    assert withdraw["code"] == "not_objected"
    assert chain.app.state.get("restriction", s.subject, "d1") is None
    assert chain.app.state.get("restriction", s.subject, "li") is None
    restrict = chain.sign(s, "restriction.set", RESTRICT)
    assert chain.block(restrict)[0]["ok"]
    before = chain.app.state.get("restriction", s.subject, "d1")
    # the refused lift, replayed now that a restriction is in force, does not lift it
    assert chain.block(lift)[0]["code"] == "replayed"
    assert chain.block(restrict)[0]["code"] == "replayed"
    assert chain.one(s, "restriction.set", RESTRICT)["code"] == "already_restricted"
    assert chain.app.state.get("restriction", s.subject, "d1") == before
    assert chain.one(s, "restriction.lift", {"dataset": "nowhere"})["code"] == "not_found"


def test_only_the_vault_or_the_dpo_exempts_or_overrides(scene: Scene) -> None:
    chain, s = scene.chain, scene.subject
    chain.ok(s, "restriction.set", RESTRICT)
    chain.ok(s, "objection.set", {"dataset": "li"})
    exempt: dict[str, Any] = {"dataset": "d1", "subject": s.subject, "ground": "legal_claims"}
    exempt["until"] = chain.time_ms + DAY
    override = {"dataset": "li", "subject": s.subject, "grounds": GROUNDS}
    for who in (s, scene.provider, scene.consumer, scene.other):
        assert chain.one(who, "restriction.exempt", exempt)["code"] == "unauthorized"
        assert chain.one(who, "objection.override", override)["code"] == "unauthorized"
    for grounds in ("", "x" * (GROUNDS_MAX_CHARS + 1), "line\nbreak"):
        r = chain.one(chain.dpo, "objection.override", {**override, "grounds": grounds})
        assert r["code"] == "invalid" and "grounds" in r["message"], r
    past = chain.one(chain.vault, "restriction.exempt", {**exempt, "until": chain.time_ms})
    assert past["code"] == "invalid"
    # nothing to answer: no objection in d1, nothing stopping processing of the other one
    assert chain.one(chain.dpo, "objection.override", {**override, "dataset": "d1"})["code"] == (
        "not_objected"
    )
    other = {**exempt, "subject": scene.other.subject}
    assert chain.one(chain.vault, "restriction.exempt", other)["code"] == "not_restricted"
    [entry] = [e for e in standing(chain, s) if e["dataset"] == "li"]
    assert entry["override"] is None and entry["exemption"] is None


def test_an_objection_under_another_basis_is_refused_basis_is_consent(scene: Scene) -> None:
    chain, s = scene.chain, scene.subject
    for basis in ("consent", "contract", "legal_obligation", "vital_interests"):
        chain.dataset(scene.provider, f"b-{basis}", legal_basis=basis)
        r = chain.one(s, "objection.set", {"dataset": f"b-{basis}"})
        assert r["code"] == "basis_is_consent" and "Art. 21(1)" in r["message"], r
    chain.dataset(scene.provider, "pt", legal_basis="public_task")
    assert chain.ok(s, "objection.set", {"dataset": "pt"})["effective_from_height"]
    assert [e["dataset"] for e in standing(chain, s)] == ["pt"]


# -- what the rules promise -------------------------------------------------------------------


def test_a_restriction_denies_every_access_from_the_next_block_until_lifted(scene: Scene) -> None:
    chain, s, bank = scene.chain, scene.subject, scene.consumer
    assert granted(chain, predicate(chain, bank, s))["granted"] == [s.subject]
    restrict = chain.sign(s, "restriction.set", RESTRICT)
    same_block = chain.block(restrict, predicate(chain, bank, s))
    assert same_block[0]["effective_from_height"] == chain.height + 1
    assert same_block[1]["granted"] == [s.subject]  # the block before decides
    assert granted(chain, predicate(chain, bank, s))["denied"] == [[s.subject, "restricted"]]
    r = granted(chain, records(chain, bank, "d1", s, scene.other))
    assert r["granted"] == [scene.other.subject]
    assert r["denied"] == [[s.subject, "restricted"]]
    assert granted(chain, records(chain, bank, "d1"))["granted"] == [scene.other.subject]
    # only in that dataset
    assert granted(chain, records(chain, bank, "li", s))["granted"] == [s.subject]
    # another ground replaces it, without a gap
    chain.ok(s, "restriction.set", {**RESTRICT, "ground": "unlawful_processing"})
    [entry] = standing(chain, s)
    assert entry["ground"] == "unlawful_processing" and entry["processing_stopped"]
    lift = chain.sign(s, "restriction.lift", {"dataset": "d1"})
    same_block = chain.block(lift, predicate(chain, bank, s))
    assert same_block[1]["denied"] == [[s.subject, "restricted"]]
    assert granted(chain, predicate(chain, bank, s))["granted"] == [s.subject]
    assert standing(chain, s) == []


def test_an_objection_stops_processing_and_an_override_resumes_it(scene: Scene) -> None:
    chain, s, bank = scene.chain, scene.subject, scene.consumer
    chain.ok(s, "objection.set", {"dataset": "li"})
    assert granted(chain, records(chain, bank, "li", s))["denied"] == [[s.subject, "objected"]]
    override = {"dataset": "li", "subject": s.subject, "grounds": GROUNDS}
    r = chain.block(
        chain.sign(chain.dpo, "objection.override", override), records(chain, bank, "li", s)
    )
    assert r[0]["ok"] and r[1]["denied"] == [[s.subject, "objected"]]
    assert granted(chain, records(chain, bank, "li", s))["granted"] == [s.subject]
    [entry] = standing(chain, s)
    assert entry["objected"] and not entry["processing_stopped"]
    assert entry["override"]["grounds"] == GROUNDS and entry["override"]["tx"] == r[0]["tx"]
    assert chain.one(chain.vault, "objection.override", override)["code"] == "already_overridden"
    assert chain.one(s, "objection.set", {"dataset": "li"})["code"] == "already_objected"
    # a restriction still stops what the override lets go on
    chain.ok(s, "restriction.set", {"dataset": "li", "ground": "objection_pending"})
    assert granted(chain, records(chain, bank, "li", s))["denied"] == [[s.subject, "restricted"]]
    chain.ok(s, "restriction.lift", {"dataset": "li"})
    # withdrawing drops the override: objecting again needs new grounds
    chain.ok(s, "objection.withdraw", {"dataset": "li"})
    chain.ok(s, "objection.set", {"dataset": "li"})
    [entry] = standing(chain, s)
    assert entry["override"] is None and entry["processing_stopped"]
    assert granted(chain, records(chain, bank, "li", s))["denied"] == [[s.subject, "objected"]]


def test_an_exemption_never_lets_a_consumer_in_and_goes_with_the_restriction(
    scene: Scene,
) -> None:
    chain, s, bank = scene.chain, scene.subject, scene.consumer
    chain.ok(s, "restriction.set", RESTRICT)
    until = chain.time_ms + DAY
    exempt = {"dataset": "d1", "subject": s.subject, "ground": "legal_claims", "until": until}
    assert chain.ok(chain.vault, "restriction.exempt", exempt)["until"] == until
    assert granted(chain, predicate(chain, bank, s))["denied"] == [[s.subject, "restricted"]]
    [entry] = standing(chain, s)
    assert entry["exemption"]["ground"] == "legal_claims"
    assert entry["exemption"]["until"] == until and entry["processing_stopped"]
    chain.ok(s, "restriction.lift", {"dataset": "d1"})
    assert standing(chain, s) == []  # nothing stops processing: nothing to be exempt from
    chain.ok(s, "restriction.set", RESTRICT)
    [entry] = standing(chain, s)
    assert entry["exemption"] is None  # a new restriction is not exempt in advance


def test_the_dataset_query_lists_whom_processing_stops_for(scene: Scene) -> None:
    chain = scene.chain
    chain.ok(scene.subject, "restriction.set", RESTRICT)
    chain.ok(scene.other, "objection.set", {"dataset": "li"})
    [d1] = chain.query(q="restrictions", dataset="d1")
    assert d1["subject"] == scene.subject.subject and d1["ground"] == "accuracy_contested"
    [li] = chain.query(q="restrictions", dataset="li")
    assert li["subject"] == scene.other.subject and li["objected"]
    assert chain.query(q="restrictions", subject=scene.other.subject, dataset="d1") == []
    with pytest.raises(ValueError, match="subject or dataset"):
        chain.app.query(codec.encode({"q": "restrictions"}))
    # a subject reads their own on the client port, nobody else's
    mine = {"q": "restrictions", "subject": scene.subject.subject}
    assert own_query(mine, scene.subject.pub)
    assert not own_query(mine, scene.other.pub)
    assert not own_query({"q": "restrictions", "dataset": "d1"}, scene.subject.pub)


def test_an_erasure_everywhere_forgets_restrictions_objections_and_their_answers(
    scene: Scene,
) -> None:
    """Invariant 7: after the subject's erasure, no entry names them (raw or hex): their
    restriction, objection, the DPO's override with its grounds and the exemption go, and the
    transactions that named them are redacted. The other subject, with the same history, is
    still found."""
    chain, s = scene.chain, scene.subject
    first = chain.height + 1
    for who in (s, scene.other):
        chain.ok(who, "restriction.set", RESTRICT)
        chain.ok(who, "objection.set", {"dataset": "li"})
        override = {"dataset": "li", "subject": who.subject, "grounds": GROUNDS}
        chain.ok(chain.dpo, "objection.override", override)
        exempt = {"dataset": "d1", "subject": who.subject, "ground": "legal_claims"}
        chain.ok(chain.vault, "restriction.exempt", {**exempt, "until": chain.time_ms + DAY})
    assert chain.app.redactions(0, 1000) == []
    before = chain.app.snapshot()
    assert hits(before, s) > 0 and hits(before, scene.other) > 0
    assert chain.ok(chain.dpo, "erasure.record", erase_body(s))["forgotten"]
    after = chain.app.snapshot()
    assert hits(after, s) == 0
    assert hits(after, scene.other) == hits(before, scene.other)
    assert standing(chain, s) == []
    assert [e["subject"] for e in chain.query(q="restrictions", dataset="d1")] == [
        scene.other.subject
    ]
    # the subject's four transactions are redacted (the other subject's are not)
    redacted = {(e.height, e.index) for e in chain.app.redactions(0, 1000)}
    assert {(h, 0) for h in range(first, first + 4)} <= redacted
    assert not {(h, 0) for h in range(first + 4, first + 8)} & redacted
    fresh = ConsentApp(CHAIN)
    fresh.restore(after)
    assert hits(fresh.snapshot(), s) == 0
