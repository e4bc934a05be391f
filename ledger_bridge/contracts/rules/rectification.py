"""Art. 16 rectification: a subject asks for a record of theirs to be corrected
(`rectification.request`); the vault, on the provider's or the DPO's order, records that it
replaced the subject's records in a dataset by new versions (`record.rectify`).

What the ledger can hold the vault to: every key the rectification says it destroyed belongs
to a live upload of the dataset, and is destroyed once only; every replacement upload is
anchored in the same dataset, holds exactly one key (one subject's records) whose commitment
is the one named, keeps the retention day of an upload it replaces (a rectification never
extends a retention), and replaces once only. A subject's request stays open until a
`record.rectify` naming it closes it. The record itself, and which subject the keys were
derived for, stay in the vault: the ledger never learns what was corrected.

Forgetting: a request names its author (the subject). An erasure everywhere strips the
subject, the record and the statement's hash from the subject's requests (`forget_requests`)
and the redaction entries blank the requests' transactions; an erasure in the dataset closes
the subject's open requests there (`close_requests`), the records being gone.
"""

from __future__ import annotations

from typing import Any

from ledger_bridge.contracts.rules.common import Ctx, Reject, check, dataset_of, mention
from ledger_bridge.contracts.state import State
from ledger_bridge.crypto import digest

OPEN, DONE, ERASED = "open", "done", "erased"


def rectification_request(c: Ctx) -> dict[str, Any]:
    """The subject's own request: the author is the subject, an active one."""
    body = c.tx.body
    c.active(c.tx.author, "subject")
    subject = c.tx.author.hex()
    dataset: str = body["dataset"]
    dataset_of(c, dataset)
    if c.state.get("erased_subject_dataset", subject, dataset) is not None:
        raise Reject("erased", "the subject's data in this dataset is erased")
    request = c.next_id("next_rectification_request")
    c.state.put(
        "rectification_request",
        request,
        {
            "dataset": dataset,
            "record": body["record"],
            "statement_hash": body["statement_hash"],
            "subject": subject,
            "status": OPEN,
            "rectification": None,
            "height": c.height,
            "time": c.now,
        },
    )
    c.state.put("rectification_request_open", request, c.height)
    mention(c, subject)
    return {"ok": True, "request": request}


def _live_upload(c: Ctx, upload: str, dataset: str) -> dict[str, Any]:
    anchored: dict[str, Any] | None = c.state.get("upload", upload)
    if anchored is None:
        raise Reject("not_found", f"upload {upload} is not anchored")
    if anchored["dataset"] != dataset:
        raise Reject("mismatch", f"upload {upload} is not of this dataset")
    if anchored["status"] != "anchored":
        raise Reject("mismatch", f"upload {upload} is {anchored['status']}")
    return anchored


def _superseded(c: Ctx, dataset: str, keys: list[dict[str, Any]]) -> set[int]:
    """Check the destroyed keys; return the retention days of their uploads."""
    seen: set[tuple[str, bytes]] = set()
    days: set[int] = set()
    for k in keys:
        pair = (k["upload"], k["key_commitment"])
        check(pair not in seen, "superseded keys must be distinct")
        seen.add(pair)
        days.add(_live_upload(c, k["upload"], dataset)["retention_day"])
        if c.state.has("superseded_key", *pair):
            raise Reject("duplicate", f"a key of upload {k['upload']} is already superseded")
    return days


def _replacement(c: Ctx, dataset: str, keys: list[dict[str, Any]], days: set[int]) -> None:
    """Each replacement upload holds one key, the one named (its anchored key-commitments
    root is that commitment's RFC 6962 leaf hash), in a retention day of the old versions."""
    uploads = [k["upload"] for k in keys]
    check(len(set(uploads)) == len(uploads), "replacement uploads must be distinct")
    for k in keys:
        upload = k["upload"]
        anchored = _live_upload(c, upload, dataset)
        root = digest(b"\x00" + k["key_commitment"])
        if anchored["key_commitment_count"] != 1 or anchored["key_commitments_root"] != root:
            raise Reject("mismatch", f"upload {upload} is not anchored with this one key")
        if anchored["retention_day"] not in days:
            raise Reject("mismatch", f"upload {upload} changes the retention day")
        if c.state.has("replacement_upload", upload):
            raise Reject("duplicate", f"upload {upload} already replaces another version")


def _close_request(c: Ctx, request: int, dataset: str, rectification: int) -> None:
    req = c.state.get("rectification_request", request)
    if req is None:
        raise Reject("not_found", f"no rectification request {request}")
    if req["status"] != OPEN:
        raise Reject("duplicate", f"rectification request {request} is {req['status']}")
    if req["dataset"] != dataset:
        raise Reject("mismatch", "the dataset differs from the subject's request")
    req["status"] = DONE
    req["rectification"] = rectification
    c.state.put("rectification_request", request, req)
    c.state.delete("rectification_request_open", request)


def record_rectify(c: Ctx) -> dict[str, Any]:
    body = c.tx.body
    c.active(c.tx.author, "vault", "dpo")
    dataset: str = body["dataset"]
    dataset_of(c, dataset)
    superseded: list[dict[str, Any]] = body["superseded"]
    replacement: list[dict[str, Any]] = body["replacement"]
    days = _superseded(c, dataset, superseded)
    old = {k["upload"] for k in superseded}
    check(not old & {k["upload"] for k in replacement}, "an upload cannot replace itself")
    _replacement(c, dataset, replacement, days)
    rectification = c.next_id("next_rectification")
    request: int | None = body.get("request")
    if request is not None:
        _close_request(c, request, dataset, rectification)
    for k in superseded:
        c.state.put("superseded_key", k["upload"], k["key_commitment"], rectification)
    for k in replacement:
        c.state.put("replacement_upload", k["upload"], rectification)
    c.state.put(
        "rectification",
        rectification,
        {
            "dataset": dataset,
            "request": request,
            "superseded": superseded,
            "replacement": replacement,
            "author": c.tx.author,
            "height": c.height,
            "time": c.now,
            "tx": c.tx_id,
        },
    )
    return {"ok": True, "rectification": rectification}


# -- erasure ----------------------------------------------------------------------------------


def close_requests(state: State, subject: str, dataset: str) -> None:
    """An erasure of `subject` in `dataset`: their open requests there are moot."""
    for (n,) in state.group("rectification_request", "subject", subject):
        req = state.get("rectification_request", n)
        if req["status"] == OPEN and req["dataset"] == dataset:
            req["status"] = ERASED
            state.put("rectification_request", n, req)
            state.delete("rectification_request_open", n)


def forget_requests(state: State, subject: str) -> None:
    """An erasure everywhere: the subject's requests keep their dataset, status and heights,
    not the subject, the record or the statement's hash; an open one is closed `erased`."""
    for (n,) in state.group("rectification_request", "subject", subject):
        req = state.get("rectification_request", n)
        for name in ("subject", "record", "statement_hash"):
            req.pop(name, None)
        if req["status"] == OPEN:
            req["status"] = ERASED
            state.delete("rectification_request_open", n)
        state.put("rectification_request", n, req)
