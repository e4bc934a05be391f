"""The retention audit: the vault's data-side audit AND its cross-check against the ledger.

The data side (vault/audit.py) checks that no record stays decryptable past its deadline; the
cross-check compares the vault's expiries and destructions with the ledger's erasure records.
Both read one database snapshot taken BEFORE the ledger is read (see `_snapshot`). The same
audit holds the DPO's accountability findings (vault/audit.py `accountability_findings`): a
subject's request answered late or still overdue, an Art. 30 record field left empty.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from api.services.gateway import LedgerGateway, LedgerUnavailable, jsonable
from vault import audit
from vault.config import VaultSettings
from vault.keys import KeyStore

ERASURE_PAGE = 50  # erasure records per ledger query (each may name 4,096 commitments)
ERASURE_SCAN_MAX = 1_000_000


class FindingOut(BaseModel):
    code: str
    detail: str
    refs: dict[str, str] = Field(default_factory=dict)


class LedgerMatch(BaseModel):
    erasure_records: int = Field(description="erasure and expiry records read from the ledger")
    epochs_matched: int
    epochs_pending: int = Field(description="expired, fact queued for the ledger (not a finding)")
    commitments_matched: int
    commitments_pending: int


class RetentionAuditOut(BaseModel):
    today: dt.date
    ok: bool = Field(description="false on any finding")
    findings: list[FindingOut]
    uploads_checked: int
    epochs_expired: int
    ledger: LedgerMatch


def schedule_of(settings: VaultSettings) -> audit.FinalErasureSchedule:
    """The final-erasure schedule the service was configured to keep."""
    return audit.FinalErasureSchedule(settings.final_erasure_interval, settings.final_erasure_grace)


def ledger_erasures(gateway: LedgerGateway) -> list[dict[str, Any]]:
    """Every erasure and expiry record on the ledger, bytes as hex."""
    out: list[dict[str, Any]] = []
    after = 0
    while len(out) < ERASURE_SCAN_MAX:
        rows = gateway.query("erasures", after=after, limit=ERASURE_PAGE)["result"]
        out += [jsonable(r) for r in rows]
        if len(rows) < ERASURE_PAGE:
            return out
        after = int(rows[-1]["erasure"])
    raise LedgerUnavailable(
        f"more than {ERASURE_SCAN_MAX} erasure records: audit one dataset at a time"
    )


def ledger_rectifications(gateway: LedgerGateway) -> list[dict[str, Any]]:
    """Every rectification record on the ledger (the keys each superseded), bytes as hex."""
    out: list[dict[str, Any]] = []
    after = 0
    while len(out) < ERASURE_SCAN_MAX:
        rows = gateway.query("rectifications", after=after, limit=ERASURE_PAGE)["result"]
        out += [jsonable(r) for r in rows]
        if len(rows) < ERASURE_PAGE:
            return out
        after = int(rows[-1]["rectification"])
    raise LedgerUnavailable(
        f"more than {ERASURE_SCAN_MAX} rectification records: audit one dataset at a time"
    )


@contextmanager
def _snapshot(sessions: sessionmaker[Session]) -> Iterator[Session]:
    """A read-only REPEATABLE READ session whose snapshot is taken at once.

    Why: the cross-check must see the database as it was BEFORE the ledger was read. A fact
    the relay records in between is then "pending" in the snapshot and on the ledger, which
    matches; read the other way round it would look recorded in the vault and missing on the
    ledger, a false finding.
    """
    session = sessions()
    try:
        session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        session.execute(text("SET TRANSACTION READ ONLY"))
        session.execute(text("SELECT 1"))  # takes the snapshot now
        yield session
    finally:
        session.rollback()
        session.close()


def run_retention_audit(
    sessions: sessionmaker[Session],
    gateway: LedgerGateway,
    dataset_id: uuid.UUID | None,
    store: KeyStore | None = None,
    schedule: audit.FinalErasureSchedule | None = None,
) -> RetentionAuditOut:
    """The audit of one dataset (or of all, `dataset_id` None) as of today (UTC); with the key
    store, destroyed commitments are re-derived (`vault.audit.retention_audit`); with the
    final-erasure `schedule`, whether KEKs are rotated and erasures made final in time."""
    now = dt.datetime.now(dt.UTC)
    today = now.date()
    with _snapshot(sessions) as session:
        data_side = audit.retention_audit(
            session, today, dataset_id=dataset_id, store=store, schedule=schedule
        )
        accountability = audit.accountability_findings(session, now, dataset_id=dataset_id)
        cross = audit.ledger_cross_check(
            session,
            today,
            ledger_erasures(gateway),
            dataset_id=dataset_id,
            ledger_rectifications=ledger_rectifications(gateway),
        )
    findings = [FindingOut(code=f.code, detail=f.detail, refs=f.refs) for f in data_side.findings]
    findings += [FindingOut(code=f.code, detail=f.detail, refs=f.refs) for f in cross.findings]
    findings += [FindingOut(code=f.code, detail=f.detail, refs=f.refs) for f in accountability]
    return RetentionAuditOut(
        today=today,
        ok=not findings,
        findings=findings,
        uploads_checked=data_side.uploads_checked,
        epochs_expired=data_side.epochs_expired,
        ledger=LedgerMatch(
            erasure_records=cross.ledger_erasures,
            epochs_matched=cross.epochs_matched,
            epochs_pending=cross.epochs_pending,
            commitments_matched=cross.commitments_matched,
            commitments_pending=cross.commitments_pending,
        ),
    )
