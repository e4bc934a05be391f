"""GDPR Art. 30(1) records of processing: the dataset registry, with recipients from the ledger.

A recipient is a consumer that an access actually delivered someone's data to: the ledger's
access records say so, the vault's registry does not know it.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict

from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from api.services.access_log import AccessScan
from api.services.gateway import LedgerGateway
from vault import audit

RECIPIENTS_SCAN_MAX = 100_000


class Recipient(BaseModel):
    consumer: str = Field(description="hex public key of the consumer (a registered member)")
    purposes: list[str]
    accesses: int = Field(description="accesses that delivered at least one subject")


class ProcessingRecord(BaseModel):
    dataset_id: str
    name: str
    controller: str
    category_of_data: str
    purposes: list[str]
    legal_basis: str
    retention: str
    security_measures: str
    uploads: int
    records: int
    recipients: list[Recipient]


class RecordsOfProcessing(BaseModel):
    generated_at: dt.datetime
    recipients_complete: bool = Field(
        description=f"false when the ledger holds more than {RECIPIENTS_SCAN_MAX} accesses and "
        "only the first were read"
    )
    records: list[ProcessingRecord]


def _recipients(gateway: LedgerGateway) -> tuple[dict[str, list[Recipient]], bool]:
    per: dict[str, dict[bytes, tuple[set[str], int]]] = defaultdict(dict)
    scan = AccessScan(gateway, scan_max=RECIPIENTS_SCAN_MAX)
    for row in scan:
        if not row["granted"]:
            continue  # nobody's data left the vault: not a recipient
        purposes, n = per[row["dataset"]].get(row["consumer"], (set(), 0))
        purposes.add(row["purpose"])
        per[row["dataset"]][row["consumer"]] = (purposes, n + 1)
    out = {
        dataset: [
            Recipient(consumer=c.hex(), purposes=sorted(p), accesses=n)
            for c, (p, n) in sorted(consumers.items())
        ]
        for dataset, consumers in per.items()
    }
    return out, scan.exhausted


def records_of_processing(session: Session, gateway: LedgerGateway) -> RecordsOfProcessing:
    """Every registered dataset's record, each with its recipients as the ledger knows them."""
    recipients, complete = _recipients(gateway)
    return RecordsOfProcessing(
        generated_at=dt.datetime.now(dt.UTC),
        recipients_complete=complete,
        records=[
            ProcessingRecord(**entry, recipients=recipients.get(entry["dataset_id"], []))
            for entry in audit.records_of_processing(session)
        ],
    )
