"""Erasure and retention: a subject asks for their data's erasure (`erasure.request`); the vault
or the DPO records an erasure done (`erasure.record`) or a retention epoch expired
(`retention.expire`). An erasure takes effect from the next block (`access.erased_before`).

An erasure of a subject everywhere also forgets them (`forget`): after it, no state entry
names the subject, and the redaction entries tell the replicas which stored transactions to
blank. An erasure in one dataset blanks the rewards its devices' events earned the subject
(`forget_events`), and an upload erased or expired the rewards of the events it held the
records of (`forget_upload_events`): the claims name the subject with the event's details.
"""

from __future__ import annotations

from typing import Any

from ledger_bridge.contracts.rules.common import (
    DAY_MS,
    Ctx,
    Reject,
    bump,
    check,
    dataset_of,
    mention,
    subject_is_author,
)
from ledger_bridge.contracts.rules.rectification import close_requests, forget_requests
from ledger_bridge.contracts.rules.redaction import blank_events, redact
from ledger_bridge.contracts.rules.tokens import forget_tokens
from ledger_bridge.contracts.state import SUBJECT_TABLES, State


def _erasure_scope(c: Ctx, scope: dict[str, Any]) -> dict[str, Any]:
    if scope["kind"] == "subject":
        out: dict[str, Any] = {"kind": "subject", "subject": scope["subject"]}
        if "dataset" in scope:
            out["dataset"] = scope["dataset"]
            dataset_of(c, out["dataset"])
        return out
    upload: str = scope["upload"]
    if not c.state.has("upload", upload):
        raise Reject("not_found", f"upload {upload} is not anchored")
    return {"kind": "upload", "upload": upload}


def erasure_request(c: Ctx) -> dict[str, Any]:
    # The body's scope is a subject's (bodies.py): a subject asks about their own data only.
    scope = _erasure_scope(c, c.tx.body["scope"])
    subject_is_author(c, scope)
    request = c.next_id("next_erasure_request")
    c.state.put(
        "erasure_request",
        request,
        {"scope": scope, "height": c.height, "time": c.now, "status": "open"},
    )
    c.state.put("erasure_request_open", request, c.height)
    mention(c, scope["subject"])
    return {"ok": True, "request": request}


def _upload_refs(c: Ctx, raw: list[dict[str, Any]]) -> list[dict[str, Any]]:
    refs = []
    for u in raw:
        upload: str = u["upload"]
        anchored = c.state.get("upload", upload)
        if anchored is None:
            raise Reject("not_found", f"upload {upload} is not anchored")
        if u["key_commitments_root"] != anchored["key_commitments_root"]:
            raise Reject(
                "mismatch", f"upload {upload}: key commitments root differs from its anchor"
            )
        refs.append(
            {
                "upload": upload,
                "key_commitments_root": anchored["key_commitments_root"],
                "key_commitment_count": anchored["key_commitment_count"],
            }
        )
    return refs


def _fulfil_request(c: Ctx, request: int, scope: dict[str, Any]) -> None:
    req = c.state.get("erasure_request", request)
    if req is None:
        raise Reject("not_found", f"no erasure request {request}")
    if req["status"] != "open":
        raise Reject("duplicate", f"erasure request {request} is already fulfilled")
    if req["scope"] != scope:
        raise Reject("mismatch", "the scope differs from the subject's request")
    req["status"] = "done"
    c.state.put("erasure_request", request, req)
    c.state.delete("erasure_request_open", request)


def erasure_record(c: Ctx) -> dict[str, Any]:
    """Record an erasure. Of a subject with no dataset ("everywhere"), it also forgets the
    subject (`forget`): the stored entry keeps the scope's kind, the key commitments, the
    uploads, the reason and the tx id, and neither it nor the result names the subject."""
    body = c.tx.body
    c.active(c.tx.author, "vault", "dpo")
    scope = _erasure_scope(c, body["scope"])
    everywhere = scope["kind"] == "subject" and "dataset" not in scope
    if everywhere:
        m = c.member(bytes.fromhex(scope["subject"]))
        if m is not None and m["role"] != "subject":
            raise Reject("invalid", "only a subject's key is forgotten; this one has a role")
    commitments: list[bytes] = body["key_commitments"]
    uploads = _upload_refs(c, body["uploads"])
    request: int | None = body.get("request")
    if request is not None:
        _fulfil_request(c, request, scope)
    if scope["kind"] == "upload":
        check(
            [u["upload"] for u in uploads] == [scope["upload"]],
            "an upload erasure names that upload",
        )
    for u in uploads:
        anchored = c.state.get("upload", u["upload"])
        anchored["status"] = "erased"
        c.state.put("upload", u["upload"], anchored)
        forget_upload_events(c.state, u["upload"], c.height)
    if scope["kind"] == "subject":
        mention(c, scope["subject"])
    if scope["kind"] == "subject" and not everywhere:
        key = ("erased_subject_dataset", scope["subject"], scope["dataset"])
        if c.state.get(*key) is None:
            c.state.put(*key, c.height)
        close_requests(c.state, scope["subject"], scope["dataset"])
        forget_events(c.state, scope["subject"], scope["dataset"], c.height)
    erasure = c.next_id("next_erasure")
    c.state.put(
        "erasure",
        erasure,
        {
            "kind": "erasure",
            "scope": {"kind": "subject"} if everywhere else scope,
            "key_commitments": commitments,
            "uploads": uploads,
            "reason": body["reason"],
            "requester": body["requester"],
            "request": request,
            "author": c.tx.author,
            "height": c.height,
            "time": c.now,
            "tx": c.tx_id,
        },
    )
    result = {"ok": True, "erasure": erasure, "effective_from_height": c.height + 1}
    if everywhere:  # `{"q": "redactions"}` lists what it redacted
        forget(c.state, scope["subject"], c.height)
        c.forgets.append(scope["subject"])
        result["forgotten"] = True
    return result


def retention_expire(c: Ctx) -> dict[str, Any]:
    body = c.tx.body
    c.active(c.tx.author, "vault", "dpo")
    dataset_id: str = body["dataset"]
    day: int = body["day"]
    dataset_of(c, dataset_id)
    if (day + 1) * DAY_MS > c.now:
        raise Reject("too_early", "the retention day has not passed yet")
    if c.state.has("expired_epoch", dataset_id, day):
        raise Reject("duplicate", "this retention epoch is already recorded as expired")
    uploads = _upload_refs(c, body["uploads"])
    commitments: list[bytes] = body.get("key_commitments", [])
    for u in uploads:
        anchored = c.state.get("upload", u["upload"])
        if anchored["dataset"] != dataset_id or anchored["retention_day"] != day:
            raise Reject("mismatch", f"upload {u['upload']} is not in this retention epoch")
        if anchored["status"] == "anchored":
            anchored["status"] = "expired"
            c.state.put("upload", u["upload"], anchored)
            forget_upload_events(c.state, u["upload"], c.height)
    c.state.put("expired_epoch", dataset_id, day, c.height)
    erasure = c.next_id("next_erasure")
    c.state.put(
        "erasure",
        erasure,
        {
            "kind": "retention",
            "scope": {"kind": "epoch", "dataset": dataset_id, "day": day},
            "key_commitments": commitments,
            "uploads": uploads,
            "reason": "retention_expired",
            "requester": "vault",
            "request": None,
            "author": c.tx.author,
            "height": c.height,
            "time": c.now,
            "tx": c.tx_id,
        },
    )
    return {"ok": True, "erasure": erasure}


# -- forgetting a subject ---------------------------------------------------------------------
#
# docs/CONTRACTS.md "Forgetting": after an erasure everywhere, no state entry names the
# subject (their key raw or hex), and the redaction entries tell the replicas which stored
# transactions to blank. Everything here is found through indexes, so forgetting costs what
# the subject left behind, not the size of the state.


def forget(state: State, subject: str, since: int) -> int:
    """Forget `subject` (hex) in the block at height `since`: append a redaction entry for
    every stored transaction that names them, then delete or rewrite every entry naming them.
    Idempotent: a second call finds only what was written since. Returns how many positions
    it added to the redaction entries."""
    key = bytes.fromhex(subject)
    accesses = [k[0] for k in state.group("access", "subject", subject)]
    positions = {(h, i) for _, h, i in state.group("mention", "by_subject", subject)}
    # the rewards that credited them: each event entry keeps its reward's batch position
    for k in state.group("event", "subject", subject):
        e = state.get("event", *k)
        positions.add((e["height"], e["index"]))
    positions |= {tuple(state.get("access", a)["at"]) for a in accesses}
    redacted = redact(state, sorted(positions), since)
    member = state.get("member", key)
    if member is not None:
        state.delete("member", key)
        if member["status"] == "active":
            bump(state, "college_count", member["college"], -1)
            if member["votes_since"] is not None:
                bump(state, "college_voters", member["college"], -1)
    for table in SUBJECT_TABLES:
        for k in state.group(table, "by_subject", subject):
            state.delete(table, *k)
    forget_tokens(state, subject)  # their balance is forfeited, their events name nobody
    for a in accesses:
        _forget_in_access(state, a, subject)
    for table in ("erasure", "erasure_request"):
        for (n,) in state.group(table, "subject", subject):
            _forget_in_erasure(state, table, n)
    forget_requests(state, subject)  # their rectification requests
    _forget_in_governance(state, key)
    return redacted


def forget_events(state: State, subject: str, dataset: str, since: int) -> int:
    """Erased from `dataset`, the subject's rewarded events from its devices are blanked
    (`redaction.blank_events`). Returns how many positions it added to the redaction entries."""
    keys = []
    for device, event in state.group("event", "subject", subject):
        registered = state.get("device", device)
        if registered is not None and registered["dataset"] == dataset:
            keys.append((device, event))
    return blank_events(state, keys, since)


def forget_upload_events(state: State, upload: str, since: int) -> int:
    """Erased or expired, the upload took its events' records: their rewards are blanked
    (`redaction.blank_events`). Returns how many positions it added to the redaction entries."""
    return blank_events(state, state.group("event", "upload", upload), since)


def _forget_in_access(state: State, access: int, subject: str) -> None:
    """The access stays in the log for the other subjects it named; `forgotten` counts the
    subjects since taken out of it."""
    a = state.get("access", access)
    named = subject in a["granted"] or subject in a["denied_subjects"]
    if subject in a["denied_subjects"]:
        a["denied_subjects"] = [s for s in a["denied_subjects"] if s != subject]
        a["denied"] -= 1
    a["granted"] = [s for s in a["granted"] if s != subject]
    if isinstance(a["reference"], str) and a["reference"].lower() == subject:
        a["reference"] = None  # the consumer filed it under the subject's key
    if named:
        a["forgotten"] = a.get("forgotten", 0) + 1
    state.put("access", access, a)


def _forget_in_erasure(state: State, table: str, n: int) -> None:
    """An erasure (in a dataset) or an erasure request keeps its scope without the subject; a
    request still open is done, the erasure everywhere covering it."""
    e = state.get(table, n)
    e["scope"] = {k: v for k, v in e["scope"].items() if k != "subject"}
    if table == "erasure_request" and e["status"] == "open":
        e["status"] = "done"
        state.delete("erasure_request_open", n)
    state.put(table, n, e)


def _forget_in_governance(state: State, key: bytes) -> None:
    """Votes the subject cast go (the tallies keep them); a proposal they made keeps no
    author; a proposal naming them keeps its kind and, if still open, is withdrawn."""
    for pid, voter in state.group("vote", "by_voter", key):
        state.delete("vote", pid, voter)
    for (pid,) in state.group("proposal", "key", key):
        p = state.get("proposal", pid)
        if p["author"] == key:
            p["author"] = None
        if p["action"].get("member") == key:
            p["action"] = {k: v for k, v in p["action"].items() if k != "member"}
            if p["status"] == "open":
                p["status"] = "withdrawn"
        state.put("proposal", pid, p)
