"""The DPO's console, its overview: server-rendered HTML (Jinja2) with charts drawn by the
vendored Chart.js and one small script of the app's own, both served by the app itself.

Why server-rendered, with script only for the charts: the page shows personal-data
processing facts to one privileged user; it must work offline (no CDN), leak nothing to third
parties, and be cheap to audit. Every figure is in the HTML (a table beside each chart, the
totals in its heading), so the page reads without script, and a screen reader reads the
tables; the script draws the charts from a JSON data block (`type="application/json"`, never
run), writes each bar's value on it and follows a click on a bar to the list behind it. The
CSP allows script from this origin only, no inline script (`CONSOLE_HEADERS`).

The figures come from the services (api/services/console.py for the counts, the audits, the
registers); this module names them (members by the directory's names, datasets by theirs),
lays them out and links each to its drill-down. The other views are in dpo_views.py.
"""

from __future__ import annotations

import datetime as dt
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from api.http.page_sessions import TEMPLATES
from api.services import console, requests
from api.services.csv_export import to_csv
from api.services.directory import label, names
from api.services.gateway import LedgerGateway
from api.services.incidents import NEARING, incident_findings, open_incidents, time_left
from api.services.replicas import ledger_status
from api.services.retention_audit import run_retention_audit
from vault import audit
from vault.keys import KeyStore
from vault.models import REQUEST_PENDING_STATES, SubjectRequest

# The console's views, in the order of its navigation: (path, label, name).
NAV = (
    ("/dpo", "Overview", "overview"),
    ("/dpo/queues", "Work queues", "queues"),
    ("/dpo/accesses", "Accesses", "accesses"),
    ("/dpo/subjects", "Subjects", "subjects"),
    ("/dpo/erasures", "Erasures and retention", "erasures"),
    ("/dpo/members", "Members", "members"),
)
CHART_IDS = (
    "accesses-per-day",
    "accesses-per-purpose",
    "accesses-per-consumer",
    "erasures-per-day",
    "retention-outlook",
)
GRANTED, REFUSED = "#1f5f99", "#b4461b"  # blue and orange: told apart without colour vision
ERASED, EXPIRED, HELD = "#6a3d9a", "#2e7d4f", "#1f5f99"


def _ms_time(millis: Any) -> str:
    """A ledger time (milliseconds since the epoch) as a UTC time a person reads."""
    return f"{dt.datetime.fromtimestamp(int(millis) / 1000, dt.UTC):%Y-%m-%d %H:%M:%S}"


def _urlencode_set(params: dict[str, Any]) -> str:
    return urllib.parse.urlencode({k: v for k, v in params.items() if v not in (None, "")})


TEMPLATES.filters["ms_time"] = _ms_time
TEMPLATES.filters["urlencode_set"] = _urlencode_set


def render(template: str, **context: Any) -> str:
    return TEMPLATES.get_template(template).render(nav=NAV, **context)


def query(path: str, **params: Any) -> str:
    """`path` with the parameters that are set, URL-encoded."""
    kept = {k: v for k, v in params.items() if v not in (None, "")}
    return f"{path}?{urllib.parse.urlencode(kept)}" if kept else path


@dataclass
class Series:
    label: str
    values: list[int]
    colour: str
    links: list[str | None]


@dataclass
class Chart:
    """One chart: what the script draws and the figures table shows, with the same numbers."""

    id: str
    title: str
    unit: str
    x_title: str
    labels: list[str]
    series: list[Series]
    csv: str
    horizontal: bool = False
    stacked: bool = False
    keys: list[str] = field(default_factory=list)  # a label's full key, when it names one

    @property
    def total(self) -> int:
        return sum(sum(s.values) for s in self.series)

    def summary(self) -> str:
        """The chart in one sentence, for a screen reader (the table has the rest)."""
        parts = [f"{s.label} {sum(s.values)}" for s in self.series]
        return f"{self.title}: " + ", ".join(parts) + f"; {len(self.labels)} {self.x_title}"

    def data(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "labels": self.labels,
            "horizontal": self.horizontal,
            "stacked": self.stacked,
            "x_title": self.x_title,
            "unit": self.unit,
            "series": [
                {"label": s.label, "values": s.values, "colour": s.colour, "links": s.links}
                for s in self.series
            ],
        }


def _tally_series(
    tallies: list[console.Tally], links: list[dict[str, Any]], path: str
) -> list[Series]:
    return [
        Series(
            "granted",
            [t.granted for t in tallies],
            GRANTED,
            [query(path, **p, outcome="granted") for p in links],
        ),
        Series(
            "refused",
            [t.refused for t in tallies],
            REFUSED,
            [query(path, **p, outcome="refused") for p in links],
        ),
    ]


def access_charts(stats: console.AccessStats, known: dict[str, str], days: int) -> list[Chart]:
    """Per day (stacked), per purpose and per consumer (by name), refusals beside grants;
    each bar links to the decisions it counts."""
    span = {"since": stats.first.isoformat(), "until": stats.last.isoformat()}
    day_keys = list(stats.by_day)
    purposes = sorted(stats.by_purpose, key=lambda p: (-stats.by_purpose[p].total, p))
    consumers = sorted(stats.by_consumer, key=lambda c: (-stats.by_consumer[c].total, c))
    day_links = [{"since": d, "until": d} for d in day_keys]
    return [
        Chart(
            "accesses-per-day",
            "Access decisions per day",
            "decisions",
            "day (UTC)",
            day_keys,
            _tally_series([stats.by_day[d] for d in day_keys], day_links, "/dpo/accesses"),
            query("/dpo/figures/accesses-per-day.csv", days=days),
            stacked=True,
        ),
        Chart(
            "accesses-per-purpose",
            "Access decisions per purpose",
            "decisions",
            "purpose",
            purposes,
            _tally_series(
                [stats.by_purpose[p] for p in purposes],
                [{"purpose": p, **span} for p in purposes],
                "/dpo/accesses",
            ),
            query("/dpo/figures/accesses-per-purpose.csv", days=days),
            horizontal=True,
        ),
        Chart(
            "accesses-per-consumer",
            "Access decisions per consumer",
            "decisions",
            "consumer",
            [label(known, c) for c in consumers],
            _tally_series(
                [stats.by_consumer[c] for c in consumers],
                [{"consumer": c, **span} for c in consumers],
                "/dpo/accesses",
            ),
            query("/dpo/figures/accesses-per-consumer.csv", days=days),
            horizontal=True,
            keys=consumers,
        ),
    ]


def erasure_charts(
    series: dict[str, console.ErasureDay], outlook: list[tuple[str, int]], days: int
) -> list[Chart]:
    """Erasures and expiries per day; the records held by the month their retention ends."""
    day_keys = list(series)
    return [
        Chart(
            "erasures-per-day",
            "Erasures and expiries per day",
            "erasures and expiries",
            "day (UTC)",
            day_keys,
            [
                Series(
                    "erasures",
                    [series[d].erasures for d in day_keys],
                    ERASED,
                    [query("/dpo/erasures", day=d, kind="erasure.record") for d in day_keys],
                ),
                Series(
                    "expiries",
                    [series[d].expiries for d in day_keys],
                    EXPIRED,
                    [query("/dpo/erasures", day=d, kind="retention.expire") for d in day_keys],
                ),
            ],
            query("/dpo/figures/erasures-per-day.csv", days=days),
            stacked=True,
        ),
        Chart(
            "retention-outlook",
            "Records held, by the month their retention ends",
            "records",
            "month",
            [m for m, _ in outlook],
            [
                Series(
                    "records",
                    [n for _, n in outlook],
                    HELD,
                    [query("/dpo/erasures", month=m) for m, _ in outlook],
                )
            ],
            "/dpo/figures/retention-outlook.csv",
        ),
    ]


@dataclass
class Overview:
    today: dt.date
    days: int
    charts: list[Chart]
    kpis: list[dict[str, Any]]
    erasures: list[dict[str, Any]]
    replicas: list[dict[str, Any]]
    ledger_height: int | None
    complete: bool


def period(days: int | None) -> int:
    return days if days in console.PERIODS else console.DEFAULT_PERIOD


def charts_for(
    session: Session, gateway: LedgerGateway | None, today: dt.date, days: int
) -> tuple[list[Chart], console.AccessStats | None]:
    """Every chart of the overview; the access charts need the ledger."""
    outlook = console.retention_outlook(audit.retention_timeline(session, today, days_ahead=None))
    charts = erasure_charts(console.erasure_series(session, today, days), outlook, days)
    if gateway is None:
        return charts, None
    stats = console.access_stats(gateway, today, days)
    known = names(session, stats.by_consumer)
    return access_charts(stats, known, days) + charts, stats


def _kpis(
    session: Session,
    stats: console.AccessStats | None,
    findings: int,
    now: dt.datetime,
) -> list[dict[str, Any]]:
    """The tiles at the top: each a count, whether it needs the DPO now, and where it leads."""
    summary = requests.register_summary(session, now)
    pending = sum(
        n
        for states in summary.by_kind.values()
        for state, n in states.items()
        if state in REQUEST_PENDING_STATES
    )
    incidents = incident_rows(session, now)
    urgent = sum(1 for i in incidents if i["urgent"])
    total = stats.total if stats is not None else console.Tally()
    return [
        {"label": "access decisions granted", "value": total.granted, "href": "/dpo/accesses"},
        {
            "label": "access decisions refused",
            "value": total.refused,
            "href": query("/dpo/accesses", outcome="refused"),
        },
        {
            "label": f"requests pending, {summary.overdue} overdue",
            "value": pending,
            "href": "/dpo/queues#requests",
            "alert": summary.overdue > 0,
        },
        {
            "label": f"open breaches, {urgent} due within a day",
            "value": len(incidents),
            "href": "/dpo/queues#incidents",
            "alert": urgent > 0,
        },
        {
            "label": "audit findings",
            "value": findings,
            "href": "/dpo/queues#findings",
            "alert": findings > 0,
        },
    ]


def replica_rows(gateway: LedgerGateway) -> tuple[list[dict[str, Any]], int | None]:
    status = ledger_status(gateway)
    rows = [
        {
            "id": r.id,
            "college": r.college,
            "height": r.height if r.height is not None else "—",
            "view": r.view if r.view is not None else "—",
            "status": "up" if r.reachable else "down",
        }
        for r in status.replicas
    ]
    return rows, status.height


def findings_of(
    sessions: sessionmaker[Session],
    gateway: LedgerGateway | None,
    session: Session,
    store: KeyStore | None,
    now: dt.datetime,
    schedule: audit.FinalErasureSchedule | None = None,
) -> list[dict[str, str]]:
    """The audit's findings (the ledger cross-check too, with a ledger; the final-erasure
    schedule's, with it) and the incidents'."""
    if gateway is None:
        found = audit.retention_audit(session, now.date(), store=store, schedule=schedule).findings
        found += audit.accountability_findings(session, now)
        out = [{"code": f.code, "detail": f.detail} for f in found]
    else:
        report = run_retention_audit(sessions, gateway, None, store, schedule)
        out = [{"code": f.code, "detail": f.detail} for f in report.findings]
    return out + [{"code": f.code, "detail": f.detail} for f in incident_findings(session, now)]


def overview(
    sessions: sessionmaker[Session],
    gateway: LedgerGateway | None,
    session: Session,
    store: KeyStore | None,
    days: int,
    schedule: audit.FinalErasureSchedule | None = None,
) -> Overview:
    now = dt.datetime.now(dt.UTC)
    charts, stats = charts_for(session, gateway, now.date(), days)
    findings = findings_of(sessions, gateway, session, store, now, schedule)
    replicas, height = replica_rows(gateway) if gateway is not None else ([], None)
    return Overview(
        today=now.date(),
        days=days,
        charts=charts,
        kpis=_kpis(session, stats, len(findings), now),
        erasures=audit.erasure_log(session, limit=8),
        replicas=replicas,
        ledger_height=height,
        complete=stats is None or stats.complete,
    )


def render_overview(data: Overview, known: dict[str, str]) -> str:
    return render(
        "dpo.html",
        active="overview",
        d=data,
        periods=console.PERIODS,
        known=known,
        chart_data=[c.data() for c in data.charts],
    )


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


def request_row(r: SubjectRequest, now: dt.datetime) -> dict[str, Any]:
    """A pending request as the register lists it, with its one-month clock."""
    late = r.due_at < now
    days = (now - r.due_at).days if late else (r.due_at - now).days
    return {
        "id": str(r.id),
        "kind": r.kind,
        "subject": r.subject,
        "dataset_id": "" if r.dataset_id is None else str(r.dataset_id),
        "received": f"{r.received_at.astimezone(dt.UTC):%Y-%m-%d %H:%M}",
        "due": f"{r.due_at.astimezone(dt.UTC):%Y-%m-%d %H:%M}",
        "state": r.state,
        "extended": r.extended_at is not None,
        "overdue": late,
        "soon": not late and r.due_at < now + requests.SOON_DUE,
        "clock": f"{days} day(s) late" if late else f"{days} day(s) left",
    }


def overview_names(session: Session, data: Overview) -> dict[str, str]:
    """The names the overview shows beside keys: the erasures' requesters."""
    return names(session, {str(e["requester"]) for e in data.erasures})


def figures_csv(chart: Chart) -> str:
    """A chart's figures: one row per bar group, one column per series, then the total."""
    header = [chart.x_title, *(s.label for s in chart.series), "total"]
    if chart.keys:
        header.insert(1, "key")
    rows = []
    for i, name in enumerate(chart.labels):
        values = [s.values[i] for s in chart.series]
        row: list[Any] = [name, *([chart.keys[i]] if chart.keys else []), *values, sum(values)]
        rows.append(row)
    return to_csv(header, rows)


def render_login_page(message: str | None = None) -> str:
    """The sign-in form: the DPO's API key goes in a POST body, never in a URL.

    `message` is one of the route's fixed sentences, never anything the caller sent.
    """
    return TEMPLATES.get_template("dpo_login.html").render(message=message)
