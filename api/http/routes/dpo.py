"""The DPO's audits over HTTP, as JSON under /v1/dpo and as a page at /dpo.

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

The page: the DPO posts the API key ONCE in a form (`POST /dpo/session`) and gets a session
cookie (api/services/dpo_sessions.py says why and how). The cookie is `__Host-` prefixed,
`Secure`, `HttpOnly` (no script reads it) and `SameSite=Strict` (no other site's form or link
carries it, so no CSRF). `POST /dpo/logout` ends the session on the server. The page's
downloads (`/dpo/records-of-processing.json|md`, `/dpo/dpia.md|pdf`) ride the same session.

The register of the subjects' requests has its own routes (api/http/routes/requests.py).
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi import Path as FastApiPath
from fastapi.responses import HTMLResponse, Response
from pydantic import StringConstraints
from sqlalchemy.orm import Session

from api.http.bodies import BoundedJsonRoute
from api.http.deps import Dpo, LedgerDep, SessionDep, strict_query
from api.http.dpo_page import page_data, render_dpo_page, render_login_page
from api.http.errors import prefers_json
from api.http.page_sessions import (
    PAGE_HEADERS,
    SignInRefused,
    form_key,
    key_of,
    refusal,
    signed_in,
    signed_out,
)
from api.http.schemas import PUBLIC_KEY_HEX, PublicKeyHex
from api.services import directory, outbox_admin
from api.services import records_of_processing as processing
from api.services.access_log import AccessFilter, AccessLog, read_access_log
from api.services.directory import MemberList, MemberNameOut, NameIn
from api.services.documents import Document, to_markdown
from api.services.dpia import build_dpia
from api.services.dpo_sessions import (
    SESSION_COOKIE,
    session_member,
)
from api.services.keys import KeyExpired, Member, authenticate
from api.services.ledger_verification import (
    VERIFY_BLOCKS_MAX,
    LedgerVerification,
    verify_ledger,
)
from api.services.outbox_admin import OutboxFactOut, OutboxOut
from api.services.pdf import render_pdf
from api.services.records_of_processing import RecordsOfProcessing
from api.services.retention_audit import RetentionAuditOut, run_retention_audit
from vault.errors import NotFound

router = APIRouter(
    prefix="/v1", tags=["dpo"], dependencies=[Depends(strict_query)], route_class=BoundedJsonRoute
)
page_router = APIRouter(include_in_schema=False)

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
    after: Annotated[int, Query(ge=0, le=2**62)] = 0,
    limit: Annotated[int, Query(ge=1, le=ACCESS_LIMIT_MAX)] = 100,
) -> AccessLog:
    """Every access the consent contracts decided, from the ledger, oldest first.

    Each line is a committed decision: who asked (consumer), for which dataset and purpose,
    which subjects were delivered. `next_after` is set when more lines may follow (the page
    is full, or this request read its share of the ledger and stopped).
    """
    wanted = AccessFilter(
        subject=subject, consumer=consumer, purpose=purpose, since=since, until=until
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
    `destroyed-commitment-key-alive`, `expiry-not-recorded` (data side, vault/audit.py);
    `expiry-not-on-ledger`, `destroyed-commitment-not-on-ledger`, `commitments-root-mismatch`,
    `ledger-record-missing`, `ledger-erasure-not-applied` (against the ledger);
    `request-overdue`, `request-answered-late` (a subject's request past its Art. 12(3)
    deadline), `processing-record-incomplete` (an Art. 30 field to set; whole audit only).
    """
    return run_retention_audit(
        request.app.state.sessions, ledger, dataset_id, request.app.state.key_store
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


MARKDOWN = "text/markdown; charset=utf-8"
PDF = "application/pdf"
_DOCUMENT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "the document",
        "content": {
            "text/markdown": {"schema": {"type": "string"}},
            PDF: {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


def _download(doc: Document, kind: str, fmt: str) -> Response:
    """A document as an attachment: Markdown or PDF, named after its kind and the day."""
    name = f"{kind}-{dt.datetime.now(dt.UTC):%Y-%m-%d}.{fmt}"
    headers = {"Content-Disposition": f'attachment; filename="{name}"', **PAGE_HEADERS}
    if fmt == "pdf":
        return Response(render_pdf(doc), media_type=PDF, headers=headers)
    return Response(to_markdown(doc), media_type=MARKDOWN, headers=headers)


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
        return _download(processing.processing_document(record), "records-of-processing", "md")
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
    return _download(doc, "dpia", format)


# -- the page and its session -------------------------------------------------------------


def _page_caller(request: Request, session: Session) -> Member | None:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return authenticate(session, header[7:].strip())
    token = request.cookies.get(SESSION_COOKIE)
    if token is None:
        return None
    return session_member(session, token, dt.datetime.now(dt.UTC))


# What a client that asked for JSON is told instead of the sign-in form.
_SIGN_IN_DETAIL = (
    "sign in with the Data Protection Officer's API key: `Authorization: Bearer …`, or the "
    "form of GET /dpo in a browser"
)
_JSON_ROUTES_DETAIL = (
    "this page is HTML; the same audits as JSON are GET /v1/dpo/access-log, "
    "/v1/dpo/retention-audit, /v1/dpo/ledger-verification, /v1/dpo/outbox, "
    "/v1/dpo/records-of-processing and /v1/dpo/requests (the DPIA: /v1/dpo/dpia)"
)


def _refuse(request: Request, status: int, message: str | None = None) -> Response:
    return refusal(request, status, message, form=render_login_page, sign_in_detail=_SIGN_IN_DETAIL)


def _page_dpo(request: Request, session: Session) -> Response | None:
    """None for the signed-in DPO; the refusal anyone else gets (the sign-in form, 401; a
    non-DPO key, 403; problem+json to a client that asks for JSON)."""
    try:
        member = _page_caller(request, session)
    except KeyExpired as exc:  # the form again, saying why, rather than a bare problem
        return _refuse(request, 401, exc.detail)
    if member is None:
        return _refuse(request, 401)
    if member.role != "dpo":
        return _refuse(request, 403, "This key does not belong to the Data Protection Officer.")
    return None


@page_router.get("/dpo", response_class=HTMLResponse)
def dpo_page(request: Request, session: SessionDep) -> Response:
    """The DPO's page; anyone else gets the sign-in form (401), a non-DPO key a 403.

    A client that asks for JSON gets those refusals as problem+json, and the DPO a 406 naming
    the JSON routes: the page itself exists only as HTML.
    """
    refused = _page_dpo(request, session)
    if refused is not None:
        return refused
    if prefers_json(request.headers.get("accept")):
        return _refuse(request, 406, _JSON_ROUTES_DETAIL)
    state = request.app.state
    html = render_dpo_page(page_data(state.sessions, state.ledger, session, state.key_store))
    return HTMLResponse(html, headers=PAGE_HEADERS)


@page_router.get("/dpo/records-of-processing.{fmt}")
def dpo_page_records(
    request: Request, session: SessionDep, fmt: Annotated[str, FastApiPath()]
) -> Response:
    """The page's download of the records of processing (JSON or Markdown), for the
    signed-in DPO's session: a link cannot carry the API key."""
    refused = _page_dpo(request, session)
    if refused is not None:
        return refused
    record = _records(request, session)
    if fmt == "md":
        return _download(processing.processing_document(record), "records-of-processing", "md")
    if fmt == "json":
        name = f"records-of-processing-{dt.datetime.now(dt.UTC):%Y-%m-%d}.json"
        headers = {"Content-Disposition": f'attachment; filename="{name}"', **PAGE_HEADERS}
        return Response(
            record.model_dump_json(indent=2), media_type="application/json", headers=headers
        )
    raise NotFound("the records of processing download as .json or .md")


@page_router.get("/dpo/dpia.{fmt}")
def dpo_page_dpia(
    request: Request, session: SessionDep, fmt: Annotated[str, FastApiPath()]
) -> Response:
    """The page's download of the DPIA draft (Markdown or PDF), for the signed-in DPO."""
    refused = _page_dpo(request, session)
    if refused is not None:
        return refused
    if fmt not in ("md", "pdf"):
        raise NotFound("the DPIA downloads as .md or .pdf")
    return _download(
        build_dpia(session, request.app.state.settings, request.app.state.ledger), "dpia", fmt
    )


@page_router.post("/dpo/session")
def dpo_sign_in(
    request: Request, session: SessionDep, api_key: Annotated[str, Depends(form_key)]
) -> Response:
    """Trade the DPO's API key (posted once, in the body) for a session cookie."""
    try:
        _, key = key_of(session, api_key, ("dpo",))
    except SignInRefused as refused:
        message = refused.detail or "Not a valid key of the Data Protection Officer."
        return _refuse(request, 401, message)
    return signed_in("/dpo", SESSION_COOKIE, session, key)


@page_router.post("/dpo/logout")
def dpo_sign_out(request: Request, session: SessionDep) -> Response:
    """End the session on the server (its row goes), then clear the cookie in the browser."""
    return signed_out(request, session, SESSION_COOKIE, "/dpo")
