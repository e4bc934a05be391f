"""Property: the token contracts keep their books, against a small reference model.

A hypothesis state machine drives one economy (three admitted devices, the white paper's
rules with a daily cap on cycling, a partner with two offers, four residents, tokens that
expire after two days) through random steps, each a block or a governance decision: batches
of claims (sometimes replayed, forged, from a suspended device, for a rule the device does not
certify, for a forgotten subject), transfers, redemptions, coupon spends (twice, or by a
rival partner), device suspensions and reinstatements, days passing, subjects forgotten.

The model decides every outcome independently (which claim refuses a batch and why, what the
cap leaves, which lots go first and when they expire) and each result must match it. After
every step: minted = sum(balances) + redeemed + expired + forfeited; no balance is negative;
every account's balance and lots are the model's; no event was rewarded twice; no coupon
was spent twice; a suspended device minted nothing.

Default run: 60 sequences of up to 30 steps (~5 s); CIVIS_LONG_PROPERTIES=1 runs 1,000 of
up to 60. Every example starts from one economy built once and restored from its snapshot.
"""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from ledger_bridge.contracts.app import ConsentApp
from tests.ledger_bridge.contracts.harness import CHAIN, DAY, Chain, Member
from tests.ledger_bridge.contracts.test_forget import erase_body
from tests.ledger_bridge.contracts.token_world import Eco, decide, eco, rule_action

LONG = os.environ.get("CIVIS_LONG_PROPERTIES") == "1"
SETTINGS = settings(
    max_examples=1_000 if LONG else 60,
    stateful_step_count=60 if LONG else 30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

EXPIRY_DAYS = 2
CYCLING_CAP = 5000
RATES = {"cycling": 1000, "water-saving": 3000, "local-produce": 1000}
KIND_RULE = {
    "bike_reader": "cycling",
    "water_meter": "water-saving",
    "shop_scanner": "local-produce",
}
KINDS = tuple(KIND_RULE)
OFFERS = {"bread": 1000, "basket": 2500}
SUBJECTS = 4


@dataclass
class Template:
    eco: Eco
    subjects: list[Member]
    rival: Member
    snapshot: bytes
    height: int
    time_ms: int


@functools.cache
def template() -> Template:
    """The economy every example starts from, built once."""
    world = eco()
    chain = world.chain
    decide(chain, rule_action("cycling", cap=CYCLING_CAP))
    decide(
        chain,
        {"kind": "set_parameter", "parameter": "token_expiry_days", "value": EXPIRY_DAYS},
    )
    for name, price in OFFERS.items():
        world.offer(name, price)
    subjects = [chain.subject() for _ in range(SUBJECTS)]
    rival = chain.fresh("partner", "services")
    chain.admit_by_vote(rival)
    chain.block()  # the cap's version is in force from here
    return Template(world, subjects, rival, chain.app.snapshot(), chain.height, chain.time_ms)


@dataclass
class Model:
    """The reference: lots per account (hex), supply counters, events, coupons, devices."""

    lots: dict[str, list[list[int]]] = field(default_factory=dict)
    supply: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(("minted", "redeemed", "expired", "forfeited"), 0)
    )
    events: set[tuple[bytes, bytes]] = field(default_factory=set)  # (device, event)
    minted_day: dict[tuple[str, str, int], int] = field(default_factory=dict)
    coupons: dict[bytes, str] = field(default_factory=dict)  # secret -> issued | spent
    suspended: set[str] = field(default_factory=set)  # device kinds
    forgotten: set[str] = field(default_factory=set)

    def balance(self, account: str) -> int:
        return sum(m for _, m in self.lots.get(account, []))

    def credit(self, account: str, lots: list[list[int]]) -> None:
        held = {day: mtok for day, mtok in self.lots.get(account, [])}
        for day, mtok in lots:
            held[day] = held.get(day, 0) + mtok
        self.lots[account] = [[d, held[d]] for d in sorted(held)]

    def debit(self, account: str, mtok: int) -> list[list[int]]:
        lots, taken = self.lots.get(account, []), []
        while mtok:
            day, held = lots[0]
            take = min(held, mtok)
            taken.append([day, take])
            mtok -= take
            lots[0][1] -= take
            if lots[0][1] == 0:
                lots.pop(0)
        return taken

    def expire(self, today: int) -> None:
        for account, lots in self.lots.items():
            for _, mtok in [lot for lot in lots if lot[0] <= today - EXPIRY_DAYS]:
                self.supply["expired"] += mtok
            self.lots[account] = [lot for lot in lots if lot[0] > today - EXPIRY_DAYS]


claims_st = st.lists(
    st.tuples(
        st.integers(0, SUBJECTS - 1),  # subject
        st.sampled_from(KINDS),  # device
        # the device's own rule mostly: a batch is refused whole for one foreign rule
        st.sampled_from(("own",) * 16 + (*RATES, "planting")),
        st.integers(1, 6000),  # quantity_milli
        st.sampled_from(("new",) * 12 + ("replay", "replay", "forged")),
    ),
    min_size=1,
    max_size=3,
)


class TokenMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        t = template()
        app = ConsentApp(CHAIN)
        app.restore(t.snapshot)
        old = t.eco.chain
        self.chain = Chain(app, old.vault, old.dpo, old.validators, t.height, t.time_ms)
        self.chain._next_key = 10_000
        self.eco = Eco(self.chain, t.eco.provider, t.eco.partner, t.eco.devices)
        self.subjects, self.rival = t.subjects, t.rival
        self.model = Model()
        self.used_events: list[tuple[str, bytes]] = []  # (device kind, event) rewarded
        self.secrets: list[bytes] = []
        self.spent: dict[bytes, int] = {}  # coupon -> successful spends
        self.minted_by_suspended = 0
        self.kind_of = {bytes(d.public_key): kind for kind, d in self.eco.devices.items()}

    # -- blocks, as the model sees them ---------------------------------------------------
    def block(self, *txs: bytes) -> list[dict[str, Any]]:
        self.model.expire((self.chain.time_ms + 1000) // DAY)
        return self.chain.block(*txs)

    def hex(self, i: int) -> str:
        return self.subjects[i].subject

    # -- rules --------------------------------------------------------------------------------
    @rule(batch=claims_st)
    def reward(self, batch: list[tuple[int, str, str, int, str]]) -> None:
        claims: list[dict[str, Any]] = []
        expected = self._predict(batch, claims)
        [r] = self.block(self.eco.reward(*claims))
        if isinstance(expected, str):
            assert r["ok"] is False and r["code"] == expected, (r, expected)
            return
        assert r["ok"] and r["credited"] == expected, (r, expected)
        today = self.chain.time_ms // DAY
        for (subject, minted), claim in zip(expected, claims, strict=True):
            self.model.events.add((claim["device"], claim["event"]))
            self.used_events.append((self.kind_of[claim["device"]], claim["event"]))
            if minted:
                self.model.credit(subject, [[today, minted]])
                self.model.supply["minted"] += minted
                key = (claim["rule"], subject, claim["at"] // DAY)
                self.model.minted_day[key] = self.model.minted_day.get(key, 0) + minted
            if self.kind_of[claim["device"]] in self.model.suspended:
                self.minted_by_suspended += minted

    @rule(batch=claims_st)
    def reward_more(self, batch: list[tuple[int, str, str, int, str]]) -> None:
        """Rewards twice as often as any other step: the rest spends what they mint."""
        self.reward(batch)

    def _predict(
        self, batch: list[tuple[int, str, str, int, str]], claims: list[dict[str, Any]]
    ) -> list[list[Any]] | str:
        """Build the claims (into `claims`) and say what the contract must answer."""
        seen = set(self.model.events)
        caps: dict[tuple[str, str, int], int] = {}
        credited: list[list[Any]] = []
        refusal: str | None = None
        for subject_i, kind, rule_drawn, qty, how in batch:
            rule_name = KIND_RULE[kind] if rule_drawn == "own" else rule_drawn
            event = None
            if how == "replay" and self.used_events:  # relayed again by the same device
                kind, event = self.used_events[qty % len(self.used_events)]
            claim = self.eco.claim(
                self.hex(subject_i), rule_name, qty, device=self.eco.devices[kind], event=event
            )
            if how == "forged":
                claim["quantity_milli"] = qty + 1
            claims.append(claim)
            if refusal is not None:
                continue
            subject = self.hex(subject_i)
            if kind in self.model.suspended:
                refusal = "device_suspended"
            elif how == "forged":
                refusal = "bad_device_signature"
            elif (claim["device"], claim["event"]) in seen:
                refusal = "duplicate_event"
            elif rule_name not in RATES:
                refusal = "unknown_rule"
            elif KIND_RULE[kind] != rule_name:
                refusal = "rule_not_for_device"
            elif subject in self.model.forgotten:
                refusal = "unknown_subject"
            else:
                seen.add((claim["device"], claim["event"]))
                minted = qty * RATES[rule_name] // 1000
                if rule_name == "cycling":
                    key = (rule_name, subject, claim["at"] // DAY)
                    so_far = self.model.minted_day.get(key, 0) + caps.get(key, 0)
                    minted = max(0, min(minted, CYCLING_CAP - so_far))
                    caps[key] = caps.get(key, 0) + minted
                credited.append([subject, minted])
        return refusal if refusal is not None else credited

    def _member(self, i: int) -> tuple[Member, str]:
        """Account `i`: a subject, or (i == SUBJECTS) the partner."""
        who = self.eco.partner if i == SUBJECTS else self.subjects[i]
        return who, who.pub.hex()

    @rule(a=st.integers(0, SUBJECTS), b=st.integers(0, SUBJECTS), amount=st.integers(1, 6000))
    def transfer(self, a: int, b: int, amount: int) -> None:
        (sender, sa), (to, sb) = self._member(a), self._member(b)
        [r] = self.block(
            self.chain.sign(sender, "token.transfer", {"to": to.pub, "amount_mtok": amount})
        )
        if sa in self.model.forgotten:
            expected = "not_member"
        elif sb in self.model.forgotten:
            expected = "unknown_member"
        elif sa == sb:
            expected = "invalid"
        elif self.model.balance(sa) < amount:
            expected = "insufficient_tokens"
        else:
            assert r["ok"], r
            self.model.credit(sb, self.model.debit(sa, amount))
            return
        assert r["ok"] is False and r["code"] == expected, (r, expected)

    @rule(a=st.integers(0, SUBJECTS - 1), offer=st.sampled_from(sorted(OFFERS)))
    def redeem(self, a: int, offer: str) -> None:
        holder, account = self._member(a)
        secret = os.urandom(16)
        coupon = hashlib.sha256(secret).digest()
        price = OFFERS[offer]
        body = {"offer": offer, "coupon": coupon, "price_mtok": price}
        [r] = self.block(self.chain.sign(holder, "token.redeem", body))
        if account in self.model.forgotten:
            assert r["code"] == "not_member", r
        elif self.model.balance(account) < price:
            assert r["code"] == "insufficient_tokens", r
        else:
            assert r["ok"], r
            self.model.debit(account, price)
            self.model.supply["redeemed"] += price
            self.model.coupons[secret] = "issued"
            self.secrets.append(secret)

    @rule(pick=st.integers(0, 1000), rival=st.booleans())
    def spend(self, pick: int, rival: bool) -> None:
        if not self.secrets:
            return
        secret = self.secrets[pick % len(self.secrets)]
        partner = self.rival if rival else self.eco.partner
        [r] = self.block(self.chain.sign(partner, "coupon.spend", {"secret": secret}))
        if rival:
            assert r["code"] == "not_your_coupon", r
        elif self.model.coupons[secret] == "spent":
            assert r["code"] == "coupon_spent", r
        else:
            assert r["ok"], r
            self.model.coupons[secret] = "spent"
            coupon = hashlib.sha256(secret).digest()
            self.spent[coupon] = self.spent.get(coupon, 0) + 1

    @rule()
    def toggle_device(self) -> None:
        """Suspend or reinstate the shop scanner (the other devices stay active, so most
        batches can succeed)."""
        kind = "shop_scanner"
        device = bytes(self.eco.devices[kind].public_key)
        action = "admit_device" if kind in self.model.suspended else "suspend_device"
        decide(self.chain, {"kind": action, "device": device}, self.rival)
        self.model.expire(self.chain.time_ms // DAY)
        self.model.suspended ^= {kind}

    @rule(days=st.integers(1, 3), ms=st.integers(0, DAY - 1))
    def days_pass(self, days: int, ms: int) -> None:
        self.chain.time_ms += days * DAY - ms
        self.block()

    @rule(i=st.integers(0, SUBJECTS - 1))
    def forget(self, i: int) -> None:
        subject = self.subjects[i]
        [r] = self.block(self.chain.sign(self.chain.dpo, "erasure.record", erase_body(subject)))
        assert r["ok"] and r["forgotten"], r
        account = subject.subject
        self.model.supply["forfeited"] += self.model.balance(account)
        self.model.lots.pop(account, None)
        self.model.forgotten.add(account)
        self.model.minted_day = {k: v for k, v in self.model.minted_day.items() if k[1] != account}

    # -- invariants -----------------------------------------------------------------------------
    @invariant()
    def books_balance(self) -> None:
        supply = self.chain.query(q="supply")
        assert {k: supply[k] for k in self.model.supply} == self.model.supply, supply
        assert supply["minted"] == (
            supply["balances"] + supply["redeemed"] + supply["expired"] + supply["forfeited"]
        )
        total = 0
        for i in range(SUBJECTS + 1):
            _, account = self._member(i)
            got = self.chain.query(q="balance", account=account)
            want = [lot for lot in self.model.lots.get(account, []) if lot[1]]
            assert got["mtok"] >= 0 and got == {"mtok": self.model.balance(account), "lots": want}
            total += got["mtok"]
        assert total == supply["balances"]

    @invariant()
    def once_only(self) -> None:
        assert len(self.used_events) == len(set(self.used_events))  # no event rewarded twice
        assert all(n <= 1 for n in self.spent.values())  # no coupon spent twice
        assert self.minted_by_suspended == 0  # a suspended device minted nothing


def test_the_token_books_balance_under_random_traffic() -> None:
    run_state_machine_as_test(TokenMachine, settings=SETTINGS)
