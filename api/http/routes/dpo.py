"""The DPO's audits over HTTP, as JSON under /v1/dpo.

Only the DPO role reaches any of it. Each route hands one audit to its service:

- access log (api/services/access_log.py): the ledger's committed access records (the
  contracts write one for every decision);
- retention audit (api/services/retention_audit.py): the vault's data-side audit AND its
  cross-check against the ledger's erasure records;
- ledger verification (api/services/ledger_verification.py): every replica's chain as that
  replica serves it, checked and compared;
- records of processing, Art. 30 (api/services/records_of_processing.py), as JSON or
  Markdown, and the DPIA drafted from them, Art. 35 (api/services/dpia.py), as Markdown or PDF;
- outbox (api/services/outbox_admin.py): the vault facts the ledger has not recorded, those
  it refused first: a refused fact is set aside so it holds up nothing, and waits for the DPO;
- members' directory (api/services/directory.py): the legal entities' names and contacts,
  kept off the ledger, which the page and the documents show instead of keys.

Long scans are bounded (a limit on everything): each answer says where to continue.

The same audits as a console for a person, behind a session cookie: api/http/routes/console.py.

The register of the subjects' requests has its own routes (api/http/routes/requests.py).
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi import Path as FastApiPath
from fastapi.responses import Response
from pydantic import StringConstraints
from sqlalchemy.orm import Session

from api.http.attachments import PDF, document
from api.http.bodies import BoundedJsonRoute
from api.http.deps import Dpo, LedgerDep, SessionDep, strict_query
from api.http.schemas import PUBLIC_KEY_HEX, PublicKeyHex
from api.services import directory, outbox_admin
from api.services import records_of_processing as processing
from api.services.access_log import AccessFilter, AccessLog, read_access_log
from api.services.directory import MemberList, MemberNameOut, NameIn
from api.services.dpia import build_dpia
from api.services.ledger_verification import (
    VERIFY_BLOCKS_MAX,
    LedgerVerification,
    verify_ledger,
)
from api.services.outbox_admin import OutboxFactOut, OutboxOut
from api.services.records_of_processing import RecordsOfProcessing
from api.services.retention_audit import RetentionAuditOut, run_retention_audit, schedule_of

router = APIRouter(
    prefix="/v1", tags=["dpo"], dependencies=[Depends(strict_query)], route_class=BoundedJsonRoute
)

ACCESS_LIMIT_MAX = 1000
OUTBOX_LIMIT_MAX = 1000

Purpose = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")]


@router.get("/dpo/access-log")
def access_log(
    member: Dpo,
    ledger: LedgerDep,
    subject: PublicKeyHex | None = None,
    consumer: PublicKeyHex | None = None,
    purpose: Purpose | None = None,
    since: Annotated[dt.datetime | None, Query(description="from this time (ISO 8601)")] = None,
    until: Annotated[dt.datetime | None, Query(description="up to this time (inclusive)")] = None,
    dataset: uuid.UUID | None = None,
    outcome: Annotated[
        Literal["granted", "refused"] | None,
        Query(description="granted: delivered someone's data; refused: nobody's"),
    ] = None,
    after: Annotated[int, Query(ge=0, le=2**62)] = 0,
    limit: Annotated[int, Query(ge=1, le=ACCESS_LIMIT_MAX)] = 100,
) -> AccessLog:
    """Every access the consent contracts decided, from the ledger, oldest first.

    Each line is a committed decision: who asked (consumer), for which dataset and purpose,
    which subjects were delivered. `next_after` is set when more lines may follow (the page
    is full, or this request read its share of the ledger and stopped).
    """
    wanted = AccessFilter(
        subject=subject,
        consumer=consumer,
        purpose=purpose,
        since=since,
        until=until,
        dataset=None if dataset is None else str(dataset),
        outcome=outcome,
    )
    return read_access_log(ledger, wanted, after=after, limit=limit)


@router.get("/dpo/retention-audit")
def retention_audit(
    member: Dpo,
    ledger: LedgerDep,
    request: Request,
    dataset_id: uuid.UUID | None = None,
) -> RetentionAuditOut:
    """No record decryptable past its deadline; every expiry and destruction on the ledger.

    Finding codes: `epoch-key-past-retention`, `decryptable-past-retention`,
    `destroyed-commitment-key-alive`, `expiry-not-recorded`, `forgotten-commitment-live`,
    `retention-beyond-registered` (data side, vault/audit.py); `kek-older-than-schedule`,
    `erasure-not-final` (final erasure: the KEK rotation schedule, `final_erasure_interval` plus
    `final_erasure_grace`); `expiry-not-on-ledger`, `destroyed-commitment-not-on-ledger`,
    `commitments-root-mismatch`, `ledger-record-missing`, `ledger-erasure-not-applied`
    (against the ledger); `request-overdue`, `request-answered-late` (a subject's request past
    its Art. 12(3) deadline), `processing-record-incomplete` (an Art. 30 field to set; whole
    audit only).
    """
    return run_retention_audit(
        request.app.state.sessions,
        ledger,
        dataset_id,
        request.app.state.key_store,
        schedule_of(request.app.state.settings),
    )


@router.get("/dpo/ledger-verification")
def ledger_verification(
    member: Dpo,
    ledger: LedgerDep,
    from_height: Annotated[int, Query(ge=1, le=2**62)] = 1,
    limit: Annotated[int, Query(ge=1, le=VERIFY_BLOCKS_MAX)] = VERIFY_BLOCKS_MAX,
) -> LedgerVerification:
    """Every replica's chain as it serves it: hash links, certificates, equal headers.

    Each block's commit certificate is checked against the genesis validator keys; the
    replicas' headers (results digest, state root, time) must agree at every height. A long
    chain is verified `limit` blocks at a time: continue from `next_from_height`.
    """
    return verify_ledger(ledger, from_height, limit)


@router.get("/dpo/outbox")
def outbox(
    member: Dpo,
    session: SessionDep,
    state: Literal["refused", "pending"] = "refused",
    after: Annotated[int, Query(ge=0, le=2**62)] = 0,
    limit: Annotated[int, Query(ge=1, le=OUTBOX_LIMIT_MAX)] = 100,
) -> OutboxOut:
    """Facts the ledger has not recorded: `refused` ones (the contracts said no; the relay set
    them aside and ships the rest) or `pending` ones (in the relay's queue, in order)."""
    return outbox_admin.list_facts(session, state, after=after, limit=limit)


@router.post("/dpo/outbox/{fact_id}/retry")
def retry_fact(
    fact_id: Annotated[int, FastApiPath(ge=1, le=2**62)], member: Dpo, request: Request
) -> OutboxFactOut:
    """Send a refused fact again, in its original place in the queue (say, once the
    cooperative re-admitted the vault's key or registered the dataset it names). 404 unless
    the fact exists and is refused. The answer is the fact back in the queue; follow it with
    `GET /v1/dpo/outbox?state=pending` or the erasure's certificate."""
    sessions = request.app.state.sessions
    with sessions() as session, session.begin():
        out = outbox_admin.retry(session, fact_id)
    jobs = request.app.state.jobs
    if jobs is not None:
        jobs.kick()
    return out


@router.get("/dpo/members")
def member_directory(member: Dpo, session: SessionDep, ledger: LedgerDep) -> MemberList:
    """Every member of the cooperative but the residents, with the display name and contact
    the vault keeps (null until named): the organisations the page shows instead of keys."""
    return directory.members(session, ledger)


@router.put("/dpo/members/{member_id}/name")
def name_member(
    member_id: Annotated[str, FastApiPath(pattern=PUBLIC_KEY_HEX)],
    body: NameIn,
    member: Dpo,
    session: SessionDep,
    ledger: LedgerDep,
) -> MemberNameOut:
    """Name a legal entity (or rename it) in the members' directory, off the ledger. 404: no
    member holds the key; 422: the key is a resident's pseudonym, which gets no name."""
    return directory.set_name_of_member(session, ledger, member_id, body)


_DOCUMENT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "the document",
        "content": {
            "text/markdown": {"schema": {"type": "string"}},
            PDF: {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


def _records(request: Request, session: Session) -> RecordsOfProcessing:
    return processing.records_of_processing(
        session, request.app.state.settings, request.app.state.ledger
    )


@router.get(
    "/dpo/records-of-processing",
    response_model=RecordsOfProcessing,
    responses={200: {"content": {"text/markdown": {"schema": {"type": "string"}}}}},
)
def records_of_processing(
    member: Dpo,
    session: SessionDep,
    request: Request,
    format: Annotated[Literal["json", "md"], Query(description="JSON, or Markdown")] = "json",
) -> Any:
    """GDPR Art. 30(1), generated: the controller and its DPO, each dataset's purposes,
    categories, recipients (from the ledger) and retention, transfers, the security measures
    the system runs, the ledger's own processing; `missing` lists what the controller must
    still give (`civis-vault controller set`)."""
    record = _records(request, session)
    if format == "md":
        return document(processing.processing_document(record), "records-of-processing", "md")
    return record


@router.get("/dpo/dpia", response_class=Response, responses=_DOCUMENT_RESPONSES)
def dpia(
    member: Dpo,
    session: SessionDep,
    request: Request,
    format: Annotated[Literal["md", "pdf"], Query(description="Markdown or PDF")] = "md",
) -> Response:
    """The data protection impact assessment (Art. 35) drafted from the registry, the ledger
    and the measures the system runs, with blanks for the DPO to complete and sign."""
    doc = build_dpia(session, request.app.state.settings, request.app.state.ledger)
    return document(doc, "dpia", format)
