"""The dashboards: the metropolis's impact statistics and a partner's redemptions, as JSON
under /v1/dashboards and as pages under /dashboards.

Impact statistics (a consumer: the metropolis): every view runs one open projection access
per dataset under the purpose `impact-statistics`, recorded on the ledger, and publishes only
k-anonymous cells (api/services/impact.py). A partner sees the redemptions at its own offers,
from the ledger's counters: no personal data.

The pages sign in as the DPO page does (api/http/routes/dpo.py says why a form and a cookie):
the member posts its API key once to `POST /dashboards/session`, gets a `__Host-` session
cookie of its own (a dashboard session never opens the DPO page: its rows are checked against
the dashboard roles), and lands on the dashboard of its role.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy.orm import Session

from api.http.bodies import BoundedJsonRoute
from api.http.dashboard_pages import render_impact_page, render_partner_page, render_sign_in_page
from api.http.deps import (
    Consumer,
    KeyStoreDep,
    LedgerDep,
    SessionDep,
    require_role,
    strict_query,
    strict_query_with_lists,
)
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
from api.services.dashboards import (
    DATASETS_MAX,
    ImpactDashboard,
    PartnerDashboard,
    impact_dashboard,
    impact_datasets,
    ledger_redemptions,
    partner_dashboard,
)
from api.services.dpo_sessions import session_member
from api.services.gateway import LedgerGateway, LedgerUnavailable
from api.services.identity import ledger_identity
from api.services.keys import KeyExpired, Member, authenticate
from vault.keys import KeyStore

router = APIRouter(prefix="/v1", tags=["dashboards"], route_class=BoundedJsonRoute)
page_router = APIRouter(include_in_schema=False)

Partner = Annotated[Member, Depends(require_role("partner"))]
WEEK_PATTERN = r"^\d{4}-W(0[1-9]|[1-4]\d|5[0-3])$"
WeekFrom = Annotated[
    str | None,
    Query(alias="from", pattern=WEEK_PATTERN, description="first ISO week, e.g. 2026-W40"),
]
WeekTo = Annotated[
    str | None, Query(alias="to", pattern=WEEK_PATTERN, description="last ISO week (inclusive)")
]
# The page's week form sends empty fields as `from=&to=`: there, empty means no bound.
PageWeek = Annotated[str | None, Query(pattern=r"^(\d{4}-W(0[1-9]|[1-4]\d|5[0-3]))?$")]
# The dashboard each role signs in to.
PAGES = {"consumer": "/dashboards/impact", "partner": "/dashboards/partner"}
SESSION_COOKIE = "__Host-civis-dashboard"


@router.get("/dashboards/impact", dependencies=[Depends(strict_query_with_lists("dataset"))])
def impact(
    member: Consumer,
    ledger: LedgerDep,
    session: SessionDep,
    store: KeyStoreDep,
    dataset: Annotated[
        list[uuid.UUID] | None,
        Query(
            max_length=DATASETS_MAX,
            description="a dataset to read (repeat for several); none: every dataset "
            "registered for the purpose impact-statistics",
        ),
    ] = None,
    week_from: WeekFrom = None,
    week_to: WeekTo = None,
) -> ImpactDashboard:
    """km cycled, litres saved and euros of local produce per district and ISO week.

    Each dataset is read through an open projection access under the purpose
    `impact-statistics`, recorded on the ledger (the receipts are in `accesses`), so only
    consenting subjects' records count. A cell with fewer than k distinct subjects (the
    governance parameter `k_anonymity`), or to which some dataset contributes fewer than k,
    is suppressed: no sums, no count. Totals count shown cells only.
    """
    return _impact(ledger, session, store, member, dataset, week_from, week_to)


def _impact(
    ledger: LedgerGateway,
    session: Session,
    store: KeyStore,
    member: Member,
    datasets: list[uuid.UUID] | None,
    week_from: str | None,
    week_to: str | None,
) -> ImpactDashboard:
    consumer = ledger_identity(member)
    chosen = datasets if datasets else impact_datasets(session)
    return impact_dashboard(ledger, session, store, consumer, chosen, week_from, week_to)


@router.get("/dashboards/partner", dependencies=[Depends(strict_query)])
def partner(member: Partner, ledger: LedgerDep) -> PartnerDashboard:
    """Coupons spent at the caller's own offers, per day and category (from the ledger)."""
    return partner_dashboard(ledger_redemptions(ledger), ledger_identity(member))


# -- the pages and their session ------------------------------------------------------------

_SIGN_IN_DETAIL = (
    "sign in with the member's API key: `Authorization: Bearer …`, or the form of the page "
    "in a browser"
)


def _refuse(request: Request, status: int, message: str | None = None) -> Response:
    return refusal(
        request, status, message, form=render_sign_in_page, sign_in_detail=_SIGN_IN_DETAIL
    )


def _page_member(request: Request, session: Session, role: str) -> Member | Response:
    """The caller of a page if its role is `role`, else the refusal to answer."""
    try:
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer "):
            member = authenticate(session, header[7:].strip())
        else:
            token = request.cookies.get(SESSION_COOKIE)
            now = dt.datetime.now(dt.UTC)
            member = None if token is None else session_member(session, token, now, tuple(PAGES))
    except KeyExpired as exc:
        return _refuse(request, 401, exc.detail)
    if member is None:
        return _refuse(request, 401)
    if member.role != role:
        return _refuse(request, 403, f"This dashboard is for the role {role}.")
    if prefers_json(request.headers.get("accept")):
        return _refuse(
            request, 406, f"this page is HTML; the same figures as JSON: GET /v1{PAGES[role]}"
        )
    return member


def _ledger_of(request: Request) -> LedgerGateway:
    ledger: LedgerGateway | None = request.app.state.ledger
    if ledger is None:
        raise LedgerUnavailable("this instance runs without a ledger")
    return ledger


@page_router.get("/dashboards/impact", response_class=HTMLResponse)
def impact_page(
    request: Request,
    session: SessionDep,
    store: KeyStoreDep,
    week_from: Annotated[PageWeek, Query(alias="from")] = None,
    week_to: Annotated[PageWeek, Query(alias="to")] = None,
) -> Response:
    """The metropolis's page: every dataset registered for impact-statistics."""
    member = _page_member(request, session, "consumer")
    if isinstance(member, Response):
        return member
    ledger = _ledger_of(request)
    data = _impact(ledger, session, store, member, None, week_from or None, week_to or None)
    return HTMLResponse(render_impact_page(data), headers=PAGE_HEADERS)


@page_router.get("/dashboards/partner", response_class=HTMLResponse)
def partner_page(request: Request, session: SessionDep) -> Response:
    """A partner's page: redemptions at its own offers."""
    member = _page_member(request, session, "partner")
    if isinstance(member, Response):
        return member
    reader = ledger_redemptions(_ledger_of(request))
    data = partner_dashboard(reader, ledger_identity(member))
    return HTMLResponse(render_partner_page(data), headers=PAGE_HEADERS)


@page_router.post("/dashboards/session")
def sign_in(
    request: Request, session: SessionDep, api_key: Annotated[str, Depends(form_key)]
) -> Response:
    """Trade a dashboard member's API key (posted once, in the body) for a session cookie."""
    try:
        member, key = key_of(session, api_key, PAGES)
    except SignInRefused as refused:
        message = refused.detail or "Not a valid key of the metropolis or of a partner."
        return _refuse(request, 401, message)
    return signed_in(PAGES[member.role], SESSION_COOKIE, session, key)


@page_router.post("/dashboards/logout")
def sign_out(request: Request, session: SessionDep) -> Response:
    """End the session on the server (its row goes), then clear the cookie in the browser."""
    return signed_out(request, session, SESSION_COOKIE, "/dashboards/impact")
