"""What a data subject does with their own API key: read everything held about them.

The export answers GDPR Art. 15 (access) and Art. 20 (portability) at once: the subject's
records, decrypted, and what the ledger holds about them (consents, accesses to their data,
erasures). Only the subject named in the path, or the DPO, may read it. The subject's writes
(consents, erasure requests) are transactions they sign, relayed by the consents and erasures
routes; their consents are read there too, next to the writes that make them.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path
from pydantic import BaseModel

from api.http.bodies import BoundedJsonRoute
from api.http.deps import (
    CurrentMember,
    KeyStoreDep,
    LedgerDep,
    SessionDep,
    strict_query,
    subject_or_dpo,
)
from api.http.schemas import PUBLIC_KEY_HEX
from api.services import requests
from api.services.gateway import jsonable
from vault import reads

# Tagged "access" in the OpenAPI document: the export is the subject's right of access.
router = APIRouter(
    prefix="/v1",
    tags=["access"],
    dependencies=[Depends(strict_query)],
    route_class=BoundedJsonRoute,
)


class ExportOut(BaseModel):
    """Art. 15 (access) and Art. 20 (portability): everything held about the subject."""

    subject_id: str
    ledger_height: int
    records: list[dict[str, Any]]
    consents: list[dict[str, Any]]
    accesses: list[dict[str, Any]]
    erasures: list[dict[str, Any]]


@router.get("/subjects/{subject_id}/export")
def export(
    subject_id: Annotated[str, Path(pattern=PUBLIC_KEY_HEX)],
    member: CurrentMember,
    session: SessionDep,
    store: KeyStoreDep,
    ledger: LedgerDep,
) -> ExportOut:
    """The subject's records (decrypted), consents, accesses to their data, and erasures."""
    subject_or_dpo(member, subject_id)
    records = [
        {
            "record_id": str(r.record_id),
            "dataset_id": str(r.dataset_id),
            "upload_id": str(r.upload_id),
            "payload": json.loads(r.payload),
        }
        for r in reads.Reader(store).by_subject(session, subject_id)
    ]
    consents = ledger.query("consents", subject=subject_id)
    accesses = ledger.query("accesses", subject=subject_id, limit=1000)
    erasures = ledger.query("erasures", subject=subject_id, limit=1000)
    if member.role == "subject":
        # The subject's own request, answered at once (Art. 12(3)): registered done. The DPO
        # reading an export is no request of the subject's.
        now = dt.datetime.now(dt.UTC)
        opened = requests.open_request(session, "access", subject_id, None, now)
        requests.close_request(session, opened, "done", at=now)
    return ExportOut(
        subject_id=subject_id,
        ledger_height=consents["height"],
        records=records,
        consents=jsonable(consents["result"]),
        accesses=jsonable(accesses["result"]),
        erasures=jsonable(erasures["result"]),
    )
