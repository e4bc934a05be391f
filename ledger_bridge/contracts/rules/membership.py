"""Membership: a key registers itself. A resident (`SELF_ADMITTED_ROLES`) is an active member
at once, in the resident college, without a vote; any other role waits, pending, for
governance to admit it (`governance.py`, `admit_member`). Governance may then suspend a legal
entity, reinstate it, or move its membership to a new key (`suspend_member`,
`reinstate_member`, `rotate_member_key`: the actions below), as after a key is reported stolen
(docs/CONTRACTS.md "Suspension and key rotation")."""

from __future__ import annotations

from typing import Any

from ledger_bridge.contracts.rules import fees
from ledger_bridge.contracts.rules.common import Ctx, Reject, admit, bump, check, mention
from ledger_bridge.contracts.vocabulary import SELF_ADMITTED_ROLES


def member_register(c: Ctx) -> dict[str, Any]:
    body = c.tx.body
    role: str = body["role"]
    college: str = body["college"]
    colleges: list[str] = c.state.get("meta", "colleges")
    check(college in colleges, "college is not one of the cooperative's colleges")
    if c.member(c.tx.author) is not None:
        raise Reject("exists", "this key is already registered")
    resident = c.state.get("meta", "resident_college")
    if role in SELF_ADMITTED_ROLES:
        check(college == resident, f"residents belong to the {resident} college")
        admit(c.state, c.tx.author, role, college, c.height, c.seq(), votes=False)
        mention(c, c.tx.author.hex())
        return {"ok": True, "status": "active"}
    c.state.put(
        "member",
        c.tx.author,
        {
            "role": role,
            "college": college,
            "status": "pending",
            "since": c.seq(),
            "height": c.height,
            "votes_since": None,
        },
    )
    return {"ok": True, "status": "pending"}


# -- governance actions: suspend, reinstate, move to a new key --------------------------------
#
# Why for legal entities only (and the founders): a resident's key is their pseudonym, the name
# their records and consents are filed under. Suspending it would stop the very transactions
# that are the resident's rights (revoking a consent, asking for an erasure); a resident whose
# wallet key is stolen revokes, erases and moves to the wallet's next generation instead.


def _governed(c: Ctx, key: bytes) -> dict[str, Any]:
    """The member `key` names, which governance may suspend, reinstate or move."""
    m = c.member(key)
    if m is None or m["status"] in ("pending", "rotated"):
        raise Reject("not_found", "no admitted member holds this key")
    check(m["role"] not in SELF_ADMITTED_ROLES, "a resident's key is their pseudonym: not governed")
    return m


def _not_last_voter(c: Ctx, m: dict[str, Any]) -> None:
    """A college with no voting member blocks every later proposal (`college_empty`), the
    reinstatement of its last voter too: so its last voter is never suspended."""
    voters: int = c.state.get("college_voters", m["college"]) or 0
    if m["votes_since"] is not None and voters <= 1:
        raise Reject("college_empty", "this member is its college's last voting member")


def _leave_college(c: Ctx, m: dict[str, Any]) -> None:
    """Take a member out of its college's counts (members, and voters if it votes)."""
    _not_last_voter(c, m)
    bump(c.state, "college_count", m["college"], -1)
    if m["votes_since"] is not None:
        bump(c.state, "college_voters", m["college"], -1)


def validate_suspend_member(c: Ctx, action: dict[str, Any]) -> dict[str, Any]:
    m = _governed(c, action["member"])
    if m["status"] == "suspended":
        raise Reject("exists", "this member is already suspended")
    _not_last_voter(c, m)
    return {"member": action["member"]}


def enact_suspend_member(c: Ctx, action: dict[str, Any]) -> None:
    """Every later transaction the member signs, or the vault signs for it, is refused
    `member_suspended` (`Ctx.active`). It no longer counts in its college: a suspended voter
    would otherwise weigh in every majority without being able to vote."""
    m = _governed(c, action["member"])
    if m["status"] == "suspended":
        return  # two proposals passed: the first suspended it
    _leave_college(c, m)
    m["status"] = "suspended"
    c.state.put("member", action["member"], m)


def validate_reinstate_member(c: Ctx, action: dict[str, Any]) -> dict[str, Any]:
    if _governed(c, action["member"])["status"] != "suspended":
        raise Reject("not_found", "no suspended member holds this key")
    return {"member": action["member"]}


def enact_reinstate_member(c: Ctx, action: dict[str, Any]) -> None:
    """Active again, counted again; a voter votes on the proposals made from now on only, as
    a newly admitted one does: it was not counted in those made while it was suspended."""
    m = _governed(c, action["member"])
    if m["status"] != "suspended":
        return
    m["status"] = "active"
    if m["votes_since"] is not None:
        m["votes_since"] = c.seq()
        bump(c.state, "college_voters", m["college"])
    bump(c.state, "college_count", m["college"])
    c.state.put("member", action["member"], m)


def _applicant(c: Ctx, m: dict[str, Any], new_key: bytes) -> None:
    """The new key must have applied (`member.register`, pending) with the member's role and
    college: its holder proved it holds it by signing, so a typing error in a proposal cannot
    move a membership to a key nobody holds."""
    n = c.member(new_key)
    if (
        n is None
        or n["status"] != "pending"
        or (n["role"], n["college"])
        != (
            m["role"],
            m["college"],
        )
    ):
        raise Reject("not_found", "the new key has no pending application with this role")


def validate_rotate_member_key(c: Ctx, action: dict[str, Any]) -> dict[str, Any]:
    _applicant(c, _governed(c, action["member"]), action["new_key"])
    return {"member": action["member"], "new_key": action["new_key"]}


def enact_rotate_member_key(c: Ctx, action: dict[str, Any]) -> None:
    """Move the membership from `member` to `new_key`; the old key is refused `key_rotated`
    from now on, for ever (ConsentApp.check refuses it before ordering).

    What moves with it: the role, college and status (a suspended member stays suspended
    until reinstated), the vote (from now on, as at a reinstatement: the new key did not vote
    on the open proposals and must not vote twice), the datasets it owns, the devices it
    operates, the offers it publishes and its credit. The consents subjects gave it under its
    earlier keys keep counting (`keys_before`, read by the access rule): a subject consents to
    a member of the cooperative, which governance says now holds this key."""
    old: bytes = action["member"]
    new: bytes = action["new_key"]
    m = _governed(c, old)
    _applicant(c, m, new)
    moved = {**m, "keys_before": [*m.get("keys_before", []), old]}
    if m["votes_since"] is not None:
        moved["votes_since"] = c.seq()
    c.state.put("member", new, moved)
    c.state.put(
        "member",
        old,
        {
            "role": m["role"],
            "college": m["college"],
            "status": "rotated",
            "successor": new,
            "height": c.height,
        },
    )
    _move_holdings(c, old, new)
    fees.carry_credit(c, old, new)


def _move_holdings(c: Ctx, old: bytes, new: bytes) -> None:
    """The registries filed under the old key: datasets (owner), devices (operator), offers
    (partner). Each is a scan of one index, once per rotation."""
    for (dataset,) in c.state.group("dataset", "owner", old):
        d = c.state.get("dataset", dataset)
        c.state.put("dataset", dataset, {**d, "owner": new})
    for table, field in (("device", "operator"), ("offer", "partner")):
        for (k,) in c.state.group(table, "all"):
            entry = c.state.get(table, k)
            if entry[field] == old:
                c.state.put(table, k, {**entry, field: new})
