"""Governance over a member after an incident: suspend it, reinstate it, move it to a new key
(`suspend_member`, `reinstate_member`, `rotate_member_key`; docs/CONTRACTS.md "Suspension and
key rotation"). Attacks first: what a stolen key does before the vote and is refused after."""

from __future__ import annotations

import hashlib
import os
from typing import Any

from ledger_bridge.contracts import codec
from tests.ledger_bridge.contracts.harness import DAY, Chain, Member, standard
from tests.ledger_bridge.contracts.test_fees import balance, deposit
from tests.ledger_bridge.contracts.test_governance import everyone_approves, founders, propose
from tests.ledger_bridge.contracts.test_rules import access, assert_refused_unchanged, grant
from tests.ledger_bridge.contracts.test_tokens import funded, redeem
from tests.ledger_bridge.contracts.token_world import decide as eco_decide
from tests.ledger_bridge.contracts.token_world import eco


def _world() -> tuple[Chain, Member, Member, Member]:
    """A provider's dataset d1 with a live upload, a consumer and a subject who consented."""
    chain, provider, consumer = standard()
    chain.dataset(provider, "d1")
    chain.anchor("d1", "u1", chain.time_ms // DAY + 10)
    subject = chain.subject()
    chain.block(grant(chain, subject, consumer))
    return chain, provider, consumer, subject


def decide(chain: Chain, action: dict[str, Any]) -> str:
    return everyone_approves(chain, propose(chain, chain.dpo, action))


def _granted(chain: Chain, consumer: Member, subject: Member) -> list[str]:
    result = chain.block(access(chain, consumer, [subject]))[0]
    assert result["ok"], result
    granted: list[str] = result["granted"]
    return granted


def _admission(chain: Chain, raw: bytes) -> dict[str, Any] | None:
    refused = chain.app.check(raw)
    return None if refused is None else codec.decode(refused)


def test_a_suspended_consumer_is_refused_itself_and_through_the_vault_until_reinstated() -> None:
    chain, _, consumer, subject = _world()
    assert _granted(chain, consumer, subject) == [subject.subject]  # the key works before
    assert decide(chain, {"kind": "suspend_member", "member": consumer.pub}) == "passed"

    assert_refused_unchanged(chain, access(chain, consumer, [subject]), "member_suspended")
    by_vault = {"consumer": consumer.pub, "dataset": "d1", "purpose": "billing"}
    vault_ask = chain.sign(chain.vault, "access.request", by_vault)
    assert_refused_unchanged(chain, vault_ask, "member_suspended")
    # a suspension can be lifted, so admission lets its transactions reach the contracts
    assert _admission(chain, access(chain, consumer, [subject])) is None
    assert chain.query(q="member", key=consumer.pub)["status"] == "suspended"

    assert decide(chain, {"kind": "reinstate_member", "member": consumer.pub}) == "passed"
    assert _granted(chain, consumer, subject) == [subject.subject]


def test_a_suspended_member_neither_proposes_nor_votes_nor_weighs_in_its_college() -> None:
    chain, provider, _, _ = _world()
    before = chain.query(q="colleges")
    providers = next(c for c in before if c["college"] == "providers")
    pid = propose(chain, chain.dpo, {"kind": "approve_purpose", "purpose": "air-study"})
    assert decide(chain, {"kind": "suspend_member", "member": provider.pub}) == "passed"

    after = next(c for c in chain.query(q="colleges") if c["college"] == "providers")
    assert (after["members"], after["voters"]) == (
        providers["members"] - 1,
        providers["voters"] - 1,
    )
    action = {"kind": "approve_purpose", "purpose": "other-study"}
    body = {"action": action, "voting_ends": chain.time_ms + DAY}
    assert_refused_unchanged(
        chain, chain.sign(provider, "governance.propose", body), "member_suspended"
    )
    vote = {"proposal": pid, "approve": True}
    assert_refused_unchanged(
        chain, chain.sign(provider, "governance.vote", vote), "member_suspended"
    )
    # a dataset the vault registers for it is refused too
    register = {
        "dataset": "d2",
        "owner": provider.pub,
        "category": "energy",
        "purposes": ["billing"],
        "retention_days": 30,
        "legal_basis": "consent",
    }
    assert_refused_unchanged(
        chain, chain.sign(chain.vault, "dataset.register", register), "member_suspended"
    )

    # reinstated, it votes on proposals made from then on, not on one made while suspended
    suspended_pid = propose(chain, chain.dpo, {"kind": "approve_purpose", "purpose": "x-study"})
    assert decide(chain, {"kind": "reinstate_member", "member": provider.pub}) == "passed"
    assert chain.one(provider, "governance.vote", vote)["code"] == "not_eligible"
    late = {"proposal": suspended_pid, "approve": True}
    assert chain.one(provider, "governance.vote", late)["code"] == "not_eligible"
    fresh = propose(chain, chain.dpo, {"kind": "approve_purpose", "purpose": "y-study"})
    assert chain.one(provider, "governance.vote", {"proposal": fresh, "approve": True})["ok"]


def test_suspension_needs_every_college_and_residents_and_last_voters_are_not_suspended() -> None:
    chain, _, consumer, subject = _world()
    col = founders(chain)
    pid = propose(chain, chain.dpo, {"kind": "suspend_member", "member": consumer.pub})
    for voter in col["providers"] + col["services"]:
        chain.one(voter, "governance.vote", {"proposal": pid, "approve": True})
    assert chain.query(q="member", key=consumer.pub)["status"] == "active"  # citizens not yet
    no = chain.one(col["citizens"][0], "governance.vote", {"proposal": pid, "approve": False})
    assert no["status"] == "rejected"
    assert _granted(chain, consumer, subject) == [subject.subject]

    def refused(action: dict[str, Any]) -> dict[str, Any]:
        body = {"action": action, "voting_ends": chain.time_ms + DAY}
        result = chain.one(chain.dpo, "governance.propose", body)
        assert result["ok"] is False
        return result

    # a resident's key is their pseudonym: suspending it would stop their own rights
    assert refused({"kind": "suspend_member", "member": subject.pub})["code"] == "invalid"
    # the citizens' only voter: its college would have nobody left to decide anything
    last = {"kind": "suspend_member", "member": col["citizens"][0].pub}
    assert refused(last)["code"] == "college_empty"
    assert refused({"kind": "reinstate_member", "member": consumer.pub})["code"] == "not_found"
    stranger = chain.fresh("consumer", "services")
    assert refused({"kind": "suspend_member", "member": stranger.pub})["code"] == "not_found"


def _apply(chain: Chain, role: str, college: str) -> Member:
    key = chain.fresh(role, college)
    chain.ok(key, "member.register", {"role": role, "college": college})
    return key


def test_a_rotated_key_is_refused_for_ever_and_the_new_key_keeps_the_consents() -> None:
    chain, _, consumer, subject = _world()
    # only a key that applied with the member's role and college: no typo moves a membership
    provider_like = _apply(chain, "provider", "providers")
    body = {"kind": "rotate_member_key", "member": consumer.pub, "new_key": provider_like.pub}
    proposal = {"action": body, "voting_ends": chain.time_ms + DAY}
    assert chain.one(chain.dpo, "governance.propose", proposal)["code"] == "not_found"
    nobody = {**body, "new_key": chain.fresh("consumer", "services").pub}
    proposal = {"action": nobody, "voting_ends": chain.time_ms + DAY}
    assert chain.one(chain.dpo, "governance.propose", proposal)["code"] == "not_found"

    new = _apply(chain, "consumer", "services")
    deposit(chain, consumer, 700)
    assert decide(chain, {**body, "new_key": new.pub}) == "passed"

    stolen = access(chain, consumer, [subject])
    refusal = _admission(chain, stolen)
    assert refusal is not None and refusal["code"] == "key_rotated"
    assert_refused_unchanged(chain, stolen, "key_rotated")
    by_vault = {"consumer": consumer.pub, "dataset": "d1", "purpose": "billing"}
    assert_refused_unchanged(
        chain, chain.sign(chain.vault, "access.request", by_vault), "key_rotated"
    )
    # the consent the subject gave the member under its old key still counts for the new one
    assert _granted(chain, new, subject) == [subject.subject]
    moved = chain.query(q="member", key=new.pub)
    assert moved["status"] == "active" and moved["keys_before"] == [consumer.pub]
    assert chain.query(q="member", key=consumer.pub)["successor"] == new.pub
    assert (balance(chain, consumer), balance(chain, new)) == (0, 700)
    # the old key cannot come back as a new applicant
    again = chain.sign(consumer, "member.register", {"role": "consumer", "college": "services"})
    assert _admission(chain, again) is not None


def test_a_provider_keeps_its_datasets_under_its_new_key_and_votes_from_the_rotation_on() -> None:
    chain, provider, consumer, subject = _world()
    open_pid = propose(chain, chain.dpo, {"kind": "approve_purpose", "purpose": "air-study"})
    chain.one(provider, "governance.vote", {"proposal": open_pid, "approve": True})
    new = _apply(chain, "provider", "providers")
    action = {"kind": "rotate_member_key", "member": provider.pub, "new_key": new.pub}
    assert decide(chain, action) == "passed"

    assert chain.query(q="dataset", dataset="d1")["owner"] == new.pub
    price = {"dataset": "d1", "mode": "full", "price_cents": 5}
    assert_refused_unchanged(chain, chain.sign(provider, "price.set", price), "key_rotated")
    assert chain.ok(new, "price.set", price)["price_cents"] == 5
    chain.ok(new, "price.set", {**price, "price_cents": 0})  # free again, for the access below
    # no second vote on a proposal the old key voted on; a vote on the next ones
    again = {"proposal": open_pid, "approve": True}
    assert chain.one(new, "governance.vote", again)["code"] == "not_eligible"
    fresh = propose(chain, chain.dpo, {"kind": "approve_purpose", "purpose": "z-study"})
    assert chain.one(new, "governance.vote", {"proposal": fresh, "approve": True})["ok"]
    # the college counts are the member's, unchanged by the move
    providers = next(c for c in chain.query(q="colleges") if c["college"] == "providers")
    assert providers["members"] == 4 and providers["voters"] == 4
    assert _granted(chain, consumer, subject) == [subject.subject]


def test_a_suspended_member_rotated_stays_suspended_until_reinstated() -> None:
    chain, _, consumer, subject = _world()
    assert decide(chain, {"kind": "suspend_member", "member": consumer.pub}) == "passed"
    new = _apply(chain, "consumer", "services")
    action = {"kind": "rotate_member_key", "member": consumer.pub, "new_key": new.pub}
    assert decide(chain, action) == "passed"
    assert_refused_unchanged(chain, access(chain, new, [subject]), "member_suspended")
    assert decide(chain, {"kind": "reinstate_member", "member": new.pub}) == "passed"
    assert _granted(chain, new, subject) == [subject.subject]


def test_a_partner_and_a_device_operator_keep_their_offers_and_devices_under_the_new_key() -> None:
    chain, provider, _, _ = _world()
    partner = chain.fresh("partner", "providers")
    chain.admit_by_vote(partner)
    offer = {"offer": "bread", "title": "x", "category": "food", "price_mtok": 1, "active": True}
    chain.ok(partner, "offer.publish", offer)
    device = chain.fresh("device", "providers").pub
    register = {"device": device, "kind": "bike_reader", "dataset": "d1", "district": "north"}
    chain.ok(provider, "device.register", register)
    for old, role in ((partner, "partner"), (provider, "provider")):
        new = _apply(chain, role, "providers")
        action = {"kind": "rotate_member_key", "member": old.pub, "new_key": new.pub}
        assert decide(chain, action) == "passed"
        if role == "partner":
            assert_refused_unchanged(chain, chain.sign(old, "offer.publish", offer), "key_rotated")
            assert chain.ok(new, "offer.publish", {**offer, "price_mtok": 2})["ok"]
            assert [o["offer"] for o in chain.query(q="offers", partner=new.pub)] == ["bread"]
        else:
            assert chain.query(q="device", device=device)["operator"] == new.pub


def test_coupons_bought_before_a_partners_rotation_are_spent_by_its_new_key() -> None:
    """A holder paid tokens for a coupon of the partner; governance then moves the partner to
    a new key (its old one reported stolen). The coupon is the member's to honour, under the
    key governance says it holds now; the stolen key spends nothing."""
    world = eco()
    chain = world.chain
    holder = funded(world, 5000)
    world.offer(price=2000)
    secret = redeem(world, holder, 2000)
    new = _apply(chain, "partner", "providers")
    action = {"kind": "rotate_member_key", "member": world.partner.pub, "new_key": new.pub}
    eco_decide(chain, action)
    assert_refused_unchanged(
        chain, chain.sign(world.partner, "coupon.spend", {"secret": secret}), "key_rotated"
    )
    spent = chain.one(new, "coupon.spend", {"secret": secret})
    assert spent["ok"] and spent["price_mtok"] == 2000, spent


def test_no_coupon_is_sold_for_a_suspended_partner() -> None:
    """While governance holds a partner suspended (its key reported stolen), a holder's
    redemption of its offer is refused and costs nothing: the partner could not honour it."""
    world = eco()
    chain = world.chain
    holder = funded(world, 5000)
    world.offer(price=2000)
    eco_decide(chain, {"kind": "suspend_member", "member": world.partner.pub})
    coupon = hashlib.sha256(os.urandom(16)).digest()
    ask = {"offer": "bread", "coupon": coupon, "price_mtok": 2000}
    assert_refused_unchanged(chain, chain.sign(holder, "token.redeem", ask), "member_suspended")
    assert world.balance(holder) == 5000
    eco_decide(chain, {"kind": "reinstate_member", "member": world.partner.pub})
    assert chain.ok(holder, "token.redeem", ask)["price_mtok"] == 2000


def test_the_vault_prices_nothing_for_a_suspended_provider_but_still_anchors_its_uploads() -> None:
    """A price is the provider's own act: the vault signing one for a suspended provider is
    refused like a dataset registered for it. An upload's anchor is not: the vault accepted
    the records before the vote, or re-keys a subject there on the DPO's order (Art. 16), and
    must not be left holding records the ledger never anchored."""
    chain, provider, _, _ = _world()
    assert decide(chain, {"kind": "suspend_member", "member": provider.pub}) == "passed"
    price = {"dataset": "d1", "mode": "full", "price_cents": 5}
    assert_refused_unchanged(chain, chain.sign(chain.vault, "price.set", price), "member_suspended")
    assert_refused_unchanged(chain, chain.sign(provider, "price.set", price), "member_suspended")
    assert chain.query(q="prices", dataset="d1") == {}
    chain.anchor("d1", "u2", chain.time_ms // DAY + 10)
    assert chain.query(q="upload", upload="u2")["status"] == "anchored"


def test_nothing_is_paid_into_a_key_governance_replaced() -> None:
    """After a rotation the old key is dead for ever (its holder may be a thief): a payment
    the operator records, or tokens a holder sends, to that key would be lost to the member,
    so both are refused `key_rotated`; to the new key they go through."""
    chain, _, consumer, _ = _world()
    new = _apply(chain, "consumer", "services")
    action = {"kind": "rotate_member_key", "member": consumer.pub, "new_key": new.pub}
    assert decide(chain, action) == "passed"
    paid = {"member": consumer.pub, "amount_cents": 500, "reference": "late-transfer"}
    assert_refused_unchanged(chain, chain.sign(chain.vault, "credit.deposit", paid), "key_rotated")
    assert deposit(chain, new, 500, "late-transfer")["credit_cents"] == 500
    world = eco()
    holder = funded(world, 3000)
    old_partner = world.partner
    fresh = _apply(world.chain, "partner", "providers")
    moved = {"kind": "rotate_member_key", "member": old_partner.pub, "new_key": fresh.pub}
    eco_decide(world.chain, moved)
    gift = {"to": old_partner.pub, "amount_mtok": 1000}
    assert_refused_unchanged(
        world.chain, world.chain.sign(holder, "token.transfer", gift), "key_rotated"
    )
    assert world.chain.ok(holder, "token.transfer", {**gift, "to": fresh.pub})["balance"] == 2000
