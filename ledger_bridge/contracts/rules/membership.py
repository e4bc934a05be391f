"""Membership: a key registers itself. A resident (`SELF_ADMITTED_ROLES`) is an active member
at once, in the resident college, without a vote; any other role waits, pending, for
governance to admit it (`governance.py`, `admit_member`)."""

from __future__ import annotations

from typing import Any

from ledger_bridge.contracts.rules.common import Ctx, Reject, admit, check, mention
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
