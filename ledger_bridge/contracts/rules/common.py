"""What every domain's rules share: the refusal, the execution context, the checks that are
not one domain's (an admitted member, a registered dataset, an approved purpose, the subject's
own key), admission to membership and the mention list forgetting reads.

The shape of every body (types, patterns, bounds, required and unknown fields) is declared in
bodies.py and checked by `apply` (`structure`) before the handler runs, so a handler reads
fields it knows are there and well-typed; what is left to it is the rules, whose refusals that
are not about who or what exists still use the code `invalid` (`check`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ledger_bridge.contracts import bodies
from ledger_bridge.contracts import tx as txmod
from ledger_bridge.contracts.state import State

DAY_MS = 24 * 3600 * 1000
MINUTE_MS = 60 * 1000

NAME = re.compile(bodies.NAME_PATTERN)  # purposes, categories, colleges (the genesis too)


class Reject(Exception):
    """A rule refuses the transaction; the state is rolled back."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def error(code: str, message: str) -> dict[str, Any]:
    return {"ok": False, "code": code, "message": message}


def check(cond: bool, message: str) -> None:
    if not cond:
        raise Reject("invalid", message)


def structure(tx: txmod.SignedTx) -> None:
    try:
        bodies.check(tx.type, tx.body)
    except bodies.BodyError as exc:
        raise Reject("invalid", str(exc)) from None


# -- the execution context ------------------------------------------------------------------


@dataclass
class Ctx:
    state: State
    tx: txmod.SignedTx
    height: int
    now: int
    tx_id: bytes
    index: int = 0  # the transaction's batch index in its block (`BlockContext.position`)
    forgets: list[str] = field(default_factory=list)  # subjects this transaction forgot

    def member(self, key: bytes) -> dict[str, Any] | None:
        m: dict[str, Any] | None = self.state.get("member", key)
        return m

    def active(self, key: bytes, *roles: str) -> dict[str, Any]:
        """The author (or named member) must be an admitted member with one of `roles`."""
        m = self.member(key)
        if m is None:
            raise Reject("not_member", "not a registered member")
        if m["status"] == "suspended":
            raise Reject("member_suspended", "governance suspended this member")
        if m["status"] == "rotated":
            raise Reject("key_rotated", "governance moved this membership to another key")
        if m["status"] != "active":
            raise Reject("not_admitted", "membership not approved by governance")
        if roles and m["role"] not in roles:
            raise Reject("unauthorized", f"needs the role {' or '.join(roles)}")
        return m

    def next_id(self, counter: str) -> int:
        n: int = self.state.get("meta", counter) or 0
        self.state.put("meta", counter, n + 1)
        return n + 1

    def seq(self) -> int:
        s: int = self.state.get("meta", "seq")
        return s


# -- checks more than one domain makes --------------------------------------------------------


def dataset_of(c: Ctx, dataset: str) -> dict[str, Any]:
    """The registered dataset `dataset`, or refused `not_found`."""
    d: dict[str, Any] | None = c.state.get("dataset", dataset)
    if d is None:
        raise Reject("not_found", f"dataset {dataset} is not registered")
    return d


def approved_purpose(c: Ctx, purpose: str) -> None:
    """Governance must have approved `purpose` (at founding or by a vote). One check and one
    message wherever a purpose is used: registering a dataset, granting a consent, asking for
    an access."""
    if not c.state.has("purpose", purpose):
        raise Reject("purpose_not_approved", f"purpose {purpose} is not approved by governance")


def subject_is_author(c: Ctx, body: dict[str, Any]) -> str:
    """The body's `subject` (hex) must be the author, an admitted subject: only the subject's
    own key expresses the subject's will."""
    subject: str = body["subject"]
    if bytes.fromhex(subject) != c.tx.author:
        raise Reject("not_subject", "only the subject's own key may express the subject's will")
    c.active(c.tx.author, "subject")
    return subject


# -- membership and mentions, written by several domains --------------------------------------


def admit(
    state: State,
    key: bytes,
    role: str,
    college: str,
    height: int,
    seq: int,
    *,
    votes: bool = True,
) -> None:
    """Make `key` an active member (genesis, resident registration, governance admission).

    Membership and a vote are separate: a founder and a legal entity admitted by vote have
    both from `seq` on; a resident registered by their own key (`votes=False`) is a member at
    once but votes only once governance admits them to voting (`admit_voter`), because nothing
    on the ledger tells one resident's key from a thousand keys of one person.
    """
    old = state.get("member", key)
    state.put(
        "member",
        key,
        {
            "role": role,
            "college": college,
            "status": "active",
            "since": seq,
            "height": height,
            "votes_since": seq if votes else None,
        },
    )
    if old is None or old["status"] != "active":
        bump(state, "college_count", college)
        if votes:
            bump(state, "college_voters", college)


def bump(state: State, table: str, college: str, by: int = 1) -> None:
    """Add `by` to a college's count in `table` (`college_count`, `college_voters`)."""
    count: int = state.get(table, college) or 0
    state.put(table, college, count + by)


def mention(c: Ctx, subject: str) -> None:
    """Remember the batch position of this transaction under `subject` (hex), which it names
    or which authored it: forgetting the subject (`forget`) finds through the `by_subject`
    index every stored transaction to redact. One entry per (subject, position) rather than a
    list per subject: a list is re-read and re-encoded whole at every mention, a cost growing
    with the subject's history; a second mention in one transaction rewrites the same bytes,
    which writes nothing. A refused transaction records nothing; its body is never stored."""
    c.state.put("mention", subject, c.height, c.index, 0)
