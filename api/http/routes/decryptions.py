"""A recorded read's proof (GDPR Art. 5(2)): the reader, the subject whose data it was, or
the DPO gets the read as recorded, its salt and its audit path under the root a `read.record`
put on the ledger (api/services/decryptions.py; the client checks it with
`api.client.accountability.verify_read`)."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Depends

from api.http.bodies import BoundedJsonRoute
from api.http.deps import CurrentMember, SessionDep, strict_query
from api.services import decryptions
from api.services.decryptions import DecryptionProofOut

router = APIRouter(
    prefix="/v1",
    tags=["access"],
    dependencies=[Depends(strict_query)],
    route_class=BoundedJsonRoute,
)


@router.get("/decryptions/{decryption_id}/proof")
def decryption_proof(
    decryption_id: uuid.UUID, member: CurrentMember, session: SessionDep
) -> DecryptionProofOut:
    """A read of personal data as recorded, with its inclusion proof and the `read.record`
    receipt once its batch is on the ledger (`state: unbatched` before: the batcher runs
    every `read_batch_interval_s`). Another member's read, or another subject's, is 404."""
    return decryptions.proof(session, member, decryption_id)
