"""The DPO's console at /dpo: the overview, the drill-downs, the subjects, the work queues,
the members, and every download, for a person in a browser.

Sign-in: the DPO posts the API key ONCE in a form (`POST /dpo/session`) and gets a session
cookie (api/services/dpo_sessions.py says why and how). The cookie is `__Host-` prefixed,
`Secure`, `HttpOnly` (no script reads it) and `SameSite=Strict` (no other site's form or link
carries it, so no CSRF: the subject search is the one other form, and it posts here too).
`POST /dpo/logout` ends the session on the server. Every view and download rides the same
session (a link cannot carry the API key); a client may send the key as a Bearer header
instead. Anyone else gets the sign-in form (401), a non-DPO key a 403, and a client that asks
for JSON those refusals as problem+json (and the DPO a 406 naming the JSON routes).

Pseudonyms in URLs: a subject's key is only ever a whole path segment or query value (the
access log masks every 64-hex run, api/http/middleware.py); the search, where a person types a
part of one, posts it in a body, which no log keeps.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi import Path as FastApiPath
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from sqlalchemy.orm import Session

from api.http import dpo_page, dpo_views
from api.http.attachments import JSON, attachment, csv_file, document
from api.http.deps import SessionDep, in_standing
from api.http.dpo_page import render_login_page
from api.http.errors import Forbidden, prefers_json
from api.http.page_sessions import (
    CONSOLE_HEADERS,
    PAGE_HEADERS,
    STATIC,
    SignInRefused,
    form_field,
    form_key,
    key_of,
    refusal,
    signed_in,
    signed_out,
)
from api.http.schemas import PUBLIC_KEY_HEX
from api.services import console, decryptions, export_package, requests
from api.services import records_of_processing as processing
from api.services.directory import members as member_list
from api.services.dpia import build_dpia
from api.services.dpo_sessions import SESSION_COOKIE, session_member
from api.services.export import Sources
from api.services.gateway import LedgerGateway, LedgerUnavailable
from api.services.keys import KeyExpired, Member, authenticate
from api.services.replicas import ledger_status
from api.services.retention_audit import schedule_of
from vault.errors import NotFound

page_router = APIRouter(include_in_schema=False)

SubjectId = Annotated[str, FastApiPath(pattern=PUBLIC_KEY_HEX)]
# What a client that asked for JSON is told instead of the sign-in form.
_SIGN_IN_DETAIL = (
    "sign in with the Data Protection Officer's API key: `Authorization: Bearer …`, or the "
    "form of GET /dpo in a browser"
)
_JSON_ROUTES_DETAIL = (
    "this page is HTML; the same audits as JSON are GET /v1/dpo/access-log, "
    "/v1/dpo/retention-audit, /v1/dpo/ledger-verification, /v1/dpo/outbox, "
    "/v1/dpo/records-of-processing, /v1/dpo/members and /v1/dpo/requests (the DPIA: "
    "/v1/dpo/dpia)"
)


def _caller(request: Request, session: Session) -> Member | None:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return authenticate(session, header[7:].strip())
    token = request.cookies.get(SESSION_COOKIE)
    if token is None:
        return None
    return session_member(session, token, dt.datetime.now(dt.UTC))


def _in_standing(request: Request, member: Member | None) -> Member | None:
    """The caller, refused (MemberSuspended, KeyReplaced) once governance suspended its key or
    moved it, as every /v1 route refuses it."""
    return None if member is None else in_standing(request, member)


def _refuse(request: Request, status: int, message: str | None = None) -> Response:
    return refusal(request, status, message, form=render_login_page, sign_in_detail=_SIGN_IN_DETAIL)


def _dpo(request: Request, session: Session) -> Member | Response:
    """The signed-in DPO, or the refusal anyone else gets."""
    try:
        member = _in_standing(request, _caller(request, session))
    except KeyExpired as exc:  # the form again, saying why, rather than a bare problem
        return _refuse(request, 401, exc.detail)
    except Forbidden as exc:  # suspended or replaced by governance
        return _refuse(request, 403, exc.detail)
    if member is None:
        return _refuse(request, 401)
    if member.role != "dpo":
        return _refuse(request, 403, "This key does not belong to the Data Protection Officer.")
    return member


def _html_for_dpo(request: Request, session: Session) -> Response | None:
    """None when the DPO may be answered HTML; else the refusal or the 406 for JSON."""
    who = _dpo(request, session)
    if isinstance(who, Response):
        return who
    if prefers_json(request.headers.get("accept")):
        return _refuse(request, 406, _JSON_ROUTES_DETAIL)
    return None


def _html(text: str) -> HTMLResponse:
    return HTMLResponse(text, headers=CONSOLE_HEADERS)


def _ledger(request: Request) -> LedgerGateway:
    ledger: LedgerGateway | None = request.app.state.ledger
    if ledger is None:
        raise LedgerUnavailable("this instance runs without a ledger")
    return ledger


# -- the overview and its figures ----------------------------------------------------------


@page_router.get("/dpo", response_class=HTMLResponse)
def overview(
    request: Request, session: SessionDep, days: Annotated[int | None, Query()] = None
) -> Response:
    """The overview of the period (7, 30 or 90 days): tiles, charts, erasures, the ledger."""
    refused = _html_for_dpo(request, session)
    if refused is not None:
        return refused
    state = request.app.state
    data = dpo_page.overview(
        state.sessions,
        state.ledger,
        session,
        state.key_store,
        dpo_page.period(days),
        schedule_of(state.settings),
    )
    return _html(dpo_page.render_overview(data, dpo_page.overview_names(session, data)))


def _one_of(value: str, allowed: tuple[str, ...], detail: str) -> None:
    """A path segment the route names a fixed set of: anything else is no such download
    (checked after the caller, so a stranger learns nothing of what exists)."""
    if value not in allowed:
        raise NotFound(detail)


@page_router.get("/dpo/figures/{chart}.csv")
def figures(
    request: Request,
    session: SessionDep,
    chart: str,
    days: Annotated[int | None, Query()] = None,
) -> Response:
    """One chart's figures as CSV."""
    who = _dpo(request, session)
    if isinstance(who, Response):
        return who
    _one_of(chart, dpo_page.CHART_IDS, "no such chart")
    today = dt.datetime.now(dt.UTC).date()
    charts, _ = dpo_page.charts_for(session, request.app.state.ledger, today, dpo_page.period(days))
    found = [c for c in charts if c.id == chart]
    if not found:
        raise LedgerUnavailable("the access figures need the ledger")
    return csv_file(dpo_page.figures_csv(found[0]), chart)


# -- accesses and blocks --------------------------------------------------------------------


def _access_query(
    since: str | None = Query(None, max_length=10),
    until: str | None = Query(None, max_length=10),
    purpose: str | None = Query(None, max_length=64),
    consumer: str | None = Query(None, max_length=64),
    dataset: str | None = Query(None, max_length=36),
    subject: str | None = Query(None, max_length=64),
    outcome: str | None = Query(None, max_length=8),
    after: int = Query(0, ge=0, le=2**62),
) -> dpo_views.AccessQuery:
    return dpo_views.access_query(since, until, purpose, consumer, dataset, subject, outcome, after)


AccessQueryDep = Annotated[dpo_views.AccessQuery, Depends(_access_query)]


@page_router.get("/dpo/accesses", response_class=HTMLResponse)
def accesses(request: Request, session: SessionDep, q: AccessQueryDep) -> Response:
    """The access decisions the filters select, paged, each with its ledger receipt."""
    refused = _html_for_dpo(request, session)
    if refused is not None:
        return refused
    return _html(dpo_views.render_accesses(session, _ledger(request), q))


@page_router.get("/dpo/accesses.csv")
def accesses_csv(request: Request, session: SessionDep, q: AccessQueryDep) -> Response:
    who = _dpo(request, session)
    if isinstance(who, Response):
        return who
    return csv_file(dpo_views.accesses_csv(session, _ledger(request), q), "accesses")


@page_router.get("/dpo/blocks/{height}", response_class=HTMLResponse)
def block(
    request: Request,
    session: SessionDep,
    height: Annotated[int, FastApiPath(ge=1, le=2**62)],
    tx: Annotated[str, Query(max_length=64, pattern=r"^[0-9a-f]*$")] = "",
) -> Response:
    """One block: its header, certificate check and transactions (`tx` marks one)."""
    refused = _html_for_dpo(request, session)
    if refused is not None:
        return refused
    ledger = _ledger(request)
    tip = ledger_status(ledger).height
    if tip is None or height > tip:
        raise NotFound(f"no block at height {height} yet")
    return _html(dpo_views.render_block(session, ledger, height, tip, tx))


# -- subjects -------------------------------------------------------------------------------


@page_router.get("/dpo/subjects", response_class=HTMLResponse)
def subjects(request: Request, session: SessionDep) -> Response:
    """The subject search form."""
    refused = _html_for_dpo(request, session)
    if refused is not None:
        return refused
    return _html(dpo_views.render_subject_search(session, None, []))


@page_router.post("/dpo/subjects/search", response_class=HTMLResponse)
def subject_search(
    request: Request, session: SessionDep, text: Annotated[str, Depends(form_field("q"))]
) -> Response:
    """Pseudonyms starting with what the DPO typed (posted, so no log keeps it): one match
    opens its view, several are listed."""
    refused = _html_for_dpo(request, session)
    if refused is not None:
        return refused
    matches = console.find_subjects(session, text)
    if len(matches) == 1:
        return RedirectResponse(f"/dpo/subjects/{matches[0]}", 303, headers=PAGE_HEADERS)
    return _html(dpo_views.render_subject_search(session, text, matches))


def _subject_view(request: Request, session: Session, subject_id: str) -> dict[str, object]:
    state = request.app.state
    return console.subject_view(Sources(session, state.key_store, _ledger(request)), subject_id)


@page_router.get("/dpo/subjects/{subject_id}", response_class=HTMLResponse)
def subject(request: Request, session: SessionDep, subject_id: SubjectId) -> Response:
    """What the vault and the ledger hold about one pseudonym, nothing decrypted."""
    refused = _html_for_dpo(request, session)
    if refused is not None:
        return refused
    return _html(dpo_views.render_subject(session, _subject_view(request, session, subject_id)))


@page_router.get("/dpo/subjects/{subject_id}/summary.csv")
def subject_csv(request: Request, session: SessionDep, subject_id: SubjectId) -> Response:
    who = _dpo(request, session)
    if isinstance(who, Response):
        return who
    view = _subject_view(request, session, subject_id)
    return csv_file(dpo_views.subject_csv(session, view), f"subject-{subject_id[:12]}")


@page_router.get("/dpo/subjects/{subject_id}/package.json")
def subject_package(request: Request, session: SessionDep, subject_id: SubjectId) -> Response:
    """The Art. 15 answer: the subject's whole export package, records decrypted, with the
    ledger's proofs; every read recorded (invariant 10), as the JSON route records it."""
    who = _dpo(request, session)
    if isinstance(who, Response):
        return who
    ledger = _ledger(request)
    src = Sources(session, request.app.state.key_store, ledger)
    package = export_package.build(src, [subject_id], ledger.chain_id)
    decryptions.record_export_reads(session, who, package["records"])
    body = bytes(JSONResponse(package).body)
    return attachment(body, JSON, f"art15-{subject_id[:12]}", "json")


# -- queues, erasures, members, documents ---------------------------------------------------


def _findings(request: Request, session: Session) -> list[dict[str, str]]:
    state = request.app.state
    now = dt.datetime.now(dt.UTC)
    return dpo_page.findings_of(
        state.sessions, state.ledger, session, state.key_store, now, schedule_of(state.settings)
    )


@page_router.get("/dpo/queues", response_class=HTMLResponse)
def work_queues(request: Request, session: SessionDep) -> Response:
    """The request register, the refused facts, the findings and the open breaches."""
    refused = _html_for_dpo(request, session)
    if refused is not None:
        return refused
    q = dpo_views.queues(session, _findings(request, session))
    return _html(dpo_views.render_queues(session, q))


@page_router.get("/dpo/queues/{name}.csv")
def queue_csv(request: Request, session: SessionDep, name: str) -> Response:
    who = _dpo(request, session)
    if isinstance(who, Response):
        return who
    _one_of(name, tuple(dpo_views.QUEUE_COLUMNS), "no such queue")
    q = dpo_views.queues(session, _findings(request, session) if name == "findings" else [])
    return csv_file(dpo_views.queue_csv(q, name), name)


def _erasure_query(
    day: str | None = Query(None, max_length=10),
    kind: str | None = Query(None, max_length=16),
    month: str | None = Query(None, max_length=7),
) -> dpo_views.ErasureQuery:
    return dpo_views.erasure_query(day, kind, month)


ErasureQueryDep = Annotated[dpo_views.ErasureQuery, Depends(_erasure_query)]


@page_router.get("/dpo/erasures", response_class=HTMLResponse)
def erasures(request: Request, session: SessionDep, q: ErasureQueryDep) -> Response:
    """Erasures and expiries with their ledger receipts; what is held until when."""
    refused = _html_for_dpo(request, session)
    if refused is not None:
        return refused
    return _html(dpo_views.render_erasures(session, q))


@page_router.get("/dpo/erasures.csv")
def erasures_csv(request: Request, session: SessionDep, q: ErasureQueryDep) -> Response:
    who = _dpo(request, session)
    if isinstance(who, Response):
        return who
    return csv_file(dpo_views.erasures_csv(session, q), "erasures")


@page_router.get("/dpo/retention.csv")
def retention_csv(request: Request, session: SessionDep, q: ErasureQueryDep) -> Response:
    who = _dpo(request, session)
    if isinstance(who, Response):
        return who
    return csv_file(dpo_views.retention_csv(session, q), "retention")


@page_router.get("/dpo/members", response_class=HTMLResponse)
def members(request: Request, session: SessionDep) -> Response:
    """The cooperative's members but the residents, by name, with their keys."""
    refused = _html_for_dpo(request, session)
    if refused is not None:
        return refused
    return _html(dpo_views.render_members(member_list(session, _ledger(request))))


@page_router.get("/dpo/members.csv")
def members_csv(request: Request, session: SessionDep) -> Response:
    who = _dpo(request, session)
    if isinstance(who, Response):
        return who
    return csv_file(dpo_views.members_csv(member_list(session, _ledger(request))), "members")


@page_router.get("/dpo/audit.{fmt}")
def audit(request: Request, session: SessionDep, fmt: str) -> Response:
    """The audit's findings as a PDF to file, or as CSV."""
    who = _dpo(request, session)
    if isinstance(who, Response):
        return who
    _one_of(fmt, ("pdf", "csv"), "the audit downloads as .pdf or .csv")
    found = _findings(request, session)
    if fmt == "csv":
        return csv_file(dpo_views.queue_csv({"findings": found}, "findings"), "audit")
    now = dt.datetime.now(dt.UTC)
    doc = console.audit_document(found, requests.register_summary(session, now), now)
    return document(doc, "audit", "pdf")


@page_router.get("/dpo/records-of-processing.{fmt}")
def records_of_processing(request: Request, session: SessionDep, fmt: str) -> Response:
    """The records of processing (Art. 30) as JSON, Markdown or PDF."""
    who = _dpo(request, session)
    if isinstance(who, Response):
        return who
    _one_of(fmt, ("json", "md", "pdf"), "the records of processing download as .json, .md or .pdf")
    state = request.app.state
    record = processing.records_of_processing(session, state.settings, state.ledger)
    if fmt == "json":
        return attachment(record.model_dump_json(indent=2), JSON, "records-of-processing", "json")
    return document(processing.processing_document(record), "records-of-processing", fmt)


@page_router.get("/dpo/dpia.{fmt}")
def dpia(request: Request, session: SessionDep, fmt: str) -> Response:
    """The DPIA draft (Art. 35) as Markdown or PDF."""
    who = _dpo(request, session)
    if isinstance(who, Response):
        return who
    _one_of(fmt, ("md", "pdf"), "the DPIA downloads as .md or .pdf")
    state = request.app.state
    return document(build_dpia(session, state.settings, state.ledger), "dpia", fmt)


@page_router.get("/dpo/static/{name}")
def static(name: str) -> Response:
    """The console's script, style and the vendored Chart.js: public code, from this origin
    (the CSP allows no other), cached for good under a name that changes with the content."""
    found = STATIC.get(name)
    if found is None:
        raise NotFound("no such file")
    body, media_type, _ = found
    headers = {
        "Cache-Control": "public, max-age=31536000, immutable",
        "X-Content-Type-Options": "nosniff",
        "Cross-Origin-Resource-Policy": "same-origin",
    }
    return Response(body, media_type=media_type, headers=headers)


# -- the session ----------------------------------------------------------------------------


@page_router.post("/dpo/session")
def sign_in(
    request: Request, session: SessionDep, api_key: Annotated[str, Depends(form_key)]
) -> Response:
    """Trade the DPO's API key (posted once, in the body) for a session cookie."""
    try:
        member, key = key_of(session, api_key, ("dpo",))
        in_standing(request, member)  # a key governance suspended or replaced opens nothing
    except SignInRefused as refused:
        message = refused.detail or "Not a valid key of the Data Protection Officer."
        return _refuse(request, 401, message)
    except Forbidden as exc:
        return _refuse(request, 403, exc.detail)
    return signed_in("/dpo", SESSION_COOKIE, session, key)


@page_router.post("/dpo/logout")
def sign_out(request: Request, session: SessionDep) -> Response:
    """End the session on the server (its row goes), then clear the cookie in the browser."""
    return signed_out(request, session, SESSION_COOKIE, "/dpo")
