"""The register of data subjects' requests (GDPR Art. 12(3)) over HTTP: a subject reads their
own, the DPO reads everyone's by deadline, extends one (with reasons) and pulls the subjects'
signed requests from the ledger on demand. What the register holds and how a deadline is
counted: api/services/requests.py.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query
from pydantic import BaseModel, Field

from api.http.bodies import BoundedJsonRoute
from api.http.deps import (
    CurrentMember,
    Dpo,
    LedgerDep,
    SessionDep,
    strict_query_with_lists,
    subject_or_dpo,
)
from api.http.schemas import PUBLIC_KEY_HEX, ReasonText, StrictIn
from api.services import requests
from api.services.requests import LIST_LIMIT_MAX, RequestOut
from ledger_bridge.contracts.vocabulary import RequestState

router = APIRouter(
    prefix="/v1",
    tags=["requests"],
    dependencies=[Depends(strict_query_with_lists("state"))],
    route_class=BoundedJsonRoute,
)


class SubjectRequestsOut(BaseModel):
    subject_id: str
    requests: list[RequestOut] = Field(description="newest first")


class RequestsPage(BaseModel):
    requests: list[RequestOut] = Field(description="by deadline, then id")
    next_after: uuid.UUID | None = Field(
        description="pass as `after` for the next page; null on the last"
    )


class ExtensionIn(StrictIn):
    reason: ReasonText = Field(
        description="why the request needs two further months (Art. 12(3)), as the subject "
        "is told; no personal data"
    )


class SyncOut(BaseModel):
    height: int = Field(description="the ledger height the register was compared with")
    opened: int = Field(description="requests found on the ledger and registered")
    closed: int = Field(description="requests the ledger shows fulfilled, closed")
    stale: bool = Field(
        description="the replica that answered lagged behind an erasure the vault saw "
        "recorded: nothing was changed, try again"
    )


def _as_utc(when: dt.datetime) -> dt.datetime:
    """A query time in UTC; a time without zone is UTC, as the ledger's."""
    if when.tzinfo is None:
        return when.replace(tzinfo=dt.UTC)
    try:
        return when.astimezone(dt.UTC)
    except OverflowError:  # beyond year 1 or 9999 in UTC: as far as a time goes
        edge = dt.datetime.min if when.year == dt.MINYEAR else dt.datetime.max
        return edge.replace(tzinfo=dt.UTC)


@router.get("/subjects/{subject_id}/requests")
def subject_requests(
    subject_id: Annotated[str, Path(pattern=PUBLIC_KEY_HEX)],
    member: CurrentMember,
    session: SessionDep,
) -> SubjectRequestsOut:
    """The subject's requests (access, rectification, erasure, restriction, objection,
    portability): when each was received, when it is due, how it ended, its ledger facts."""
    subject_or_dpo(member, subject_id)
    now = dt.datetime.now(dt.UTC)
    rows = requests.subject_requests(session, subject_id)
    return SubjectRequestsOut(
        subject_id=subject_id, requests=[requests.request_out(r, now) for r in rows]
    )


@router.get("/dpo/requests")
def dpo_requests(
    member: Dpo,
    session: SessionDep,
    state: Annotated[
        list[RequestState] | None, Query(description="any of these states (repeat it)")
    ] = None,
    due_before: Annotated[
        dt.datetime | None, Query(description="due before this time (ISO 8601; UTC if no zone)")
    ] = None,
    after: Annotated[uuid.UUID | None, Query(description="the previous page's next_after")] = None,
    limit: Annotated[int, Query(ge=1, le=LIST_LIMIT_MAX)] = 100,
) -> RequestsPage:
    """Every subject's requests by deadline: `?state=open&state=extended&due_before=<now>` are
    the overdue ones. A request answered after its deadline says `overdue` too."""
    now = dt.datetime.now(dt.UTC)
    rows = requests.dpo_requests(
        session,
        states=state,
        due_before=None if due_before is None else _as_utc(due_before),
        after=after,
        limit=limit,
    )
    return RequestsPage(
        requests=[requests.request_out(r, now) for r in rows],
        next_after=rows[-1].id if len(rows) == limit else None,
    )


@router.post("/dpo/requests/{request_id}/extension")
def extend_request(
    request_id: Annotated[uuid.UUID, Path()],
    body: ExtensionIn,
    member: Dpo,
    session: SessionDep,
) -> RequestOut:
    """Art. 12(3): extend an open request by two further months (due three months after
    receipt), with the reasons the subject is told. 409 once answered, once extended, or after
    its first month."""
    row = requests.extend_request(session, request_id, body.reason)
    return requests.request_out(row, dt.datetime.now(dt.UTC))


@router.post("/dpo/requests/sync")
def sync_requests(member: Dpo, session: SessionDep, ledger: LedgerDep) -> SyncOut:
    """Pull the subjects' signed requests (erasure requests) from the ledger into the register
    now, and close those the ledger shows fulfilled; the background jobs do it every minute."""
    report = requests.sync_ledger_requests(session, ledger)
    return SyncOut(
        height=report.height, opened=report.opened, closed=report.closed, stale=report.stale
    )
