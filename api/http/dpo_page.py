"""The DPO's page: server-rendered HTML (Jinja2) with inline SVG charts, no script from anywhere.

Why server-rendered and script-free: the page shows personal-data processing facts to one
privileged user; it must work offline (no CDN), leak nothing to third parties, and be cheap to
audit. Charts are SVG bars computed here. Data comes from the vault audits (retention timeline,
erasures, findings, the subjects' requests overdue or soon due), the register of personal data
breaches (open incidents, each with its 72-hour deadline and the time left) and from the ledger
(accesses per purpose and consumer, replica health): `page_data` gathers it from the services,
which compute every figure; the rest lays it out.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session, sessionmaker

from api.http.page_sessions import TEMPLATES
from api.services import requests
from api.services.access_log import count_accesses_since
from api.services.incidents import NEARING, incident_findings, open_incidents, time_left
from api.services.replicas import ledger_status
from api.services.retention_audit import run_retention_audit
from vault import audit
from vault.keys import KeyStore
from vault.models import SubjectRequest

if TYPE_CHECKING:
    from api.services.gateway import LedgerGateway

PAGE_DAYS = 30  # the access charts cover this many days, today included


@dataclass(frozen=True, slots=True)
class Bar:
    label: str
    value: int
    x: int
    width: int
    y: int
    height: int


def bar_chart(series: list[tuple[str, int]], *, width: int = 560, height: int = 160) -> list[Bar]:
    """Lay out vertical bars for an SVG chart (labels are escaped by the template)."""
    if not series:
        return []
    top = max(v for _, v in series) or 1
    slot = width // len(series)
    bars = []
    for i, (label, value) in enumerate(series):
        h = round((height - 20) * value / top)
        bars.append(Bar(label, value, i * slot + 4, max(slot - 8, 2), height - 20 - h, h))
    return bars


@dataclass
class DpoPageData:
    today: dt.date
    timeline: list[dict[str, Any]]
    erasures: list[dict[str, Any]]
    findings: list[dict[str, str]]
    accesses_by_purpose: list[tuple[str, int]] = field(default_factory=list)
    accesses_by_consumer: list[tuple[str, int]] = field(default_factory=list)
    accesses_by_day: list[tuple[str, int]] = field(default_factory=list)
    replicas: list[dict[str, Any]] = field(default_factory=list)
    ledger_height: int | None = None
    # open personal data breaches, soonest deadline first, and the incident audit's findings
    incidents: list[dict[str, Any]] = field(default_factory=list)
    incident_findings: list[dict[str, str]] = field(default_factory=list)
    # The subjects' requests still pending: past their deadline, and due within SOON_DUE.
    requests_overdue: list[dict[str, Any]] = field(default_factory=list)
    requests_soon: list[dict[str, Any]] = field(default_factory=list)


def incident_rows(session: Session, now: dt.datetime) -> list[dict[str, Any]]:
    """The open incidents as the page lists them: each deadline and the time left to it."""
    return [
        {
            "id": str(i.id),
            "title": i.title,
            "discovered": i.discovered_at.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M"),
            "deadline": i.deadline_at.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "left": "notified" if i.notified_at is not None else time_left(i.deadline_at, now),
            "risk": i.risk or "not assessed",
            # not notified and under a day left (or past): the page marks it
            "urgent": i.notified_at is None
            and i.risk != "unlikely"
            and i.deadline_at - now <= NEARING,
        }
        for i in open_incidents(session)
    ]


def request_rows(
    pending: list[SubjectRequest], now: dt.datetime
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Pending requests as the page lists them: (overdue, due within SOON_DUE)."""
    overdue, soon = [], []
    for r in pending:
        row = {
            "id": str(r.id),
            "kind": r.kind,
            "subject": r.subject[:16] + ("…" if len(r.subject) > 16 else ""),
            "dataset_id": "" if r.dataset_id is None else str(r.dataset_id),
            "received": f"{r.received_at:%Y-%m-%d %H:%M}",
            "due": f"{r.due_at:%Y-%m-%d %H:%M}",
            "state": r.state,
            # days late, or days left
            "days": (now - r.due_at).days if r.due_at < now else (r.due_at - now).days,
        }
        if r.due_at < now:
            overdue.append(row)
        elif r.due_at < now + requests.SOON_DUE:
            soon.append(row)
    return overdue, soon


def page_data(
    sessions: sessionmaker[Session],
    gateway: LedgerGateway | None,
    session: Session,
    store: KeyStore | None = None,
    schedule: audit.FinalErasureSchedule | None = None,
) -> DpoPageData:
    """What the page shows; the ledger's parts are left empty when there is no ledger. With
    the key store, the audit re-derives destroyed commitments (`vault.audit`)."""
    now = dt.datetime.now(dt.UTC)
    today = now.date()
    data = DpoPageData(
        today=today,
        timeline=audit.retention_timeline(session, today),
        erasures=audit.erasure_log(session),
        findings=[],
    )
    data.incidents = incident_rows(session, now)
    data.incident_findings = [
        {"code": f.code, "detail": f.detail} for f in incident_findings(session, now)
    ]
    pending = requests.pending_due_before(session, now + requests.SOON_DUE)
    data.requests_overdue, data.requests_soon = request_rows(pending, now)
    if gateway is None:
        found = audit.retention_audit(session, today, store=store, schedule=schedule).findings
        found += audit.accountability_findings(session, now)
        data.findings = [{"code": f.code, "detail": f.detail} for f in found]
        return data
    report = run_retention_audit(sessions, gateway, None, store, schedule)
    data.findings = [{"code": f.code, "detail": f.detail} for f in report.findings]
    since = dt.datetime.combine(today - dt.timedelta(days=PAGE_DAYS - 1), dt.time(), dt.UTC)
    counts = count_accesses_since(gateway, since)
    data.accesses_by_purpose = sorted(counts.by_purpose.items())
    data.accesses_by_consumer = counts.by_consumer.most_common(12)
    data.accesses_by_day = sorted(counts.by_day.items())
    status = ledger_status(gateway)
    data.ledger_height = status.height
    data.replicas = [
        {
            "id": r.id,
            "college": r.college,
            "height": r.height if r.height is not None else "—",
            "view": r.view if r.view is not None else "—",
            "status": "up" if r.reachable else "down",
        }
        for r in status.replicas
    ]
    return data


def render_dpo_page(data: DpoPageData) -> str:
    records_by_day: dict[str, int] = {}
    for row in data.timeline:
        records_by_day[row["day"]] = records_by_day.get(row["day"], 0) + int(row["records"])
    return TEMPLATES.get_template("dpo.html").render(
        d=data,
        retention_bars=bar_chart(sorted(records_by_day.items())),
        purpose_bars=bar_chart(data.accesses_by_purpose),
        consumer_bars=bar_chart(data.accesses_by_consumer),
        day_bars=bar_chart(data.accesses_by_day),
        pending=[e for e in data.erasures if e["status"] == "pending"],
        refused=[e for e in data.erasures if e["status"] == "refused"],
        completed=[e for e in data.erasures if e["status"] == "recorded"],
    )


def render_login_page(message: str | None = None) -> str:
    """The sign-in form: the DPO's API key goes in a POST body, never in a URL.

    `message` is one of the route's fixed sentences, never anything the caller sent.
    """
    return TEMPLATES.get_template("dpo_login.html").render(message=message)
