"""Paid access (contracts/rules/fees.py): prices, credits, the charge of an access and the
statements, attacks first. Amounts are integer euro cents; the commission is the governance
parameter `commission_bp` (default 500: 5 %)."""

from __future__ import annotations

from typing import Any

import pytest

from ledger_bridge.contracts.app import own_query
from tests.ledger_bridge.contracts.harness import DAY, Chain, Member, standard
from tests.ledger_bridge.contracts.test_rules import assert_refused_unchanged, grant

World = tuple[Chain, Member, Member, Member]


@pytest.fixture()
def world() -> World:
    """A provider's dataset d1 priced 333 cents per full answer, a consumer with 1000 cents of
    credit, and a subject who consented to billing."""
    chain, provider, consumer = standard()
    chain.dataset(provider, "d1")
    chain.anchor("d1", "u1", chain.time_ms // DAY + 10)
    subject = chain.subject()
    chain.block(grant(chain, subject, consumer))
    chain.ok(provider, "price.set", {"dataset": "d1", "mode": "full", "price_cents": 333})
    deposit(chain, consumer, 1000)
    return chain, provider, consumer, subject


def deposit(chain: Chain, member: Member, cents: int, reference: str = "bank-1") -> dict[str, Any]:
    body = {"member": member.pub, "amount_cents": cents, "reference": reference}
    return chain.ok(chain.vault, "credit.deposit", body)


def ask(
    chain: Chain, consumer: Member, subject: Member, price: int | None, dataset: str = "d1"
) -> bytes:
    body: dict[str, Any] = {
        "consumer": consumer.pub,
        "dataset": dataset,
        "purpose": "billing",
        "subjects": [subject.subject],
    }
    if price is not None:
        body["price_cents"] = price
    return chain.sign(consumer, "access.request", body)


def balance(chain: Chain, member: Member) -> int:
    cents: int = chain.query(q="statement", member=member.pub)["totals"]["balance"]
    return cents


# -- attacks ----------------------------------------------------------------------------------


@pytest.mark.parametrize("price", [None, 0, 1, 332, 334])
def test_an_access_not_naming_the_exact_price_is_refused_and_charges_nothing(
    world: World, price: int | None
) -> None:
    chain, _, consumer, subject = world
    assert_refused_unchanged(chain, ask(chain, consumer, subject, price), "price_mismatch")


def test_a_price_raised_between_draft_and_submit_refuses_instead_of_overcharging(
    world: World,
) -> None:
    chain, provider, consumer, subject = world
    signed = ask(chain, consumer, subject, 333)  # drafted and signed at the old price
    chain.ok(provider, "price.set", {"dataset": "d1", "mode": "full", "price_cents": 500})
    assert_refused_unchanged(chain, signed, "price_mismatch")
    assert balance(chain, consumer) == 1000


def test_a_price_the_credit_does_not_cover_is_refused(world: World) -> None:
    chain, provider, consumer, subject = world
    chain.ok(provider, "price.set", {"dataset": "d1", "mode": "full", "price_cents": 1001})
    assert_refused_unchanged(chain, ask(chain, consumer, subject, 1001), "insufficient_credit")
    # exactly the credit is enough, and leaves nothing
    chain.ok(provider, "price.set", {"dataset": "d1", "mode": "full", "price_cents": 1000})
    assert chain.block(ask(chain, consumer, subject, 1000))[0]["charged_cents"] == 1000
    assert balance(chain, consumer) == 0


def test_an_access_that_grants_nobody_charges_nothing(world: World) -> None:
    chain, _, consumer, _ = world
    stranger = chain.subject()  # a member who never consented
    result = chain.block(ask(chain, consumer, stranger, 333))[0]
    assert result["ok"] and result["granted"] == [] and result["charged_cents"] == 0
    assert balance(chain, consumer) == 1000
    assert chain.query(q="statement", member=consumer.pub)["totals"]["paid"] == 0


def test_only_the_owner_or_the_vault_sets_a_price(world: World) -> None:
    chain, provider, consumer, _ = world
    other = chain.fresh("provider", "providers")
    chain.admit_by_vote(other)
    for who in (other, consumer):
        raw = chain.sign(who, "price.set", {"dataset": "d1", "mode": "full", "price_cents": 1})
        assert_refused_unchanged(chain, raw, "unauthorized")
    chain.ok(chain.vault, "price.set", {"dataset": "d1", "mode": "predicate", "price_cents": 7})
    # the unpriced projection owes the nearest wider price (full's); predicate is priced lower
    assert chain.query(q="prices", dataset="d1") == {"predicate": 7, "projection": 333, "full": 333}
    chain.ok(provider, "price.set", {"dataset": "d1", "mode": "full", "price_cents": 0})
    assert chain.query(q="prices", dataset="d1") == {"predicate": 7}
    raw = chain.sign(provider, "price.set", {"dataset": "nope", "mode": "full", "price_cents": 1})
    assert_refused_unchanged(chain, raw, "not_found")
    assert chain.query(q="prices", dataset="nope") is None


def test_only_the_vault_deposits_and_only_to_legal_entities(world: World) -> None:
    chain, provider, consumer, subject = world
    body = {"member": consumer.pub, "amount_cents": 10**6, "reference": "forged"}
    for who in (consumer, provider, chain.dpo):
        assert_refused_unchanged(chain, chain.sign(who, "credit.deposit", body), "unauthorized")
    # a subject holds no credit account: its key would stay on a statement after its erasure
    body = {"member": subject.pub, "amount_cents": 5, "reference": "x"}
    assert_refused_unchanged(chain, chain.sign(chain.vault, "credit.deposit", body), "unauthorized")
    body = {"member": b"\x07" * 32, "amount_cents": 5, "reference": "x"}
    assert_refused_unchanged(chain, chain.sign(chain.vault, "credit.deposit", body), "not_found")
    body = {"member": consumer.pub, "amount_cents": 0, "reference": "x"}
    assert_refused_unchanged(chain, chain.sign(chain.vault, "credit.deposit", body), "invalid")
    assert balance(chain, consumer) == 1000


def test_a_deposit_is_credited_once_per_reference(world: World) -> None:
    chain, provider, consumer, _ = world
    body = {"member": provider.pub, "amount_cents": 50, "reference": "bank-1"}
    assert_refused_unchanged(chain, chain.sign(chain.vault, "credit.deposit", body), "duplicate")
    assert deposit(chain, consumer, 5, "bank-2")["credit_cents"] == 1005


# -- the charge -------------------------------------------------------------------------------


@pytest.mark.parametrize(("price", "commission"), [(333, 16), (1, 0), (19, 0), (20, 1), (999, 49)])
def test_the_commission_split_is_exact_in_integer_cents(
    world: World, price: int, commission: int
) -> None:
    chain, provider, consumer, subject = world
    chain.ok(provider, "price.set", {"dataset": "d1", "mode": "full", "price_cents": price})
    result = chain.block(ask(chain, consumer, subject, price))[0]
    assert result["ok"] and result["granted"] == [subject.subject], result
    assert result["charged_cents"] == price
    paid = 1000 - balance(chain, consumer)
    earned = balance(chain, provider)
    kept = chain.query(q="statement", member=chain.vault.pub)["totals"]["balance"]
    assert (paid, earned, kept) == (price, price - commission, commission)
    assert paid == earned + kept  # no cent lost or made


def test_the_commission_follows_the_governance_parameter(world: World) -> None:
    chain, provider, consumer, subject = world
    pid = chain.ok(
        chain.vault,
        "governance.propose",
        {
            "action": {"kind": "set_parameter", "parameter": "commission_bp", "value": 10_000},
            "voting_ends": chain.time_ms + DAY,
        },
    )["proposal"]
    for voter in [chain.vault, chain.dpo, *chain.validators]:
        vote = chain.one(voter, "governance.vote", {"proposal": pid, "approve": True})
        if vote.get("status") == "passed":
            break
    assert chain.query(q="parameters")["commission_bp"] == 10_000
    chain.ok(consumer, "access.request", _body(consumer, subject, 333))
    assert balance(chain, provider) == 0  # all of it commission: no fee_earned entry
    assert chain.query(q="statement", member=provider.pub)["entries"] == []
    assert chain.query(q="statement", member=chain.vault.pub)["totals"]["earned"] == 333


def _body(consumer: Member, subject: Member, price: int) -> dict[str, Any]:
    return {
        "consumer": consumer.pub,
        "dataset": "d1",
        "purpose": "billing",
        "subjects": [subject.subject],
        "price_cents": price,
    }


def test_a_free_mode_needs_no_price_and_a_removed_price_is_free(world: World) -> None:
    chain, provider, consumer, subject = world
    chain.ok(provider, "price.set", {"dataset": "d1", "mode": "full", "price_cents": 0})
    assert chain.query(q="prices", dataset="d1") == {}
    result = chain.block(ask(chain, consumer, subject, None))[0]
    assert result["ok"] and result["charged_cents"] == 0
    assert balance(chain, consumer) == 1000


def test_statements_list_every_movement_with_totals_and_name_no_subject(world: World) -> None:
    chain, provider, consumer, subject = world
    access = chain.block(ask(chain, consumer, subject, 333))[0]["access"]
    mine = chain.query(q="statement", member=consumer.pub)
    assert [
        (e["n"], e["kind"], e["cents"], e["dataset"], e["access"]) for e in mine["entries"]
    ] == [
        (1, "deposit", 1000, None, None),
        (2, "fee_paid", 333, "d1", access),
    ]
    assert mine["totals"] == {"paid": 333, "earned": 0, "deposited": 1000, "balance": 667}
    theirs = chain.query(q="statement", member=provider.pub)
    assert [(e["kind"], e["cents"]) for e in theirs["entries"]] == [("fee_earned", 317)]
    assert theirs["totals"] == {"paid": 0, "earned": 317, "deposited": 0, "balance": 317}
    coop = chain.query(q="statement", member=chain.vault.pub)
    assert [(e["kind"], e["cents"]) for e in coop["entries"]] == [("commission", 16)]
    # paging
    page = chain.query(q="statement", member=consumer.pub, after=1, limit=1)["entries"]
    assert [e["n"] for e in page] == [2]
    # forgetting: an entry outlives the subject's erasure and never named them
    for entry in [*mine["entries"], *theirs["entries"], *coop["entries"]]:
        assert set(entry) == {"n", "height", "kind", "cents", "dataset", "access"}
        assert subject.subject not in repr(entry) and subject.pub not in entry.values()
    for (table, *parts), value in chain.app.state.items():
        if table in ("statement", "credit", "credit_book"):
            assert subject.pub not in parts and subject.subject not in repr(value)


def test_an_open_request_is_charged_once_per_access(world: World) -> None:
    chain, _, consumer, _ = world
    other = chain.subject()
    chain.block(grant(chain, other, consumer))
    body = {"consumer": consumer.pub, "dataset": "d1", "purpose": "billing", "price_cents": 333}
    result = chain.ok(consumer, "access.request", body)
    assert len(result["granted"]) == 2 and result["charged_cents"] == 333
    assert balance(chain, consumer) == 667


def test_the_vault_asking_for_a_consumer_charges_the_consumer(world: World) -> None:
    chain, provider, consumer, subject = world
    result = chain.ok(chain.vault, "access.request", _body(consumer, subject, 333))
    assert result["charged_cents"] == 333
    assert balance(chain, consumer) == 667 and balance(chain, provider) == 317


@pytest.mark.parametrize(
    ("q", "mine"),
    [
        ({"q": "statement", "member": b"K" * 32}, True),
        ({"q": "statement", "member": b"L" * 32}, False),
        ({"q": "statement", "member": (b"K" * 32).hex()}, False),
        ({"q": "statement"}, False),
    ],
)
def test_a_member_reads_its_own_statement_on_the_client_port_and_no_other(
    q: dict[str, Any], mine: bool
) -> None:
    assert own_query(q, b"K" * 32) is mine
