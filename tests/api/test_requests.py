"""The register of the subjects' requests (GDPR Art. 12(3)) against four real replica processes:
an export registers an access request answered at once; a subject's erasure request is
registered and closed by its erasure.record, and then names nobody; a request sent straight to
the ledger is pulled in by the sync (on demand and in the background) and closed once the ledger
fulfils it; the DPO lists by deadline and extends with reasons; a request overdue or answered
late is a finding of the DPO's audit.

This module has a database of its own (the ledger environment's), so the DPO's lists and
audits see only what its tests wrote.
"""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from api.client import CivisClient
from api.http.settings import Settings
from api.services import requests
from api.services.requests import due_for, extended_due
from tests.api.ledger_env import LedgerEnv, Wallet
from tests.api.ledger_env import ledger_cluster as ledger_cluster  # fixture
from tests.api.ledger_env import ledger_env as ledger_env  # fixture
from tests.vault.test_forensic import _pg_dump
from vault.models import SubjectRequest

SYNC_WAIT_S = 30


@pytest.fixture(scope="module")
def api_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Overrides tests/api/conftest.py: the register's background sync runs every half second,
    so a test sees it pull a ledger request in without asking."""
    data_dir: Path = tmp_path_factory.mktemp("civis-requests")
    return Settings(
        environment="test",
        data_dir=data_dir,
        record_size_max_bytes=4096,
        upload_batch_rows=50,
        json_body_max_bytes=16 * 1024,
        request_sync_interval_s=0.5,
    )


def _sessions(env: LedgerEnv) -> sessionmaker[Session]:
    sessions: sessionmaker[Session] = env.client.app.state.sessions  # type: ignore[attr-defined]
    return sessions


def _subject(env: LedgerEnv) -> Wallet:
    wallet = Wallet()
    body = {"role": "subject", "college": "citizens"}
    env.gateway.submit(bytes.fromhex(wallet.sign(env.chain_id, "member.register", body)))
    return wallet


def _dataset_with(env: LedgerEnv, subjects: list[Wallet]) -> str:
    """A dataset of the provider's holding one anchored record of each subject (if any)."""
    provider = env.headers("provider", env.provider)
    r = env.client.post(
        "/v1/datasets",
        headers=provider,
        json={
            "name": f"addresses {uuid.uuid4().hex[:8]}",
            "category": "address",
            "purposes": ["proof-of-address"],
            "retention_days": 30,
            "legal_basis": "contract",
        },
    )
    assert r.status_code == 201, r.text
    dataset: str = r.json()["id"]
    if not subjects:
        return dataset
    lines = "".join(
        json.dumps({"subject_id": s.id, "payload": {"address": f"{i} rue du Registre"}}) + "\n"
        for i, s in enumerate(subjects)
    ).encode()
    r = env.client.post(
        f"/v1/datasets/{dataset}/uploads",
        headers={**provider, "Content-Type": "application/x-ndjson"},
        content=lines,
    )
    assert r.status_code == 201, r.text
    env.wait_anchored(dataset, r.json()["upload_id"], provider)
    return dataset


def _dpo_list(env: LedgerEnv, **params: Any) -> list[dict[str, Any]]:
    r = env.client.get("/v1/dpo/requests", params=params, headers=env.headers("dpo", env.dpo))
    assert r.status_code == 200, r.text
    rows: list[dict[str, Any]] = r.json()["requests"]
    return rows


def _by_ledger_number(env: LedgerEnv, number: int) -> dict[str, Any] | None:
    rows = [r for r in _dpo_list(env, limit=1000) if r["request"] == number]
    assert len(rows) <= 1, rows
    return rows[0] if rows else None


def _naming(env: LedgerEnv, subject: str) -> int:
    with _sessions(env)() as session:
        found = session.scalar(
            select(func.count())
            .select_from(SubjectRequest)
            .where(SubjectRequest.subject == subject)
        )
    return int(found or 0)


def _open(env: LedgerEnv, kind: str, received: dt.datetime, dataset: str | None = None) -> str:
    """A request received at `received` (in the past: the register's clock is the vault's)."""
    with _sessions(env)() as session, session.begin():
        ds = None if dataset is None else uuid.UUID(dataset)
        opened = requests.open_request(session, kind, Wallet().id, ds, received)
    return str(opened)


def _erasure_request(env: LedgerEnv, wallet: Wallet, dataset: str | None) -> tuple[int, str, int]:
    """The subject's signed erasure.request sent straight to the ledger, not through the API:
    (its number, tx id, height)."""
    scope: dict[str, Any] = {"kind": "subject", "subject": wallet.id}
    if dataset is not None:
        scope["dataset"] = dataset
    raw = bytes.fromhex(wallet.sign(env.chain_id, "erasure.request", {"scope": scope}))
    answer = env.gateway.submit(raw)
    return int(answer.result["request"]), answer.receipt.tx_id, answer.receipt.block_height


# -- the routes that register requests ------------------------------------------------------


def test_a_subjects_export_is_an_access_request_answered_at_once(ledger_env: LedgerEnv) -> None:
    env = ledger_env
    subject = _subject(env)
    mine = env.headers("subject", subject)
    assert env.client.get(f"/v1/subjects/{subject.id}/requests", headers=mine).json() == {
        "subject_id": subject.id,
        "requests": [],
    }
    before = dt.datetime.now(dt.UTC)
    assert env.client.get(f"/v1/subjects/{subject.id}/export", headers=mine).status_code == 200
    # the DPO reading the same export is no request of the subject's
    dpo = env.headers("dpo", env.dpo)
    assert env.client.get(f"/v1/subjects/{subject.id}/export", headers=dpo).status_code == 200

    listed = env.client.get(f"/v1/subjects/{subject.id}/requests", headers=mine).json()
    (request,) = listed["requests"]
    received = dt.datetime.fromisoformat(request["received_at"])
    assert before <= received <= dt.datetime.now(dt.UTC)
    assert request["kind"] == "access" and request["state"] == "done"
    assert request["done_at"] == request["received_at"] and request["overdue"] is False
    assert dt.datetime.fromisoformat(request["due_at"]) == due_for(received)
    assert request["subject"] == subject.id and request["facts"] == []


def test_an_erasure_request_is_closed_by_its_erasure_record_and_then_names_nobody(
    ledger_env: LedgerEnv,
) -> None:
    env = ledger_env
    erased, kept = _subject(env), _subject(env)
    _dataset_with(env, [erased, kept])
    # the control: a request of the subject not erased names them, in the rows and the dump
    assert (
        env.client.get(
            f"/v1/subjects/{kept.id}/export", headers=env.headers("subject", kept)
        ).status_code
        == 200
    )

    certificate = CivisClient(http=env.client).request_erasure(erased.key)
    assert certificate["state"] == "recorded", certificate
    number = certificate["request"]
    assert number is not None

    row = _by_ledger_number(env, number)
    assert row is not None and row["kind"] == "erasure" and row["state"] == "done"
    assert [f["type"] for f in row["facts"]] == ["erasure.request", "erasure.record"]
    made, recorded = row["facts"]
    assert made["height"] < recorded["height"] and made["tx_id"]
    receipt = certificate["receipt"]
    assert receipt is not None
    assert recorded == {"type": "erasure.record", "tx_id": receipt["tx_id"],
                        "height": receipt["block_height"]}  # fmt: skip
    assert row["overdue"] is False and row["done_at"] <= row["due_at"]
    # kept, and forgotten: a value the destroyed keys made meaningless
    assert row["subject"].startswith("~") and row["dataset_id"] is None
    assert _naming(env, erased.id) == 0 and _naming(env, kept.id) == 1
    dump = _pg_dump(env.client.app.state.engine.url.render_as_string(hide_password=False))  # type: ignore[attr-defined]
    assert erased.id.encode() not in dump
    assert kept.id.encode() in dump


# -- the ledger's requests: the sync ----------------------------------------------------------


def test_the_sync_registers_a_request_sent_straight_to_the_ledger_once(
    ledger_env: LedgerEnv,
) -> None:
    env = ledger_env
    subject, other = _subject(env), _subject(env)
    dataset = _dataset_with(env, [subject, other])
    number, tx_id, height = _erasure_request(env, subject, dataset)
    dpo = env.headers("dpo", env.dpo)

    for _ in range(2):  # idempotent: the second sync (and the background's) registers nothing
        r = env.client.post("/v1/dpo/requests/sync", headers=dpo)
        assert r.status_code == 200, r.text
        assert r.json()["stale"] is False and r.json()["height"] >= height
    row = _by_ledger_number(env, number)
    assert row is not None
    assert (row["kind"], row["state"], row["subject"]) == ("erasure", "open", subject.id)
    assert row["dataset_id"] == dataset
    assert row["facts"] == [{"type": "erasure.request", "tx_id": tx_id, "height": height}]
    received = dt.datetime.fromisoformat(row["received_at"])
    assert abs(received - dt.datetime.now(dt.UTC)) < dt.timedelta(minutes=5)
    assert dt.datetime.fromisoformat(row["due_at"]) == due_for(received)
    # the subject sees it too
    theirs = env.client.get(
        f"/v1/subjects/{subject.id}/requests", headers=env.headers("subject", subject)
    ).json()["requests"]
    assert [r["id"] for r in theirs] == [row["id"]]

    # The DPO erases the subject everywhere (no request named): the ledger's forgetting
    # closes the request there; the sync closes it here, and the row names nobody.
    r = env.client.post("/v1/erasures", headers=dpo, json={"subject_id": subject.id})
    assert r.status_code == 201, r.text
    assert env.client.post("/v1/dpo/requests/sync", headers=dpo).status_code == 200
    row = _by_ledger_number(env, number)
    assert row is not None and row["state"] == "done", row
    assert row["subject"].startswith("~") and _naming(env, subject.id) == 0


def test_the_background_jobs_pull_ledger_requests_in(ledger_env: LedgerEnv) -> None:
    env = ledger_env
    subject = _subject(env)
    dataset = _dataset_with(env, [subject])
    number, _, _ = _erasure_request(env, subject, dataset)
    deadline = time.monotonic() + SYNC_WAIT_S
    while _by_ledger_number(env, number) is None:
        assert time.monotonic() < deadline, "the background sync did not register the request"
        time.sleep(0.2)


# -- the DPO's list and extensions ----------------------------------------------------------


def test_the_dpo_lists_by_deadline_filters_and_pages(ledger_env: LedgerEnv) -> None:
    env = ledger_env
    now = dt.datetime.now(dt.UTC)
    marker = _dataset_with(env, [])
    ids = [_open(env, "objection", now - dt.timedelta(days=days), marker) for days in (45, 20, 2)]
    overdue = _dpo_list(env, state=["open", "extended"], due_before=now.isoformat(), limit=1000)
    mine = [r["id"] for r in overdue if r["dataset_id"] == marker]
    assert mine == [ids[0]] and all(r["overdue"] for r in overdue)
    ordered = [r["id"] for r in _dpo_list(env, state="open", limit=1000) if r["id"] in ids]
    assert ordered == ids  # by deadline
    # a time without zone is UTC
    naive = now.replace(tzinfo=None).isoformat()
    assert ids[0] in [r["id"] for r in _dpo_list(env, due_before=naive, limit=1000)]

    seen: list[str] = []
    after: str | None = None
    dpo = env.headers("dpo", env.dpo)
    for _ in range(1000):
        params: dict[str, Any] = {"limit": 1, "state": "open"} | ({"after": after} if after else {})
        page = env.client.get("/v1/dpo/requests", params=params, headers=dpo).json()
        seen += [r["id"] for r in page["requests"]]
        after = page["next_after"]
        if after is None:
            break
    assert [i for i in seen if i in ids] == ids and len(seen) == len(set(seen))

    for bad in ({"state": "closed"}, {"limit": 0}, {"due_before": "yesterday"}, {"x": "1"}):
        r = env.client.get("/v1/dpo/requests", params=bad, headers=dpo)
        assert r.status_code == 422, (bad, r.text)
    r = env.client.get("/v1/dpo/requests", params={"after": str(uuid.uuid4())}, headers=dpo)
    assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"


def _extend(env: LedgerEnv, request_id: str, body: Any) -> Any:
    return env.client.post(
        f"/v1/dpo/requests/{request_id}/extension", json=body, headers=env.headers("dpo", env.dpo)
    )


def _row(env: LedgerEnv, request_id: str) -> SubjectRequest:
    with _sessions(env)() as session:
        row = session.get(SubjectRequest, uuid.UUID(request_id))
        assert row is not None
        session.expunge(row)
        return row


def test_an_extension_needs_reasons_and_comes_within_the_first_month_once(
    ledger_env: LedgerEnv,
) -> None:
    env = ledger_env
    received = dt.datetime.now(dt.UTC) - dt.timedelta(days=10)
    request_id = _open(env, "rectification", received)
    before = _row(env, request_id)

    refused = [
        {},
        {"reason": ""},
        {"reason": "waiting\x00"},
        {"reason": "x" * 501},
        {"reason": "fine", "due_at": "2099-01-01T00:00:00Z"},
        {"reason": 7},
    ]
    for body in refused:
        r = _extend(env, request_id, body)
        assert r.status_code == 422, (body, r.text)
        assert "x" * 100 not in r.text and "2099" not in r.text
    assert _row(env, request_id).due_at == before.due_at  # nothing changed

    reason = "the records of three datasets must be checked with their providers"
    r = _extend(env, request_id, {"reason": reason})
    assert r.status_code == 200, r.text
    out = r.json()
    assert (out["state"], out["extension_reason"]) == ("extended", reason)
    assert dt.datetime.fromisoformat(out["due_at"]) == extended_due(before.received_at)
    assert out["extended_at"] is not None and out["overdue"] is False

    again = _extend(env, request_id, {"reason": "more"})
    assert again.status_code == 409 and again.headers["content-type"] == "application/problem+json"
    assert _row(env, request_id).extension_reason == reason

    late = _open(env, "rectification", dt.datetime.now(dt.UTC) - dt.timedelta(days=40))
    r = _extend(env, late, {"reason": reason})
    assert r.status_code == 409 and "first month" in r.json()["detail"]
    assert _row(env, late).state == "open"
    assert _extend(env, str(uuid.uuid4()), {"reason": reason}).status_code == 404
    assert _extend(env, "not-a-uuid", {"reason": reason}).status_code == 422


# -- the DPO's audit ----------------------------------------------------------------------------


def _audit_codes(env: LedgerEnv, dataset: str) -> dict[str, set[str]]:
    r = env.client.get(
        f"/v1/dpo/retention-audit?dataset_id={dataset}", headers=env.headers("dpo", env.dpo)
    )
    assert r.status_code == 200, r.text
    out: dict[str, set[str]] = {}
    for f in r.json()["findings"]:
        out.setdefault(f["code"], set()).add(f["refs"].get("request_id", ""))
    return out


def test_a_request_overdue_or_answered_late_is_an_audit_finding(ledger_env: LedgerEnv) -> None:
    env = ledger_env
    dataset = _dataset_with(env, [])
    now = dt.datetime.now(dt.UTC)
    overdue = _open(env, "restriction", now - dt.timedelta(days=40), dataset)
    in_time = _open(env, "objection", now - dt.timedelta(days=40), dataset)
    fresh = _open(env, "access", now, dataset)
    with _sessions(env)() as session, session.begin():
        requests.close_request(session, uuid.UUID(in_time), "done", at=now - dt.timedelta(days=35))

    codes = _audit_codes(env, dataset)
    assert codes.get("request-overdue") == {overdue}
    assert "request-answered-late" not in codes
    assert fresh not in codes.get("request-overdue", set())

    with _sessions(env)() as session, session.begin():
        requests.close_request(
            session, uuid.UUID(overdue), "refused", reason="manifestly unfounded"
        )
    codes = _audit_codes(env, dataset)
    assert "request-overdue" not in codes
    assert codes.get("request-answered-late") == {overdue}  # it stays: the register proves it
