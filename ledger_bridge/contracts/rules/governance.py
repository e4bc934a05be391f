"""Governance: one college, one vote; inside each college, a majority of its VOTING members as
they stood when the proposal was made (docs/CONTRACTS.md "Governance"). Voting members are the
founders, the legal entities admitted by vote, and the residents governance admitted to
voting: every one of them entered by a decision somebody is accountable for, so no number of
fresh keys can hold a college's majority out of reach or make one.

What a proposal may decide is the table `ACTIONS`: each kind is one entry, a `validate` run
when it is proposed and an `enact` run when it passes (plus its body's shape in bodies.py,
`PROPOSAL_ACTIONS`, which a test keeps in step with this table).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from ledger_bridge.contracts import disclosure
from ledger_bridge.contracts.rules.common import (
    Ctx,
    Reject,
    admit,
    bump,
    check,
    dataset_of,
    mention,
)
from ledger_bridge.contracts.rules.devices import (
    enact_admit_device,
    enact_set_reward_rule,
    enact_suspend_device,
    validate_admit_device,
    validate_set_reward_rule,
    validate_suspend_device,
)
from ledger_bridge.contracts.rules.membership import (
    enact_reinstate_member,
    enact_rotate_member_key,
    enact_suspend_member,
    validate_reinstate_member,
    validate_rotate_member_key,
    validate_suspend_member,
)
from ledger_bridge.contracts.rules.parameters import enact_set_parameter, validate_set_parameter
from ledger_bridge.contracts.vocabulary import SELF_ADMITTED_ROLES

VOTING_MAX_MS = 90 * 24 * 3600 * 1000


class Action(NamedTuple):
    """What governance may decide, by kind."""

    # Refuses the proposed action, or returns its canonical fields (kept in the proposal).
    validate: Callable[[Ctx, dict[str, Any]], dict[str, Any]]
    # Applies the action once passed. Another proposal passed since it was made may have done
    # it already: an enact finds out and does what is left, if anything.
    enact: Callable[[Ctx, dict[str, Any]], None]


def _voter(c: Ctx) -> dict[str, Any]:
    """The author must be an active member with a vote."""
    m = c.active(c.tx.author)
    if m["votes_since"] is None:
        raise Reject("not_eligible", "a resident votes once governance admits them to voting")
    return m


# -- the actions ------------------------------------------------------------------------------


def _validate_admit_member(c: Ctx, action: dict[str, Any]) -> dict[str, Any]:
    m = c.member(action["member"])
    if m is None or m["status"] != "pending":
        raise Reject("not_found", "no pending membership application for this key")
    return {"member": action["member"]}


def _enact_admit_member(c: Ctx, action: dict[str, Any]) -> None:
    m = c.member(action["member"])
    if m is None or m["status"] != "pending":
        raise Reject("not_found", "the application is no longer pending")
    admit(c.state, action["member"], m["role"], m["college"], c.height, c.seq())


def _resident_without_vote(m: dict[str, Any]) -> bool:
    return m["status"] == "active" and m["role"] in SELF_ADMITTED_ROLES and m["votes_since"] is None


def _validate_admit_voter(c: Ctx, action: dict[str, Any]) -> dict[str, Any]:
    m = c.member(action["member"])
    if m is None or not _resident_without_vote(m):
        raise Reject("not_found", "no resident without a vote holds this key")
    return {"member": action["member"]}


def _enact_admit_voter(c: Ctx, action: dict[str, Any]) -> None:
    # Two open proposals may name the same resident; the second to pass has nothing to add.
    m = c.member(action["member"])
    if m is None or not _resident_without_vote(m):
        return
    m["votes_since"] = c.seq()
    c.state.put("member", action["member"], m)
    bump(c.state, "college_voters", m["college"])


def _validate_approve_purpose(c: Ctx, action: dict[str, Any]) -> dict[str, Any]:
    """A new purpose, with or without its declaration; or the declaration of a purpose
    approved without one (a founding name, an older chain's): declared once, never changed,
    so a consent given under a declaration keeps meaning what it meant."""
    purpose: str = action["purpose"]
    raw: dict[str, Any] | None = action.get("declaration")
    if c.state.has("purpose", purpose) and (
        raw is None or disclosure.terms(c.state, purpose)["declared"]
    ):
        raise Reject("exists", f"purpose {purpose} is already approved")
    if raw is None:
        return {"purpose": purpose}
    try:
        declared = disclosure.declaration(raw)
    except ValueError as exc:
        raise Reject("invalid", str(exc)) from None
    declared.pop("declared")
    return {"purpose": purpose, "declaration": declared}


def _enact_approve_purpose(c: Ctx, action: dict[str, Any]) -> None:
    purpose: str = action["purpose"]
    if not c.state.has("purpose", purpose):
        c.state.put("purpose", purpose, c.height)
    raw: dict[str, Any] | None = action.get("declaration")
    # Two open proposals may declare the same purpose; the first to pass is its declaration.
    if raw is not None and not disclosure.terms(c.state, purpose)["declared"]:
        c.state.put("purpose_terms", purpose, disclosure.declaration(raw))


def _validate_set_retention(c: Ctx, action: dict[str, Any]) -> dict[str, Any]:
    dataset: str = action["dataset"]
    dataset_of(c, dataset)
    return {"dataset": dataset, "retention_days": action["retention_days"]}


def _enact_set_retention(c: Ctx, action: dict[str, Any]) -> None:
    d = dataset_of(c, action["dataset"])
    d["retention_days"] = action["retention_days"]
    c.state.put("dataset", action["dataset"], d)


def _validator_row(r: dict[str, Any], colleges: list[str]) -> dict[str, Any]:
    check(r["college"] in colleges, "a validator's college is unknown")
    return {"public_key": r["public_key"], "college": r["college"], "address": r["address"]}


def _validate_set_validators(c: Ctx, action: dict[str, Any]) -> dict[str, Any]:
    rows: list[dict[str, Any]] = action["validators"]
    check(len(rows) >= 4 and (len(rows) - 1) % 3 == 0, "a validator set has 3f+1 members, f >= 1")
    colleges: list[str] = c.state.get("meta", "colleges")
    out = [_validator_row(r, colleges) for r in rows]
    check(len({r["public_key"] for r in out}) == len(out), "validator keys must be distinct")
    return {"validators": out}


def _enact_set_validators(c: Ctx, action: dict[str, Any]) -> None:
    # Recorded for the operators: replicas adopt a new validator set by a new genesis epoch
    # (docs/LEDGER-OPERATIONS.md), never by reconfiguring a running cluster.
    c.state.put("meta", "validators", action["validators"])


ACTIONS: dict[str, Action] = {
    "admit_member": Action(_validate_admit_member, _enact_admit_member),
    "admit_voter": Action(_validate_admit_voter, _enact_admit_voter),
    "approve_purpose": Action(_validate_approve_purpose, _enact_approve_purpose),
    "set_retention": Action(_validate_set_retention, _enact_set_retention),
    "set_validators": Action(_validate_set_validators, _enact_set_validators),
    "set_parameter": Action(validate_set_parameter, enact_set_parameter),
    "admit_device": Action(validate_admit_device, enact_admit_device),
    "suspend_device": Action(validate_suspend_device, enact_suspend_device),
    "set_reward_rule": Action(validate_set_reward_rule, enact_set_reward_rule),
    "suspend_member": Action(validate_suspend_member, enact_suspend_member),
    "reinstate_member": Action(validate_reinstate_member, enact_reinstate_member),
    "rotate_member_key": Action(validate_rotate_member_key, enact_rotate_member_key),
}


# -- proposals and votes ----------------------------------------------------------------------


def _mention_resident(c: Ctx, key: bytes | None) -> None:
    """A governance transaction authored by a resident, or naming one, is theirs to forget."""
    m = None if key is None else c.member(key)
    if key is not None and m is not None and m["role"] in SELF_ADMITTED_ROLES:
        mention(c, key.hex())


def governance_propose(c: Ctx) -> dict[str, Any]:
    body = c.tx.body
    author = _voter(c)
    kind: str = body["action"]["kind"]
    action = {"kind": kind, **ACTIONS[kind].validate(c, body["action"])}
    ends: int = body["voting_ends"]
    check(c.now < ends <= c.now + VOTING_MAX_MS, "voting_ends must be within 90 days from now")
    colleges: list[str] = c.state.get("meta", "colleges")
    # The voting members each college decides by, fixed now: admissions during the vote change
    # neither the majorities nor who votes (`governance_vote` checks `votes_since`).
    counts = {col: c.state.get("college_voters", col) or 0 for col in colleges}
    empty = [col for col, n in counts.items() if n == 0]
    if empty:
        raise Reject("college_empty", f"college {empty[0]} has no voting member")
    proposal = c.next_id("next_proposal")
    c.state.put(
        "proposal",
        proposal,
        {
            "author": c.tx.author,
            "author_college": author["college"],
            "action": action,
            "seq": c.seq(),
            "height": c.height,
            "ends": ends,
            "members": counts,
            "yes": {col: 0 for col in colleges},
            "no": {col: 0 for col in colleges},
            "status": "open",
        },
    )
    for key in (c.tx.author, action.get("member")):
        _mention_resident(c, key)
    return {"ok": True, "proposal": proposal}


def governance_vote(c: Ctx) -> dict[str, Any]:
    body = c.tx.body
    pid: int = body["proposal"]
    approve: bool = body["approve"]
    voter = _voter(c)
    p = c.state.get("proposal", pid)
    if p is None:
        raise Reject("not_found", f"no proposal {pid}")
    if p["status"] != "open" or c.now > p["ends"]:
        raise Reject("closed", f"proposal {pid} is no longer open")
    if voter["votes_since"] >= p["seq"]:
        raise Reject("not_eligible", "members given a vote after the proposal do not vote on it")
    if c.state.has("vote", pid, c.tx.author):
        raise Reject("duplicate", "this member has already voted on this proposal")
    c.state.put("vote", pid, c.tx.author, approve)
    _mention_resident(c, c.tx.author)
    col = voter["college"]
    p["yes" if approve else "no"][col] += 1
    members = p["members"]
    if all(2 * p["yes"][k] > n for k, n in members.items()):
        p["status"] = "passed"
        ACTIONS[p["action"]["kind"]].enact(c, p["action"])
    elif any(2 * p["no"][k] >= n for k, n in members.items()):
        p["status"] = "rejected"
    c.state.put("proposal", pid, p)
    return {"ok": True, "proposal": pid, "status": p["status"]}
