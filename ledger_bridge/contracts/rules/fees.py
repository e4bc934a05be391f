"""Paid access: a provider prices its dataset's answers, consumers pay from credit deposited
off-chain, and the cooperative takes a commission on each paid answer.

Amounts are integer euro cents (no float on the ledger). A price is per answer and per
disclosure mode: `("price", dataset, mode)` -> cents, 0 deleting it; a mode without a price
owes the price of the nearest wider mode that has one (`price_of`). It is not versioned: the
consumer names the price it agrees to in its `access.request` (`price_cents`), so a price
changed between the draft and the block refuses the access (`price_mismatch`), never charges
more (or less) than what the consumer signed for.

A credit account is a legal entity's (a provider, a consumer, the cooperative's operations
key): `("credit", member)` -> cents. Every movement appends an entry to the member's statement
`("statement", member, n)` -> {height, kind, cents, dataset, access}. Why no subject in an
entry: an entry outlives any erasure (accounts must balance), so it names the access by its
number, whose record forgetting redacts, and never whom the access was about.

The cooperative's account is the credit account of the active member with the role `vault`
(the operations key that anchors uploads): no special account exists, so its statement is
read like any other member's.
"""

from __future__ import annotations

from typing import Any

from ledger_bridge.contracts.rules import parameters
from ledger_bridge.contracts.rules.common import Ctx, Reject, dataset_of
from ledger_bridge.contracts.rules.datasets import owner_or_vault
from ledger_bridge.contracts.state import State
from ledger_bridge.contracts.vocabulary import MODES

BASIS_POINTS = 10_000
# The roles that hold a credit account besides the cooperative's: legal entities only.
ACCOUNT_ROLES = ("provider", "consumer")


def price_set(c: Ctx) -> dict[str, Any]:
    """The dataset's owner (or the vault on its behalf) prices one mode's answers. The owner
    must be in standing whoever signs: a price is its own act, which the vault relays only."""
    body = c.tx.body
    dataset_id: str = body["dataset"]
    mode: str = body["mode"]
    cents: int = body["price_cents"]
    owner = dataset_of(c, dataset_id)["owner"]
    owner_or_vault(c, owner)
    c.active(owner, "provider")
    if cents:
        c.state.put("price", dataset_id, mode, cents)
    else:
        c.state.delete("price", dataset_id, mode)
    return {"ok": True, "dataset": dataset_id, "mode": mode, "price_cents": cents}


def credit_deposit(c: Ctx) -> dict[str, Any]:
    """The cooperative's operations key records a payment it received off-chain, once per
    `reference` (the bank transfer's, say)."""
    body = c.tx.body
    member: bytes = body["member"]
    amount: int = body["amount_cents"]
    c.active(c.tx.author, "vault")
    m = c.member(member)
    if m is None:
        raise Reject("not_found", "member is not a registered member")
    if m["status"] == "rotated":  # a dead key: the member's credit is under its new one
        raise Reject("key_rotated", "governance moved this membership to another key")
    if m["role"] not in ACCOUNT_ROLES:
        # a subject's key on a statement would outlive its erasure
        raise Reject(
            "unauthorized", f"credit accounts are for the roles {', '.join(ACCOUNT_ROLES)}"
        )
    if c.state.has("deposit_reference", body["reference"]):
        # a payment is credited once, however often its recording is retried
        raise Reject("duplicate", "a deposit with this reference is already recorded")
    c.state.put("deposit_reference", body["reference"], c.height)
    balance = _move(c, member, amount, "deposit", None, None)
    return {"ok": True, "credit_cents": balance}


def price_of(state: State, dataset: str, mode: str) -> int:
    """What one answer in `mode` costs (0: free): the price set for `mode`, or else the price
    of the nearest wider mode that has one. A narrower mode discloses no more than a wider one
    (under a purpose reaching `full`, a projection may name every field), so pricing only the
    wider answers must not leave the narrower ones free; a provider wanting a narrower mode
    cheaper prices it explicitly."""
    for wider in MODES[MODES.index(mode) :]:
        cents: int | None = state.get("price", dataset, wider)
        if cents:
            return cents
    return 0


def credit_of(state: State, member: bytes) -> int:
    cents: int | None = state.get("credit", member)
    return cents or 0


def price_due(c: Ctx, consumer: bytes, dataset: str, mode: str, offered: int | None) -> int:
    """The price an access must pay, checked against what the consumer agreed to and what its
    credit covers. Any difference refuses, a lower price too: the consumer signed for one
    price, and the provider set another."""
    due = price_of(c.state, dataset, mode)
    if (offered or 0) != due:
        raise Reject(
            "price_mismatch",
            f"price_cents must be the dataset's current price for the mode {mode}",
        )
    if due > credit_of(c.state, consumer):
        raise Reject("insufficient_credit", "the consumer's credit does not cover the price")
    return due


def charge(c: Ctx, consumer: bytes, provider: bytes, dataset: str, access: int, cents: int) -> int:
    """Move a paid answer's price: the consumer pays it whole, the cooperative keeps the
    commission (rounded down) and the provider gets the rest, so no cent is lost or made.
    Returns the cents charged."""
    commission = cents * parameters.value(c.state, "commission_bp") // BASIS_POINTS
    _move(c, consumer, -cents, "fee_paid", dataset, access)
    if cents - commission:
        _move(c, provider, cents - commission, "fee_earned", dataset, access)
    if commission:
        _move(c, cooperative(c), commission, "commission", dataset, access)
    return cents


def cooperative(c: Ctx) -> bytes:
    """The cooperative's account: the active member with the role `vault` (the lowest key
    if governance ever admitted several, so every replica picks the same)."""
    keys = c.state.group("member", "active_role", "vault")
    if not keys:
        raise Reject("invalid", "no active vault member holds the cooperative's account")
    key: bytes = keys[0][0]
    return key


# The statement total each kind of movement adds to (any other kind: `earned`). A credit
# carried to a member's new key leaves the old key's book as paid out and enters the new one's
# as deposited, so each book keeps balance = deposited + earned - paid.
_TOTALS = {
    "deposit": "deposited",
    "carried_in": "deposited",
    "fee_paid": "paid",
    "carried_out": "paid",
}


def carry_credit(c: Ctx, old: bytes, new: bytes) -> None:
    """Move a member's credit to its new key (governance's `rotate_member_key`): one movement
    out of the old key's statement, one into the new key's. The old statement stays readable
    under the old key."""
    balance = credit_of(c.state, old)
    if balance:
        _move(c, old, -balance, "carried_out", None, None)
        _move(c, new, balance, "carried_in", None, None)


def _move(
    c: Ctx, member: bytes, cents: int, kind: str, dataset: str | None, access: int | None
) -> int:
    """Add `cents` (negative: a payment) to `member`'s credit and its statement; returns the
    new balance."""
    balance = credit_of(c.state, member) + cents
    c.state.put("credit", member, balance)
    book = book_of(c.state, member)
    n = book["entries"] + 1
    total = _TOTALS.get(kind, "earned")
    book[total] += abs(cents)
    book["entries"] = n
    c.state.put("credit_book", member, book)
    c.state.put(
        "statement",
        member,
        n,
        {
            "height": c.height,
            "kind": kind,
            "cents": abs(cents),
            "dataset": dataset,
            "access": access,
        },
    )
    return balance


def book_of(state: State, member: bytes) -> dict[str, int]:
    """A member's statement totals: entries, and cents deposited, paid and earned (fees
    earned and, for the cooperative, commissions)."""
    book: dict[str, int] | None = state.get("credit_book", member)
    return book or {"entries": 0, "deposited": 0, "paid": 0, "earned": 0}
