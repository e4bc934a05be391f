"""Personal data breaches (GDPR Art. 33, 34) under /v1/dpo/incidents: the DPO only.

The DPO opens an incident with the time the breach became known (the 72-hour deadline runs
from it), appends what it learns and does to its timeline, asks which subjects it affects
(derived from the ledger's access record and the vault, when asked), exports the notification
draft, and closes it once notified (or assessed unlikely to result in a risk). The services
hold the rules: api/services/incidents.py, affected.py, breach_notice.py.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi import Path as FastApiPath
from fastapi.responses import Response

from api.http.bodies import BoundedJsonRoute
from api.http.deps import Dpo, LedgerDep, SessionDep, SettingsDep, strict_query
from api.http.schemas import PublicKeyHex
from api.services import incidents
from api.services.affected import SUBJECTS_PAGE_MAX, AffectedSubjects, Scope, affected_subjects
from api.services.breach_notice import notification_draft
from api.services.incidents import (
    CloseIn,
    FactIn,
    FactOut,
    IncidentIn,
    IncidentList,
    IncidentOut,
)

router = APIRouter(
    prefix="/v1", tags=["dpo"], dependencies=[Depends(strict_query)], route_class=BoundedJsonRoute
)

IncidentId = Annotated[uuid.UUID, FastApiPath(description="the incident's id")]
MARKDOWN = "text/markdown; charset=utf-8"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _utc(when: dt.datetime | None) -> dt.datetime | None:
    """A time without a zone is UTC, as the ledger's are."""
    if when is None or when.tzinfo is not None:
        return when
    return when.replace(tzinfo=dt.UTC)


@router.post("/dpo/incidents", status_code=201)
def open_incident(
    body: IncidentIn, member: Dpo, session: SessionDep, request: Request
) -> IncidentOut:
    """Open an incident: its deadline to notify the supervisory authority is `discovered_at`
    + 72 h. `member` (a key reported stolen) must be a legal entity's or a founder's on the
    ledger, never a resident's; free text names no key or pseudonym (422)."""
    return incidents.open_incident(
        session, request.app.state.ledger, body, opened_by=member.member_id, now=_now()
    )


@router.get("/dpo/incidents")
def list_incidents(
    member: Dpo, session: SessionDep, state: Literal["open", "closed", "all"] = "open"
) -> IncidentList:
    """Incidents, soonest deadline first (timelines left out), with the audit's findings:
    `incident-notification-due` (under 24 hours left, not notified),
    `incident-notification-overdue`, `incident-notified-late-without-reasons`."""
    return incidents.list_incidents(session, state, _now())


@router.get("/dpo/incidents/{incident_id}")
def get_incident(incident_id: IncidentId, member: Dpo, session: SessionDep) -> IncidentOut:
    """An incident with its whole timeline."""
    return incidents.get_incident(session, incident_id)


@router.post("/dpo/incidents/{incident_id}/facts", status_code=201)
def add_fact(incident_id: IncidentId, body: FactIn, member: Dpo, session: SessionDep) -> FactOut:
    """Append to an open incident's timeline (never changed afterwards): `nature`,
    `categories`, `consequences`, `measures`, `delay_reasons` and `note` with their text;
    `approximate_numbers` with `subjects` and/or `records`; `risk` with `risk` and its reasons;
    `notified` (the supervisory authority was notified, at `at`) and `communicated` (the
    subjects were, Art. 34). 409 once the incident is closed."""
    return incidents.add_fact(session, incident_id, body, author=member.member_id, now=_now())


@router.post("/dpo/incidents/{incident_id}/close")
def close_incident(
    incident_id: IncidentId, body: CloseIn, member: Dpo, session: SessionDep
) -> IncidentOut:
    """Close an incident once notified, or once its risk was assessed `unlikely` (409
    otherwise); a `summary` is appended to its timeline as a note."""
    return incidents.close_incident(session, incident_id, body, author=member.member_id, now=_now())


@router.get("/dpo/incidents/{incident_id}/affected-subjects")
def incident_affected_subjects(
    incident_id: IncidentId,
    member: Dpo,
    session: SessionDep,
    ledger: LedgerDep,
    by_member: Annotated[
        PublicKeyHex | None,
        Query(alias="member", description="a consumer's key (default: the incident's)"),
    ] = None,
    dataset_id: Annotated[uuid.UUID | None, Query(description="default: the incident's")] = None,
    since: Annotated[dt.datetime | None, Query(description="default: window_start")] = None,
    until: Annotated[dt.datetime | None, Query(description="default: window_end")] = None,
    include_held: Annotated[
        bool, Query(description="with a dataset: every subject whose records it holds")
    ] = False,
    after: Annotated[str | None, Query(pattern=r"^[0-9a-f]{64}$")] = None,
    limit: Annotated[int, Query(ge=1, le=SUBJECTS_PAGE_MAX)] = 100,
) -> AffectedSubjects:
    """The subjects the breach affects, derived now from the ledger's access record, the
    vault's record of decryptions and (with `include_held`) the records it holds: counts per
    dataset and a page of pseudonyms. Nothing of it is stored with the incident, so an erased
    subject is named by no answer after their erasure. Each parameter not given is the
    incident's own (member, dataset, window)."""
    incident = incidents.get_incident(session, incident_id)
    scope = Scope(
        member=by_member or incident.member,
        dataset_id=dataset_id or incident.dataset_id,
        since=_utc(since) or incident.window_start,
        until=_utc(until) or incident.window_end,
        include_held=include_held,
    )
    return affected_subjects(session, ledger, scope, after=after, limit=limit)


@router.get(
    "/dpo/incidents/{incident_id}/notification-draft",
    response_class=Response,
    responses={200: {"content": {"text/markdown": {"schema": {"type": "string"}}}}},
)
def incident_notification_draft(
    incident_id: IncidentId,
    member: Dpo,
    session: SessionDep,
    ledger: LedgerDep,
    settings: SettingsDep,
) -> Response:
    """The notification to the supervisory authority as a Markdown draft (Art. 33(3):
    nature, categories and approximate numbers, the DPO's contact, likely consequences,
    measures; the reasons for a delay), and the communication to the subjects (Art. 34) when
    the risk is high. Filled from the timeline and the affected-subjects query (counts only);
    what is missing is marked `[to complete: ...]`."""
    incident = incidents.get_incident(session, incident_id)
    scope = Scope(
        member=incident.member,
        dataset_id=incident.dataset_id,
        since=incident.window_start,
        until=incident.window_end,
    )
    affected = affected_subjects(session, ledger, scope, limit=1)
    status = None
    if incident.member is not None:
        entry = ledger.query("member", key=bytes.fromhex(incident.member))["result"]
        status = None if entry is None else str(entry["status"])
    text = notification_draft(
        incident, affected, dpo_contact=settings.dpo_contact, member_status=status, now=_now()
    )
    return Response(text, media_type=MARKDOWN)
