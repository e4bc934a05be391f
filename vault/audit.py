"""DPO audits on the data side: retention, destroyed keys, and Art. 30 records of processing.

Why audits re-derive instead of trusting flags: a finding must come from the state that would
leak, not from a status column that says all is well. The retention audit therefore looks for
ciphertext of expired uploads that is still present AND whose three secrets still exist (so it
would decrypt), for epoch secrets that outlived their day, and for key commitments marked
destroyed whose secrets are in fact still in the key store. Ledger-side checks (every expiry
recorded on chain, commitments matched against anchors) are added by the service, which can
read both; this module never imports the ledger.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import String, and_, cast, exists, func, select
from sqlalchemy.orm import Session

from vault.models import Dataset, KeyCommitment, KeySecret, OutboxFact, Record, Upload


@dataclass(frozen=True, slots=True)
class Finding:
    code: str  # stable identifier, e.g. "decryptable-past-retention"
    detail: str
    refs: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RetentionAudit:
    today: dt.date
    findings: list[Finding]
    uploads_checked: int
    epochs_expired: int

    @property
    def ok(self) -> bool:
        return not self.findings


def _key_exists(kind: str, dataset: Any, scope: Any) -> Any:
    return exists().where(
        KeySecret.kind == kind, KeySecret.dataset_id == dataset, KeySecret.scope == scope
    )


def retention_audit(session: Session, today: dt.date) -> RetentionAudit:
    findings: list[Finding] = []
    today_iso = today.isoformat()

    # 1. An epoch secret that outlived its last day: everything under it still decrypts.
    for dataset_id, scope in session.execute(
        select(KeySecret.dataset_id, KeySecret.scope).where(
            KeySecret.kind == "epoch", KeySecret.scope < today_iso
        )
    ):
        findings.append(
            Finding(
                "epoch-key-past-retention",
                f"the retention key of dataset {dataset_id} for {scope} still exists",
                {"dataset_id": str(dataset_id), "day": scope},
            )
        )

    # 2. Ciphertext of an expired upload whose three secrets all exist: decryptable.
    expired = select(Upload.id, Upload.dataset_id, Upload.retention_day).where(
        Upload.retention_day < today
    )
    for upload_id, dataset_id, day in session.execute(expired):
        live = session.scalar(
            select(func.count())
            .select_from(Record)
            .where(Record.upload_id == upload_id, Record.envelope.is_not(None))
        )
        if not live:
            continue
        decryptable = session.scalar(
            select(
                and_(
                    _key_exists("epoch", dataset_id, day.isoformat()),
                    _key_exists("upload", dataset_id, str(upload_id)),
                )
            )
        )
        if decryptable:
            findings.append(
                Finding(
                    "decryptable-past-retention",
                    f"{live} record(s) of upload {upload_id} are still decryptable after "
                    f"their retention ended on {day.isoformat()}",
                    {"upload_id": str(upload_id), "day": day.isoformat()},
                )
            )

    # 3. A commitment marked destroyed while its subject secret still exists (and the upload
    #    and epoch keys too): the certificate would lie.
    lying = session.execute(
        select(KeyCommitment.upload_id, KeyCommitment.subject_id)
        .join(Upload, Upload.id == KeyCommitment.upload_id)
        .where(
            KeyCommitment.destroyed_at.is_not(None),
            _key_exists("subject", Upload.dataset_id, KeyCommitment.subject_id),
            _key_exists("upload", Upload.dataset_id, cast(Upload.id, String)),
            _key_exists(
                "epoch",
                Upload.dataset_id,
                func.to_char(Upload.retention_day, "YYYY-MM-DD"),
            ),
        )
    ).all()
    for upload_id, subject_id in lying:
        findings.append(
            Finding(
                "destroyed-commitment-key-alive",
                f"a key commitment of upload {upload_id} is marked destroyed but its key "
                "can still be derived",
                {"upload_id": str(upload_id), "subject_id": subject_id},
            )
        )

    # 4. Every expiry must have its ledger fact queued (the service checks it reached the chain).
    recorded_days = {
        (f.payload["scope"]["dataset_id"], f.payload["scope"]["day"])
        for f in session.scalars(select(OutboxFact).where(OutboxFact.kind == "retention.expire"))
    }
    epochs_expired = 0
    for dataset_id, day in session.execute(
        select(Upload.dataset_id, Upload.retention_day)
        .where(Upload.retention_day < today)
        .distinct()
    ):
        epoch_alive = session.scalar(select(_key_exists("epoch", dataset_id, day.isoformat())))
        if epoch_alive:
            continue  # already reported in 1
        epochs_expired += 1
        if (str(dataset_id), day.isoformat()) not in recorded_days:
            findings.append(
                Finding(
                    "expiry-not-recorded",
                    f"the expiry of dataset {dataset_id} on {day.isoformat()} has no "
                    "retention.expire fact",
                    {"dataset_id": str(dataset_id), "day": day.isoformat()},
                )
            )
    uploads_checked = session.scalar(select(func.count()).select_from(Upload)) or 0
    return RetentionAudit(today, findings, uploads_checked, epochs_expired)


def records_of_processing(session: Session) -> list[dict[str, Any]]:
    """GDPR Art. 30(1): one entry per dataset, generated from the registry, never hand-kept.

    Recipients (the consumers who accessed each dataset, per purpose) come from the ledger's
    access log and are merged in by the service.
    """
    out = []
    for ds in session.scalars(select(Dataset).order_by(Dataset.created_at, Dataset.id)):
        counts = session.execute(
            select(func.count(Upload.id), func.coalesce(func.sum(Upload.record_count), 0)).where(
                Upload.dataset_id == ds.id
            )
        ).one()
        out.append(
            {
                "dataset_id": str(ds.id),
                "name": ds.name,
                "controller": ds.owner_id,
                "category_of_data": ds.category,
                "purposes": list(ds.purposes),
                "legal_basis": ds.legal_basis,
                "retention": f"{ds.retention_days} days from upload, then erased by key "
                "destruction (retention epoch)",
                "security_measures": "AES-256-GCM per (upload, subject) key derived from three "
                "destroyable secrets wrapped by a KEK; ledger-anchored Merkle roots",
                "uploads": counts[0],
                "records": int(counts[1]),
            }
        )
    return out


def retention_timeline(
    session: Session, today: dt.date, *, days_ahead: int = 90
) -> list[dict[str, Any]]:
    """What expires when: per (day, dataset), the uploads and records still held.

    Rows with a day before `today` are overdue (the sweeper has not run): the page shows them
    in red and the retention audit reports them.
    """
    horizon = today + dt.timedelta(days=days_ahead)
    rows = session.execute(
        select(
            Upload.retention_day,
            Dataset.id,
            Dataset.name,
            func.count(Upload.id),
            func.coalesce(func.sum(Upload.record_count), 0),
        )
        .join(Dataset, Dataset.id == Upload.dataset_id)
        .where(
            Upload.retention_day <= horizon,
            Upload.state != "withdrawn",
            _key_exists(
                "epoch", Upload.dataset_id, func.to_char(Upload.retention_day, "YYYY-MM-DD")
            ),
        )
        .group_by(Upload.retention_day, Dataset.id, Dataset.name)
        .order_by(Upload.retention_day, Dataset.name)
    )
    return [
        {
            "day": day.isoformat(),
            "dataset_id": str(dataset_id),
            "dataset": name,
            "uploads": uploads,
            "records": int(records),
            "overdue": day < today,
        }
        for day, dataset_id, name, uploads, records in rows
    ]


def erasure_log(session: Session, *, limit: int = 200) -> list[dict[str, Any]]:
    """Erasures and expiries, newest first, with their ledger status (pending until recorded)."""
    facts = session.scalars(
        select(OutboxFact)
        .where(OutboxFact.kind.in_(["erasure.record", "retention.expire"]))
        .order_by(OutboxFact.id.desc())
        .limit(limit)
    )
    return [
        {
            "id": f.id,
            "kind": f.kind,
            "scope": f.payload.get("scope", {}),
            "requester": f.payload.get("requester"),
            "reason": f.payload.get("reason"),
            "at": f.payload.get("at"),
            "secrets_destroyed": f.payload.get("secrets_destroyed"),
            "commitments": len(f.payload.get("key_commitments", []))
            + sum(u.get("key_commitment_count", 0) for u in f.payload.get("uploads", [])),
            "status": "recorded" if f.sent_at is not None else "pending",
            "tx_id": f.tx_id,
            "block_height": f.block_height,
        }
        for f in facts
    ]
