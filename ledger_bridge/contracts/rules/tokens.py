"""The eco-citizen token ledger: rewards for certified events, transfers, offers, redemptions,
coupons, expiry and what forgetting a subject does to their tokens (docs/CONTRACTS.md
"Eco-citizen tokens").

Amounts are integer milli-tokens (mtok). The state holds:
  ("lots", account)                     -> [[day, mtok], ...] by minting day, oldest first
                                           (account: a member key in hex); the balance is
                                           their sum; spent first in, first out
  ("lot_expiry", day, account)          -> 0: the account holds a lot minted on `day`
  ("token_totals", account)             -> the account's statement count and totals by kind
  ("token_statement", account, n)       -> {height, kind, mtok, ...} one token movement
  ("event", device, event)              -> {subject, rule, minted, height, index, upload?}:
                                           index is the reward's batch position, which
                                           forgetting the subject redacts (it is their
                                           mention), as does erasing or expiring `upload`,
                                           the vault's upload of the events' records
  ("minted_day", rule, subject, day)    -> mtok the subject earned by `rule` on `day`
  ("offer", offer)                      -> {partner, title, category, price_mtok, active, height}
  ("coupon", SHA-256(secret))           -> {offer, partner, category, price_mtok, status, height}
  ("redemptions", partner, day, category) -> [count, mtok] of coupons spent
  ("meta", "minted" | "redeemed" | "expired" | "forfeited") -> supply counters
so that, at the end of every block: minted = sum(balances) + redeemed + expired + forfeited.

Why no balance entry of its own: it is the sum of the lots (a few per account, one per day
held), and a second entry would be a second state write, encoded and hashed on every replica,
for every movement.

Why lots keep their minting day through transfers: tokens expire N days after they were
minted (`token_expiry_days`), whoever holds them; a transfer must not make them younger.
Why a coupon entry names no holder: a partner scanning it learns what was bought, not by whom.
"""

from __future__ import annotations

from typing import Any

from ledger_bridge.contracts import events
from ledger_bridge.contracts.bodies import MTOK_MAX
from ledger_bridge.contracts.rules import parameters
from ledger_bridge.contracts.rules.common import DAY_MS, Ctx, Reject, check, mention
from ledger_bridge.contracts.rules.devices import rule_at
from ledger_bridge.contracts.rules.redaction import blank_events
from ledger_bridge.contracts.state import State
from ledger_bridge.crypto import digest

CLAIM_AHEAD_MS = 5 * 60 * 1000  # how far past the block's time a claim's `at` may be
SUPPLY = ("minted", "redeemed", "expired", "forfeited")
STATEMENT_KINDS = ("minted", "received", "sent", "redeemed", "expired")


# -- balances, lots and statements ----------------------------------------------------------


def balance(state: State, account: str) -> int:
    lots: list[list[int]] = state.get("lots", account) or []
    return sum(mtok for _, mtok in lots)


def _supply(state: State, counter: str, mtok: int) -> None:
    state.put("meta", counter, (state.get("meta", counter) or 0) + mtok)


def _statement(
    state: State, account: str, height: int, moves: list[tuple[str, int, dict[str, Any]]]
) -> None:
    """Append one statement entry per (kind, mtok, extra) in `moves`, and the totals once."""
    totals: dict[str, int] = state.get("token_totals", account) or {
        "n": 0,
        **{k: 0 for k in STATEMENT_KINDS},
    }
    for kind, mtok, extra in moves:
        totals["n"] += 1
        totals[kind] += mtok
        state.put(
            "token_statement",
            account,
            totals["n"],
            {"height": height, "kind": kind, "mtok": mtok, **extra},
        )
    state.put("token_totals", account, totals)


def _credit(state: State, account: str, lots: list[list[int]]) -> None:
    """Add `lots` ([[day, mtok], ...]) to the account's, merged by day, oldest first."""
    held: dict[int, int] = {day: mtok for day, mtok in state.get("lots", account) or []}
    for day, mtok in lots:
        if day not in held:
            state.put("lot_expiry", day, account, 0)
            first: int | None = state.get("meta", "lot_day_next")
            if first is None or first > day:
                state.put("meta", "lot_day_next", day)
        held[day] = held.get(day, 0) + mtok
    state.put("lots", account, [[d, held[d]] for d in sorted(held)])


def _debit(state: State, account: str, mtok: int) -> list[list[int]]:
    """Take `mtok` from the account's oldest lots first; return the lots taken. Refused
    `insufficient_tokens` when the balance does not cover it."""
    lots: list[list[int]] = state.get("lots", account) or []
    if sum(held for _, held in lots) < mtok:
        raise Reject("insufficient_tokens", "the balance does not cover this amount")
    taken: list[list[int]] = []
    left = mtok
    while left > 0:
        day, held = lots[0]
        take = min(held, left)
        taken.append([day, take])
        left -= take
        if take == held:
            lots.pop(0)
            state.delete("lot_expiry", day, account)
        else:
            lots[0] = [day, held - take]
    _store(state, account, lots)
    return taken


def _store(state: State, account: str, lots: list[list[int]]) -> None:
    """An account holding nothing has no entry (lots are never empty nor zero)."""
    if lots:
        state.put("lots", account, lots)
    else:
        state.delete("lots", account)


def _mention_subject(c: Ctx, key: bytes) -> None:
    """A token transaction naming a resident is theirs to forget."""
    m = c.member(key)
    if m is not None and m["role"] == "subject":
        mention(c, key.hex())


# -- event.reward -----------------------------------------------------------------------------


class _Known:
    """The devices, rules and subjects a batch names, each read from the state once: none of
    them changes within an `event.reward`, and a batch of 256 claims names a handful."""

    def __init__(self, c: Ctx) -> None:
        self.c = c
        self.chain_id: str = c.state.get("meta", "chain_id")
        self.devices: dict[bytes, dict[str, Any] | None] = {}
        self.rules: dict[str, dict[str, Any] | None] = {}
        self.subjects: dict[str, bool] = {}

    def device(self, key: bytes) -> dict[str, Any] | None:
        if key not in self.devices:
            self.devices[key] = self.c.state.get("device", key)
        return self.devices[key]

    def rule(self, rule: str) -> dict[str, Any] | None:
        if rule not in self.rules:
            self.rules[rule] = rule_at(self.c.state, rule, self.c.height)
        return self.rules[rule]

    def is_subject(self, subject: str) -> bool:
        if subject not in self.subjects:
            member = self.c.member(bytes.fromhex(subject))
            self.subjects[subject] = member is not None and member["role"] == "subject"
        return self.subjects[subject]


def _claim_terms(c: Ctx, known: _Known, i: int, claim: dict[str, Any]) -> dict[str, Any]:
    """The reward rule's terms for claim `i`, after every check but the amount's. A claim
    repeated within the batch is found as a duplicate too: the claims before it in the batch
    have already written their ("event", device, event) entries."""
    where = f"claim {i}"
    device = known.device(claim["device"])
    if device is None:
        raise Reject("device_unknown", f"{where}: no device registered with this key")
    if device["status"] == "pending":
        raise Reject("device_pending", f"{where}: the device is not admitted by governance")
    if device["status"] != "active":
        raise Reject("device_suspended", f"{where}: the device is suspended")
    if not events.verify_claim(known.chain_id, claim):
        raise Reject("bad_device_signature", f"{where}: the device's signature does not verify")
    if c.state.has("event", claim["device"], claim["event"]):
        raise Reject("duplicate_event", f"{where}: this event is already rewarded")
    terms = known.rule(claim["rule"])
    if terms is None:
        raise Reject("unknown_rule", f"{where}: no reward rule {claim['rule']} in force")
    if device["kind"] not in terms["device_kinds"]:
        raise Reject("rule_not_for_device", f"{where}: the rule does not reward this device kind")
    if not known.is_subject(claim["subject"]):
        raise Reject("unknown_subject", f"{where}: the subject is no registered resident")
    check(claim["at"] <= c.now + CLAIM_AHEAD_MS, f"{where}: at is in the future")
    return terms


class _Minted:
    """What a batch mints, summed per subject, so each subject's cap counters, lots, balance,
    statement are written once per batch, not once per claim: a state write is an encoding and
    a hash on every replica, and the sums are the same state. No `mention` either: each event
    entry keeps the reward's batch position, and forgetting reads it there (rules.forget)."""

    def __init__(self) -> None:
        self.day: dict[tuple[str, str, int], int] = {}  # (rule, subject, day) -> so far
        self.by_rule: dict[tuple[str, str], int] = {}  # (subject, rule) -> minted

    def so_far(self, state: State, key: tuple[str, str, int]) -> int:
        if key in self.day:
            return self.day[key]
        found: int | None = state.get("minted_day", *key)
        return found or 0

    def add(self, key: tuple[str, str, int], so_far: int, minted: int) -> None:
        rule, subject, _ = key
        self.day[key] = so_far + minted
        self.by_rule[subject, rule] = self.by_rule.get((subject, rule), 0) + minted

    def write(self, c: Ctx) -> None:
        """In sorted key order (determinism needs an order, and sorted needs no history)."""
        for key in sorted(self.day):
            c.state.put("minted_day", *key, self.day[key])
        per_subject: dict[str, list[tuple[str, int]]] = {}
        for subject, rule in sorted(self.by_rule):
            per_subject.setdefault(subject, []).append((rule, self.by_rule[subject, rule]))
        today = c.now // DAY_MS
        for subject, minted in per_subject.items():
            _credit(c.state, subject, [[today, sum(m for _, m in minted)]])
            moves = [("minted", m, {"rule": rule}) for rule, m in minted]
            _statement(c.state, subject, c.height, moves)


def event_reward(c: Ctx) -> dict[str, Any]:
    """Reward a batch of device-signed claims, all or none (a bad claim refuses the whole
    transaction, naming its index). Every claim is checked before anything but its event
    entry is written; then the batch's sums are written once per subject (`_Minted`) and the
    supply counter once."""
    c.active(c.tx.author, "vault")
    known, batch = _Known(c), _Minted()
    credited: list[list[Any]] = []
    upload: str | None = c.tx.body.get("upload")  # where the vault keeps the events' records
    supply_before: int = c.state.get("meta", "minted") or 0
    supply = supply_before
    for i, claim in enumerate(c.tx.body["claims"]):
        terms = _claim_terms(c, known, i, claim)
        subject: str = claim["subject"]
        rule: str = claim["rule"]
        day_key = (rule, subject, claim["at"] // DAY_MS)
        minted = claim["quantity_milli"] * terms["rate_mtok"] // 1000
        so_far = batch.so_far(c.state, day_key)
        cap: int = terms["cap_mtok_per_day"]
        if cap > 0:
            minted = max(0, min(minted, cap - so_far))
        check(supply + minted <= MTOK_MAX, f"claim {i}: the token supply would exceed its bound")
        entry = {
            "subject": subject,
            "rule": rule,
            "minted": minted,
            "height": c.height,
            "index": c.index,
        }
        if upload is not None:
            entry["upload"] = upload
        c.state.put("event", claim["device"], claim["event"], entry)
        if minted > 0:
            batch.add(day_key, so_far, minted)
            supply += minted
        credited.append([subject, minted])
    batch.write(c)
    if supply != supply_before:
        _supply(c.state, "minted", supply - supply_before)
    _blank_if_record_gone(c, known, upload)
    return {"ok": True, "credited": credited}


def _blank_if_record_gone(c: Ctx, known: _Known, upload: str | None) -> None:
    """A reward that commits after its events' records left the vault is blanked at once, as
    it would have been had it come first: its upload already erased or expired (an answer
    lost to a timeout, the reward committing late), or a claim's subject erased from the
    device's dataset earlier in this block (an erasure takes effect from the next block, so
    this block's rewards are on the same footing as those before it)."""
    anchored = c.state.get("upload", upload) if upload is not None else None
    gone = anchored is not None and anchored["status"] != "anchored"
    keys = []
    for claim in c.tx.body["claims"]:
        device = known.device(claim["device"])
        assert device is not None  # _claim_terms refused the reward otherwise
        erased_at = c.state.get("erased_subject_dataset", claim["subject"], device["dataset"])
        if gone or erased_at == c.height:
            keys.append((claim["device"], claim["event"]))
    blank_events(c.state, keys, c.height)


# -- transfers, offers, redemptions, coupons --------------------------------------------------


def token_transfer(c: Ctx) -> dict[str, Any]:
    body = c.tx.body
    c.active(c.tx.author)
    to: bytes = body["to"]
    amount: int = body["amount_mtok"]
    recipient = c.member(to)
    if recipient is None:
        raise Reject("unknown_member", "the recipient is no registered member")
    if recipient["status"] == "rotated":  # a dead key: tokens sent there are lost to everyone
        raise Reject("key_rotated", "governance moved the recipient's membership to another key")
    check(to != c.tx.author, "a transfer goes to another member")
    sender = c.tx.author.hex()
    # Supply bounds every balance, but not the totals of tokens going back and forth: refused
    # before either total passes what a JSON client reads exactly.
    for account, kind in ((sender, "sent"), (to.hex(), "received")):
        so_far = (c.state.get("token_totals", account) or {}).get(kind, 0)
        check(so_far + amount <= MTOK_MAX, f"the account's {kind} total would exceed its bound")
    lots = _debit(c.state, sender, amount)
    _credit(c.state, to.hex(), lots)
    _statement(c.state, sender, c.height, [("sent", amount, {})])
    _statement(c.state, to.hex(), c.height, [("received", amount, {})])
    _mention_subject(c, c.tx.author)
    _mention_subject(c, to)
    return {"ok": True, "balance": balance(c.state, sender)}


def offer_publish(c: Ctx) -> dict[str, Any]:
    body = c.tx.body
    c.active(c.tx.author, "partner")
    name: str = body["offer"]
    old: dict[str, Any] | None = c.state.get("offer", name)
    if old is not None and old["partner"] != c.tx.author:
        raise Reject("not_your_offer", "this offer is another partner's")
    c.state.put(
        "offer",
        name,
        {
            "partner": c.tx.author,
            "title": body["title"],
            "category": body["category"],
            "price_mtok": body["price_mtok"],
            "active": body["active"],
            "height": c.height,
        },
    )
    return {"ok": True, "offer": name}


def token_redeem(c: Ctx) -> dict[str, Any]:
    body = c.tx.body
    c.active(c.tx.author)
    name: str = body["offer"]
    coupon: bytes = body["coupon"]
    offer: dict[str, Any] | None = c.state.get("offer", name)
    if offer is None:
        raise Reject("unknown_offer", f"no offer {name}")
    if not offer["active"]:
        raise Reject("offer_inactive", f"offer {name} is not active")
    # A coupon is the partner's to honour: none is sold while governance holds it suspended.
    c.active(offer["partner"], "partner")
    if c.state.has("coupon", coupon):
        raise Reject("duplicate", "this coupon is already issued")
    price: int = offer["price_mtok"]
    if body["price_mtok"] != price:
        # the partner may republish its offer between the holder's draft and the block: the
        # holder pays only the price they signed for, or nothing
        raise Reject("price_mismatch", f"offer {name} costs {price} mtok, not {body['price_mtok']}")
    holder = c.tx.author.hex()
    _debit(c.state, holder, price)
    _supply(c.state, "redeemed", price)
    _statement(c.state, holder, c.height, [("redeemed", price, {"offer": name})])
    c.state.put(
        "coupon",
        coupon,
        {
            "offer": name,
            "partner": offer["partner"],
            "category": offer["category"],
            "price_mtok": price,
            "status": "issued",
            "height": c.height,
        },
    )
    _mention_subject(c, c.tx.author)
    return {"ok": True, "coupon": coupon, "offer": name, "price_mtok": price, "height": c.height}


def coupon_spend(c: Ctx) -> dict[str, Any]:
    partner = c.active(c.tx.author, "partner")
    coupon = digest(c.tx.body["secret"])
    entry: dict[str, Any] | None = c.state.get("coupon", coupon)
    if entry is None:
        raise Reject("unknown_coupon", "no coupon with this secret")
    # A coupon sold under the partner's earlier key (before governance moved it) is still the
    # member's to honour, under the key it holds now.
    if entry["partner"] != c.tx.author and entry["partner"] not in partner.get("keys_before", []):
        raise Reject("not_your_coupon", "this coupon is for another partner's offer")
    if entry["status"] != "issued":
        raise Reject("coupon_spent", "this coupon is already spent")
    entry["status"] = "spent"
    entry["spent_height"] = c.height
    c.state.put("coupon", coupon, entry)
    key = ("redemptions", c.tx.author, c.now // DAY_MS, entry["category"])
    count, mtok = c.state.get(*key) or [0, 0]
    c.state.put(*key, [count + 1, mtok + entry["price_mtok"]])
    return {
        "ok": True,
        "coupon": coupon,
        "offer": entry["offer"],
        "category": entry["category"],
        "price_mtok": entry["price_mtok"],
    }


# -- expiry and forgetting --------------------------------------------------------------------


def expire_lots(state: State, height: int) -> None:
    """At a block's start, expire the lots minted `token_expiry_days` days ago or earlier.
    ("meta", "lot_day_next") is the oldest day whose lots may be left: days before it hold
    none, so a block looks only at the days that came due since the last one."""
    days = parameters.value(state, "token_expiry_days")
    first: int | None = state.get("meta", "lot_day_next")
    if days == 0 or first is None:
        return
    cutoff = state.get("meta", "now") // DAY_MS - days
    for day in range(first, cutoff + 1):
        for _, account in state.group("lot_expiry", "day", day):
            _expire_lot(state, account, day, height)
    if cutoff + 1 > first:
        state.put("meta", "lot_day_next", cutoff + 1)


def _expire_lot(state: State, account: str, day: int, height: int) -> None:
    lots: list[list[int]] = state.get("lots", account)
    mtok = next(m for d, m in lots if d == day)
    state.delete("lot_expiry", day, account)
    _store(state, account, [[d, m] for d, m in lots if d != day])
    _supply(state, "expired", mtok)
    _statement(state, account, height, [("expired", mtok, {})])


def forget_tokens(state: State, subject: str) -> None:
    """Forget a subject's tokens: their balance is forfeited (the supply keeps counting it),
    their lots, cap counters and statement go, and the events that rewarded them keep only
    their (device, event) key, so an event stays unrewardable twice yet names nobody."""
    held = balance(state, subject)
    if held:
        _supply(state, "forfeited", held)
    for day, _ in state.get("lots", subject) or []:
        state.delete("lot_expiry", day, subject)
    state.delete("lots", subject)
    state.delete("token_totals", subject)
    for k in state.group("token_statement", "by_account", subject):
        state.delete("token_statement", *k)
    for k in state.group("minted_day", "by_subject", subject):
        state.delete("minted_day", *k)
    for k in state.group("event", "subject", subject):
        e = state.get("event", *k)
        e.pop("subject")
        state.put("event", *k, e)
