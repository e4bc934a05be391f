"""The DPO's audits over HTTP, as JSON under /v1/dpo and as a page at /dpo.

Only the DPO role reaches any of it. Each route hands one audit to its service:

- access log (api/services/access_log.py): the ledger's committed access records (the
  contracts write one for every decision);
- retention audit (api/services/retention_audit.py): the vault's data-side audit AND its
  cross-check against the ledger's erasure records;
- ledger verification (api/services/ledger_verification.py): every replica's chain as that
  replica serves it, checked and compared;
- records of processing, Art. 30 (api/services/records_of_processing.py);
- outbox (api/services/outbox_admin.py): the vault facts the ledger has not recorded, those
  it refused first: a refused fact is set aside so it holds up nothing, and waits for the DPO.

Long scans are bounded (a limit on everything): each answer says where to continue.

The page: the DPO posts the API key ONCE in a form (`POST /dpo/session`) and gets a session
cookie (api/services/dpo_sessions.py says why and how). The cookie is `__Host-` prefixed,
`Secure`, `HttpOnly` (no script reads it) and `SameSite=Strict` (no other site's form or link
carries it, so no CSRF). `POST /dpo/logout` ends the session on the server.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi import Path as FastApiPath
from fastapi.responses import HTMLResponse, Response
from pydantic import StringConstraints
from sqlalchemy.orm import Session

from api.http.bodies import BoundedJsonRoute
from api.http.deps import Dpo, LedgerDep, SessionDep, in_standing, strict_query
from api.http.dpo_page import page_data, render_dpo_page, render_login_page
from api.http.errors import Forbidden, prefers_json
from api.http.page_sessions import (
    PAGE_HEADERS,
    SignInRefused,
    form_key,
    key_of,
    refusal,
    signed_in,
    signed_out,
)
from api.http.schemas import PublicKeyHex
from api.services import outbox_admin
from api.services import records_of_processing as processing
from api.services.access_log import AccessFilter, AccessLog, read_access_log
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
from api.services.records_of_processing import RecordsOfProcessing
from api.services.retention_audit import RetentionAuditOut, run_retention_audit

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
    `ledger-record-missing`, `ledger-erasure-not-applied` (against the ledger).
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


@router.get("/dpo/records-of-processing")
def records_of_processing(
    member: Dpo, ledger: LedgerDep, session: SessionDep
) -> RecordsOfProcessing:
    """GDPR Art. 30(1), generated from the dataset registry; recipients from the ledger."""
    return processing.records_of_processing(session, ledger)


# -- the page and its session -------------------------------------------------------------


def _page_caller(request: Request, session: Session) -> Member | None:
    """The page's caller by header or cookie, refused (MemberSuspended, KeyReplaced) once
    governance suspended its key or moved it, as every /v1 route refuses it."""
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        member = authenticate(session, header[7:].strip())
    else:
        token = request.cookies.get(SESSION_COOKIE)
        if token is None:
            return None
        member = session_member(session, token, dt.datetime.now(dt.UTC))
    return None if member is None else in_standing(request, member)


# What a client that asked for JSON is told instead of the sign-in form.
_SIGN_IN_DETAIL = (
    "sign in with the Data Protection Officer's API key: `Authorization: Bearer …`, or the "
    "form of GET /dpo in a browser"
)
_JSON_ROUTES_DETAIL = (
    "this page is HTML; the same audits as JSON are GET /v1/dpo/access-log, "
    "/v1/dpo/retention-audit, /v1/dpo/ledger-verification, /v1/dpo/outbox and "
    "/v1/dpo/records-of-processing"
)


def _refuse(request: Request, status: int, message: str | None = None) -> Response:
    return refusal(request, status, message, form=render_login_page, sign_in_detail=_SIGN_IN_DETAIL)


@page_router.get("/dpo", response_class=HTMLResponse)
def dpo_page(request: Request, session: SessionDep) -> Response:
    """The DPO's page; anyone else gets the sign-in form (401), a non-DPO key a 403.

    A client that asks for JSON gets those refusals as problem+json, and the DPO a 406 naming
    the JSON routes: the page itself exists only as HTML.
    """
    try:
        member = _page_caller(request, session)
    except KeyExpired as exc:  # the form again, saying why, rather than a bare problem
        return _refuse(request, 401, exc.detail)
    except Forbidden as exc:  # suspended or replaced by governance
        return _refuse(request, 403, exc.detail)
    if member is None:
        return _refuse(request, 401)
    if member.role != "dpo":
        return _refuse(request, 403, "This key does not belong to the Data Protection Officer.")
    if prefers_json(request.headers.get("accept")):
        return _refuse(request, 406, _JSON_ROUTES_DETAIL)
    state = request.app.state
    html = render_dpo_page(page_data(state.sessions, state.ledger, session, state.key_store))
    return HTMLResponse(html, headers=PAGE_HEADERS)


@page_router.post("/dpo/session")
def dpo_sign_in(
    request: Request, session: SessionDep, api_key: Annotated[str, Depends(form_key)]
) -> Response:
    """Trade the DPO's API key (posted once, in the body) for a session cookie."""
    try:
        member, key = key_of(session, api_key, ("dpo",))
        in_standing(request, member)
    except SignInRefused as refused:
        message = refused.detail or "Not a valid key of the Data Protection Officer."
        return _refuse(request, 401, message)
    except Forbidden as exc:  # suspended or replaced by governance
        return _refuse(request, 403, exc.detail)
    return signed_in("/dpo", SESSION_COOKIE, session, key)


@page_router.post("/dpo/logout")
def dpo_sign_out(request: Request, session: SessionDep) -> Response:
    """End the session on the server (its row goes), then clear the cookie in the browser."""
    return signed_out(request, session, SESSION_COOKIE, "/dpo")
