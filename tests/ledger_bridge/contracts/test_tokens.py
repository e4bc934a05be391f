"""Attacks on the eco-citizen token contracts, each against the check that stops it: forged and
replayed claims, devices not (or no longer) admitted, rules that do not apply, caps, rule
changes inside a block, overdrafts, coupons spent twice or by another partner, expiry, and a
forgotten subject whose tokens must leave no trace."""

from __future__ import annotations

import hashlib
import os
from typing import Any

import pytest

from ledger_bridge.contracts import codec, events
from ledger_bridge.contracts.app import own_query
from tests.ledger_bridge.contracts.harness import CHAIN, DAY, Chain, Member, key
from tests.ledger_bridge.contracts.test_forget import erase_body, hits
from tests.ledger_bridge.contracts.token_world import (
    DATASET,
    Eco,
    decide,
    eco,
    register_device,
    rule_action,
)


@pytest.fixture()
def world() -> Eco:
    return eco()


def refused(result: dict[str, Any], code: str) -> None:
    assert result["ok"] is False and result["code"] == code, result


# -- claims -----------------------------------------------------------------------------------


def test_a_claim_rewards_its_subject_at_the_rules_rate(world: Eco) -> None:
    s = world.chain.subject()
    [r] = world.chain.block(
        world.reward(
            world.claim(s, "cycling", 5300),
            world.claim(s, "water-saving", 12000),
            world.claim(s, "local-produce", 7500),
        )
    )
    assert r["ok"] and r["credited"] == [[s.subject, 5300], [s.subject, 36000], [s.subject, 7500]]
    assert world.balance(s) == 48800
    assert world.supply_holds()["minted"] == 48800


def test_a_forged_device_signature_mints_nothing(world: Eco) -> None:
    chain, s = world.chain, world.chain.subject()
    good = world.claim(s, quantity_milli=1000)
    inflated = {**good, "quantity_milli": 1_000_000}  # altered after the device signed
    impostor = world.claim(s, device=key(999))
    impostor["device"] = good["device"]  # signed by another key, claiming the real device
    other_chain = {**good, "event": os.urandom(32)}
    other_chain["signature"] = world.devices["bike_reader"].sign(
        events.claim_message("another-chain", other_chain)
    )
    for bad in (inflated, impostor, other_chain):
        [r] = chain.block(world.reward(world.claim(s), bad))
        refused(r, "bad_device_signature")
        assert "claim 1" in r["message"]  # the batch is refused whole, naming the bad claim
    assert world.balance(s) == 0 and chain.query(q="supply")["minted"] == 0


def test_an_event_is_rewarded_once(world: Eco) -> None:
    chain, s = world.chain, world.chain.subject()
    claim = world.claim(s)
    refused(chain.block(world.reward(claim, claim))[0], "duplicate_event")  # within one batch
    assert world.balance(s) == 0
    # across batches in one block, and in a later block (the same claim relayed again)
    first, second = chain.block(world.reward(claim), world.reward(world.claim(s), claim))
    assert first["ok"]
    refused(second, "duplicate_event")
    refused(chain.block(world.reward(claim))[0], "duplicate_event")
    # a new claim re-using the event id, even with another quantity, is the same event
    again = world.claim(s, quantity_milli=9000, event=claim["event"])
    refused(chain.block(world.reward(again))[0], "duplicate_event")
    assert world.balance(s) == 1000


def test_the_event_query_tells_a_rewarded_event_from_one_never_rewarded(world: Eco) -> None:
    """The vault asks it after a reward's answer was lost: only a committed reward is found."""
    chain, s = world.chain, world.chain.subject()
    rewarded, never = world.claim(s, quantity_milli=2000), world.claim(s)
    refused(chain.block(world.reward(never, never))[0], "duplicate_event")  # refused: no entry
    chain.block(world.reward(rewarded))
    for event in (rewarded["event"], rewarded["event"].hex()):
        found = chain.query(q="event", device=rewarded["device"], event=event)
        assert found["subject"] == s.subject and found["minted"] == 2000
    assert chain.query(q="event", device=never["device"], event=never["event"]) is None
    with pytest.raises(ValueError):
        chain.query(q="event", device=rewarded["device"], event=b"short")


def test_a_suspended_device_mints_nothing_and_its_rewards_stand(world: Eco) -> None:
    chain, s = world.chain, world.chain.subject()
    chain.ok(chain.vault, "event.reward", {"claims": [world.claim(s, quantity_milli=4000)]})
    device = world.devices["bike_reader"]
    decide(chain, {"kind": "suspend_device", "device": bytes(device.public_key)})
    assert chain.query(q="device", device=bytes(device.public_key))["status"] == "suspended"
    refused(chain.block(world.reward(world.claim(s)))[0], "device_suspended")
    assert world.balance(s) == 4000  # what it certified before stands
    # governance may reinstate it
    decide(chain, {"kind": "admit_device", "device": bytes(device.public_key)})
    assert chain.block(world.reward(world.claim(s)))[0]["ok"]


def test_a_pending_or_unknown_device_mints_nothing() -> None:
    world = eco(admit=False)
    chain, s = world.chain, world.chain.subject()
    refused(chain.block(world.reward(world.claim(s)))[0], "device_pending")
    refused(chain.block(world.reward(world.claim(s, device=key(998))))[0], "device_unknown")
    assert world.balance(s) == 0


def test_a_device_is_registered_by_its_datasets_owner_once(world: Eco) -> None:
    chain = world.chain
    stranger = chain.fresh("provider", "providers")
    chain.admit_by_vote(stranger)
    body = {"device": bytes(key(997).public_key), "kind": "water_meter", "dataset": DATASET}
    body["district"] = "north"
    refused(chain.one(stranger, "device.register", body), "unauthorized")
    refused(chain.one(world.partner, "device.register", body), "unauthorized")
    register_device(chain, world.provider, key(997), "water_meter")
    refused(chain.one(world.provider, "device.register", body), "exists")
    devices = chain.query(q="devices", operator=world.provider.pub)
    assert len(devices) == 4 and devices[-1]["status"] in ("active", "pending")


def test_unknown_retired_or_foreign_rules_mint_nothing(world: Eco) -> None:
    chain, s = world.chain, world.chain.subject()
    refused(chain.block(world.reward(world.claim(s, "planting")))[0], "unknown_rule")
    # a water meter certifying kilometres cycled
    meter = world.devices["water_meter"]
    refused(
        chain.block(world.reward(world.claim(s, "cycling", device=meter)))[0],
        "rule_not_for_device",
    )
    decide(chain, rule_action("cycling", rate=0))  # retired
    refused(chain.block(world.reward(world.claim(s)))[0], "unknown_rule")
    assert world.balance(s) == 0


def test_only_a_registered_resident_is_rewarded(world: Eco) -> None:
    chain = world.chain
    refused(
        chain.block(world.reward(world.claim(chain.fresh("subject", "citizens"))))[0],
        "unknown_subject",
    )
    refused(chain.block(world.reward(world.claim(world.partner)))[0], "unknown_subject")


def test_only_the_vault_relays_rewards_and_claims_are_not_from_the_future(world: Eco) -> None:
    chain, s = world.chain, world.chain.subject()
    claim = world.claim(s)
    refused(chain.one(world.provider, "event.reward", {"claims": [claim]}), "unauthorized")
    refused(chain.one(s, "event.reward", {"claims": [claim]}), "unauthorized")
    late = world.claim(s, at=chain.time_ms + 10 * 60_000)
    refused(chain.block(world.reward(late))[0], "invalid")
    refused(chain.one(chain.vault, "event.reward", {"claims": [claim] * 257}), "invalid")
    refused(chain.one(chain.vault, "event.reward", {"claims": []}), "invalid")
    assert chain.block(world.reward(claim))[0]["ok"]


def test_the_cap_bounds_a_subjects_rewards_per_rule_and_day() -> None:
    world = eco(cap=5000)
    chain, s, t = world.chain, world.chain.subject(), world.chain.subject()
    day = chain.time_ms
    [r] = chain.block(
        world.reward(world.claim(s, quantity_milli=3000), world.claim(s, quantity_milli=3000))
    )
    assert r["credited"] == [[s.subject, 3000], [s.subject, 2000]]
    [r] = chain.block(world.reward(world.claim(s), world.claim(t, quantity_milli=4000)))
    assert r["credited"] == [[s.subject, 0], [t.subject, 4000]]  # per subject
    [r] = chain.block(world.reward(world.claim(s, "water-saving", 1000)))
    assert r["credited"] == [[s.subject, 3000]]  # per rule
    [r] = chain.block(world.reward(world.claim(s, at=day + DAY)))
    assert r["ok"] is False  # the next day is still in the future here
    chain.time_ms += DAY
    [r] = chain.block(world.reward(world.claim(s, quantity_milli=6000)))
    assert r["credited"] == [[s.subject, 5000]]  # a new day, a new cap
    assert world.balance(s) == 5000 + 3000 + 5000 and world.balance(t) == 4000
    world.supply_holds()


def test_a_rule_change_takes_effect_from_the_next_block(world: Eco) -> None:
    chain, s = world.chain, world.chain.subject()
    pid = chain.ok(
        chain.vault,
        "governance.propose",
        {"action": rule_action("cycling", rate=2000), "voting_ends": chain.time_ms + DAY},
    )["proposal"]
    voters = [chain.vault, chain.dpo, *chain.validators]
    for voter in voters:  # every vote but the one that passes it
        if voter is voters[-1]:
            break
        chain.one(voter, "governance.vote", {"proposal": pid, "approve": True})
    assert chain.query(q="proposal", proposal=pid)["status"] == "open"
    # the deciding vote and an event in the same block, the vote first
    vote = chain.sign(voters[-1], "governance.vote", {"proposal": pid, "approve": True})
    passed, reward = chain.block(vote, world.reward(world.claim(s)))
    assert passed["status"] == "passed" and reward["credited"] == [[s.subject, 1000]]
    [later] = chain.block(world.reward(world.claim(s)))
    assert later["credited"] == [[s.subject, 2000]]
    rules = {r["rule"]: r for r in chain.query(q="reward_rules")}
    assert rules["cycling"]["rate_mtok"] == 2000 and rules["water-saving"]["rate_mtok"] == 3000


def test_a_new_rule_rewards_nothing_in_the_block_that_enacts_it(world: Eco) -> None:
    chain, s = world.chain, world.chain.subject()
    action = {**rule_action("cycling"), "rule": "walking"}
    pid = chain.ok(
        chain.vault, "governance.propose", {"action": action, "voting_ends": chain.time_ms + DAY}
    )["proposal"]
    voters = [chain.vault, chain.dpo, *chain.validators]
    for voter in voters[:-1]:
        chain.one(voter, "governance.vote", {"proposal": pid, "approve": True})
    vote = chain.sign(voters[-1], "governance.vote", {"proposal": pid, "approve": True})
    passed, reward = chain.block(vote, world.reward(world.claim(s, "walking")))
    assert passed["status"] == "passed"
    refused(reward, "unknown_rule")
    assert chain.block(world.reward(world.claim(s, "walking")))[0]["credited"] == [
        [s.subject, 1000]
    ]


# -- transfers, offers, redemptions, coupons --------------------------------------------------


def funded(world: Eco, mtok: int) -> Member:
    s = world.chain.subject()
    world.chain.ok(
        world.chain.vault, "event.reward", {"claims": [world.claim(s, quantity_milli=mtok)]}
    )
    return s


def test_no_overdraft_on_transfer_or_redemption(world: Eco) -> None:
    chain = world.chain
    s, t = funded(world, 3000), chain.subject()
    refused(
        chain.one(s, "token.transfer", {"to": t.pub, "amount_mtok": 3001}), "insufficient_tokens"
    )
    refused(chain.one(t, "token.transfer", {"to": s.pub, "amount_mtok": 1}), "insufficient_tokens")
    refused(
        chain.one(s, "token.transfer", {"to": bytes(key(996).public_key), "amount_mtok": 1}),
        "unknown_member",
    )
    assert chain.ok(s, "token.transfer", {"to": t.pub, "amount_mtok": 1000})["balance"] == 2000
    world.offer(price=2500)
    coupon = hashlib.sha256(os.urandom(16)).digest()
    refused(
        chain.one(s, "token.redeem", {"offer": "bread", "coupon": coupon, "price_mtok": 2500}),
        "insufficient_tokens",
    )
    assert chain.query(q="coupon", coupon=coupon) is None
    assert (world.balance(s), world.balance(t)) == (2000, 1000)
    world.supply_holds()


def redeem(world: Eco, holder: Member, price: int, offer: str = "bread") -> bytes:
    secret = os.urandom(16)
    coupon = hashlib.sha256(secret).digest()
    body = {"offer": offer, "coupon": coupon, "price_mtok": price}
    r = world.chain.ok(holder, "token.redeem", body)
    assert r["coupon"] == coupon and r["height"] == world.chain.height
    return secret


def test_a_coupon_is_spent_once_by_its_partner(world: Eco) -> None:
    chain = world.chain
    s = funded(world, 5000)
    world.offer(price=2000)
    secret = redeem(world, s, 2000)
    coupon = hashlib.sha256(secret).digest()
    issued = chain.query(q="coupon", coupon=coupon)
    assert issued["status"] == "issued" and issued["partner"] == world.partner.pub
    assert s.pub not in codec.encode(issued) and s.subject not in repr(issued)
    rival = chain.fresh("partner", "services")
    chain.admit_by_vote(rival)
    refused(chain.one(rival, "coupon.spend", {"secret": secret}), "not_your_coupon")
    refused(chain.one(world.partner, "coupon.spend", {"secret": os.urandom(16)}), "unknown_coupon")
    refused(chain.one(s, "coupon.spend", {"secret": secret}), "unauthorized")
    # shown twice, at two tills: the second is refused whatever the order
    first, second = chain.block(
        chain.sign(world.partner, "coupon.spend", {"secret": secret}),
        chain.sign(world.partner, "coupon.spend", {"secret": secret}),
    )
    assert first["ok"] and first["price_mtok"] == 2000
    refused(second, "coupon_spent")
    refused(chain.one(world.partner, "coupon.spend", {"secret": secret}), "coupon_spent")
    day = chain.time_ms // DAY
    assert chain.query(q="redemptions", partner=world.partner.pub) == [[day, "food", 1, 2000]]
    assert world.balance(s) == 3000 and world.supply_holds()["redeemed"] == 2000
    # the same coupon hash cannot be issued twice
    again = {"offer": "bread", "coupon": coupon, "price_mtok": 2000}
    refused(chain.one(s, "token.redeem", again), "duplicate")


def test_offers_belong_to_their_partner_and_redeem_only_when_active(world: Eco) -> None:
    chain = world.chain
    s = funded(world, 5000)
    world.offer(price=1000)
    rival = chain.fresh("partner", "services")
    chain.admit_by_vote(rival)
    body = {"offer": "bread", "title": "x", "category": "food", "price_mtok": 1, "active": True}
    refused(chain.one(rival, "offer.publish", body), "not_your_offer")
    refused(chain.one(world.provider, "offer.publish", {**body, "offer": "mine"}), "unauthorized")
    world.offer(price=1000, active=False)
    coupon = hashlib.sha256(b"c").digest()
    ask = {"offer": "bread", "coupon": coupon, "price_mtok": 1000}
    refused(chain.one(s, "token.redeem", ask), "offer_inactive")
    refused(chain.one(s, "token.redeem", {**ask, "offer": "cake"}), "unknown_offer")
    [offer] = chain.query(q="offers", partner=world.partner.pub)
    assert offer["offer"] == "bread" and offer["active"] is False
    assert chain.query(q="offers", partner=rival.pub) == []


# -- expiry -----------------------------------------------------------------------------------


def test_lots_expire_after_the_token_lifetime_oldest_first(world: Eco) -> None:
    chain = world.chain
    decide(chain, {"kind": "set_parameter", "parameter": "token_expiry_days", "value": 2})
    chain.time_ms = (chain.time_ms // DAY + 1) * DAY + 1000  # the start of a day d
    d = chain.time_ms // DAY
    s, t = funded(world, 3000), chain.subject()
    chain.time_ms += DAY  # day d + 1
    chain.ok(chain.vault, "event.reward", {"claims": [world.claim(s, quantity_milli=4000)]})
    assert chain.query(q="balance", account=s.pub)["lots"] == [[d, 3000], [d + 1, 4000]]
    # spent oldest first: 2000 of day d go to T, keeping their minting day
    chain.ok(s, "token.transfer", {"to": t.pub, "amount_mtok": 2000})
    assert chain.query(q="balance", account=s.subject)["lots"] == [[d, 1000], [d + 1, 4000]]
    assert chain.query(q="balance", account=t.pub)["lots"] == [[d, 2000]]
    # and back: T's lot of day d is spent whole, S's grows again
    chain.ok(t, "token.transfer", {"to": s.pub, "amount_mtok": 2000})
    assert chain.query(q="balance", account=s.pub)["lots"] == [[d, 3000], [d + 1, 4000]]
    chain.time_ms = (d + 2) * DAY - 2000  # the last moment of day d + 1: nothing expires
    chain.block()
    assert world.balance(s) == 7000 and world.balance(t) == 0
    chain.block()  # the start of day d + 2: day d's lots expire
    assert chain.query(q="balance", account=s.pub) == {"mtok": 4000, "lots": [[d + 1, 4000]]}
    assert chain.query(q="balance", account=t.pub) == {"mtok": 0, "lots": []}
    assert world.supply_holds()["expired"] == 3000
    chain.time_ms += DAY
    chain.block()
    assert world.balance(s) == 0 and world.supply_holds()["expired"] == 7000
    kinds = [e["kind"] for e in chain.query(q="token_statement", account=s.pub)["entries"]]
    assert kinds == ["minted", "minted", "sent", "received", "expired", "expired"]


def test_without_a_lifetime_tokens_never_expire(world: Eco) -> None:
    s = funded(world, 3000)
    world.chain.time_ms += 400 * DAY
    world.chain.block()
    assert world.balance(s) == 3000 and world.supply_holds()["expired"] == 0


# -- statements, queries, read rights -----------------------------------------------------------


def test_a_reward_is_one_statement_movement_per_subject_and_rule(world: Eco) -> None:
    """Several claims of one subject in one batch: each credited in the result as a claim, one
    `minted` statement entry per rule with their sum, the totals and balance counting all."""
    chain, s, t = world.chain, world.chain.subject(), world.chain.subject()
    [r] = chain.block(
        world.reward(
            world.claim(s, quantity_milli=1000),
            world.claim(t, quantity_milli=4000),
            world.claim(s, "water-saving", 1000),
            world.claim(s, quantity_milli=2000),
        )
    )
    assert r["credited"] == [
        [s.subject, 1000],
        [t.subject, 4000],
        [s.subject, 3000],
        [s.subject, 2000],
    ]
    st = chain.query(q="token_statement", account=s.pub)
    assert [(e["n"], e["kind"], e["mtok"], e["rule"]) for e in st["entries"]] == [
        (1, "minted", 3000, "cycling"),
        (2, "minted", 3000, "water-saving"),
    ]
    assert st["totals"]["minted"] == 6000 and st["totals"]["balance"] == 6000
    assert chain.query(q="balance", account=s.pub)["lots"] == [[chain.time_ms // DAY, 6000]]
    assert [e["mtok"] for e in chain.query(q="token_statement", account=t.pub)["entries"]] == [4000]
    world.supply_holds()


def test_a_token_statement_lists_every_movement_with_totals(world: Eco) -> None:
    chain = world.chain
    s, t = funded(world, 5000), chain.subject()
    chain.ok(s, "token.transfer", {"to": t.pub, "amount_mtok": 1500})
    world.offer(price=1000)
    redeem(world, s, 1000)
    st = chain.query(q="token_statement", account=s.pub, after=0, limit=10)
    assert [(e["n"], e["kind"], e["mtok"]) for e in st["entries"]] == [
        (1, "minted", 5000),
        (2, "sent", 1500),
        (3, "redeemed", 1000),
    ]
    assert st["totals"] == {
        "minted": 5000,
        "received": 0,
        "sent": 1500,
        "redeemed": 1000,
        "expired": 0,
        "balance": 2500,
    }
    assert (
        chain.query(q="token_statement", account=s.pub, after=2, limit=10)["entries"][0]["n"] == 3
    )
    assert chain.query(q="token_statement", account=t.pub)["totals"]["received"] == 1500
    assert own_query({"q": "balance", "account": s.pub}, s.pub)
    assert own_query({"q": "token_statement", "account": s.subject}, s.pub)
    assert not own_query({"q": "balance", "account": t.pub}, s.pub)
    assert own_query({"q": "redemptions", "partner": world.partner.pub}, world.partner.pub)


# -- forgetting -------------------------------------------------------------------------------


def test_forgetting_a_subject_forfeits_their_tokens_and_leaves_no_trace(world: Eco) -> None:
    chain = world.chain
    p, q = chain.subject(), chain.subject()  # P is forgotten; Q, doing the same, is the control
    positions = {(chain.height - 1, 0)}  # P's registration
    claim_p = world.claim(p, quantity_milli=6000)
    [r] = chain.block(world.reward(world.claim(q, quantity_milli=6000), claim_p))
    assert r["ok"]
    positions.add((chain.height, 0))
    world.offer(price=1000)
    moves = chain.block(
        chain.sign(p, "token.transfer", {"to": q.pub, "amount_mtok": 1000}),
        chain.sign(q, "token.transfer", {"to": world.partner.pub, "amount_mtok": 500}),
        chain.sign(q, "token.transfer", {"to": p.pub, "amount_mtok": 2000}),
    )
    assert all(m["ok"] for m in moves)
    positions |= {(chain.height, 0), (chain.height, 2)}
    redeem(world, p, 1000)
    positions.add((chain.height, 0))
    redeem(world, q, 1000)
    before = chain.app.snapshot()
    assert hits(before, p) > 5
    q_hits = hits(before, q)
    assert world.balance(p) == 6000 and world.balance(q) == 6000 - 1000 + 1000 - 500 - 2000
    [erased] = chain.block(chain.sign(chain.dpo, "erasure.record", erase_body(p)))
    assert erased["forgotten"]
    positions.add((chain.height, 0))
    after = chain.app.snapshot()
    assert hits(after, p) == 0 and hits(after, q) == q_hits
    assert {(e.height, e.index) for e in chain.app.redactions(0, 1000)} == positions
    supply = world.supply_holds()
    assert supply["forfeited"] == 6000 and world.balance(p) == 0
    assert chain.query(q="token_statement", account=p.pub)["entries"] == []
    # the event stays rewarded (it cannot be relayed again for a new key), naming nobody
    assert chain.query(q="balance", account=q.pub)["mtok"] == 3500
    refused(chain.block(world.reward(claim_p))[0], "duplicate_event")
    # P's key registering again starts from nothing
    chain.ok(p, "member.register", {"role": "subject", "college": "citizens"})
    assert chain.query(q="balance", account=p.pub) == {"mtok": 0, "lots": []}


def test_a_subject_forgotten_in_a_block_is_forgotten_with_what_the_block_gave_them(
    world: Eco,
) -> None:
    """A reward ordered before the erasure in its block is forgotten with the rest; after it,
    P is no member and nothing is credited to them."""
    chain = world.chain
    p, q = chain.subject(), chain.subject()
    results = chain.block(
        world.reward(world.claim(p, quantity_milli=3000)),
        chain.sign(chain.dpo, "erasure.record", erase_body(p)),
        world.reward(world.claim(p, quantity_milli=3000)),
        chain.sign(q, "member.register", {"role": "subject", "college": "citizens"}),
    )
    assert results[0]["ok"] and results[1]["forgotten"]
    refused(results[2], "unknown_subject")
    assert hits(chain.app.snapshot(), p) == 0
    assert world.supply_holds()["forfeited"] == 3000


def test_the_claim_message_is_the_same_in_either_form() -> None:
    """The API holds claims in JSON's form, the contract in the ledger's: one message."""
    device = key(995)
    claim: dict[str, Any] = {
        "device": bytes(device.public_key),
        "event": b"\x01" * 32,
        "commitment": events.commitment({"km": 5.3, "salt": "ab"}, b"\x02" * 16),
        "rule": "cycling",
        "quantity_milli": 5300,
        "subject": "ab" * 32,
        "at": 1,
    }
    as_json = {k: v.hex() if isinstance(v, bytes) else v for k, v in claim.items()}
    assert events.claim_message(CHAIN, claim) == events.claim_message(CHAIN, as_json)
    as_json["signature"] = events.sign_claim(device, CHAIN, claim).hex()
    assert events.verify_claim(CHAIN, as_json)
    assert not events.verify_claim("other", as_json)
    # the salt is not covered twice: the detail's own `salt` field is left out
    assert events.commitment({"km": 1}, b"\x00" * 16) == events.commitment(
        {"km": 1, "salt": "00"}, b"\x00" * 16
    )
    assert events.commitment({"km": 1}, b"\x00" * 16) != events.commitment({"km": 1}, b"\x01" * 16)


def test_queries_answer_the_token_economy(world: Eco) -> None:
    chain: Chain = world.chain
    device = bytes(world.devices["bike_reader"].public_key)
    d = chain.query(q="device", device=device)
    assert d["operator"] == world.provider.pub and d["kind"] == "bike_reader"
    assert d["dataset"] == DATASET and d["status"] == "active"
    assert len(chain.query(q="devices")) == 3
    assert sorted(r["rule"] for r in chain.query(q="reward_rules")) == [
        "cycling",
        "local-produce",
        "water-saving",
    ]
    assert chain.query(q="supply") == {
        "minted": 0,
        "redeemed": 0,
        "expired": 0,
        "forfeited": 0,
        "balances": 0,
    }
    with pytest.raises(ValueError):
        chain.app.query(codec.encode({"q": "balance", "account": "nope"}))
