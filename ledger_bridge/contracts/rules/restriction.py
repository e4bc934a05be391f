"""Restriction (GDPR Art. 18) and objection (Art. 21): a subject stops the processing of their
data in one dataset, with their own key; the DPO, through the vault, answers with a legal-claims
exemption or compelling legitimate grounds.

One entry per (subject, dataset) holds the whole standing, versioned as a consent is:
`("restriction", subject, dataset) -> {"cur": [height, standing], "prev": [height, standing]}`
with standing = {ground, restricted_at, objected, objected_at, override, exemption}. Why one
entry: an access decides each subject with one look-up, and forgetting the subject deletes one
table (`state.SUBJECT_TABLES`). Why versioned: a restriction, a lift, an objection, its
withdrawal and an override take effect from the NEXT block, like a consent (`version_at`), so
the primary's order inside a block cannot decide whether an access lands before or after one.

What stops processing (`stopped_before`): a restriction in force, or an objection in force
that the DPO did not override. Then `access.request` grants nobody that subject in that
dataset, whatever their consents: the restriction is the subject's later and more specific
word (Art. 18(2) allows processing "with the data subject's consent": the subject gives it by
lifting the restriction). The legal-claims exemption (Art. 18(2), and Art. 21(1)'s own
exception) lets the provider read its records off the ledger (the vault checks it on every
read, `api/services/restrictions.py`); it never lets a consumer in.

An objection is only for datasets processed under Art. 6(1)(e) or (f)
(`vocabulary.OBJECTION_BASES`); under another basis it is refused `basis_is_consent` (the
subject withdraws consent instead). An override answers the objection in force: the subject
withdrawing it drops the override, and an objection made again needs grounds again. An
exemption answers what stops processing: once nothing does, it goes.
"""

from __future__ import annotations

from typing import Any

from ledger_bridge.contracts.rules.common import Ctx, Reject, check, dataset_of, mention
from ledger_bridge.contracts.rules.consent import version_at
from ledger_bridge.contracts.state import State
from ledger_bridge.contracts.vocabulary import OBJECTION_BASES

TABLE = "restriction"


def empty() -> dict[str, Any]:
    """The standing of a subject who never restricted nor objected in a dataset."""
    return {
        "ground": None,
        "restricted_at": None,
        "objected": False,
        "objected_at": None,
        "override": None,
        "exemption": None,
    }


def stops(standing: dict[str, Any]) -> str | None:
    """Why `standing` stops processing (`restricted`, `objected`), or None."""
    if standing["ground"] is not None:
        return "restricted"
    if standing["objected"] and standing["override"] is None:
        return "objected"
    return None


def stopped_before(state: State, subject: str, dataset: str, height: int) -> str | None:
    """Why an access at `height` must deny `subject` in `dataset` (`restricted`, `objected`),
    as the standing was written before `height`, or None."""
    # The index answers "never restricted nor objected" (the usual case) without a look-up.
    if not state.in_group(TABLE, "by_subject", (subject,), (subject, dataset)):
        return None
    version = version_at(state.get(TABLE, subject, dataset), height)
    return None if version is None else stops(version[1])


def _standing(c: Ctx, subject: str, dataset: str) -> dict[str, Any]:
    entry = c.state.get(TABLE, subject, dataset)
    if entry is None:
        return empty()
    standing: dict[str, Any] = entry["cur"][1]
    return standing


def _write(c: Ctx, subject: str, dataset: str, standing: dict[str, Any]) -> dict[str, Any]:
    """Write the new standing as the current version (the block's last word, if it changed
    in this block already) and answer with when it takes effect."""
    if stops(standing) is None:
        standing["exemption"] = None  # nothing left to be exempt from
    key = (TABLE, subject, dataset)
    entry = c.state.get(*key)
    version = [c.height, standing]
    if entry is None:
        new = {"cur": version, "prev": None}
    elif entry["cur"][0] == c.height:
        new = {"cur": version, "prev": entry["prev"]}
    else:
        new = {"cur": version, "prev": entry["cur"]}
    c.state.put(*key, new)
    mention(c, subject)
    return {"ok": True, "effective_from_height": c.height + 1}


def _own(c: Ctx) -> tuple[str, str, dict[str, Any]]:
    """The author, an active subject, and the dataset they name: a subject restricts or
    objects for their own key only (the body names no subject: the author is the subject)."""
    c.active(c.tx.author, "subject")
    dataset_id: str = c.tx.body["dataset"]
    return c.tx.author.hex(), dataset_id, dataset_of(c, dataset_id)


def _named(c: Ctx) -> tuple[str, str, dict[str, Any]]:
    """The vault or the DPO, acting on the DPO's order about the subject it names."""
    c.active(c.tx.author, "vault", "dpo")
    body = c.tx.body
    dataset_id: str = body["dataset"]
    dataset_of(c, dataset_id)
    subject: str = body["subject"]
    return subject, dataset_id, _standing(c, subject, dataset_id)


# -- the subject's transactions --------------------------------------------------------------


def restriction_set(c: Ctx) -> dict[str, Any]:
    subject, dataset_id, _ = _own(c)
    standing = _standing(c, subject, dataset_id)
    ground: str = c.tx.body["ground"]
    if standing["ground"] == ground:
        raise Reject("already_restricted", "a restriction on this ground is in force")
    if standing["ground"] is None:
        standing["restricted_at"] = c.height
    standing["ground"] = ground
    return {**_write(c, subject, dataset_id, standing), "ground": ground}


def restriction_lift(c: Ctx) -> dict[str, Any]:
    subject, dataset_id, _ = _own(c)
    standing = _standing(c, subject, dataset_id)
    if standing["ground"] is None:
        raise Reject("not_restricted", "no restriction in force to lift")
    standing["ground"] = standing["restricted_at"] = None
    return _write(c, subject, dataset_id, standing)


def objection_set(c: Ctx) -> dict[str, Any]:
    subject, dataset_id, dataset = _own(c)
    basis = dataset["legal_basis"]
    if basis not in OBJECTION_BASES:
        raise Reject(
            "basis_is_consent",
            f"the dataset's legal basis is {basis}: an objection (GDPR Art. 21(1)) applies to "
            f"{' or '.join(OBJECTION_BASES)}; withdraw consent instead (consent.revoke)",
        )
    standing = _standing(c, subject, dataset_id)
    if standing["objected"]:
        raise Reject("already_objected", "an objection is in force")
    standing |= {"objected": True, "objected_at": c.height, "override": None}
    return _write(c, subject, dataset_id, standing)


def objection_withdraw(c: Ctx) -> dict[str, Any]:
    subject, dataset_id, _ = _own(c)
    standing = _standing(c, subject, dataset_id)
    if not standing["objected"]:
        raise Reject("not_objected", "no objection in force to withdraw")
    standing |= {"objected": False, "objected_at": None, "override": None}
    return _write(c, subject, dataset_id, standing)


# -- the DPO's answers, signed by the vault (or the DPO's own key) ----------------------------


def restriction_exempt(c: Ctx) -> dict[str, Any]:
    subject, dataset_id, standing = _named(c)
    until: int = c.tx.body["until"]
    check(until > c.now, "until must be in the future")
    if stops(standing) is None:
        raise Reject(
            "not_restricted",
            "nothing stops processing of this subject in this dataset: no exemption to grant",
        )
    standing["exemption"] = {
        "ground": c.tx.body["ground"],
        "until": until,
        "height": c.height,
        "tx": c.tx_id,
    }
    return {**_write(c, subject, dataset_id, standing), "until": until}


def objection_override(c: Ctx) -> dict[str, Any]:
    subject, dataset_id, standing = _named(c)
    if not standing["objected"]:
        raise Reject("not_objected", "no objection in force to override")
    if standing["override"] is not None:
        raise Reject("already_overridden", "the objection in force is overridden already")
    standing["override"] = {"grounds": c.tx.body["grounds"], "height": c.height, "tx": c.tx_id}
    return _write(c, subject, dataset_id, standing)


# -- the query ---------------------------------------------------------------------------------


def standings(state: State, subject: str | None, dataset: str | None) -> list[dict[str, Any]]:
    """The standings in force from the next block, of a subject (in one dataset or all) or of
    a dataset; those where nothing is set any more are left out."""
    if subject is not None:
        keys = state.group(TABLE, "by_subject", subject)
        keys = [k for k in keys if dataset is None or k[1] == dataset]
    elif dataset is not None:
        keys = state.group(TABLE, "by_dataset", dataset)
    else:
        raise ValueError("query restrictions needs subject or dataset")
    out = []
    for s, d in keys:
        height, standing = state.get(TABLE, s, d)["cur"]
        if standing == empty():
            continue
        out.append(
            {
                "subject": s,
                "dataset": d,
                **standing,
                "processing_stopped": stops(standing) is not None,
                "changed_at_height": height,
            }
        )
    return out
