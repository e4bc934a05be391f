"""What a data subject does with their own credential: read everything held about them.

The export answers GDPR Art. 15 (access) and Art. 20 (portability) at once: the subject's
records, decrypted, and what the ledger holds about them (consents, accesses to their data,
erasures). Only the subject named in the path (their API key, or a wallet sign-in that proved
the pseudonym: api/http/routes/sign_in.py), or the DPO, may read it. The subject's writes
(consents, erasure requests) are transactions they sign, relayed by the consents and erasures
routes; their consents are read there too, next to the writes that make them.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path
from pydantic import BaseModel, Field

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
from api.services import decryptions
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
    decryptions: list[dict[str, Any]] = Field(
        default_factory=list,
        description="every read of the subject's data by the vault's members (this one "
        "included), each provable: GET /v1/decryptions/{id}/proof",
    )


@router.get("/subjects/{subject_id}/export")
def export(
    subject_id: Annotated[str, Path(pattern=PUBLIC_KEY_HEX)],
    member: CurrentMember,
    session: SessionDep,
    store: KeyStoreDep,
    ledger: LedgerDep,
) -> ExportOut:
    """The subject's records (decrypted), consents, accesses to their data, erasures, and
    the reads of their data (this export is one, recorded in its own transaction)."""
    subject_or_dpo(member, subject_id)
    found = list(reads.Reader(store).by_subject(session, subject_id))
    decryptions.record_decryptions(
        session, member, decryptions.export_kind(member), decryptions.counted(found)
    )
    records = [
        {
            "record_id": str(r.record_id),
            "dataset_id": str(r.dataset_id),
            "upload_id": str(r.upload_id),
            "payload": json.loads(r.payload),
        }
        for r in found
    ]
    consents = ledger.query("consents", subject=subject_id)
    accesses = ledger.query("accesses", subject=subject_id, limit=1000)
    erasures = ledger.query("erasures", subject=subject_id, limit=1000)
    return ExportOut(
        subject_id=subject_id,
        ledger_height=consents["height"],
        records=records,
        consents=jsonable(consents["result"]),
        accesses=jsonable(accesses["result"]),
        erasures=jsonable(erasures["result"]),
        decryptions=decryptions.decryptions_of(session, [subject_id]),
    )
