"""Consent: a subject grants or revokes, with their own key, a consumer's use of a dataset (or
of a category of datasets) for a purpose.

A consent takes effect from the NEXT block: each keeps its current version and the one before
it (each tagged with the height it was written at), and a decision at height h uses the newest
version written before h (`version_at`), so the primary's order inside a block cannot decide
whether an access lands just before or just after a revocation.
"""

from __future__ import annotations

from typing import Any

from ledger_bridge.contracts import disclosure
from ledger_bridge.contracts.rules.common import (
    Ctx,
    Reject,
    approved_purpose,
    check,
    dataset_of,
    mention,
    subject_is_author,
)
from ledger_bridge.contracts.state import State


def scope_key(body: dict[str, Any]) -> str:
    """A consent's scope as its key names it (the body names exactly one of the two)."""
    if "dataset" in body:
        return f"dataset:{body['dataset']}"
    return f"category:{body['category']}"


def version_at(entry: dict[str, Any] | None, height: int) -> list[Any] | None:
    """The version of a consent in force for a decision at `height` (written before it)."""
    if entry is None:
        return None
    cur: list[Any] = entry["cur"]
    if cur[0] < height:
        return cur
    prev: list[Any] | None = entry["prev"]
    return prev


def _write_version(c: Ctx, key: tuple[Any, ...], version: list[Any]) -> None:
    entry = c.state.get(*key)
    if entry is None:
        new = {"cur": version, "prev": None}
    elif entry["cur"][0] == c.height:  # changed twice in one block: the block's last word counts
        new = {"cur": version, "prev": entry["prev"]}
    else:
        new = {"cur": version, "prev": entry["cur"]}
    c.state.put(*key, new)


def consent_grant(c: Ctx) -> dict[str, Any]:
    body = c.tx.body
    subject = subject_is_author(c, body)
    consumer: bytes = body["consumer"]
    purpose: str = body["purpose"]
    until: int = body["valid_until"]
    scope = scope_key(body)
    dataset = dataset_of(c, body["dataset"]) if "dataset" in body else None
    m = c.member(consumer)
    if m is None or m["role"] != "consumer":
        raise Reject("not_member", "the consumer is not a registered consumer")
    approved_purpose(c, purpose)
    if dataset is not None and purpose not in dataset["purposes"]:
        raise Reject("purpose_not_allowed", f"purpose {purpose} is not allowed for this dataset")
    check(until > c.now, "valid_until must be in the future")
    bounds = disclosure.grant_terms(
        disclosure.terms(c.state, purpose), purpose, body.get("mode"), body.get("fields")
    )
    if isinstance(bounds, disclosure.Refusal):
        raise Reject(bounds.code, bounds.message)
    mode, fields = bounds
    key = ("consent", subject, consumer, scope, purpose)
    # [height written, valid_until, granted, mode, fields(, notice)]; mode and fields None:
    # the consent follows its purpose's declaration (disclosure.consent_terms). The notice
    # hash is appended only when the grant names one, so a chain whose grants predate the
    # field replays to the same state roots.
    version: list[Any] = [c.height, until, True, mode, fields]
    if "notice" in body:
        version.append(body["notice"])
    _write_version(c, key, version)
    mention(c, subject)
    return {
        "ok": True,
        "effective_from_height": c.height + 1,
        "valid_until": until,
        "mode": mode,
        "fields": fields,
    }


def consent_revoke(c: Ctx) -> dict[str, Any]:
    body = c.tx.body
    subject = subject_is_author(c, body)
    key = ("consent", subject, body["consumer"], scope_key(body), body["purpose"])
    entry = c.state.get(*key)
    if entry is None or not entry["cur"][2]:
        raise Reject("not_found", "no consent in force to revoke")
    _write_version(c, key, [c.height, entry["cur"][1], False, *entry["cur"][3:]])
    mention(c, subject)
    return {"ok": True, "effective_from_height": c.height + 1}


def consent_in_force(
    state: State, subject: str, consumer: bytes, scope: str, purpose: str, height: int, now: int
) -> list[Any] | None:
    """The consent version in force for a decision at `height` (its mode and fields say what
    it allows), or None."""
    # The index answers "no such consent" (the usual case for one of an access's two scopes)
    # without a lookup.
    if not state.in_group(
        "consent", "by_consumer_purpose", (consumer, purpose), (subject, consumer, scope, purpose)
    ):
        return None
    v = version_at(state.get("consent", subject, consumer, scope, purpose), height)
    return v if v is not None and bool(v[2]) and now < v[1] else None
