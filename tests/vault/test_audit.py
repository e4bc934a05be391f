"""The retention audit passes on an honest vault and fails, with a clear finding, on tampering."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from tests.vault.conftest import VaultServices, make_dataset
from vault.audit import erasure_log, records_of_processing, retention_audit, retention_timeline
from vault.erasure import Eraser
from vault.models import Dataset, KeyCommitment, OutboxFact
from vault.uploads import RecordIn, Uploader, UploadResult

UPLOAD_DAY = dt.date(2026, 4, 1)
AFTER = dt.date(2026, 4, 20)  # retention of 10 days ended on April 11


def _at(day: dt.date) -> Callable[[], dt.datetime]:
    return lambda: dt.datetime.combine(day, dt.time(9), tzinfo=dt.UTC)


def _setup(session: Session, services: VaultServices) -> tuple[Dataset, UploadResult]:
    dataset = make_dataset(session, retention_days=10)
    up = Uploader(services.store, clock=_at(UPLOAD_DAY)).upload(
        session, dataset.id, [RecordIn(f"s{i}", b"{}") for i in range(10)]
    )
    return dataset, up


def _codes(session: Session, today: dt.date) -> set[str]:
    return {f.code for f in retention_audit(session, today).findings}


def test_honest_vault_passes_before_and_after_expiry(
    session: Session, services: VaultServices
) -> None:
    dataset, _ = _setup(session, services)
    assert retention_audit(session, dt.date(2026, 4, 11)).ok  # last day: nothing due yet
    Eraser(services.store).expire_epoch(session, dataset.id, dt.date(2026, 4, 11))
    report = retention_audit(session, AFTER)
    assert report.ok and report.epochs_expired == 1


def test_detects_a_record_left_decryptable_past_its_deadline(
    session: Session, services: VaultServices
) -> None:
    _setup(session, services)  # no sweep ran
    assert _codes(session, AFTER) == {"epoch-key-past-retention", "decryptable-past-retention"}


def test_detects_a_missing_ledger_record(session: Session, services: VaultServices) -> None:
    dataset, _ = _setup(session, services)
    Eraser(services.store).expire_epoch(session, dataset.id, dt.date(2026, 4, 11))
    session.execute(delete(OutboxFact).where(OutboxFact.kind == "retention.expire"))
    assert _codes(session, AFTER) == {"expiry-not-recorded"}


def test_detects_a_commitment_marked_destroyed_whose_key_lives(
    session: Session, services: VaultServices
) -> None:
    _setup(session, services)
    session.execute(
        update(KeyCommitment)
        .where(KeyCommitment.subject_id == "s3")
        .values(destroyed_at=dt.datetime(2026, 4, 2, tzinfo=dt.UTC))
    )
    findings = retention_audit(session, dt.date(2026, 4, 5)).findings
    assert [(f.code, f.refs["subject_id"]) for f in findings] == [
        ("destroyed-commitment-key-alive", "s3")
    ]


def test_records_of_processing_come_from_the_registry(
    session: Session, services: VaultServices
) -> None:
    dataset, _ = _setup(session, services)
    entries = {e["dataset_id"]: e for e in records_of_processing(session)}
    entry = entries[str(dataset.id)]
    assert entry["purposes"] == ["billing", "proof-of-address"]
    assert entry["records"] == 10 and entry["legal_basis"] == "consent"
    assert session.scalar(select(KeyCommitment.subject_id).limit(1)) is not None


def test_timeline_and_erasure_log(session: Session, services: VaultServices) -> None:
    dataset, up = _setup(session, services)
    timeline = retention_timeline(session, dt.date(2026, 4, 2))
    mine = [row for row in timeline if row["dataset_id"] == str(dataset.id)]
    assert mine == [
        {
            "day": "2026-04-11",
            "dataset_id": str(dataset.id),
            "dataset": dataset.name,
            "uploads": 1,
            "records": 10,
            "overdue": False,
        }
    ]
    assert [
        r["overdue"]
        for r in retention_timeline(session, AFTER)
        if r["dataset_id"] == str(dataset.id)
    ] == [True]
    Eraser(services.store).erase_subject(session, "s1", reason="Art. 17", requester="dpo")
    Eraser(services.store).expire_epoch(session, dataset.id, up.retention_day)
    log = erasure_log(session)
    assert [e["kind"] for e in log[:2]] == ["retention.expire", "erasure.record"]
    assert log[1]["commitments"] == 1 and log[1]["status"] == "pending"
    assert log[0]["commitments"] == 10
    assert not [r for r in retention_timeline(session, AFTER) if r["dataset_id"] == str(dataset.id)]
