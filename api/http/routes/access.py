"""Consent-checked access for consumers (the subject's own export is in routes/subjects.py).

An access is decided by the consent contracts, never here: the vault signs an `access.request`
for the consumer, the replicas decide which subjects are granted (an active consent for this
consumer, this dataset or its category, this purpose; not erased; retention not over) and
which uploads are live, and that transaction IS the record of the access. Only then does the
vault decrypt, and only the granted subjects' records in the live uploads the contracts named.
Every answer carries the ledger receipt of its access.

Minimal disclosure: `fields` cuts records down (projected records carry no inclusion proof,
since the proof covers the whole payload); a `predicate` answers one bit, `{"result": true}`,
about one subject, and the ledger holds only a salted commitment to the compared value. What
each form may reach is the contracts' decision too (docs/CONTRACTS.md "Disclosure"): the
access transaction carries exactly the fields or the predicate asked, a subject is granted
only if their consent covers that form, and the vault delivers exactly that form: whole
records only to an access that asked for whole records and was granted them.

Paid access: a dataset may price each mode (routes/fees.py). The consumer names the price it
agrees to (`price_cents`) and the contracts charge it in the access transaction itself, only
if the access granted someone; the answer says what was charged (`charged_cents`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid
from collections.abc import Iterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, Field, StringConstraints
from sqlalchemy.orm import Session, sessionmaker

from api.http import records_json
from api.http.deps import Consumer, key_store, ledger_gateway, strict_query
from api.http.direct import DirectJsonRoute
from api.http.errors import ApiError
from api.http.schemas import (
    InclusionProof,
    LedgerReceipt,
    Name,
    PublicKeyHex,
    StrictIn,
    UuidIn,
)
from api.services.gateway import LedgerGateway
from api.services.identity import ledger_identity
from ledger_bridge.contracts import bodies
from vault import db, disclosure, reads
from vault.keys import KeyStore

router = APIRouter(
    prefix="/v1",
    tags=["access"],
    dependencies=[Depends(strict_query)],
    # The hottest route: its plain requests skip FastAPI's general handler (api/http/direct.py).
    route_class=DirectJsonRoute,
)

FieldName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")]
# Per request; an open request (no `subjects`) reaches every consenting subject.
SUBJECTS_MAX = 500


class PredicateIn(StrictIn):
    field: FieldName
    op: Literal["eq", "ne", "lt", "le", "gt", "ge", "in"]
    value: Any = Field(description="compared in the vault; the ledger sees a salted commitment")


class AccessIn(StrictIn):
    dataset_id: UuidIn
    purpose: Name
    subjects: Annotated[list[PublicKeyHex], Field(min_length=1, max_length=SUBJECTS_MAX)] | None = (
        None
    )
    fields: Annotated[list[FieldName], Field(min_length=1, max_length=64)] | None = None
    predicate: PredicateIn | None = Field(
        default=None, description="a yes/no question about exactly one subject"
    )
    price_cents: Annotated[int, Field(ge=0, le=bodies.PRICE_CENTS_MAX)] | None = Field(
        default=None,
        description="the price in euro cents you agree to pay, exactly the dataset's for this "
        "mode (GET /v1/datasets/{dataset_id}/prices); none for a free mode",
    )


class AccessRecord(BaseModel):
    record_id: uuid.UUID
    upload_id: uuid.UUID
    subject_id: str
    payload: dict[str, Any]
    proof: InclusionProof | None = Field(
        default=None, description="absent when `fields` cut the payload down"
    )


class AccessAnswer(BaseModel):
    access: int = Field(description="the access's id on the ledger")
    receipt: LedgerReceipt
    granted: list[str]
    denied: list[list[str]] = Field(description="[subject, reason] for named subjects refused")
    charged_cents: int = Field(description="what the access cost you (0: free, or nobody granted)")
    records: list[AccessRecord]


class PredicateAnswer(BaseModel):
    result: bool
    receipt: LedgerReceipt
    charged_cents: int = Field(description="what the answer cost you (0: free)")


class AccessRefused(ApiError):
    status = 403
    title = "Access refused"


class InvalidAccess(ApiError):
    status = 422
    title = "Invalid access request"


# Why the contracts denied a subject, in words (the code comes first in the problem's detail).
_DENIED = {
    "erased": "the subject's data is erased",
    "restricted": "the subject restricted the processing of their data in this dataset "
    "(GDPR Art. 18)",
    "objected": "the subject objected to the processing of their data in this dataset "
    "(GDPR Art. 21) and no override answers it",
    "no_consent": "no consent in force for this consumer and purpose",
    "exceeds_consent": "the subject's consent does not cover this question",
    "budget_exhausted": "the questions the purpose allows about this subject in this period "
    "are spent",
}


def _commitment(value: Any) -> tuple[bytes, bytes]:
    """SHA-256(salt || canonical JSON of the value): binds the question without revealing it."""
    salt = os.urandom(16)
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return salt, hashlib.sha256(salt + canonical.encode()).digest()


async def _decide(
    ledger: LedgerGateway, consumer: bytes, body: AccessIn
) -> tuple[dict[str, Any], LedgerReceipt]:
    tx_body: dict[str, Any] = {
        "consumer": consumer,
        "dataset": str(body.dataset_id),
        "purpose": body.purpose,
    }
    if body.subjects is not None:
        if len(set(body.subjects)) != len(body.subjects):
            raise InvalidAccess("subjects must be distinct")
        tx_body["subjects"] = body.subjects
    if body.fields is not None:
        tx_body["fields"] = body.fields
    if body.predicate is not None:
        _, commitment = _commitment(body.predicate.value)
        tx_body["predicate"] = {
            "field": body.predicate.field,
            "op": body.predicate.op,
            "commitment": commitment,
        }
    if body.price_cents is not None:
        tx_body["price_cents"] = body.price_cents
    answer = await ledger.act_from("access.request", tx_body)
    return answer.result, LedgerReceipt(**answer.receipt.as_dict())


def _records(
    session: Session,
    store: KeyStore,
    dataset_id: uuid.UUID,
    granted: list[str],
    uploads: set[str],
    fields: list[str] | None,
) -> Iterator[str]:
    """The granted subjects' records in the uploads the contracts named, each as the JSON text
    of an `AccessRecord` (api/http/records_json.py says why text)."""
    if not granted or not uploads:
        return
    # Only the uploads the contracts named live: an expired, erased or withdrawn one is not
    # even fetched for this access.
    live = [uuid.UUID(u) for u in uploads]
    yield from reads.Reader(store).made_by_dataset(
        session,
        dataset_id,
        _record_text(fields),
        subjects=granted,
        uploads=live,
        anchored_only=True,
    )


async def _records_async(
    pool: db.AsyncPool,
    store: KeyStore,
    dataset_id: uuid.UUID,
    granted: list[str],
    uploads: set[str],
    fields: list[str] | None,
) -> list[bytes]:
    """`_records` read on the event loop's own connection (`Reader.made_by_dataset_async`), as
    the records' JSON text in UTF-8, a page's records (with commas between them) a part. Each
    page is encoded as it comes, so the loop holds no step longer than a page's, and a
    record's non-ASCII text widens no more than its page's string; `records_json.document`
    then copies the parts once into the answer."""
    parts: list[bytes] = []
    if granted and uploads:
        live = [uuid.UUID(u) for u in uploads]
        async with pool.connection() as connection:
            pages = reads.Reader(store).made_by_dataset_async(
                connection,
                dataset_id,
                _record_text(fields),
                subjects=granted,
                uploads=live,
                anchored_only=True,
            )
            async with contextlib.aclosing(pages):
                async for page in pages:
                    if page:
                        parts.append(",".join(page).encode())
    return parts


def _record_text(fields: list[str] | None) -> reads.RecordMaker[str]:
    """A record's `AccessRecord` text, made from its fields as the reader opens it: whole, or
    cut down to `fields` without its proof."""
    if fields is None:
        return records_json.access_record_text

    def projected(*fields_of_record: Any) -> str:
        # `RecordOut` takes a record's fields as the reader gives them: their list stays there.
        r = reads.RecordOut(*fields_of_record)
        payload = disclosure.project(r.payload, fields)
        return records_json.record_text(r, payload=payload, proof=False)

    return projected


def _head_text(head: AccessAnswer) -> str:
    """The answer without its records, as JSON text ending where `"records":` would follow."""
    return head.model_dump_json(exclude={"records"})[:-1]


def _records_opening(head: AccessAnswer) -> bytes:
    """The answer's text up to its first record: `_head_text`, then `,"records":[`."""
    return f'{_head_text(head)},"records":['.encode()


_ACCESS_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {
            "application/json": {
                "schema": {
                    "oneOf": [
                        {"$ref": "#/components/schemas/AccessAnswer"},
                        {"$ref": "#/components/schemas/PredicateAnswer"},
                    ]
                }
            },
            "application/x-ndjson": {
                "schema": {
                    "type": "string",
                    "description": "line 1: the access (AccessAnswer without records); then one "
                    "AccessRecord per line",
                }
            },
        },
        "description": "records (JSON, or streamed NDJSON with Accept: application/x-ndjson), "
        "or a predicate's yes/no",
    }
}


@router.post(
    "/access-requests",
    responses=_ACCESS_RESPONSES,
    response_model=AccessAnswer | PredicateAnswer,
)
async def access(body: AccessIn, member: Consumer, request: Request) -> Response:
    """Ask for records (or a yes/no) under a purpose; the contracts decide who is granted."""
    # An async route: the ledger's decision is awaited without holding a thread, and the
    # vault's part (read, decrypt, encode) runs on the loop's own database connection
    # (`reads_pool`), or in the thread pool where that is not open (a key provider whose
    # unwrap waits on a token) and for a streamed answer. The key store and the gateway are
    # looked up, not depended on: the hottest route pays no solve for them.
    store, ledger = key_store(request), ledger_gateway(request)
    consumer = ledger_identity(member)
    predicate = _predicate(body)
    result, receipt = await _decide(ledger, consumer, body)
    sessions: sessionmaker[Session] = request.app.state.sessions
    pool: db.AsyncPool | None = request.app.state.reads_pool
    if pool is not None and pool.saturated:
        # A burst beyond the loop's few connections reads in the thread pool, on the engine's,
        # rather than wait behind the reads in flight.
        pool = None
    if predicate is not None:
        read = _predicate_read(result, receipt)
        if pool is not None:
            payloads = await _predicate_payloads_async(pool, store, body.dataset_id, read)
        else:
            payloads = await run_in_threadpool(
                _predicate_payloads, sessions, store, body.dataset_id, read
            )
        yes_no = PredicateAnswer(
            result=disclosure.evaluate(payloads, predicate),
            receipt=receipt,
            charged_cents=result["charged_cents"],
        )
        return Response(content=yes_no.model_dump_json(), media_type="application/json")
    granted: list[str] = list(result["granted"])
    uploads = set(result["uploads"])
    head = AccessAnswer(
        access=result["access"],
        receipt=receipt,
        granted=granted,
        denied=result["denied"],
        charged_cents=result["charged_cents"],
        records=[],
    )
    if "application/x-ndjson" in request.headers.get("accept", ""):

        def lines() -> Iterator[bytes]:
            yield head.model_dump_json(exclude={"records"}).encode() + b"\n"
            with db.statement_session(sessions) as stream_session:
                for rec in _records(
                    stream_session, store, body.dataset_id, granted, uploads, body.fields
                ):
                    yield rec.encode() + b"\n"

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    if pool is not None:
        parts = await _records_async(pool, store, body.dataset_id, granted, uploads, body.fields)
        content = records_json.document(_records_opening(head), parts, b"]}")
        return Response(content=content, media_type="application/json")

    def answer() -> bytes:
        with db.statement_session(sessions) as session:
            records = _records(session, store, body.dataset_id, granted, uploads, body.fields)
            part = ",".join(records).encode()
        return records_json.document(_records_opening(head), [part], b"]}")

    return Response(content=await run_in_threadpool(answer), media_type="application/json")


def _predicate(body: AccessIn) -> disclosure.Predicate | None:
    """The yes/no question asked, checked before the ledger is asked anything."""
    if body.predicate is None:
        return None
    if body.subjects is None or len(body.subjects) != 1:
        raise InvalidAccess("a predicate is asked about exactly one subject")
    if body.fields is not None:
        raise InvalidAccess("a predicate answer discloses no fields")
    try:
        return disclosure.Predicate(body.predicate.field, body.predicate.op, body.predicate.value)
    except disclosure.InvalidPredicate as exc:
        raise InvalidAccess(str(exc)) from None


# What a predicate reads: its one subject, in the uploads the contracts named.
_SubjectRead = tuple[list[str], list[uuid.UUID]]


def _predicate_read(result: dict[str, Any], receipt: LedgerReceipt) -> _SubjectRead:
    """The one subject a predicate asks about, once the contracts granted them, and the live
    uploads; a refusal names the contracts' reason and the access on the ledger."""
    granted: list[str] = list(result["granted"])
    if not granted:
        denied = result["denied"]
        reason = denied[0][1] if denied else "no_consent"
        raise AccessRefused(
            f"{reason}: {_DENIED.get(reason, reason)} (access {result['access']}, "
            f"ledger tx {receipt.tx_id} at height {receipt.block_height})"
        )
    return granted[:1], [uuid.UUID(u) for u in result["uploads"]]


def _predicate_payloads(
    sessions: sessionmaker[Session], store: KeyStore, dataset_id: uuid.UUID, read: _SubjectRead
) -> list[bytes]:
    """The payloads of the predicate's subject in the uploads the contracts named."""
    subject, live = read
    with db.statement_session(sessions) as session:
        return [
            r.payload
            for r in reads.Reader(store).by_dataset(
                session, dataset_id, subjects=subject, uploads=live, anchored_only=True
            )
        ]


async def _predicate_payloads_async(
    pool: db.AsyncPool, store: KeyStore, dataset_id: uuid.UUID, read: _SubjectRead
) -> list[bytes]:
    """`_predicate_payloads` read on the event loop's own connection."""
    subject, live = read
    payloads: list[bytes] = []
    async with pool.connection() as connection:
        pages = reads.Reader(store).by_dataset_async(
            connection, dataset_id, subjects=subject, uploads=live, anchored_only=True
        )
        async with contextlib.aclosing(pages):
            async for page in pages:
                payloads.extend(r.payload for r in page)
    return payloads
