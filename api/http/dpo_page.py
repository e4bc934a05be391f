"""The DPO's page: server-rendered HTML (Jinja2) with inline SVG charts, no script from anywhere.

Why server-rendered and script-free: the page shows personal-data processing facts to one
privileged user; it must work offline (no CDN), leak nothing to third parties, and be cheap to
audit. Charts are SVG bars computed here. Data comes from the vault audits (retention timeline,
erasures, findings) and from the ledger (accesses per purpose and consumer, replica health):
`page_data` gathers it from the services, which compute every figure; the rest lays it out.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session, sessionmaker

from api.http.page_sessions import TEMPLATES
from api.services.access_log import count_accesses_since
from api.services.replicas import ledger_status
from api.services.retention_audit import run_retention_audit
from vault import audit

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


def page_data(
    sessions: sessionmaker[Session],
    gateway: LedgerGateway | None,
    session: Session,
    schedule: audit.FinalErasureSchedule | None = None,
) -> DpoPageData:
    """What the page shows; the ledger's parts are left empty when there is no ledger."""
    today = dt.datetime.now(dt.UTC).date()
    data = DpoPageData(
        today=today,
        timeline=audit.retention_timeline(session, today),
        erasures=audit.erasure_log(session),
        findings=[],
    )
    if gateway is None:
        data.findings = [
            {"code": f.code, "detail": f.detail}
            for f in audit.retention_audit(session, today, schedule=schedule).findings
        ]
        return data
    report = run_retention_audit(sessions, gateway, None, schedule)
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
