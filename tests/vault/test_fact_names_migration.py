"""Migration 0008: outbox facts written under the earlier names read under the ledger's."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import create_engine, text

from ledger_bridge.facts import ErasureRecord, RetentionExpire, UploadAnchor, fact_from_payload
from vault import db

ROOT = "ab" * 32
AT = "2026-12-05T10:00:00+00:00"
CERT = {"secrets_destroyed": 1, "reason": "dpo_decision", "requester": "dpo", "at": AT}

# (kind, as written before 0008, as 0008 leaves it)
ROWS: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    (
        "upload.anchor",
        {
            "upload_id": "u-1",
            "dataset_id": "d-1",
            "record_count": 3,
            "merkle_root": ROOT,
            "key_commitments_root": ROOT,
            "key_commitment_count": 2,
            "retention_day": "2027-01-01",
        },
        {
            "upload": "u-1",
            "dataset": "d-1",
            "record_count": 3,
            "merkle_root": ROOT,
            "key_commitments_root": ROOT,
            "key_commitment_count": 2,
            "retention_day": "2027-01-01",
        },
    ),
    (
        "erasure.record",
        {
            "scope": {"type": "subject", "subject_id": "s-1", "dataset_id": "d-1"},
            "key_commitments": [ROOT],
            "uploads": [],
            "request": 7,
            "receipt_to": ROOT,
            **CERT,
        },
        {
            "scope": {"kind": "subject", "subject": "s-1", "dataset": "d-1"},
            "key_commitments": [ROOT],
            "uploads": [],
            "request": 7,
            "receipt_to": ROOT,
            **CERT,
        },
    ),
    (
        "erasure.record",  # forgotten: the scope lost its subject
        {
            "scope": {"type": "subject"},
            "key_commitments": [],
            "uploads": [],
            "forget": True,
            "forgotten": True,
            **CERT,
        },
        {
            "scope": {"kind": "subject"},
            "key_commitments": [],
            "uploads": [],
            "forget": True,
            "forgotten": True,
            **CERT,
        },
    ),
    (
        "erasure.record",
        {
            "scope": {"type": "upload", "upload_id": "u-1"},
            "key_commitments": [],
            "uploads": [
                {"upload_id": "u-1", "key_commitments_root": ROOT, "key_commitment_count": 2}
            ],
            **CERT,
        },
        {
            "scope": {"kind": "upload", "upload": "u-1"},
            "key_commitments": [],
            "uploads": [{"upload": "u-1", "key_commitments_root": ROOT, "key_commitment_count": 2}],
            **CERT,
        },
    ),
    (
        "retention.expire",
        {
            "scope": {"type": "epoch", "dataset_id": "d-1", "day": "2027-01-01"},
            "key_commitments": [],
            "uploads": [
                {"upload_id": "u-2", "key_commitments_root": ROOT, "key_commitment_count": 1},
                {"upload_id": "u-1", "key_commitments_root": ROOT, "key_commitment_count": 2},
            ],
            **CERT,
        },
        {
            "scope": {"kind": "epoch", "dataset": "d-1", "day": "2027-01-01"},
            "key_commitments": [],
            "uploads": [
                {"upload": "u-2", "key_commitments_root": ROOT, "key_commitment_count": 1},
                {"upload": "u-1", "key_commitments_root": ROOT, "key_commitment_count": 2},
            ],
            **CERT,
        },
    ),
]


def _payloads(conn: Any) -> list[tuple[str, dict[str, Any]]]:
    return [tuple(r) for r in conn.execute(text("SELECT kind, payload FROM outbox ORDER BY id"))]


def test_0008_renames_stored_facts_and_back(fresh_database_url: str) -> None:
    db.upgrade(fresh_database_url, "0007")
    engine = create_engine(fresh_database_url)
    try:
        with engine.begin() as conn:
            for kind, old, _ in ROWS:
                conn.execute(
                    text("INSERT INTO outbox (kind, payload) VALUES (:k, CAST(:p AS jsonb))"),
                    {"k": kind, "p": json.dumps(old)},
                )
        db.upgrade(fresh_database_url, "0008")
        with engine.begin() as conn:
            stored = _payloads(conn)
            assert stored == [(kind, new) for kind, _, new in ROWS]
            # and the typed facts read every one of them, to the same payload
            for kind, payload in stored:
                fact = fact_from_payload(kind, payload)
                assert isinstance(fact, UploadAnchor | ErasureRecord | RetentionExpire)
                assert fact.to_payload() == payload
            # the subject index follows the new name
            plan = conn.execute(
                text(
                    "SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_outbox_erasure_subject'"
                )
            ).scalar_one()
            assert "'subject'::text" in plan and "subject_id" not in plan
        db.downgrade(fresh_database_url, "0007")
        with engine.begin() as conn:
            assert _payloads(conn) == [(kind, old) for kind, old, _ in ROWS]
    finally:
        engine.dispose()
