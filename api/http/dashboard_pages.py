"""The dashboards as pages: server-rendered HTML (Jinja2) with inline SVG charts, no script.

Why the same make as the DPO page (api/http/dpo_page.py): it works offline, leaks nothing to a
third party and is cheap to audit. Every figure comes from the services
(api/services/dashboards.py); this module only lays it out. Each chart has a table of the
same figures next to it, for screen readers and for anyone who wants the numbers.

A suppressed cell is shown as such, "fewer than k", never as zero: a zero would be a figure,
and a false one.
"""

from __future__ import annotations

from dataclasses import dataclass

from api.http.page_sessions import TEMPLATES
from api.services.dashboards import ImpactDashboard, PartnerDashboard

CHART_WIDTH = 560
CHART_HEIGHT = 160


@dataclass(frozen=True, slots=True)
class Bar:
    label: str
    value: str  # as printed: the bar's title and the table say the same
    x: int
    width: int
    y: int
    height: int


@dataclass(frozen=True, slots=True)
class Chart:
    id: str
    title: str
    unit: str
    bars: list[Bar]


def _figure(value: float) -> str:
    return f"{value:,.3f}".rstrip("0").rstrip(".")


def chart(id: str, title: str, unit: str, series: list[tuple[str, float]]) -> Chart:
    """Vertical bars scaled to the largest value (labels are escaped by the template)."""
    if not series:
        return Chart(id, title, unit, [])
    top = max(v for _, v in series) or 1.0
    slot = CHART_WIDTH // len(series)
    bars = []
    for i, (label, value) in enumerate(series):
        h = round((CHART_HEIGHT - 20) * value / top)
        bars.append(
            Bar(
                label,
                _figure(value),
                i * slot + 4,
                max(slot - 8, 2),
                CHART_HEIGHT - 20 - h,
                h,
            )
        )
    return Chart(id, title, unit, bars)


def render_impact_page(data: ImpactDashboard) -> str:
    weeks = data.by_week
    charts = [
        chart("km-per-week", "km cycled per week", "km", [(t.key, t.sums.km) for t in weeks]),
        chart(
            "litres-per-week",
            "litres saved per week",
            "litres",
            [(t.key, t.sums.litres) for t in weeks],
        ),
        chart(
            "euros-per-week",
            "euros of local produce per week",
            "euros",
            [(t.key, t.sums.euros) for t in weeks],
        ),
        chart(
            "km-per-district",
            "km cycled per district",
            "km",
            [(t.key, t.sums.km) for t in data.by_district],
        ),
    ]
    return TEMPLATES.get_template("dashboard_impact.html").render(
        d=data, charts=charts, figure=_figure
    )


def render_partner_page(data: PartnerDashboard) -> str:
    charts = [
        chart(
            "tokens-per-day",
            "tokens redeemed per day",
            "tokens",
            [(t.key, t.mtok / 1000) for t in data.by_day],
        ),
        chart(
            "redemptions-per-category",
            "redemptions per category",
            "redemptions",
            [(t.key, float(t.count)) for t in data.by_category],
        ),
    ]
    return TEMPLATES.get_template("dashboard_partner.html").render(
        d=data, charts=charts, figure=_figure
    )


def render_sign_in_page(message: str | None = None) -> str:
    """The sign-in form: the member's API key goes in a POST body, never in a URL.

    `message` is one of the route's fixed sentences, never anything the caller sent.
    """
    return TEMPLATES.get_template("dashboard_login.html").render(message=message)
