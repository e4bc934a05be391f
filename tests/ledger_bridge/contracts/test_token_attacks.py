"""An attacker's view of the token economy, beyond the checks test_tokens.py covers: amounts
that grow past what a JSON client reads exactly, a price changed under a holder's redemption,
and the event claims an erasure in the eco dataset must not leave readable."""

from __future__ import annotations

import hashlib
import os
from typing import Any

import pytest

from ledger_bridge.contracts.bodies import MTOK_MAX
from tests.ledger_bridge.contracts.harness import DAY, Chain, key
from tests.ledger_bridge.contracts.model_world import erase_upload_body, expire_body
from tests.ledger_bridge.contracts.test_forget import erase_body
from tests.ledger_bridge.contracts.token_world import DATASET, Eco, decide, eco, rule_action


@pytest.fixture()
def world() -> Eco:
    return eco()


def test_statement_totals_stay_json_safe_however_often_tokens_go_back_and_forth(
    world: Eco,
) -> None:
    """Supply is bounded by MTOK_MAX, but an account's `sent`/`received` totals sum every
    transfer: two holders passing a large balance back and forth would push them past 2^53
    (a JSON client then reads another number), and eventually past what msgpack encodes."""
    chain = world.chain
    decide(chain, rule_action("cycling", rate=10**9))  # 1,000,000 tokens per km
    s, t = chain.subject(), chain.subject()
    big = MTOK_MAX // 2
    chain.ok(chain.vault, "event.reward", {"claims": [world.claim(s, quantity_milli=big // 10**6)]})
    held = world.balance(s)
    assert held > MTOK_MAX // 4
    chain.ok(s, "token.transfer", {"to": t.pub, "amount_mtok": held})  # legitimate at first
    chain.ok(t, "token.transfer", {"to": s.pub, "amount_mtok": held})
    for _ in range(3):
        chain.one(s, "token.transfer", {"to": t.pub, "amount_mtok": held})
        chain.one(t, "token.transfer", {"to": s.pub, "amount_mtok": held})
    for who in (s, t):
        totals = chain.query(q="token_statement", account=who.pub)["totals"]
        assert all(0 <= v <= MTOK_MAX for v in totals.values()), totals
    world.supply_holds()


def test_a_partner_cannot_raise_the_price_under_a_pending_redemption(world: Eco) -> None:
    """The partner republishes its offer at a higher price in the block that carries a
    holder's redemption, ahead of it: the holder signed for the price the wallet showed, so the
    redemption is refused and costs nothing; redeemed at the new price, it goes through."""
    chain = world.chain
    s = chain.subject()
    chain.ok(chain.vault, "event.reward", {"claims": [world.claim(s, quantity_milli=50_000)]})
    world.offer(price=2000)  # what the wallet shows the holder
    held = world.balance(s)
    body = {"offer": "bread", "title": "a loaf", "category": "food", "active": True}
    coupon = hashlib.sha256(os.urandom(16)).digest()
    agreed = {"offer": "bread", "coupon": coupon, "price_mtok": 2000}
    raised, redeemed = chain.block(
        chain.sign(world.partner, "offer.publish", {**body, "price_mtok": 50_000}),
        chain.sign(s, "token.redeem", agreed),
    )
    assert raised["ok"]
    assert redeemed["ok"] is False and redeemed["code"] == "price_mismatch", redeemed
    assert world.balance(s) == held and chain.query(q="coupon", coupon=coupon) is None
    world.supply_holds()
    # a lower price than the current one refuses too: the holder names the price, exactly
    lower = chain.one(s, "token.redeem", {**agreed, "price_mtok": 1000})
    assert lower["ok"] is False and lower["code"] == "price_mismatch", lower
    r = chain.ok(s, "token.redeem", {**agreed, "price_mtok": 50_000})
    assert r["price_mtok"] == 50_000 and world.balance(s) == held - 50_000
    world.supply_holds()


def _event_entry(chain: Chain, claim: dict[str, Any]) -> dict[str, Any]:
    """The claim's event entry as the `event` query reads it; rewarded, so there is one (a
    blanked entry still says so)."""
    found: dict[str, Any] | None = chain.query(
        q="event", device=claim["device"], event=claim["event"]
    )
    assert found is not None
    return found


def test_an_erasure_in_the_eco_dataset_redacts_the_subjects_event_claims(world: Eco) -> None:
    """An event claim carries in clear what the vault's record of the event holds: the subject,
    the device (hence the district), the time to the millisecond and the quantity. Erased from
    the device's dataset, the subject's rewards are redacted (their batch positions, as
    forgetting does) and the event entries stop naming them. The controls: the same subject's
    reward from another dataset's device, and another subject's reward from the same device,
    are found by the same scan and stay."""
    chain = world.chain
    s, other = chain.subject(), chain.subject()
    chain.dataset(world.provider, "eco-elsewhere", category="eco", purposes=["impact-statistics"])
    elsewhere = key(950)
    body = {"device": bytes(elsewhere.public_key), "kind": "bike_reader"}
    chain.ok(
        world.provider, "device.register", {**body, "dataset": "eco-elsewhere", "district": "north"}
    )
    decide(chain, {"kind": "admit_device", "device": bytes(elsewhere.public_key)})
    mine = world.claim(s, quantity_milli=5300)
    theirs = world.claim(other)
    there = world.claim(s, device=elsewhere)
    results = chain.block(world.reward(mine), world.reward(theirs), world.reward(there))
    assert all(r["ok"] for r in results), results
    height, held = chain.height, world.balance(s)

    assert [_event_entry(chain, c)["subject"] for c in (mine, theirs, there)] == [
        s.subject,
        other.subject,
        s.subject,
    ]
    assert chain.app.redactions(0, 1000) == []
    chain.ok(chain.dpo, "erasure.record", erase_body(s, DATASET))
    assert {(e.height, e.index) for e in chain.app.redactions(0, 1000)} == {(height, 0)}
    # Emptied, not only stripped of the subject: its height, rule and amount would match a
    # line of the subject's statement, which stays.
    assert _event_entry(chain, mine) == {}
    assert [_event_entry(chain, c).get("subject") for c in (theirs, there)] == [
        other.subject,
        s.subject,
    ]
    assert world.balance(s) == held  # an erasure in one dataset forfeits nothing
    world.supply_holds()
    # A second erasure in the dataset finds nothing more to blank.
    chain.ok(chain.dpo, "erasure.record", erase_body(s, DATASET))
    assert len(chain.app.redactions(0, 1000)) == 1


def test_an_erased_or_expired_upload_blanks_the_rewards_of_the_events_it_held(world: Eco) -> None:
    """A reward names the vault's upload of its events' records. That upload erased (the DPO's
    erasure of it) or expired (its retention epoch) takes the records, and the reward's claims
    go with them: its batch position is redacted and its event entries stop naming the subject.
    The control: a reward naming an upload still live stays, found by the same reads."""
    chain = world.chain
    s = chain.subject()
    today = chain.time_ms // DAY
    days = {"u-erased": today, "u-expired": today, "u-live": today + 30}
    for upload, day in days.items():
        chain.anchor(DATASET, upload, day)
    claims = {upload: world.claim(s) for upload in days}
    rewards = [
        chain.sign(chain.vault, "event.reward", {"claims": [claims[u]], "upload": u}) for u in days
    ]
    results = chain.block(*rewards)
    assert all(r["ok"] for r in results), results
    height = chain.height

    def entry(upload: str) -> dict[str, Any]:
        return _event_entry(chain, claims[upload])

    assert [(entry(u)["subject"], entry(u)["upload"]) for u in days] == [
        (s.subject, u) for u in days
    ]
    chain.ok(chain.dpo, "erasure.record", erase_upload_body("u-erased"))
    assert {(e.height, e.index) for e in chain.app.redactions(0, 1000)} == {(height, 0)}
    chain.block(advance_ms=DAY)
    chain.ok(chain.vault, "retention.expire", expire_body(DATASET, today, ["u-expired"]))
    redacted = {(e.height, e.index) for e in chain.app.redactions(0, 1000)}
    assert redacted == {(height, 0), (height, 1)}
    assert entry("u-erased") == entry("u-expired") == {}
    assert entry("u-live")["subject"] == s.subject
    world.supply_holds()


def test_a_reward_committing_after_its_records_left_the_vault_is_blanked_at_once(
    world: Eco,
) -> None:
    """A reward whose answer was lost may commit after its upload was erased, or in the block
    of its subject's erasure from the dataset, after it (the erasure takes effect from the next
    block). Either is blanked in its own block, as it would have been had it come first. The
    control: the same subject's next event, in a later block, is new data and stays."""
    chain = world.chain
    s = chain.subject()
    chain.anchor(DATASET, "u-gone", chain.time_ms // DAY)
    chain.ok(chain.dpo, "erasure.record", erase_upload_body("u-gone"))
    late = world.claim(s)
    [r] = chain.block(
        chain.sign(chain.vault, "event.reward", {"claims": [late], "upload": "u-gone"})
    )
    assert r["ok"], r
    assert {(e.height, e.index, e.since) for e in chain.app.redactions(0, 1000)} == {
        (chain.height, 0, chain.height)
    }
    same_block, next_block = world.claim(s), world.claim(s)
    results = chain.block(
        chain.sign(chain.dpo, "erasure.record", erase_body(s, DATASET)),
        world.reward(same_block),
    )
    assert all(r["ok"] for r in results), results
    redacted = {(e.height, e.index) for e in chain.app.redactions(0, 1000)}
    assert (chain.height, 1) in redacted
    [r] = chain.block(world.reward(next_block))
    assert r["ok"] and (chain.height, 0) not in {
        (e.height, e.index) for e in chain.app.redactions(0, 1000)
    }

    assert _event_entry(chain, late) == _event_entry(chain, same_block) == {}
    assert _event_entry(chain, next_block)["subject"] == s.subject
