"""The DPO's audits over HTTP, against four real replica processes running the contracts.

This module has a database of its own: the retention audit and the records of processing read
the whole vault, and another module's datasets (anchored on ANOTHER module's chain) would be
findings here. Tests that change shared state (a tampered block) undo it before they end.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session, sessionmaker

from api.services.dpo_sessions import SESSION_COOKIE
from api.services.keys import revoke_key
from ledger_bridge.genesis import load_node_config
from ledger_bridge.pbft import messages as m
from ledger_bridge.storage import DB_FILE
from tests.api.ledger_env import DAY_MS, LedgerEnv, Wallet
from tests.api.ledger_env import ledger_cluster as ledger_cluster  # fixture
from tests.api.ledger_env import ledger_env as ledger_env  # fixture
from tests.api.test_consented_access import declare_purpose
from tests.conftest import PgServer
from vault import db
from vault.datasets import register_dataset
from vault.erasure import Eraser
from vault.keys import KeyStore
from vault.models import OutboxFact, Upload
from vault.uploads import LEDGER_SUBJECT_ID, RecordIn, Uploader

DPO_ROUTES = (
    "/v1/dpo/access-log",
    "/v1/dpo/retention-audit",
    "/v1/dpo/ledger-verification",
    "/v1/dpo/records-of-processing",
    "/v1/dpo/outbox",
)


@pytest.fixture(scope="module")
def api_database_url(pg_server: PgServer) -> Iterator[str]:
    """Overrides tests/api/conftest.py: this module's own database (see the docstring)."""
    url = pg_server.create_database("civis_dpo")
    db.upgrade(url)
    yield url
    pg_server.drop_database(url)


def _sessions(env: LedgerEnv) -> sessionmaker[Session]:
    sessions: sessionmaker[Session] = env.client.app.state.sessions  # type: ignore[attr-defined]
    return sessions


def _key_store(env: LedgerEnv) -> KeyStore:
    store: KeyStore = env.client.app.state.key_store  # type: ignore[attr-defined]
    return store


def _relay_until_sent(env: LedgerEnv, fact_id: int) -> None:
    jobs = env.client.app.state.jobs  # type: ignore[attr-defined]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        jobs.kick()
        with _sessions(env)() as session:
            fact = session.get(OutboxFact, fact_id)
            assert fact is not None
            if fact.sent_at is not None:
                return
            assert fact.attempts < 5, fact.last_error
        time.sleep(0.05)
    raise AssertionError(f"outbox fact {fact_id} was not recorded on the ledger in time")


def _grant(env: LedgerEnv, subject: Wallet, dataset: str, purpose: str) -> None:
    body = {
        "subject": subject.id,
        "consumer": bytes.fromhex(env.consumer.id),
        "purpose": purpose,
        "valid_until": int(time.time() * 1000) + DAY_MS,
        "dataset": dataset,
    }
    env.gateway.submit(bytes.fromhex(subject.sign(env.chain_id, "consent.grant", body)))


def _access(env: LedgerEnv, dataset: str, purpose: str, subjects: list[str]) -> dict[str, Any]:
    answer = env.gateway.act(
        "access.request",
        {
            "consumer": bytes.fromhex(env.consumer.id),
            "dataset": dataset,
            "purpose": purpose,
            "subjects": subjects,
        },
    )
    return {"tx_id": answer.receipt.tx_id, **answer.result}


def _ledger_dataset(env: LedgerEnv, purposes: list[str]) -> str:
    dataset = str(uuid.uuid4())
    env.gateway.act(
        "dataset.register",
        {
            "dataset": dataset,
            "owner": bytes.fromhex(env.provider.id),
            "category": "energy",
            "purposes": purposes,
            "retention_days": 30,
            "legal_basis": "consent",
        },
    )
    return dataset


def _api_dataset(env: LedgerEnv, retention_days: int = 1) -> str:
    """A dataset in the vault AND on the ledger, registered through the API by the provider."""
    r = env.client.post(
        "/v1/datasets",
        json={
            "name": f"meters {uuid.uuid4().hex[:8]}",
            "category": "energy",
            "purposes": ["research", "billing"],
            "retention_days": retention_days,
            "legal_basis": "consent",
        },
        headers=env.headers("provider", env.provider),
    )
    assert r.status_code == 201, r.text
    dataset_id: str = r.json()["id"]
    return dataset_id


def _old_upload(env: LedgerEnv, dataset_id: str, subjects: list[str], days_ago: int) -> str:
    """An upload made `days_ago` days ago (its retention may be over), anchored on the ledger."""
    then = dt.datetime.now(dt.UTC) - dt.timedelta(days=days_ago)
    uploader = Uploader(_key_store(env), clock=lambda: then, subject_ids=LEDGER_SUBJECT_ID)
    with _sessions(env)() as session:
        result = uploader.upload(
            session, uuid.UUID(dataset_id), [RecordIn(s, b'{"kwh": 3}') for s in subjects]
        )
        session.commit()
    assert result.outbox_id is not None
    _relay_until_sent(env, result.outbox_id)
    return str(result.upload_id)


# -- roles --------------------------------------------------------------------------------


def test_only_the_dpo_reaches_the_dpo_routes(ledger_env: LedgerEnv) -> None:
    env = ledger_env
    for path in DPO_ROUTES:
        assert env.client.get(path).status_code == 401, path
        for role in ("provider", "consumer", "subject"):
            r = env.client.get(path, headers=env.headers(role))
            assert r.status_code == 403, (path, role)
            assert r.headers["content-type"].startswith("application/problem+json")
    assert env.client.get(DPO_ROUTES[0], headers=env.headers("dpo")).status_code == 200


# -- the access log -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def research_reads_records(ledger_env: LedgerEnv) -> None:
    """`research` is founded declaring nothing (it discloses nothing); on this module's chain
    the cooperative declares it to read whole records, as `billing` does."""
    whole = {"fields": [], "modes": ["full"], "operators": [], "questions": 0, "period_days": 1}
    declare_purpose(ledger_env, "research", whole)


@pytest.mark.usefixtures("research_reads_records")
def test_access_log_shows_accesses_decided_by_the_contracts(ledger_env: LedgerEnv) -> None:
    env = ledger_env
    dataset = _ledger_dataset(env, ["research", "billing"])
    subject = env.register_subject()
    _grant(env, subject, dataset, "research")
    granted = _access(env, dataset, "research", [subject.id])
    refused = _access(env, dataset, "billing", [subject.id])
    assert granted["granted"] == [subject.id] and refused["granted"] == []
    dpo = env.headers("dpo", env.dpo)

    by_subject = env.client.get(f"/v1/dpo/access-log?subject={subject.id}", headers=dpo).json()
    assert [a["tx_id"] for a in by_subject["accesses"]] == [granted["tx_id"]]
    line = by_subject["accesses"][0]
    assert line["consumer"] == env.consumer.id and line["dataset"] == dataset
    assert line["purpose"] == "research" and line["granted"] == [subject.id]
    assert line["granted_count"] == 1 and line["denied"] == 0
    assert by_subject["next_after"] is None

    consumer = f"/v1/dpo/access-log?consumer={env.consumer.id}"
    billing = env.client.get(consumer + "&purpose=billing", headers=dpo).json()["accesses"]
    assert refused["tx_id"] in [a["tx_id"] for a in billing]
    assert {a["purpose"] for a in billing} == {"billing"}
    assert granted["tx_id"] not in [a["tx_id"] for a in billing]

    # Time window: from just after the granted access, only the refused one is left.
    after_grant = dt.datetime.fromisoformat(line["time"]) + dt.timedelta(milliseconds=1)
    since = env.client.get(
        "/v1/dpo/access-log", params={"since": after_grant.isoformat()}, headers=dpo
    ).json()["accesses"]
    assert granted["tx_id"] not in [a["tx_id"] for a in since]
    assert refused["tx_id"] in [a["tx_id"] for a in since]
    until = env.client.get("/v1/dpo/access-log", params={"until": line["time"]}, headers=dpo).json()
    assert granted["tx_id"] in [a["tx_id"] for a in until["accesses"]]
    assert refused["tx_id"] not in [a["tx_id"] for a in until["accesses"]]
    assert until["next_after"] is None


@pytest.mark.usefixtures("research_reads_records")
def test_access_log_pages(ledger_env: LedgerEnv) -> None:
    env = ledger_env
    dataset = _ledger_dataset(env, ["research"])
    subject = env.register_subject()
    _grant(env, subject, dataset, "research")
    txs = [_access(env, dataset, "research", [subject.id])["tx_id"] for _ in range(3)]
    dpo = env.headers("dpo", env.dpo)
    seen: list[str] = []
    after = 0
    for _ in range(10):
        page = env.client.get(
            f"/v1/dpo/access-log?subject={subject.id}&limit=2&after={after}", headers=dpo
        ).json()
        seen += [a["tx_id"] for a in page["accesses"]]
        if page["next_after"] is None:
            break
        after = page["next_after"]
    assert seen == txs
    bad = env.client.get("/v1/dpo/access-log?subject=Alice", headers=dpo)
    assert bad.status_code == 422 and "Alice" not in bad.text
    assert env.client.get("/v1/dpo/access-log?limit=1001", headers=dpo).status_code == 422


# -- records of processing ----------------------------------------------------------------


@pytest.mark.usefixtures("research_reads_records")
def test_records_of_processing_list_the_recipients(ledger_env: LedgerEnv) -> None:
    env = ledger_env
    dataset_id = _api_dataset(env, retention_days=30)
    subject = env.register_subject()
    _grant(env, subject, dataset_id, "research")
    _access(env, dataset_id, "research", [subject.id])
    _access(env, dataset_id, "billing", [subject.id])  # refused: delivers nothing
    body = env.client.get(
        "/v1/dpo/records-of-processing", headers=env.headers("dpo", env.dpo)
    ).json()
    entry = next(e for e in body["records"] if e["dataset_id"] == dataset_id)
    assert entry["provider"] == env.provider.id
    assert entry["purposes"] == ["research", "billing"]
    assert entry["category_of_data"] == "energy" and entry["legal_basis"] == "consent"
    assert entry["recipients"] == [
        # the consumer's display name, none given here (the console's registry of names)
        {"consumer": env.consumer.id, "name": None, "purposes": ["research"], "accesses": 1}
    ]
    assert body["recipients_complete"] is True


# -- the retention audit ------------------------------------------------------------------


def _audit(env: LedgerEnv, dataset_id: str) -> dict[str, Any]:
    r = env.client.get(
        f"/v1/dpo/retention-audit?dataset_id={dataset_id}", headers=env.headers("dpo", env.dpo)
    )
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def test_retention_audit_matches_every_expiry_on_the_ledger(ledger_env: LedgerEnv) -> None:
    env = ledger_env
    dataset_id = _api_dataset(env)
    subjects = [Wallet().id for _ in range(3)]
    _old_upload(env, dataset_id, subjects, days_ago=5)
    before = _audit(env, dataset_id)
    assert not before["ok"]
    assert "epoch-key-past-retention" in {f["code"] for f in before["findings"]}

    with _sessions(env)() as session:
        day = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=4)
        result = Eraser(_key_store(env)).expire_epoch(session, uuid.UUID(dataset_id), day)
        session.commit()
    assert result.outbox_id is not None and result.secrets_destroyed == 1
    _relay_until_sent(env, result.outbox_id)

    after = _audit(env, dataset_id)
    assert after["ok"], after["findings"]
    assert after["epochs_expired"] == 1
    assert after["ledger"]["epochs_matched"] == 1
    assert after["ledger"]["commitments_matched"] == 3


def test_retention_audit_finds_an_expiry_missing_from_the_ledger(ledger_env: LedgerEnv) -> None:
    env = ledger_env
    dataset_id = _api_dataset(env)
    upload_id = _old_upload(env, dataset_id, [Wallet().id, Wallet().id], days_ago=3)
    # The keys are destroyed but the fact that would tell the ledger is lost (the bug the
    # audit exists to catch): the same transaction drops the outbox row.
    with _sessions(env)() as session:
        day = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=2)
        result = Eraser(_key_store(env)).expire_epoch(session, uuid.UUID(dataset_id), day)
        session.execute(delete(OutboxFact).where(OutboxFact.id == result.outbox_id))
        session.commit()
    body = _audit(env, dataset_id)
    assert body["ok"] is False
    codes = {f["code"]: f for f in body["findings"]}
    assert codes["expiry-not-on-ledger"]["refs"] == {
        "dataset_id": dataset_id,
        "day": day.isoformat(),
    }
    assert codes["destroyed-commitment-not-on-ledger"]["refs"] == {
        "upload_id": upload_id,
        "count": "2",
    }
    assert "expiry-not-recorded" in codes  # the vault side sees the missing fact too


def test_retention_audit_counts_a_refused_expiry_as_missing(ledger_env: LedgerEnv) -> None:
    """A fact the contracts refused is not on its way to the ledger: the audit reports what it
    should have recorded (a pending one would be excused), until the DPO sends it again."""
    env = ledger_env
    dataset_id = _api_dataset(env)
    _old_upload(env, dataset_id, [Wallet().id], days_ago=3)
    day = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=2)
    with _sessions(env)() as session:
        result = Eraser(_key_store(env)).expire_epoch(session, uuid.UUID(dataset_id), day)
        assert result.outbox_id is not None
        # As the relay sets a refused fact aside (same transaction: it never ships first).
        session.execute(
            update(OutboxFact)
            .where(OutboxFact.id == result.outbox_id)
            .values(refused_at=dt.datetime.now(dt.UTC), last_error="invalid: for this test")
        )
        session.commit()
    body = _audit(env, dataset_id)
    assert not body["ok"]
    assert "expiry-not-on-ledger" in {f["code"] for f in body["findings"]}
    r = env.client.post(f"/v1/dpo/outbox/{result.outbox_id}/retry", headers=env.headers("dpo"))
    assert r.status_code == 200, r.text
    _relay_until_sent(env, result.outbox_id)
    assert _audit(env, dataset_id)["ok"]


def test_retention_audit_finds_a_fact_the_ledger_does_not_hold(ledger_env: LedgerEnv) -> None:
    env = ledger_env
    dataset_id = _api_dataset(env)
    subject = Wallet().id
    _old_upload(env, dataset_id, [subject], days_ago=0)
    with _sessions(env)() as session:
        erased = Eraser(_key_store(env)).erase_subject(
            session, subject, reason="dpo_decision", requester="dpo"
        )
        session.commit()
    assert erased.outbox_id is not None
    _relay_until_sent(env, erased.outbox_id)
    assert _audit(env, dataset_id)["ok"]
    # A vault that claims another transaction recorded it (a forged or lost ledger record).
    with _sessions(env)() as session:
        fact = session.get(OutboxFact, erased.outbox_id)
        assert fact is not None
        real_tx = fact.tx_id
        fact.tx_id = "ab" * 32
        session.commit()
    try:
        body = _audit(env, dataset_id)
        assert not body["ok"]
        assert [f["code"] for f in body["findings"]] == ["ledger-record-missing"]
        assert body["findings"][0]["refs"]["tx_id"] == "ab" * 32
    finally:
        with _sessions(env)() as session:
            fact = session.get(OutboxFact, erased.outbox_id)
            assert fact is not None
            fact.tx_id = real_tx
            session.commit()


# -- ledger verification ------------------------------------------------------------------


def _verification(env: LedgerEnv, query: str = "") -> dict[str, Any]:
    r = env.client.get(f"/v1/dpo/ledger-verification{query}", headers=env.headers("dpo"))
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def _settled(env: LedgerEnv) -> None:
    """Wait until every replica stored the same height (f+1 replies end a submit, not 4)."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        heights = {env.cluster.status(i)["height"] for i in range(4)}  # type: ignore[index]
        if len(heights) == 1:
            return
        time.sleep(0.05)
    raise AssertionError("the replicas did not reach the same height")


def test_ledger_verification_passes_on_a_healthy_cluster(ledger_env: LedgerEnv) -> None:
    env = ledger_env
    _ledger_dataset(env, ["research"])
    _settled(env)
    body = _verification(env)
    assert body["ok"], body["findings"]
    assert body["findings"] == []
    assert body["state_roots_equal"] is True
    heights = {r["verified_height"] for r in body["replicas"]}
    assert heights == {body["common_height"]} and body["common_height"] >= 1
    assert len({r["state_root"] for r in body["replicas"]}) == 1
    # In segments: the second starts from the first one's last header.
    first = _verification(env, "?limit=2")
    assert first["ok"] and first["to_height"] == 2 and first["next_from_height"] == 3
    second = _verification(env, "?from_height=3&limit=2")
    assert second["ok"], second["findings"]
    assert {r["verified_height"] for r in second["replicas"]} == {4}


def _replica_db(env: LedgerEnv, replica: int) -> Path:
    config = load_node_config(env.cluster.node_files[replica])
    return config.data_dir / DB_FILE


def test_ledger_verification_finds_a_block_altered_in_one_replica(ledger_env: LedgerEnv) -> None:
    env = ledger_env
    for _ in range(3):
        _ledger_dataset(env, ["research"])
    victim, height = 3, 2
    path = _replica_db(env, victim)
    _settled(env)

    # Altered on disk under the running replica (someone with access to its host). Not while
    # it is stopped: a restarting replica re-stores the blocks after its last stable checkpoint
    # from its log, which would undo the change before the audit saw it.
    def put(raw: bytes) -> None:
        with sqlite3.connect(path, timeout=30) as conn:
            conn.execute("UPDATE blocks SET block = ? WHERE height = ?", (raw, height))

    with sqlite3.connect(path, timeout=30) as conn:
        (original,) = conn.execute(
            "SELECT block FROM blocks WHERE height = ?", (height,)
        ).fetchone()
    put(m.encode(dataclasses.replace(m.decode_block(original), state_root=bytes(32))))
    try:
        body = _verification(env)
        assert body["ok"] is False
        errors = {(f["code"], f["replica"], f["height"]) for f in body["findings"]}
        assert ("diverging-header", victim, height) in errors
        assert ("broken-link", victim, height + 1) in errors
        assert {f["replica"] for f in body["findings"]} == {victim}
        others = [r for r in body["replicas"] if r["id"] != victim]
        assert all(r["verified_height"] > height for r in others)
        assert next(r for r in body["replicas"] if r["id"] == victim)["verified_height"] == height
    finally:
        put(original)
    assert _verification(env)["ok"]


# -- the page -----------------------------------------------------------------------------


def _sign_in(client: TestClient, headers: dict[str, str]) -> Any:
    key = headers["Authorization"].removeprefix("Bearer ")
    return client.post(
        "/dpo/session",
        content=f"api_key={key}",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        follow_redirects=False,
    )


def test_page_needs_the_dpo_and_a_session_cookie(ledger_env: LedgerEnv) -> None:
    env = ledger_env
    client = env.client
    anonymous = client.get("/dpo")
    assert anonymous.status_code == 401 and 'action="/dpo/session"' in anonymous.text
    assert client.get("/dpo", headers=env.headers("provider")).status_code == 403
    assert _sign_in(client, env.headers("consumer")).status_code == 401
    wrong = _sign_in(client, {"Authorization": "Bearer cvk_0000000000000000_" + "x" * 43})
    assert wrong.status_code == 401 and "cvk_" not in wrong.text

    dpo = env.headers("dpo", env.dpo)
    signed = _sign_in(client, dpo)
    assert signed.status_code == 303 and signed.headers["location"] == "/dpo"
    cookie = signed.headers["set-cookie"]
    for attribute in ("HttpOnly", "SameSite=strict", "Secure", "Path=/", "Max-Age=900"):
        assert attribute.lower() in cookie.lower(), attribute
    token = cookie.split(";")[0].split("=", 1)[1]
    assert dpo["Authorization"].split("_", 2)[2] not in token  # the key's secret is not in it

    page = client.get("/dpo", headers={"Cookie": f"{SESSION_COOKIE}={token}"})
    assert page.status_code == 200, page.text
    assert page.headers["cache-control"] == "no-store"
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert "Ledger health" in page.text and page.text.count('badge ok">up') == 4

    forged = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    assert client.get("/dpo", headers={"Cookie": f"{SESSION_COOKIE}={forged}"}).status_code == 401
    # Revoking the key ends the session at once.
    key_id = dpo["Authorization"].split("_")[1]
    with _sessions(env)() as session:
        assert revoke_key(session, key_id)
        session.commit()
    assert client.get("/dpo", headers={"Cookie": f"{SESSION_COOKIE}={token}"}).status_code == 401


# -- the outbox ---------------------------------------------------------------------------


def _outbox(env: LedgerEnv, state: str) -> dict[str, Any]:
    r = env.client.get(f"/v1/dpo/outbox?state={state}", headers=env.headers("dpo"))
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def _dataset_off_chain(env: LedgerEnv) -> uuid.UUID:
    """A billing dataset of the provider's, registered in the vault and not on the chain."""
    with _sessions(env)() as session:
        dataset = register_dataset(
            session,
            owner_id=env.provider.id,
            name=f"off-chain {uuid.uuid4().hex[:8]}",
            category="energy",
            purposes=["billing"],
            retention_days=30,
            legal_basis="consent",
        ).id
        session.commit()
    return dataset


def _register_on_chain(env: LedgerEnv, dataset: uuid.UUID) -> None:
    """Register on the chain the dataset `_dataset_off_chain` left out of it."""
    env.gateway.act(
        "dataset.register",
        {
            "dataset": str(dataset),
            "owner": bytes.fromhex(env.provider.id),
            "category": "energy",
            "purposes": ["billing"],
            "retention_days": 30,
            "legal_basis": "consent",
        },
    )


def test_a_refused_anchor_is_shown_to_the_dpo_and_sent_again(ledger_env: LedgerEnv) -> None:
    """The contracts refuse an anchor whose dataset the chain does not know. The relay sets it
    aside (the upload is `refused`, served to no consumer); the DPO sees it with the
    contract's code, in the list and in the metrics, registers the dataset and sends the fact
    again."""
    env = ledger_env
    dataset = _dataset_off_chain(env)
    # The provider's upload answers as soon as the relay has the contracts' answer: refused,
    # without the receipt it would otherwise wait for (15 s in this environment).
    started = time.monotonic()
    r = env.client.post(
        f"/v1/datasets/{dataset}/uploads",
        headers={**env.headers("provider", env.provider), "Content-Type": "application/x-ndjson"},
        content=json.dumps({"subject_id": Wallet().id, "payload": {"kwh": 1}}).encode() + b"\n",
    )
    assert r.status_code == 201, r.text
    assert r.json()["state"] == "refused" and r.json()["receipt"] is None
    assert time.monotonic() - started < 10
    upload_id = uuid.UUID(r.json()["upload_id"])
    with _sessions(env)() as session:
        fact_id = session.scalars(
            select(OutboxFact.id).where(
                OutboxFact.kind == "upload.anchor",
                OutboxFact.payload["upload"].astext == str(upload_id),
            )
        ).one()

    refused = _outbox(env, "refused")
    assert refused["refused"] == 1
    [shown] = refused["facts"]
    assert shown["id"] == fact_id and shown["state"] == "refused"
    assert shown["kind"] == "upload.anchor" and shown["receipt"] is None
    assert shown["last_error"].startswith("not_found:"), shown["last_error"]
    assert fact_id not in [f["id"] for f in _outbox(env, "pending")["facts"]]
    metrics = env.client.get("/metrics").text
    assert 'civis_outbox_facts{state="refused"} 1.0' in metrics
    provider = env.headers("provider", env.provider)
    r = env.client.get(f"/v1/datasets/{dataset}/uploads/{upload_id}", headers=provider)
    assert r.status_code == 200 and r.json()["state"] == "refused", r.text

    # Nothing to retry for a fact that is not refused, or does not exist.
    for other in (fact_id + 10_000, 0):
        r = env.client.post(f"/v1/dpo/outbox/{other}/retry", headers=env.headers("dpo"))
        assert r.status_code in (404, 422), r.text
        assert r.headers["content-type"].startswith("application/problem+json")

    _register_on_chain(env, dataset)
    r = env.client.post(f"/v1/dpo/outbox/{fact_id}/retry", headers=env.headers("dpo"))
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "pending" and r.json()["refused_at"] is None
    _relay_until_sent(env, fact_id)
    assert _outbox(env, "refused")["refused"] == 0
    with _sessions(env)() as session:
        upload = session.get(Upload, upload_id)
        assert upload is not None and upload.state == "anchored"
    r = env.client.post(f"/v1/dpo/outbox/{fact_id}/retry", headers=env.headers("dpo"))
    assert r.status_code == 404  # recorded now: nothing to send again


def _redactions_done(env: LedgerEnv, at_least: int) -> None:
    """Until every replica applied `at_least` redaction entries (the primary's null batches
    bring the checkpoint that covers the erasure)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        statuses = [env.cluster.status(i) or {} for i in range(4)]
        if all(s.get("redactions_applied", 0) >= at_least for s in statuses):
            return
        time.sleep(0.05)
    raise AssertionError(f"redactions not applied: {statuses}")


def test_ledger_verification_finds_a_replica_still_serving_a_forgotten_transaction(
    ledger_env: LedgerEnv,
) -> None:
    """A subject is erased everywhere: every replica replaces the transactions naming them by
    their digests, and the verification is clean. Then the original block is put back on one
    replica's disk (an operator restoring an old backup): its chain still verifies, since the
    body matches its digest, but the audit names that replica as `unredacted`."""
    env = ledger_env
    dataset = _ledger_dataset(env, ["research"])
    subject = env.register_subject()
    _grant(env, subject, dataset, "research")
    _settled(env)
    victim = 2
    with sqlite3.connect(_replica_db(env, victim), timeout=30) as conn:
        before = dict(conn.execute("SELECT height, block FROM blocks").fetchall())
    applied = (env.cluster.status(0) or {}).get("redactions_applied", 0)
    env.gateway.act(
        "erasure.record",
        {
            "scope": {"kind": "subject", "subject": subject.id},
            "key_commitments": [],
            "uploads": [],
            "reason": "subject_request",
            "requester": "dpo",
        },
    )
    listed = env.gateway.query("redactions", after=applied, limit=1000)["result"]
    assert len(listed) >= 2  # the registration and the consent, at least
    _redactions_done(env, applied + len(listed))
    body = _verification(env)
    assert body["ok"], body["findings"]
    assert all(r["redactions_pending"] == 0 for r in body_status(env))

    height = listed[0]["height"]
    with sqlite3.connect(_replica_db(env, victim), timeout=30) as conn:
        (redacted,) = conn.execute(
            "SELECT block FROM blocks WHERE height = ?", (height,)
        ).fetchone()
        assert (
            bytes.fromhex(subject.id) not in redacted
            and bytes.fromhex(subject.id) in before[height]
        )
        conn.execute("UPDATE blocks SET block = ? WHERE height = ?", (before[height], height))
    try:
        body = _verification(env)
        assert body["ok"] is False
        assert [(f["code"], f["replica"], f["height"]) for f in body["findings"]] == [
            ("unredacted", victim, height)
        ]
    finally:
        with sqlite3.connect(_replica_db(env, victim), timeout=30) as conn:
            conn.execute("UPDATE blocks SET block = ? WHERE height = ?", (redacted, height))
    assert _verification(env)["ok"]


def body_status(env: LedgerEnv) -> list[dict[str, Any]]:
    r = env.client.get("/v1/ledger/status", headers=env.headers("dpo"))
    assert r.status_code == 200, r.text
    replicas: list[dict[str, Any]] = r.json()["replicas"]
    return replicas


def test_a_relay_retry_after_the_erasure_was_redacted_gets_its_receipt(
    ledger_env: LedgerEnv,
) -> None:
    """The relay sent an erasure everywhere, crashed before marking it, and sends it again
    under the same request id once a checkpoint covered it. The replicas' reply cache then
    holds a withheld result (the erasure's block forgot whom it named): the relay reads what
    the first submission bought by its nonce, the same transaction at the same height,
    instead of failing on every retry and holding up every later fact."""
    env = ledger_env
    subject = env.register_subject()
    payload = {
        "scope": {"kind": "subject", "subject": subject.id},
        "key_commitments": [],
        "uploads": [],
        "secrets_destroyed": 0,
        "reason": "dpo_decision",
        "requester": "dpo",
        "at": "2026-12-05T00:00:00+00:00",
    }
    applied = (env.cluster.status(0) or {}).get("redactions_applied", 0)
    fact_id, request_id = 10**9 + 7, 4_000_000_001
    sent = {"request_id": request_id, "valid_until": env.gateway.valid_until(None)}
    first = env.gateway.record(fact_id, "erasure.record", payload, **sent)
    _redactions_done(env, applied + 2)  # the registration and the erasure itself
    again = env.gateway.record(fact_id, "erasure.record", payload, **sent)
    assert (again.tx_id, again.block_height) == (first.tx_id, first.block_height)
