"""Art. 16 rectification: the provider or the DPO replaces a record by a corrected version, on
their own initiative or carrying out the subject's signed request.

`POST /v1/datasets/{dataset_id}/records/{record_id}/rectification` (the dataset's owner, or
the DPO): the corrected record (`subject_id`, which must be the record's, and `payload`) and,
when the subject asked, the ledger id of their `rectification.request`. The vault re-keys the
subject in the dataset: their old subject secret is destroyed, so every old version, wherever
its ciphertext survives, opens with no key; each of their current records in the dataset is
written again into a replacement upload, the corrected payload in place of the old one
(vault/rectification.py). The answer names the new record id, the record it replaced, the
other records' new ids, and the keys superseded and replacing them, which the ledger's
`record.rectify` links; `state` is `anchored` (201) once the ledger recorded it, `pending`
(202) when it is slower than `receipt_wait_s`, `refused` if the contracts refused it.

It is not an erasure: no certificate, the subject stays in the dataset and may get new
records. Refused with nothing changed: a record erased or already superseded (409, naming the
current version), a corrected record of another subject (422), another provider's dataset
(404), a request that is not open, of another dataset, subject or record (409).

`POST /v1/subjects/{subject_id}/rectification-requests`: the subject's own signed
`rectification.request` (a draft from `POST /v1/drafts`, signed by their wallet, like a
consent), relayed once the record it names is theirs in that dataset.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, StringConstraints

from api.http.bodies import BoundedJsonRoute
from api.http.deps import (
    KeyStoreDep,
    LedgerDep,
    ProviderOrDpo,
    SessionDep,
    SettingsDep,
    strict_query,
)
from api.http.schemas import PUBLIC_KEY_HEX, LedgerReceipt, SignedIn, StrictIn
from api.http.signed import assemble
from api.services import rectification as service
from api.services import requests
from ledger_bridge.contracts import bodies
from ledger_bridge.facts import RECTIFICATION_REQUEST, KeyRef
from vault.datasets import get_dataset
from vault.errors import DatasetNotFound
from vault.uploads import LEDGER_SUBJECT_ID, SUBJECT_ID, Uploader

router = APIRouter(
    prefix="/v1",
    tags=["rectification"],
    dependencies=[Depends(strict_query)],
    route_class=BoundedJsonRoute,
)


class RectificationIn(StrictIn):
    subject_id: Annotated[str, StringConstraints(max_length=128, pattern=SUBJECT_ID.pattern)] = (
        Field(description="the record's subject: a corrected record of another is refused")
    )
    payload: dict[str, Any] = Field(description="the corrected record, whole")
    request: Annotated[int, Field(ge=1, le=bodies.ID_MAX)] | None = Field(
        default=None, description="the subject's rectification.request this carries out"
    )


class KeyRefOut(BaseModel):
    upload: uuid.UUID
    key_commitment: str = Field(description="hex: the (upload, subject) key's commitment")


class VersionOut(BaseModel):
    replaced: uuid.UUID = Field(description="the old version's record id")
    record_id: uuid.UUID = Field(description="the current version's record id")
    upload: uuid.UUID = Field(description="the replacement upload holding it")


class RectificationOut(BaseModel):
    record_id: uuid.UUID = Field(description="the corrected record's new id")
    replaced: uuid.UUID = Field(description="the record it replaced")
    dataset_id: uuid.UUID
    request: int | None = Field(description="the subject's request it carried out")
    versions: list[VersionOut] = Field(
        description="every record of the subject in the dataset, re-keyed: old and new ids"
    )
    superseded: list[KeyRefOut] = Field(description="the keys destroyed: the old versions")
    replacement: list[KeyRefOut] = Field(description="the replacement uploads' keys")
    state: Literal["pending", "anchored", "refused"] = Field(
        description="where the ledger's record.rectify stands"
    )
    receipt: LedgerReceipt | None = Field(
        default=None, description="the record.rectify transaction, once recorded"
    )


class RectificationRequestOut(BaseModel):
    request: int = Field(description="the request's id on the ledger, open until carried out")
    dataset: str
    record: str
    receipt: LedgerReceipt


def _key(k: KeyRef) -> KeyRefOut:
    return KeyRefOut(upload=uuid.UUID(k.upload), key_commitment=k.key_commitment.hex())


_RESPONSES: dict[int | str, dict[str, Any]] = {
    201: {"model": RectificationOut, "description": "rectified and recorded on the ledger"},
    202: {"model": RectificationOut, "description": "rectified; the ledger record is pending"},
}


@router.post(
    "/datasets/{dataset_id}/records/{record_id}/rectification",
    status_code=201,
    responses=_RESPONSES,
    response_model=RectificationOut,
)
def rectify(
    dataset_id: uuid.UUID,
    record_id: uuid.UUID,
    body: RectificationIn,
    member: ProviderOrDpo,
    session: SessionDep,
    store: KeyStoreDep,
    settings: SettingsDep,
    request: Request,
) -> Any:
    """Replace a record by its corrected version (Art. 16); see the module docstring."""
    dataset = get_dataset(session, dataset_id)
    if member.role != "dpo" and dataset.owner_id != member.member_id:
        raise DatasetNotFound(f"dataset {dataset_id} does not exist")
    ledger = request.app.state.ledger
    uploader = Uploader(
        store,
        record_size_max_bytes=settings.record_size_max_bytes,
        batch_rows=settings.upload_batch_rows,
        subject_ids=SUBJECT_ID if ledger is None else LEDGER_SUBJECT_ID,
    )
    outcome = service.carry_out(
        request.app.state.sessions,
        store,
        uploader,
        ledger=ledger,
        jobs=request.app.state.jobs,
        dataset_id=dataset_id,
        record_id=record_id,
        corrected={"subject_id": body.subject_id, "payload": body.payload},
        request=body.request,
        requester=member,
        wait_s=settings.receipt_wait_s,
    )
    done = outcome.done
    out = RectificationOut(
        record_id=done.record_id,
        replaced=done.replaced,
        dataset_id=done.dataset_id,
        request=done.request,
        versions=[
            VersionOut(replaced=v.replaced, record_id=v.record_id, upload=v.upload_id)
            for v in done.versions
        ],
        superseded=[
            KeyRefOut(upload=uuid.UUID(k.upload), key_commitment=k.key_commitment.hex())
            for k in done.superseded
        ],
        replacement=[
            KeyRefOut(upload=uuid.UUID(k.upload), key_commitment=k.key_commitment.hex())
            for k in done.replacement
        ],
        state=outcome.state,
        receipt=LedgerReceipt.of_fact(outcome.fact),
    )
    return JSONResponse(out.model_dump(mode="json"), status_code=201 if out.receipt else 202)


@router.post("/subjects/{subject_id}/rectification-requests", status_code=201)
def request_rectification(
    subject_id: Annotated[str, Path(pattern=PUBLIC_KEY_HEX)],
    body: SignedIn,
    ledger: LedgerDep,
    session: SessionDep,
) -> RectificationRequestOut:
    """The subject's rectification.request, signed by their wallet (no API key needed): the
    record must be theirs in that dataset (404 otherwise). Open on the ledger until the
    provider or the DPO carries it out."""
    signed = assemble(ledger.chain_id, body.transaction, body.signature, "rectification.request")
    answer = service.relay_request(ledger, session, subject_id, signed)
    # Art. 12(3): registered with its deadline; the relay closes it when the record.rectify
    # naming it is recorded (or the register's sync, if the ledger closes it otherwise).
    requests.open_request(
        session,
        "rectification",
        subject_id,
        uuid.UUID(signed.body["dataset"]),
        dt.datetime.now(dt.UTC),
        requests.LedgerFact(
            type=RECTIFICATION_REQUEST,
            tx_id=answer.receipt.tx_id,
            height=answer.receipt.block_height,
        ),
        request=int(answer.result["request"]),
    )
    return RectificationRequestOut(
        request=int(answer.result["request"]),
        dataset=signed.body["dataset"],
        record=signed.body["record"],
        receipt=LedgerReceipt(**answer.receipt.as_dict()),
    )
