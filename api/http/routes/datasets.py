"""Datasets, their uploads and the provider's reads of its own records.

Another provider's dataset answers 404, not 403: a provider must not learn which dataset ids
exist elsewhere. The DPO may list and show every dataset but not read records here.

A provider's read withholds the records of subjects who restricted (GDPR Art. 18) or objected
to (Art. 21) processing in the dataset, unless the DPO exempted them for legal claims
(api/services/restrictions.py): the list leaves them out and counts them in the header
`Civis-Withheld-Records`, a single record answers 409 `restricted`.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Annotated, Any

import anyio.to_thread
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response, StreamingResponse
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from api.http import records_json
from api.http.admission import UploadSlots
from api.http.bodies import BoundedJsonRoute
from api.http.deps import (
    KeyStoreDep,
    Provider,
    ProviderOrDpo,
    ReleasedProvider,
    SessionDep,
    SettingsDep,
    strict_query,
)
from api.http.errors import UnsupportedMediaType
from api.http.schemas import (
    DatasetIn,
    DatasetOut,
    InclusionProof,
    LedgerReceipt,
    RecordOut,
    UploadOut,
)
from api.http.settings import Settings
from api.http.streams import (
    LINE_OVERHEAD_BYTES,
    chunks_from_loop,
    csv_records,
    ndjson_body_records,
    split_lines,
)
from api.services import decryptions
from api.services.gateway import LedgerUnavailable
from api.services.identity import ledger_identity
from api.services.keys import Member
from api.services.outbox import wait_for_receipt
from api.services.restrictions import refuse_withheld, withheld_subjects
from api.services.retention_sync import sync_retention
from vault import decryptions as read_records
from vault import reads
from vault.datasets import get_dataset, list_datasets, register_dataset
from vault.errors import DatasetNotFound, RecordNotFound, UploadNotFound, VaultError
from vault.models import Dataset, Record, Upload
from vault.uploads import LEDGER_SUBJECT_ID, SUBJECT_ID, Uploader, UploadResult

if TYPE_CHECKING:
    from api.services.gateway import LedgerGateway
    from api.services.jobs import BackgroundJobs

router = APIRouter(
    prefix="/v1",
    tags=["datasets"],
    dependencies=[Depends(strict_query)],
    route_class=BoundedJsonRoute,
)
READ_LIMIT_MAX = 1000
WITHHELD_HEADER = "Civis-Withheld-Records"
UPLOAD_MEDIA_TYPES = ("application/x-ndjson", "text/csv")


class DatasetExists(VaultError):
    status = 409
    title = "Dataset exists"


def _out(d: Dataset) -> DatasetOut:
    return DatasetOut(
        id=d.id,
        owner_id=d.owner_id,
        name=d.name,
        category=d.category,
        purposes=list(d.purposes),
        retention_days=d.retention_days,
        legal_basis=d.legal_basis,
        created_at=d.created_at,
        receipt=(
            LedgerReceipt(tx_id=d.register_tx_id, block_height=d.register_height)
            if d.register_tx_id is not None and d.register_height is not None
            else None
        ),
    )


def _visible(session: Session, dataset_id: uuid.UUID, member: Member) -> Dataset:
    dataset = get_dataset(session, dataset_id)
    if member.role != "dpo" and dataset.owner_id != member.member_id:
        raise DatasetNotFound(f"dataset {dataset_id} does not exist")
    return dataset


@router.post("/datasets", status_code=201)
def register(
    body: DatasetIn, member: Provider, session: SessionDep, request: Request
) -> DatasetOut:
    """Register a dataset with its purposes, data category and retention period.

    With a ledger, the dataset is registered by the consent contracts FIRST (the vault signs
    for its owner): only purposes the cooperative approved are accepted, and only an admitted
    provider may own a dataset. The vault row is written after the contracts said yes; if that
    write fails, the ledger holds a dataset id with no data, which is harmless.
    """
    ledger: LedgerGateway | None = request.app.state.ledger
    dataset_id = uuid.uuid4()
    receipt = None
    if ledger is not None:
        owner = ledger_identity(member)
        if session.scalar(
            select(Dataset.id).where(
                Dataset.owner_id == member.member_id, Dataset.name == body.name
            )
        ):
            raise DatasetExists("you already have a dataset with this name")
        answer = ledger.act(
            "dataset.register",
            {
                "dataset": str(dataset_id),
                "owner": owner,
                "category": body.category,
                "purposes": body.purposes,
                "retention_days": body.retention_days,
                "legal_basis": body.legal_basis,
            },
        )
        receipt = LedgerReceipt(**answer.receipt.as_dict())
    try:
        with session.begin_nested():
            dataset = register_dataset(
                session,
                owner_id=member.member_id,
                name=body.name,
                category=body.category,
                purposes=body.purposes,
                retention_days=body.retention_days,
                legal_basis=body.legal_basis,
                dataset_id=dataset_id,
            )
            if receipt is not None:
                # Stored with the row, so that every later read shows the receipt the POST did.
                dataset.register_tx_id = receipt.tx_id
                dataset.register_height = receipt.block_height
    except IntegrityError:
        raise DatasetExists("you already have a dataset with this name") from None
    session.refresh(dataset)
    return _out(dataset)


@router.get("/datasets")
def list_(member: ProviderOrDpo, session: SessionDep) -> list[DatasetOut]:
    """A provider's own datasets; the DPO sees all of them."""
    owner = None if member.role == "dpo" else member.member_id
    return [_out(d) for d in list_datasets(session, owner_id=owner)]


@router.get("/datasets/{dataset_id}")
def show(dataset_id: uuid.UUID, member: ProviderOrDpo, session: SessionDep) -> DatasetOut:
    return _out(_visible(session, dataset_id, member))


_UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": (
            'NDJSON: one {"subject_id", "payload": {...}, "record_id"?} per line. '
            "CSV: a header with subject_id, optional record_id, and payload columns."
        ),
        "content": {
            "application/x-ndjson": {"schema": {"type": "string"}},
            "text/csv": {"schema": {"type": "string"}},
        },
    }
}


def _upload_media_type(request: Request) -> str:
    """The upload's media type, refused (415) unless NDJSON or CSV in UTF-8."""
    media_type, _, params = request.headers.get("content-type", "").partition(";")
    media_type = media_type.strip().lower()
    if media_type not in UPLOAD_MEDIA_TYPES:
        raise UnsupportedMediaType(f"send {' or '.join(UPLOAD_MEDIA_TYPES)}")
    charset = "utf-8"
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset":
            charset = value.strip().strip('"').lower()
    if charset not in ("utf-8", "utf8"):
        # Lines are decoded as UTF-8; another charset would be misread, not refused, later.
        raise UnsupportedMediaType("upload bodies are UTF-8 (charset=utf-8)")
    return media_type


async def _first_chunk(body: AsyncIterator[bytes]) -> bytes:
    """The body's first bytes (b"" for an empty body), awaited on the event loop.

    Why before anything else: until data arrives, the upload holds no worker thread and no
    database connection, only its socket and its slot (api/http/admission.py).
    """
    async for chunk in body:
        if chunk:
            return chunk
    return b""


@router.post(
    "/datasets/{dataset_id}/uploads",
    status_code=201,
    openapi_extra=_UPLOAD_BODY,
)
async def upload(
    dataset_id: uuid.UUID,
    request: Request,
    member: ReleasedProvider,
    store: KeyStoreDep,
    settings: SettingsDep,
) -> UploadOut:
    """Stream records into a dataset: all stored, or none and the first bad line named.

    With a ledger, the upload and its anchor fact commit in this request's own transaction,
    the relay is woken, and the answer waits up to `receipt_wait_s` for the anchor's receipt:
    usually `state: anchored` with the receipt; `pending` (no receipt yet) when the ledger is
    slower, and `GET .../uploads/{upload_id}` tells when it is anchored.

    A key runs at most `uploads_per_key_max` uploads at once (429 beyond), the instance
    `uploads_max` (503 beyond); a body that stops arriving is cut with a 408 and stores nothing.
    """
    media_type = _upload_media_type(request)
    # Vault errors count records; lines are records shifted by the CSV header.
    request.state.line_offset = 1 if media_type == "text/csv" else 0
    ledger: LedgerGateway | None = request.app.state.ledger
    uploader = Uploader(
        store,
        record_size_max_bytes=settings.record_size_max_bytes,
        batch_rows=settings.upload_batch_rows,
        subject_ids=SUBJECT_ID if ledger is None else LEDGER_SUBJECT_ID,
    )
    line_max_bytes = settings.record_size_max_bytes + LINE_OVERHEAD_BYTES
    sessions: sessionmaker[Session] = request.app.state.sessions
    slots: UploadSlots = request.app.state.upload_slots
    with slots.hold(member.key_id):
        body = request.stream()
        first = await _first_chunk(body)

        def run() -> UploadResult:
            if ledger is not None:
                _adopt_ledger_retention(sessions, ledger, dataset_id)
            with sessions() as session, session.begin():
                _visible(session, dataset_id, member)
                chunks = itertools.chain((first,), chunks_from_loop(body))
                if media_type == "text/csv":
                    lines = split_lines(chunks, line_max_bytes=line_max_bytes)
                    return uploader.upload(session, dataset_id, csv_records(lines))
                records = ndjson_body_records(chunks, line_max_bytes=line_max_bytes)
                return uploader.upload(session, dataset_id, records)

        result = await anyio.to_thread.run_sync(run)
        return await _with_receipt(request, settings, result)


def _adopt_ledger_retention(
    sessions: sessionmaker[Session], ledger: LedgerGateway, dataset_id: uuid.UUID
) -> None:
    """The dataset's retention period as governance last set it on the ledger, before the
    upload takes its retention day from the vault's copy. A ledger that does not answer
    leaves the copy as it is: the contracts refuse an anchor past the registered period."""
    with contextlib.suppress(LedgerUnavailable):
        sync_retention(sessions, ledger, [dataset_id])


async def _with_receipt(request: Request, settings: Settings, result: UploadResult) -> UploadOut:
    """The upload's answer, with the anchor's receipt if the ledger gives it in time."""
    jobs: BackgroundJobs | None = request.app.state.jobs
    sessions: sessionmaker[Session] = request.app.state.sessions
    out = UploadOut(
        upload_id=result.upload_id,
        dataset_id=result.dataset_id,
        record_count=result.record_count,
        merkle_root=result.merkle_root.hex(),
        commitments_root=result.commitments_root.hex(),
        retention_day=result.retention_day,
        state="pending",
    )
    if jobs is not None and result.outbox_id is not None:
        jobs.kick()
        outbox_id = result.outbox_id
        fact = await anyio.to_thread.run_sync(
            lambda: wait_for_receipt(sessions, outbox_id, settings.receipt_wait_s)
        )
        out.receipt = LedgerReceipt.of_fact(fact)
        if fact.ledger_state == "refused":
            out.state = "refused"  # the contracts said no: no consumer gets it
        elif out.receipt is not None:
            out.state = "anchored"
    return out


def _upload_out(u: Upload) -> UploadOut:
    receipt = None
    if u.anchor_tx_id is not None and u.anchor_height is not None:
        receipt = LedgerReceipt(tx_id=u.anchor_tx_id, block_height=u.anchor_height)
    return UploadOut(
        upload_id=u.id,
        dataset_id=u.dataset_id,
        record_count=u.record_count,
        merkle_root=u.merkle_root.hex(),
        commitments_root=u.commitments_root.hex(),
        retention_day=u.retention_day,
        state=u.state,  # type: ignore[arg-type]  # the table's CHECK constraint bounds it
        receipt=receipt,
    )


@router.get("/datasets/{dataset_id}/uploads")
def uploads(
    dataset_id: uuid.UUID,
    member: Provider,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=READ_LIMIT_MAX)] = 100,
) -> list[UploadOut]:
    """The dataset's uploads, newest first, each with its state and ledger receipt."""
    _visible(session, dataset_id, member)
    query = (
        select(Upload)
        .where(Upload.dataset_id == dataset_id)
        .order_by(Upload.created_at.desc(), Upload.id)
        .limit(limit)
    )
    return [_upload_out(u) for u in session.scalars(query)]


@router.get("/datasets/{dataset_id}/uploads/{upload_id}")
def upload_status(
    dataset_id: uuid.UUID, upload_id: uuid.UUID, member: Provider, session: SessionDep
) -> UploadOut:
    """One upload: `pending` until its upload.anchor commits, then `anchored` with the receipt."""
    _visible(session, dataset_id, member)
    found = session.get(Upload, upload_id)
    if found is None or found.dataset_id != dataset_id:
        raise UploadNotFound(f"upload {upload_id} does not exist")
    return _upload_out(found)


def _record_out(r: reads.RecordOut) -> RecordOut:
    return RecordOut(
        record_id=r.record_id,
        dataset_id=r.dataset_id,
        upload_id=r.upload_id,
        subject_id=r.subject_id,
        payload=json.loads(r.payload),
        proof=InclusionProof(
            leaf_index=r.leaf_index,
            leaf_salt=r.leaf_salt.hex(),
            audit_path=[h.hex() for h in r.proof],
            merkle_root=r.merkle_root.hex(),
            tree_size=r.record_count,
        ),
    )


_RECORDS_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "headers": {
            WITHHELD_HEADER: {
                "description": "how many records of the dataset (of `subject_id`, when named) "
                "were left out because their subject restricted or objected to processing "
                "(GDPR Art. 18, 21) and no legal-claims exemption is live",
                "schema": {"type": "integer", "minimum": 0},
            }
        },
        "content": {
            "application/x-ndjson": {
                "schema": {"type": "string", "description": "one RecordOut per line"}
            }
        },
        "description": "JSON (a page of at most `limit`) or, with Accept: "
        "application/x-ndjson, every record as a stream",
    }
}


@router.get(
    "/datasets/{dataset_id}/records",
    responses=_RECORDS_RESPONSES,
    response_model=list[RecordOut],
)
def dataset_records(
    dataset_id: uuid.UUID,
    request: Request,
    member: Provider,
    session: SessionDep,
    store: KeyStoreDep,
    subject_id: Annotated[str | None, Query(max_length=128, pattern=SUBJECT_ID.pattern)] = None,
    limit: Annotated[int, Query(ge=1, le=READ_LIMIT_MAX)] = 100,
) -> Any:
    """The provider's own records, with inclusion proofs; erased records are left out.

    Records of subjects who restricted or objected to processing here are left out too, and
    counted in the header `Civis-Withheld-Records` (0 when none).

    `Accept: application/x-ndjson` streams every record (no `limit`) in constant memory: the
    vault reads in batches with a server-side cursor, one line is encoded at a time.

    Every read is recorded (a `decryptions` row per subject read, GDPR Art. 5(2)): a page in
    this request's transaction, a stream before its first byte (api/services/decryptions.py).
    """
    _visible(session, dataset_id, member)
    subjects = None if subject_id is None else [subject_id]
    leave_out = withheld_subjects(request.app.state.ledger, dataset_id)
    count = reads.count_readable(session, dataset_id, leave_out, within=subjects)
    headers = {WITHHELD_HEADER: str(count)}
    if "application/x-ndjson" in request.headers.get("accept", ""):
        sessions = request.app.state.sessions

        def lines() -> Iterator[bytes]:
            # Its own session: the request's is closed once this function returns, and the
            # body is produced after that, while the response streams. Its snapshot is the
            # one the read was recorded from.
            with decryptions.recorded_snapshot(
                sessions,
                member,
                "provider_read",
                lambda s: read_records.readable(s, dataset_id, subjects, leave_out),
            ) as stream_session:
                found = reads.Reader(store).by_dataset(
                    stream_session, dataset_id, subjects=subjects, leave_out=leave_out
                )
                for r in found:
                    yield records_json.record_text(r, dataset=True).encode() + b"\n"

        return StreamingResponse(
            decryptions.primed(lines()), media_type="application/x-ndjson", headers=headers
        )
    found = reads.Reader(store).by_dataset(
        session, dataset_id, subjects=subjects, leave_out=leave_out, limit=limit
    )
    read = list(itertools.islice(found, limit))
    decryptions.record_decryptions(session, member, "provider_read", decryptions.counted(read))
    page = ",".join(records_json.record_text(r, dataset=True) for r in read).encode()
    return Response(
        content=records_json.document(b"[", [page], b"]"),
        media_type="application/json",
        headers=headers,
    )


@router.get("/records/{record_id}")
def record(
    record_id: uuid.UUID,
    member: Provider,
    session: SessionDep,
    store: KeyStoreDep,
    request: Request,
) -> RecordOut:
    """One of the provider's records, with its inclusion proof; 409 `restricted` while its
    subject restricted or objected to processing in the dataset (and no legal-claims
    exemption is live)."""
    row = session.get(Record, record_id)
    dataset = None if row is None else session.get(Dataset, row.dataset_id)
    if row is None or dataset is None or dataset.owner_id != member.member_id:
        raise RecordNotFound(f"record {record_id} does not exist")
    refuse_withheld(request.app.state.ledger, dataset.id, row.subject_id)
    read = reads.Reader(store).record(session, record_id)
    decryptions.record_decryptions(session, member, "provider_read", decryptions.counted([read]))
    return _record_out(read)
