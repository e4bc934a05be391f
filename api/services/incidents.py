"""Personal data breaches (GDPR Art. 33, 34): the DPO's register of incidents.

An incident opens with the time the controller became aware of the breach; its deadline to
notify the supervisory authority is that time + 72 hours (Art. 33(1)), fixed when opened. What
the DPO learns and does is appended to its timeline (`IncidentFact`, append-only in the
database): the contents Art. 33(3) asks for (nature, categories, approximate numbers,
consequences, measures), the risk assessment, the notification, the communication to the
subjects (Art. 34), the reasons for a late notification. An incident closes once notified, or
once its risk was assessed unlikely (Art. 33(1): no notification then, only the record).

Nothing here names a subject: the subjects affected are derived when asked
(api/services/affected.py), so an erasure leaves no list behind (invariant 7). Free text
refuses anything shaped like a key (64 hex characters), a subject's pseudonym being one; a
member's key has its own field, checked against the ledger to be a legal entity's.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.http.errors import ApiError
from api.http.schemas import Line, Prose, PublicKeyHex, StrictIn, TimeIn, UuidIn
from vault.models import Incident, IncidentFact

if TYPE_CHECKING:
    from api.services.gateway import LedgerGateway

NOTIFY_WITHIN = dt.timedelta(hours=72)
# An open incident not notified this close to its deadline is an audit finding.
NEARING = dt.timedelta(hours=24)
# A discovery time a little ahead of the server's clock is a clock's skew, not a prophecy.
CLOCK_SKEW = dt.timedelta(minutes=5)
TEXT_MAX = 4000
INCIDENTS_LISTED_MAX = 1000
# A key or a pseudonym written out: free text names nobody (the module docstring says why).
_KEY_LIKE = re.compile(r"[0-9a-fA-F]{64}")
# The roles a reported member key may hold: a resident's key is their pseudonym.
_MEMBER_ROLES = frozenset({"provider", "consumer", "partner", "vault", "dpo", "validator"})

FactKind = Literal[
    "nature",
    "categories",
    "approximate_numbers",
    "consequences",
    "measures",
    "risk",
    "delay_reasons",
    "notified",
    "communicated",
    "note",
]
Risk = Literal["unlikely", "risk", "high"]
# The kinds whose entry is a text: what it says is the entry.
_TEXT_KINDS = frozenset({"nature", "categories", "consequences", "measures", "delay_reasons"})


class IncidentNotFound(ApiError):
    status = 404
    title = "Incident not found"


class InvalidIncident(ApiError):
    status = 422
    title = "Invalid incident"


class IncidentClosed(ApiError):
    status = 409
    title = "Incident closed"


class NotificationMissing(ApiError):
    status = 409
    title = "Notification missing"


class IncidentIn(StrictIn):
    title: Annotated[
        Line,
        Field(
            min_length=1,
            max_length=200,
            description="what happened, in a line (no key or pseudonym in it)",
        ),
    ]
    discovered_at: Annotated[
        TimeIn,
        Field(
            description="when the controller became aware of the breach; the 72-hour "
            "deadline runs from it"
        ),
    ]
    member: Annotated[
        PublicKeyHex | None,
        Field(description="the ledger key of the member concerned (a key reported stolen)"),
    ] = None
    dataset_id: Annotated[UuidIn | None, Field(description="the dataset concerned")] = None
    window_start: Annotated[TimeIn | None, Field(description="the breach began")] = None
    window_end: Annotated[TimeIn | None, Field(description="the breach ended")] = None


class FactIn(StrictIn):
    kind: FactKind
    text: Annotated[Prose, Field(min_length=1, max_length=TEXT_MAX)] | None = None
    at: Annotated[
        TimeIn | None,
        Field(description="when it happened (a notification sent earlier); default now"),
    ] = None
    subjects: Annotated[
        int | None,
        Field(ge=0, le=10**12, description="approximate number of subjects (approximate_numbers)"),
    ] = None
    records: Annotated[
        int | None,
        Field(ge=0, le=10**15, description="approximate number of records (approximate_numbers)"),
    ] = None
    risk: Annotated[Risk | None, Field(description="the risk assessed (kind `risk`)")] = None


class CloseIn(StrictIn):
    summary: Annotated[Prose, Field(min_length=1, max_length=TEXT_MAX)] | None = None


class FactOut(BaseModel):
    n: int = Field(description="the entry's place in the timeline, from 1")
    kind: FactKind
    at: dt.datetime
    recorded_at: dt.datetime
    author: str
    text: str | None
    subjects: int | None
    records: int | None
    risk: Risk | None


class IncidentOut(BaseModel):
    id: uuid.UUID
    title: str
    state: Literal["open", "closed"]
    discovered_at: dt.datetime
    deadline_at: dt.datetime = Field(description="discovered_at + 72 h (GDPR Art. 33(1))")
    opened_at: dt.datetime
    opened_by: str
    member: str | None
    dataset_id: uuid.UUID | None
    window_start: dt.datetime | None
    window_end: dt.datetime | None
    risk: Risk | None
    notified_at: dt.datetime | None
    closed_at: dt.datetime | None
    timeline: list[FactOut] = Field(default_factory=list)


class FindingOut(BaseModel):
    code: str = Field(
        description="incident-notification-due (under 24 h left), "
        "incident-notification-overdue, incident-notified-late-without-reasons"
    )
    detail: str
    incident: uuid.UUID


class IncidentList(BaseModel):
    incidents: list[IncidentOut]
    findings: list[FindingOut]


def _free(text: str | None, field: str) -> None:
    if text is not None and _KEY_LIKE.search(text):
        raise InvalidIncident(
            f"{field} names a key or a pseudonym (64 hex characters): free text names nobody; "
            "a member's key goes in `member`, the subjects affected are derived when asked"
        )


def _utc(when: dt.datetime) -> dt.datetime:
    return when.replace(tzinfo=dt.UTC) if when.tzinfo is None else when.astimezone(dt.UTC)


def _reported_member(ledger: LedgerGateway | None, member: str) -> None:
    """A reported key must be a legal entity's (or a founder's) on the ledger, never a
    resident's: a resident's key is their pseudonym, which the incident would keep."""
    if ledger is None:
        raise InvalidIncident("naming a member needs the ledger, to check whose key it is")
    entry = ledger.query("member", key=bytes.fromhex(member))["result"]
    if entry is None or entry["role"] not in _MEMBER_ROLES:
        raise InvalidIncident(
            "member is not the key of a member of the cooperative other than a resident (a "
            "resident's key is their pseudonym: use dataset_id and the time window instead)"
        )


def open_incident(
    session: Session,
    ledger: LedgerGateway | None,
    body: IncidentIn,
    *,
    opened_by: str,
    now: dt.datetime,
) -> IncidentOut:
    discovered = _utc(body.discovered_at)
    if discovered > now + CLOCK_SKEW:
        raise InvalidIncident("discovered_at is in the future")
    start, end = (None if t is None else _utc(t) for t in (body.window_start, body.window_end))
    if start is not None and end is not None and end < start:
        raise InvalidIncident("window_end is before window_start")
    _free(body.title, "title")
    if body.member is not None:
        _reported_member(ledger, body.member)
    incident = Incident(
        id=uuid.uuid4(),
        title=body.title,
        discovered_at=discovered,
        deadline_at=discovered + NOTIFY_WITHIN,
        opened_at=now,
        opened_by=opened_by,
        member=body.member,
        dataset_id=body.dataset_id,
        window_start=start,
        window_end=end,
        state="open",
    )
    session.add(incident)
    session.flush()
    return incident_out(session, incident)


def _incident(session: Session, incident_id: uuid.UUID, *, lock: bool = False) -> Incident:
    query = select(Incident).where(Incident.id == incident_id)
    found = session.scalars(query.with_for_update() if lock else query).one_or_none()
    if found is None:
        raise IncidentNotFound(f"no incident {incident_id}")
    return found


def _checked_fact(fact: FactIn) -> None:
    """What each kind needs, beyond the shape."""
    if fact.kind in _TEXT_KINDS and fact.text is None:
        raise InvalidIncident(f"a `{fact.kind}` entry needs its text")
    if fact.kind == "approximate_numbers" and fact.subjects is None and fact.records is None:
        raise InvalidIncident("approximate_numbers needs subjects, records or both")
    if (fact.kind == "risk") != (fact.risk is not None):
        raise InvalidIncident("`risk` is given with a `risk` entry, and only with one")
    if fact.kind == "risk" and fact.text is None:
        raise InvalidIncident("a risk assessment gives its reasons in `text`")
    if fact.kind != "approximate_numbers" and (fact.subjects, fact.records) != (None, None):
        raise InvalidIncident("subjects and records belong to an approximate_numbers entry")
    if fact.kind == "note" and fact.text is None:
        raise InvalidIncident("a note needs its text")
    _free(fact.text, "text")


def add_fact(
    session: Session, incident_id: uuid.UUID, fact: FactIn, *, author: str, now: dt.datetime
) -> FactOut:
    """Append an entry to an open incident's timeline; a risk or a notification updates the
    incident's header (the latest risk; the first notification's time)."""
    _checked_fact(fact)
    incident = _incident(session, incident_id, lock=True)
    if incident.state != "open":
        raise IncidentClosed(f"incident {incident_id} is closed: its timeline is final")
    at = now if fact.at is None else _utc(fact.at)
    if at > now + CLOCK_SKEW:
        raise InvalidIncident("at is in the future")
    if at < incident.discovered_at and fact.kind in ("notified", "communicated"):
        raise InvalidIncident("a notification cannot precede the discovery")
    entry = IncidentFact(
        incident_id=incident.id,
        kind=fact.kind,
        at=at,
        recorded_at=now,
        author=author,
        text=fact.text,
        subjects=fact.subjects,
        records=fact.records,
        risk=fact.risk,
    )
    session.add(entry)
    if fact.kind == "risk":
        incident.risk = fact.risk
    if fact.kind == "notified" and incident.notified_at is None:
        incident.notified_at = at
    session.flush()
    n = len(_facts(session, incident.id))
    return _fact_out(n, entry)


def close_incident(
    session: Session, incident_id: uuid.UUID, body: CloseIn, *, author: str, now: dt.datetime
) -> IncidentOut:
    """Close an incident that was notified, or whose risk was assessed unlikely (then no
    notification is due: Art. 33(1); the record of it is, Art. 33(5))."""
    incident = _incident(session, incident_id, lock=True)
    if incident.state != "open":
        raise IncidentClosed(f"incident {incident_id} is already closed")
    if incident.notified_at is None and incident.risk != "unlikely":
        raise NotificationMissing(
            "record the notification to the supervisory authority (a `notified` entry), or a "
            "risk assessment `unlikely` with its reasons, before closing"
        )
    if body.summary is not None:
        summary = FactIn(kind="note", text=body.summary)
        add_fact(session, incident_id, summary, author=author, now=now)
    incident.state = "closed"
    incident.closed_at = now
    session.flush()
    return incident_out(session, incident)


def _facts(session: Session, incident_id: uuid.UUID) -> list[IncidentFact]:
    query = select(IncidentFact).where(IncidentFact.incident_id == incident_id)
    return list(session.scalars(query.order_by(IncidentFact.id)))


def _fact_out(n: int, f: IncidentFact) -> FactOut:
    return FactOut(
        n=n,
        kind=f.kind,  # type: ignore[arg-type]  # the table's check holds it to FactKind
        at=f.at,
        recorded_at=f.recorded_at,
        author=f.author,
        text=f.text,
        subjects=f.subjects,
        records=f.records,
        risk=f.risk,  # type: ignore[arg-type]
    )


def incident_out(session: Session, incident: Incident, *, timeline: bool = True) -> IncidentOut:
    facts = _facts(session, incident.id) if timeline else []
    return IncidentOut(
        id=incident.id,
        title=incident.title,
        state=incident.state,  # type: ignore[arg-type]
        discovered_at=incident.discovered_at,
        deadline_at=incident.deadline_at,
        opened_at=incident.opened_at,
        opened_by=incident.opened_by,
        member=incident.member,
        dataset_id=incident.dataset_id,
        window_start=incident.window_start,
        window_end=incident.window_end,
        risk=incident.risk,  # type: ignore[arg-type]
        notified_at=incident.notified_at,
        closed_at=incident.closed_at,
        timeline=[_fact_out(i, f) for i, f in enumerate(facts, 1)],
    )


def get_incident(session: Session, incident_id: uuid.UUID) -> IncidentOut:
    return incident_out(session, _incident(session, incident_id))


def list_incidents(
    session: Session, state: Literal["open", "closed", "all"], now: dt.datetime
) -> IncidentList:
    """Incidents by deadline, soonest first (without their timelines), and the findings."""
    query = select(Incident).order_by(Incident.deadline_at, Incident.id)
    if state != "all":
        query = query.where(Incident.state == state)
    rows = list(session.scalars(query.limit(INCIDENTS_LISTED_MAX)))
    return IncidentList(
        incidents=[incident_out(session, i, timeline=False) for i in rows],
        findings=incident_findings(session, now),
    )


# -- the deadline and the audit ----------------------------------------------------------------


def time_left(deadline: dt.datetime, now: dt.datetime) -> str:
    """`41 h 12 min left`, or `overdue by 3 h 05 min`: what the page and the findings say."""
    seconds = int((deadline - now).total_seconds())
    hours, minutes = divmod(abs(seconds) // 60, 60)
    span = f"{hours} h {minutes:02d} min"
    return f"{span} left" if seconds > 0 else f"overdue by {span}"


def incident_findings(session: Session, now: dt.datetime) -> list[FindingOut]:
    """Incidents nearing or past their 72 hours without a notification (unless assessed
    unlikely to result in a risk), and incidents notified late without the reasons for the
    delay Art. 33(1) asks for."""
    pending = select(Incident).where(
        Incident.state == "open",
        Incident.notified_at.is_(None),
        Incident.risk.is_distinct_from("unlikely"),
        Incident.deadline_at <= now + NEARING,
    )
    findings = []
    for i in session.scalars(pending.order_by(Incident.deadline_at, Incident.id)):
        overdue = i.deadline_at <= now
        findings.append(
            FindingOut(
                code="incident-notification-overdue" if overdue else "incident-notification-due",
                detail=f"incident “{i.title}” is not notified to the supervisory authority: "
                f"{time_left(i.deadline_at, now)} of the 72 hours from its discovery",
                incident=i.id,
            )
        )
    late = select(Incident).where(Incident.notified_at > Incident.deadline_at)
    for i in session.scalars(late.order_by(Incident.deadline_at, Incident.id)):
        if not any(f.kind == "delay_reasons" for f in _facts(session, i.id)):
            findings.append(
                FindingOut(
                    code="incident-notified-late-without-reasons",
                    detail=f"incident “{i.title}” was notified after its 72 hours and its "
                    "timeline gives no reasons for the delay (Art. 33(1))",
                    incident=i.id,
                )
            )
    return findings


def open_incidents(session: Session) -> list[Incident]:
    """The open incidents, soonest deadline first (the DPO page's list)."""
    query = select(Incident).where(Incident.state == "open")
    return list(session.scalars(query.order_by(Incident.deadline_at, Incident.id)))
