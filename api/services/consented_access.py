"""A consumer's projection access for the API's own computations (the dashboards).

The same path `POST /v1/access-requests` takes for a projection, as a service: the vault
signs an `access.request` for the consumer, the consent contracts decide which subjects are
granted and which uploads are live, and that transaction is the record of the use. Only then
does the vault decrypt, and only the granted subjects' records in those uploads, cut down to
the fields asked. Nothing here decides who may read what: the ledger does.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from api.services.gateway import LedgerGateway, LedgerReceipt
from vault import disclosure, reads
from vault.keys import KeyStore


@dataclass(frozen=True, slots=True)
class ProjectionAccess:
    """An open projection access as the ledger recorded it."""

    dataset_id: uuid.UUID
    access: int
    receipt: LedgerReceipt
    charged_cents: int
    granted: list[str]
    uploads: frozenset[uuid.UUID]
    fields: tuple[str, ...]


def request_projection(
    ledger: LedgerGateway,
    consumer: bytes,
    dataset_id: uuid.UUID,
    purpose: str,
    fields: Sequence[str],
) -> ProjectionAccess:
    """Ask the ledger for every consenting subject's `fields` of `dataset_id` under `purpose`
    (an open request). A refusal raises `LedgerRefused` (the route answers the contract's 4xx).

    A priced dataset is paid at the projection price it lists at the moment (read just
    before): the consumer asked for a view of it, and the price is public. The contract
    charges it only if someone is granted, and refuses `price_mismatch` if the provider
    changed it in between, so the consumer never pays a price it was not shown."""
    body: dict[str, Any] = {
        "consumer": consumer,
        "dataset": str(dataset_id),
        "purpose": purpose,
        "fields": list(fields),
    }
    prices = ledger.query("prices", dataset=str(dataset_id))["result"] or {}
    if prices.get("projection"):
        body["price_cents"] = int(prices["projection"])
    answer = ledger.act("access.request", body)
    result = answer.result
    return ProjectionAccess(
        dataset_id=dataset_id,
        charged_cents=int(result.get("charged_cents", 0)),
        access=int(result["access"]),
        receipt=answer.receipt,
        granted=list(result["granted"]),
        uploads=frozenset(uuid.UUID(u) for u in result["uploads"]),
        fields=tuple(fields),
    )


def projected_records(
    session: Session, store: KeyStore, access: ProjectionAccess
) -> Iterator[tuple[str, bytes]]:
    """(subject, projected payload) of the granted subjects' records in the live uploads."""
    if not access.granted or not access.uploads:
        return
    for r in reads.Reader(store).by_dataset(
        session,
        access.dataset_id,
        subjects=access.granted,
        uploads=access.uploads,
        anchored_only=True,
    ):
        yield r.subject_id, disclosure.project(r.payload, access.fields)
