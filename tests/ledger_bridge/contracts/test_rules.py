"""The contracts' rules, one behaviour per test, on a single ConsentApp (no network).

"Unchanged" is checked strictly: the app is forked by snapshot/restore, one copy executes a
block holding the refused transaction and the other an empty block at the same height and
time, then burns the transaction's nonce (a refused transaction spends its nonce, so it cannot
be replayed once the reason for its refusal is gone); their state roots must be equal.
"""

from __future__ import annotations

from typing import Any

import pytest

from ledger_bridge.app import BlockContext
from ledger_bridge.contracts import codec, rules, tx
from ledger_bridge.contracts.app import ConsentApp
from tests.ledger_bridge.contracts.harness import CHAIN, DAY, Chain, Member, key, standard


def assert_refused_unchanged(chain: Chain, raw: bytes, code: str) -> None:
    twin = ConsentApp(CHAIN)
    twin.restore(chain.app.snapshot())
    chain.height += 1
    chain.time_ms += 1000
    ctx = BlockContext(chain.height, chain.time_ms, b"\x00" * 32)
    results, root = chain.app.execute([raw], ctx)
    _, empty_root = twin.execute([], ctx)
    result = codec.decode(results[0])
    assert result["ok"] is False and result["code"] == code, result
    if code not in UNSIGNED_REFUSALS:
        signed = tx.decode(raw)
        burned = {"height": chain.height, "tx": signed.tx_id, "refused": code}
        spent = rules.nonce_id(signed.author, signed.nonce)
        twin.state.put("nonce", spent, burned)
        twin.state.put("nonce_expiry", signed.valid_until // 60_000, spent, 0)
        empty_root = twin.state_root()
    assert root == empty_root


# Refused before the nonce is looked at: nothing proves the author sent them, or the nonce was
# spent already, so they burn nothing.
UNSIGNED_REFUSALS = ("malformed", "bad_signature", "expired", "ttl_too_long", "replayed")


def grant(
    chain: Chain, s: Member, consumer: Member, purpose: str = "billing", **scope: Any
) -> bytes:
    body = {
        "subject": s.subject,
        "consumer": consumer.pub,
        "purpose": purpose,
        "valid_until": chain.time_ms + 10 * DAY,
        **(scope or {"dataset": "d1"}),
    }
    return chain.sign(s, "consent.grant", body)


# A proof-of-address question: that purpose discloses yes/no answers about the address only.
ADDRESS_EQ = {"field": "address", "op": "eq", "commitment": b"\x05" * 32}


def access(
    chain: Chain,
    consumer: Member,
    subjects: list[Member] | None = None,
    purpose: str = "billing",
    predicate: dict[str, Any] | None = None,
) -> bytes:
    body: dict[str, Any] = {"consumer": consumer.pub, "dataset": "d1", "purpose": purpose}
    if subjects is not None:
        body["subjects"] = [s.subject for s in subjects]
    if predicate is not None:
        body["predicate"] = predicate
    return chain.sign(consumer, "access.request", body)


@pytest.fixture()
def world() -> tuple[Chain, Member, Member]:
    chain, provider, consumer = standard()
    chain.dataset(provider, "d1")
    chain.anchor("d1", "u1", chain.time_ms // DAY + 10)
    return chain, provider, consumer


# -- envelope-level refusals ----------------------------------------------------------------


def test_forged_signature_is_refused_and_changes_nothing(
    world: tuple[Chain, Member, Member],
) -> None:
    chain, _, consumer = world
    signed = tx.decode(access(chain, consumer, []))
    forged = tx.SignedTx(
        signed.type, signed.author, signed.nonce, signed.valid_until, signed.body, bytes(64)
    )
    assert_refused_unchanged(chain, forged.encode(), "bad_signature")


def test_replayed_transaction_is_refused_and_changes_nothing(
    world: tuple[Chain, Member, Member],
) -> None:
    chain, _, _ = world
    s = chain.subject()
    consumer2 = chain.fresh("consumer", "services")
    raw = chain.sign(consumer2, "member.register", {"role": "consumer", "college": "services"})
    assert chain.block(raw)[0]["ok"]
    assert_refused_unchanged(chain, raw, "replayed")
    # inside one block too: the second copy is refused
    raw2 = grant(chain, s, consumer2)
    results = chain.block(raw2, raw2)
    assert results[0]["ok"] and results[1]["code"] == "replayed"


def test_a_subjects_consent_signed_by_someone_else_is_refused(
    world: tuple[Chain, Member, Member],
) -> None:
    chain, _, consumer = world
    s = chain.subject()
    body = {
        "subject": s.subject,
        "consumer": consumer.pub,
        "dataset": "d1",
        "purpose": "billing",
        "valid_until": chain.time_ms + DAY,
    }
    for forger in (chain.vault, consumer, chain.dpo):
        assert_refused_unchanged(chain, chain.sign(forger, "consent.grant", body), "not_subject")


@pytest.mark.parametrize("raw", [b"", b"\x93\x01\x02\x03", codec.encode({"v": 1}), b"\xff" * 100])
def test_malformed_bytes_are_refused_and_change_nothing(
    world: tuple[Chain, Member, Member], raw: bytes
) -> None:
    chain, _, _ = world
    assert_refused_unchanged(chain, raw, "malformed")


def test_expired_and_too_distant_validity_are_refused(world: tuple[Chain, Member, Member]) -> None:
    chain, _, _ = world
    body = {"role": "subject", "college": "citizens"}
    assert_refused_unchanged(
        chain,
        chain.sign(key(900), "member.register", body, valid_until=chain.time_ms - 1),
        "expired",
    )
    far = chain.time_ms + tx.TTL_MAX_MS + 60_000
    assert_refused_unchanged(
        chain, chain.sign(key(901), "member.register", body, valid_until=far), "ttl_too_long"
    )


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"role": "subject"}, "invalid"),
        ({"role": "subject", "college": "citizens", "name": "Jeanne"}, "invalid"),
        ({"role": "king", "college": "citizens"}, "invalid"),
        ({"role": "subject", "college": "nowhere"}, "invalid"),
        ({"role": "subject", "college": "providers"}, "invalid"),
        ({"role": "subject", "college": 7}, "invalid"),
    ],
)
def test_malformed_bodies_are_refused_and_change_nothing(
    world: tuple[Chain, Member, Member], body: dict[str, Any], code: str
) -> None:
    chain, _, _ = world
    assert_refused_unchanged(chain, chain.sign(key(902), "member.register", body), code)


# -- membership, datasets, uploads -----------------------------------------------------------


def test_residents_are_admitted_at_once_legal_entities_wait(
    world: tuple[Chain, Member, Member],
) -> None:
    chain, _, _ = world
    assert (
        chain.ok(key(903), "member.register", {"role": "subject", "college": "citizens"})["status"]
        == "active"
    )
    bank = chain.fresh("consumer", "services")
    assert (
        chain.ok(bank, "member.register", {"role": "consumer", "college": "services"})["status"]
        == "pending"
    )
    assert (
        chain.one(bank, "member.register", {"role": "consumer", "college": "services"})["code"]
        == "exists"
    )
    # a pending provider cannot register a dataset for itself
    fleet = chain.fresh("provider", "providers")
    chain.ok(fleet, "member.register", {"role": "provider", "college": "providers"})
    body = {
        "dataset": "d9",
        "owner": fleet.pub,
        "category": "mobility",
        "purposes": ["billing"],
        "retention_days": 5,
        "legal_basis": "contract",
    }
    assert chain.one(fleet, "dataset.register", body)["code"] == "not_admitted"


def test_dataset_rules(world: tuple[Chain, Member, Member]) -> None:
    chain, provider, consumer = world
    body = {
        "dataset": "d2",
        "owner": provider.pub,
        "category": "energy",
        "purposes": ["billing"],
        "retention_days": 5,
        "legal_basis": "contract",
    }
    assert chain.one(consumer, "dataset.register", body)["code"] == "unauthorized"
    assert (
        chain.one(provider, "dataset.register", {**body, "purposes": ["marketing"]})["code"]
        == "purpose_not_approved"
    )
    assert (
        chain.one(provider, "dataset.register", {**body, "retention_days": 0})["code"] == "invalid"
    )
    assert (
        chain.one(provider, "dataset.register", {**body, "legal_basis": "whim"})["code"]
        == "invalid"
    )
    assert (
        chain.one(provider, "dataset.register", {**body, "owner": consumer.pub})["code"]
        == "unauthorized"
    )
    assert chain.ok(provider, "dataset.register", body)["dataset"] == "d2"
    assert chain.one(chain.vault, "dataset.register", body)["code"] == "exists"
    assert chain.query(q="dataset", dataset="d2")["purposes"] == ["billing"]


def test_only_the_owner_or_the_vault_anchors(world: tuple[Chain, Member, Member]) -> None:
    chain, provider, consumer = world
    body = {
        "upload": "u2",
        "dataset": "d1",
        "record_count": 1,
        "merkle_root": b"\x01" * 32,
        "key_commitments_root": b"\x02" * 32,
        "key_commitment_count": 1,
        "retention_day": 20_000,
    }
    assert chain.one(consumer, "upload.anchor", body)["code"] == "unauthorized"
    assert chain.one(chain.dpo, "upload.anchor", body)["code"] == "unauthorized"
    assert chain.ok(provider, "upload.anchor", body)["upload"] == "u2"
    assert chain.one(chain.vault, "upload.anchor", body)["code"] == "exists"
    assert (
        chain.one(chain.vault, "upload.anchor", {**body, "upload": "u3", "dataset": "nope"})["code"]
        == "not_found"
    )
    assert (
        chain.one(chain.vault, "upload.anchor", {**body, "upload": "u3", "merkle_root": b"x"})[
            "code"
        ]
        == "invalid"
    )


# -- consent and access -----------------------------------------------------------------------


def test_grant_is_in_force_from_the_next_block(world: tuple[Chain, Member, Member]) -> None:
    chain, _, consumer = world
    s = chain.subject()
    same_block = chain.block(grant(chain, s, consumer), access(chain, consumer, [s]))
    assert same_block[0]["ok"] and same_block[1]["granted"] == []
    assert same_block[1]["denied"] == [[s.subject, "no_consent"]]
    later = chain.block(access(chain, consumer, [s]))[0]
    assert later["granted"] == [s.subject] and later["uploads"] == ["u1"]


def test_revocation_denies_from_the_next_block_whatever_the_order_in_its_block(
    world: tuple[Chain, Member, Member],
) -> None:
    chain, _, consumer = world
    s = chain.subject()
    chain.block(grant(chain, s, consumer))
    revoke = chain.sign(
        s,
        "consent.revoke",
        {"subject": s.subject, "consumer": consumer.pub, "dataset": "d1", "purpose": "billing"},
    )
    results = chain.block(revoke, access(chain, consumer, [s]))
    assert results[0]["ok"] and results[0]["effective_from_height"] == chain.height + 1
    assert results[1]["granted"] == [s.subject]  # the block reads the previous block's consents
    assert chain.block(access(chain, consumer, [s]))[0]["granted"] == []
    assert (
        chain.one(
            s,
            "consent.revoke",
            {"subject": s.subject, "consumer": consumer.pub, "dataset": "d1", "purpose": "billing"},
        )["code"]
        == "not_found"
    )


def test_expired_consent_denies(world: tuple[Chain, Member, Member]) -> None:
    chain, _, consumer = world
    s = chain.subject()
    body = {
        "subject": s.subject,
        "consumer": consumer.pub,
        "dataset": "d1",
        "purpose": "billing",
        "valid_until": chain.time_ms + 5_000,
    }
    chain.ok(s, "consent.grant", body)
    assert chain.block(access(chain, consumer, [s]))[0]["granted"] == [s.subject]
    assert chain.block(access(chain, consumer, [s]), advance_ms=10_000)[0]["granted"] == []


def test_consent_is_per_consumer_and_purpose_and_category_scope_covers_datasets(
    world: tuple[Chain, Member, Member],
) -> None:
    chain, _, consumer = world
    other = chain.fresh("consumer", "services")
    chain.admit_by_vote(other)
    s = chain.subject()
    chain.block(grant(chain, s, consumer, "billing"))
    assert chain.block(access(chain, other, [s]))[0]["granted"] == []
    asked = access(chain, consumer, [s], "proof-of-address", ADDRESS_EQ)
    assert chain.block(asked)[0]["granted"] == []
    chain.block(grant(chain, s, other, "proof-of-address", category="energy"))
    asked = access(chain, other, [s], "proof-of-address", ADDRESS_EQ)
    assert chain.block(asked)[0]["granted"] == [s.subject]
    # a purpose the dataset does not allow is refused outright
    assert chain.block(access(chain, consumer, [s], "research"))[0]["code"] == "purpose_not_allowed"
    grant_bad = grant(chain, s, consumer, "research")
    assert chain.block(grant_bad)[0]["code"] == "purpose_not_allowed"


def test_an_open_request_gets_exactly_the_consenting_subjects(
    world: tuple[Chain, Member, Member],
) -> None:
    chain, _, consumer = world
    yes = [chain.subject() for _ in range(3)]
    no = chain.subject()
    chain.block(*[grant(chain, s, consumer) for s in yes])
    result = chain.block(access(chain, consumer))[0]
    assert result["granted"] == sorted(s.subject for s in yes) and result["denied"] == []
    assert no.subject not in result["granted"]


def test_an_unadmitted_consumer_gets_nothing(world: tuple[Chain, Member, Member]) -> None:
    chain, _, _ = world
    shady = chain.fresh("consumer", "services")
    chain.ok(shady, "member.register", {"role": "consumer", "college": "services"})
    s = chain.subject()
    chain.block(grant(chain, s, shady))  # a subject may consent to an applicant ...
    assert (
        chain.block(access(chain, shady, [s]))[0]["code"] == "not_admitted"
    )  # ... who gets nothing


def test_every_access_is_recorded_with_a_commitment_not_the_value(
    world: tuple[Chain, Member, Member],
) -> None:
    chain, _, consumer = world
    s = chain.subject()
    chain.block(grant(chain, s, consumer, "proof-of-address"))
    body = {
        "consumer": consumer.pub,
        "dataset": "d1",
        "purpose": "proof-of-address",
        "subjects": [s.subject],
        "predicate": {"field": "address", "op": "eq", "commitment": b"\x05" * 32},
    }
    result = chain.ok(consumer, "access.request", body)
    logged = chain.query(q="accesses", subject=s.subject)
    assert [a["access"] for a in logged] == [result["access"]]
    assert logged[0]["predicate"] == {"field": "address", "op": "eq", "commitment": b"\x05" * 32}
    assert chain.query(q="accesses", consumer=consumer.pub)[-1]["access"] == result["access"]
    # a predicate carrying the value itself is refused
    body["predicate"] = {"field": "address", "op": "eq", "value": "12 rue de la Paix"}
    assert chain.one(consumer, "access.request", body)["code"] == "invalid"


def test_the_vault_may_ask_for_a_consumer_but_a_consumer_not_for_another(
    world: tuple[Chain, Member, Member],
) -> None:
    chain, provider, consumer = world
    other = chain.fresh("consumer", "services")
    chain.admit_by_vote(other)
    body = {"consumer": consumer.pub, "dataset": "d1", "purpose": "billing", "subjects": []}
    assert chain.one(chain.vault, "access.request", body)["ok"]
    assert chain.one(other, "access.request", body)["code"] == "unauthorized"
    assert chain.one(provider, "access.request", body)["code"] == "unauthorized"


# -- erasure and retention ---------------------------------------------------------------------


def erase_body(s: Member, **extra: Any) -> dict[str, Any]:
    return {
        "scope": {"kind": "subject", "subject": s.subject},
        "key_commitments": [b"\x07" * 32],
        "uploads": [],
        "reason": "dpo_decision",
        "requester": "dpo",
        **extra,
    }


def test_erasure_denies_from_the_next_block_and_is_recorded(
    world: tuple[Chain, Member, Member],
) -> None:
    """In one dataset; an erasure everywhere forgets the subject (test_forget.py)."""
    chain, _, consumer = world
    s = chain.subject()
    chain.block(grant(chain, s, consumer))
    in_d1 = {"kind": "subject", "subject": s.subject, "dataset": "d1"}
    results = chain.block(
        chain.sign(chain.dpo, "erasure.record", erase_body(s, scope=in_d1)),
        access(chain, consumer, [s]),
    )
    assert results[0]["ok"] and results[1]["granted"] == [s.subject]
    assert chain.block(access(chain, consumer, [s]))[0]["denied"] == [[s.subject, "erased"]]
    # a fresh consent does not bring erased data back
    chain.block(grant(chain, s, consumer))
    assert chain.block(access(chain, consumer, [s]))[0]["granted"] == []
    [e] = chain.query(q="erasures", subject=s.subject)
    assert e["key_commitments"] == [b"\x07" * 32] and e["reason"] == "dpo_decision"


def test_erasure_rules(world: tuple[Chain, Member, Member]) -> None:
    chain, provider, consumer = world
    s = chain.subject()
    assert chain.one(consumer, "erasure.record", erase_body(s))["code"] == "unauthorized"
    assert chain.one(provider, "erasure.record", erase_body(s))["code"] == "unauthorized"
    assert (
        chain.one(chain.dpo, "erasure.record", erase_body(s, reason="because"))["code"] == "invalid"
    )
    assert (
        chain.one(chain.dpo, "erasure.record", erase_body(s, key_commitments=[b"\x07" * 32] * 2))[
            "code"
        ]
        == "invalid"
    )
    wrong_root = {
        "scope": {"kind": "upload", "upload": "u1"},
        "key_commitments": [],
        "uploads": [
            {"upload": "u1", "key_commitments_root": b"\x00" * 32, "key_commitment_count": 2}
        ],
        "reason": "provider_withdrawal",
        "requester": "provider",
    }
    assert chain.one(chain.vault, "erasure.record", wrong_root)["code"] == "mismatch"
    wrong_root["uploads"][0]["key_commitments_root"] = b"\x22" * 32  # type: ignore[index]
    assert chain.ok(chain.vault, "erasure.record", wrong_root)
    assert chain.query(q="upload", upload="u1")["status"] == "erased"
    assert chain.block(access(chain, consumer, []))[0]["uploads"] == []


def test_subject_initiated_erasure_needs_the_subjects_signature(
    world: tuple[Chain, Member, Member],
) -> None:
    chain, _, _ = world
    s, other = chain.subject(), chain.subject()
    scope = {"scope": {"kind": "subject", "subject": s.subject}}
    assert chain.one(other, "erasure.request", scope)["code"] == "not_subject"
    assert chain.one(chain.dpo, "erasure.request", scope)["code"] == "not_subject"
    request = chain.ok(s, "erasure.request", scope)["request"]
    assert [r["request"] for r in chain.query(q="erasure_requests")] == [request]
    body = erase_body(s, request=request, reason="subject_request", requester="subject")
    assert (
        chain.one(
            chain.vault,
            "erasure.record",
            {**body, "scope": {"kind": "subject", "subject": other.subject}},
        )["code"]
        == "mismatch"
    )
    assert chain.ok(chain.vault, "erasure.record", body)
    assert chain.query(q="erasure_requests") == []
    assert chain.one(chain.vault, "erasure.record", body)["code"] == "duplicate"


def test_retention_expiry_on_its_day_and_not_before(world: tuple[Chain, Member, Member]) -> None:
    chain, _, consumer = world
    day = chain.time_ms // DAY + 2
    chain.anchor("d1", "u-exp", day)
    body = {
        "dataset": "d1",
        "day": day,
        "uploads": [
            {"upload": "u-exp", "key_commitments_root": b"\x22" * 32, "key_commitment_count": 2}
        ],
    }
    assert chain.one(chain.vault, "retention.expire", body)["code"] == "too_early"
    assert "u-exp" in chain.block(access(chain, consumer, []))[0]["uploads"]
    chain.time_ms = (day + 1) * DAY - 3_000
    # the last second of its retention day: still live, still too early
    assert "u-exp" in chain.block(access(chain, consumer, []))[0]["uploads"]
    assert chain.one(chain.vault, "retention.expire", body)["code"] == "too_early"
    chain.time_ms = (day + 1) * DAY
    assert "u-exp" not in chain.block(access(chain, consumer, []))[0]["uploads"]  # deadline passed
    assert chain.ok(chain.vault, "retention.expire", body)
    assert chain.query(q="upload", upload="u-exp")["status"] == "expired"
    assert chain.one(chain.vault, "retention.expire", body)["code"] == "duplicate"
