"""The dashboards: k-anonymous impact statistics for the metropolis, redemptions for a partner.

Three layers, each tested where it is decided: the aggregation's privacy properties
(hypothesis, over arbitrary records), the services and pages over fixed figures, and the
whole path over HTTP against four replicas running the contracts: only consenting subjects'
records count, every view is an access on the ledger, and a small cell shows as suppressed.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, replace
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from api.http.dashboard_pages import render_impact_page, render_partner_page
from api.services.dashboards import ImpactDashboard, partner_dashboard
from api.services.impact import ImpactRecord, ImpactTable, aggregate, record_of
from tests.api.conftest import MakeKey
from tests.api.ledger_env import DAY_MS, LedgerEnv, Wallet
from tests.api.test_consented_access import (
    api,
    declare_purpose,
    notice,
    register_subject,
    signed,
)
from vault.models import API_ROLES

PURPOSE = "impact-statistics"
DECLARATION = {
    "fields": ["district", "week", "km", "litres", "euros"],
    "modes": ["projection"],
    "operators": [],
    "questions": 0,
    "period_days": 1,
}

# -- the aggregation's properties ------------------------------------------------------------

_records = st.lists(
    st.builds(
        ImpactRecord,
        dataset=st.sampled_from(["A", "B"]),
        subject=st.sampled_from([f"s{i}" for i in range(12)]),
        district=st.sampled_from(["Nord", "Sud", "Gare"]),
        week=st.sampled_from(["2026-W48", "2026-W49", "2026-W50"]),
        km=st.none() | st.integers(0, 10**6),
        litres=st.none() | st.integers(0, 10**6),
        euros=st.none() | st.integers(0, 10**6),
    ),
    max_size=80,
)


def _parts(records: list[ImpactRecord]) -> dict[tuple[str, str], dict[str, set[str]]]:
    """Per cell, the distinct subjects each dataset contributes (recomputed independently)."""
    out: dict[tuple[str, str], dict[str, set[str]]] = {}
    for r in records:
        out.setdefault((r.district, r.week), {}).setdefault(r.dataset, set()).add(r.subject)
    return out


@given(_records, st.integers(1, 6))
@settings(max_examples=200, deadline=None)
def test_no_shown_cell_counts_fewer_than_k_subjects(records: list[ImpactRecord], k: int) -> None:
    table = aggregate(records, k)
    parts = _parts(records)
    assert {(c.district, c.week) for c in table.cells} == set(parts)
    for c in table.cells:
        per_dataset = parts[(c.district, c.week)]
        everyone = set().union(*per_dataset.values())
        if c.suppressed:
            assert c.sums is None
            assert len(everyone) < k or any(len(s) < k for s in per_dataset.values())
        else:
            assert c.sums is not None and c.sums.subjects == len(everyone) >= k
            assert all(len(s) >= k for s in per_dataset.values())


def _totals_of_shown(table: ImpactTable) -> None:
    """Every published total is the sum of the shown cells it covers, nothing more."""
    shown = [c for c in table.cells if c.sums is not None]
    for totals, key in ((table.by_district, "district"), (table.by_week, "week")):
        assert {t.key for t in totals} == {getattr(c, key) for c in shown}
        for t in totals:
            row = [c.sums for c in shown if getattr(c, key) == t.key and c.sums is not None]
            for q in ("km", "litres", "euros"):
                assert getattr(t.sums, q) == pytest.approx(sum(getattr(s, q) for s in row))
    for q in ("km", "litres", "euros"):
        assert getattr(table.overall, q) == pytest.approx(
            sum(getattr(c.sums, q) for c in shown if c.sums is not None)
        )


@given(_records, st.integers(1, 6), st.integers(1, 10**6))
@settings(max_examples=200, deadline=None)
def test_no_suppressed_cell_can_be_derived_from_what_is_shown(
    records: list[ImpactRecord], k: int, bump: int
) -> None:
    """The answer does not depend on a suppressed cell's figures at all: change them and the
    answer is the same, so no arithmetic on it (totals minus shown cells) can recover them."""
    table = aggregate(records, k)
    _totals_of_shown(table)
    hidden = {(c.district, c.week) for c in table.cells if c.suppressed}
    changed = [
        replace(r, km=(r.km or 0) + bump, litres=None, euros=(r.euros or 0) * 2 + 1)
        if (r.district, r.week) in hidden
        else r
        for r in records
    ]
    assert aggregate(changed, k) == table


def _record(subject: str, district: str, dataset: str = "A", km: float = 1.0) -> ImpactRecord:
    return ImpactRecord(dataset, subject, district, "2026-W49", km=round(km * 1000))


def test_a_row_with_one_suppressed_cell_publishes_only_the_shown_one_as_its_total() -> None:
    """Complementary suppression: the week's total is Nord's alone, not Nord + Gare."""
    records = [_record(f"n{i}", "Nord", km=2.5) for i in range(10)]
    records += [_record(f"g{i}", "Gare", km=7.0) for i in range(3)]
    table = aggregate(records, 10)
    assert [(c.district, c.suppressed) for c in table.cells] == [("Gare", True), ("Nord", False)]
    [week] = table.by_week
    assert week.sums.km == 25.0 and week.sums.subjects == 10
    assert table.overall.km == 25.0
    assert [t.key for t in table.by_district] == ["Nord"]


def test_a_cell_is_suppressed_when_one_dataset_contributes_fewer_than_k() -> None:
    """13 subjects in all, but only 3 from B: shown, {A, B} minus {A} would give B's part."""
    records = [_record(f"a{i}", "Nord", "A") for i in range(10)]
    records += [_record(f"b{i}", "Nord", "B") for i in range(3)]
    assert aggregate(records, 10).cells[0].suppressed
    assert not aggregate(records[:10], 10).cells[0].suppressed


def test_records_that_cannot_be_placed_are_left_out() -> None:
    ok = {"district": "Nord", "week": "2026-W49", "km": 5.3, "litres": None}
    assert record_of("A", "s", ok) == ImpactRecord("A", "s", "Nord", "2026-W49", km=5300)
    for bad in (
        {**ok, "week": "2026-W54"},
        {**ok, "week": "49"},
        {**ok, "district": ""},
        {**ok, "district": 7},
        {"week": "2026-W49", "km": 1},
    ):
        assert record_of("A", "s", bad) is None
    for wild in (float("nan"), float("inf"), -1, True, "5", 10.0**20):
        assert record_of("A", "s", {**ok, "km": wild}) == ImpactRecord("A", "s", "Nord", "2026-W49")


# -- the services and pages over fixed figures ----------------------------------------------


def test_partner_dashboard_sums_the_ledger_counters_per_day_and_category() -> None:
    asked: list[bytes] = []
    partner = bytes(range(32))

    def read(who: bytes) -> list[list[Any]]:
        asked.append(who)
        return [[20_426, "food", 3, 6000], [20_425, "bikes", 1, 12_000], [20_426, "bikes", 2, 500]]

    d = partner_dashboard(read, partner)
    assert asked == [partner]
    assert [(r.day.isoformat(), r.category) for r in d.rows] == [
        ("2025-12-03", "bikes"),
        ("2025-12-04", "bikes"),
        ("2025-12-04", "food"),
    ]
    assert [(t.key, t.count, t.mtok) for t in d.by_day] == [
        ("2025-12-03", 1, 12_000),
        ("2025-12-04", 5, 6500),
    ]
    assert [(t.key, t.count, t.mtok) for t in d.by_category] == [
        ("bikes", 3, 12_500),
        ("food", 3, 6000),
    ]
    assert (d.count, d.mtok) == (6, 18_500)
    html = render_partner_page(d)
    assert "2025-12-04" in html and "18.5 tokens" in html
    assert render_partner_page(partner_dashboard(lambda _: [], partner)).count("Nothing") == 2


def _sample_dashboard() -> ImpactDashboard:
    records = [_record(f"{'ab' * 31}{i:02d}", "Nord", km=1.5) for i in range(12)]
    records += [_record(f"{'cd' * 31}{i:02d}", "<b>Gare</b>", km=4) for i in range(2)]
    table = aggregate(records, 10)
    return ImpactDashboard(
        **table.model_dump(), purpose=PURPOSE, week_from=None, week_to=None, accesses=[]
    )


def test_impact_page_marks_suppressed_cells_escapes_and_names_no_subject() -> None:
    html = render_impact_page(_sample_dashboard())
    assert "suppressed: fewer than 10 people" in html
    assert "<b>Gare</b>" not in html and "&lt;b&gt;Gare&lt;/b&gt;" in html
    assert "abab" not in html and "cdcd" not in html
    assert "18" in html  # 12 people x 1.5 km
    assert "<script" not in html


def test_impact_page_in_headless_chromium(tmp_path: Any) -> None:
    from tests.browser import browser_page, png_colours

    shot = tmp_path / "impact.png"
    with browser_page() as page:
        page.set_content(render_impact_page(_sample_dashboard()))
        assert page.title() == "Civis Vault: impact statistics"
        assert page.locator("#km-per-week rect.bar").count() == 1
        assert page.locator("#km-per-week svg").get_attribute("role") == "img"
        suppressed = page.locator("#cells tr.suppressed")
        assert suppressed.count() == 1
        assert "fewer than 10 people" in suppressed.inner_text()
        assert "<b>Gare</b>" in suppressed.inner_text()  # shown as text, not markup
        page.screenshot(path=str(shot), full_page=True)
    assert png_colours(shot) > 8


def test_partner_page_in_headless_chromium(tmp_path: Any) -> None:
    from tests.browser import browser_page, png_colours

    rows = [[20_400 + d, c, d + 1, (d + 1) * 1000] for d in range(5) for c in ("food", "bikes")]
    shot = tmp_path / "partner.png"
    with browser_page() as page:
        page.set_content(render_partner_page(partner_dashboard(lambda _: rows, bytes(32))))
        bars = page.locator("#tokens-per-day rect.bar")
        assert bars.count() == 5
        heights = [bars.nth(i).bounding_box()["height"] for i in range(5)]
        assert heights == sorted(heights) and heights[0] < heights[-1]
        assert page.locator("#redemptions-per-category rect.bar").count() == 2
        assert page.locator("#rows tbody tr").count() == 10
        page.screenshot(path=str(shot), full_page=True)
    assert png_colours(shot) > 8


# -- over HTTP, against the contracts -------------------------------------------------------


@dataclass
class City:
    dataset: str
    nord: list[Wallet]  # 12 consenting cyclists in Nord
    gare: list[Wallet]  # 3 consenting cyclists at Gare: a cell under k
    refuser: Wallet  # cycled in Nord, never consented


def _ensure_purpose(env: LedgerEnv) -> None:
    """Declared at founding once the eco contracts are in; voted through by governance before."""
    listed = {p["purpose"]: p for p in env.gateway.query("purposes")["result"]}
    if listed.get(PURPOSE, {}).get("declaration") is None:
        declare_purpose(env, PURPOSE, DECLARATION)


def _event(subject: str, district: str, week: str, km: float) -> str:
    detail = {
        "event": uuid.uuid4().hex,
        "device": "ee" * 32,
        "rule": "cycling",
        "at": "2026-12-03T08:00:00Z",
        "district": district,
        "week": week,
        "km": km,
        "litres": None,
        "euros": None,
        "salt": uuid.uuid4().hex,
    }
    return json.dumps({"subject_id": subject, "payload": detail}) + "\n"


@pytest.fixture(scope="module")
def city(ledger_env: LedgerEnv) -> City:
    env = ledger_env
    _ensure_purpose(env)
    nord = [register_subject(env) for _ in range(12)]
    gare = [register_subject(env) for _ in range(3)]
    refuser = register_subject(env)
    operator = env.headers("provider", env.provider)
    r = env.client.post(
        "/v1/datasets",
        headers=operator,
        json={
            "name": f"bike-readers-{time.monotonic_ns()}",
            "category": "mobility",
            "purposes": [PURPOSE],
            "retention_days": 365,
            "legal_basis": "consent",
        },
    )
    assert r.status_code == 201, r.text
    dataset = r.json()["id"]
    lines = [_event(c.id, "Nord", "2026-W49", 2.5) for c in nord]
    lines += [_event(c.id, "Nord", "2026-W50", 1.0) for c in nord]
    lines += [_event(c.id, "Gare", "2026-W49", 4.0) for c in gare]
    lines.append(_event(refuser.id, "Nord", "2026-W49", 1000.0))
    r = env.client.post(
        f"/v1/datasets/{dataset}/uploads",
        headers={**operator, "Content-Type": "application/x-ndjson"},
        content="".join(lines).encode(),
    )
    assert r.status_code == 201, r.text
    env.wait_anchored(dataset, r.json()["upload_id"], operator)
    until = int(time.time() * 1000) + DAY_MS
    shown = notice(env, PURPOSE)
    for citizen in nord + gare:
        grant = {
            "subject": citizen.id,
            "consumer": env.consumer.id,
            "purpose": PURPOSE,
            "dataset": dataset,
            "valid_until": until,
            "notice": shown,
        }
        r = env.client.post("/v1/consents", json=signed(env, citizen, "consent.grant", grant))
        assert r.status_code == 201, r.text
    return City(dataset, nord, gare, refuser)


def _subject_ids(city: City) -> list[str]:
    return [w.id for w in (*city.nord, *city.gare, city.refuser)]


def test_impact_counts_consenting_subjects_only_and_suppresses_small_cells(
    ledger_env: LedgerEnv, city: City
) -> None:
    env = ledger_env
    metropolis = env.headers("consumer", env.consumer)
    r = env.client.get(
        f"/v1/dashboards/impact?dataset={city.dataset}&dataset={city.dataset}", headers=metropolis
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["k"] == 10 and body["purpose"] == PURPOSE
    cells = {(c["district"], c["week"]): c for c in body["cells"]}
    assert cells[("Gare", "2026-W49")] == {
        "district": "Gare",
        "week": "2026-W49",
        "suppressed": True,
        "sums": None,
    }
    nord = cells[("Nord", "2026-W49")]["sums"]
    # 12 consenting cyclists at 2.5 km; the 1000 km of the one who never consented are not read
    assert (nord["subjects"], nord["km"], nord["litres"]) == (12, 30.0, 0.0)
    assert body["overall"]["km"] == 42.0  # 30 + 12: Gare's 12 km are in no total
    assert [t["key"] for t in body["by_district"]] == ["Nord"]
    assert not any(s in r.text for s in _subject_ids(city))
    # the dataset named twice was read once, and that read is an access on the ledger
    [access] = body["accesses"]
    assert access["dataset_id"] == city.dataset and access["receipt"]["block_height"] >= 1
    recorded = env.gateway.query("access", access=access["access"])["result"]
    assert recorded["purpose"] == PURPOSE and sorted(recorded["granted"]) == sorted(
        w.id for w in (*city.nord, *city.gare)
    )
    assert recorded["fields"] == DECLARATION["fields"]

    r = env.client.get(
        f"/v1/dashboards/impact?dataset={city.dataset}&from=2026-W50&to=2026-W50",
        headers=metropolis,
    )
    assert [(c["week"], c["sums"]["km"]) for c in r.json()["cells"]] == [("2026-W50", 12.0)]


def test_impact_refuses_other_roles_and_malformed_queries(
    ledger_env: LedgerEnv, city: City
) -> None:
    env = ledger_env
    metropolis = env.headers("consumer", env.consumer)
    url = f"/v1/dashboards/impact?dataset={city.dataset}"
    assert env.client.get(url, headers=env.headers("provider", env.provider)).status_code == 403
    assert env.client.get(url).status_code == 401
    for query in ("&from=2026-W49&from=2026-W50", "&to=2026-W60", "&week=2026-W49"):
        r = env.client.get(url + query, headers=metropolis)
        assert r.status_code == 422, query
    # a consumer that is no ledger member: the contracts refuse the access itself
    stranger = env.headers("consumer", Wallet())
    assert env.client.get(url, headers=stranger).status_code in (403, 404)


def test_impact_page_over_http_and_its_session_opens_no_dpo_page(
    ledger_env: LedgerEnv, city: City
) -> None:
    env = ledger_env
    metropolis = env.headers("consumer", env.consumer)
    r = env.client.get("/dashboards/impact", headers=metropolis)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert '<tr class="suppressed">' in r.text and 'role="img"' in r.text
    assert not any(s in r.text for s in _subject_ids(city))
    # the page's week form, sent with its fields empty, means no bound; a bad week is refused
    r = env.client.get("/dashboards/impact?from=&to=", headers=metropolis)
    assert r.status_code == 200 and '<tr class="suppressed">' in r.text
    r = env.client.get("/dashboards/impact?from=2026-W50&to=", headers=metropolis)
    assert r.status_code == 200 and '<tr class="suppressed">' not in r.text  # Gare is in W49
    assert env.client.get("/dashboards/impact?to=W50", headers=metropolis).status_code == 422
    r = env.client.get("/dashboards/impact", headers={**metropolis, "Accept": "application/json"})
    assert r.status_code == 406 and "/v1/dashboards/impact" in r.json()["detail"]
    assert env.client.get("/dashboards/impact").status_code == 401
    dpo = env.headers("dpo", env.dpo)
    assert env.client.get("/dashboards/impact", headers=dpo).status_code == 403

    key = metropolis["Authorization"].removeprefix("Bearer ")
    r = env.client.post("/dashboards/session", data={"api_key": key}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/dashboards/impact"
    token = r.headers["set-cookie"].split(";")[0].split("=", 1)[1]
    page = env.client.get(
        "/dashboards/impact", headers={"Cookie": f"__Host-civis-dashboard={token}"}
    )
    assert page.status_code == 200 and '<tr class="suppressed">' in page.text
    # the same session row, shown as a DPO cookie, opens nothing: its key is no DPO's
    dpo_page = env.client.get("/dpo", headers={"Cookie": f"__Host-civis-dpo={token}"})
    assert dpo_page.status_code == 401
    r = env.client.post(
        "/dashboards/logout",
        headers={"Cookie": f"__Host-civis-dashboard={token}"},
        follow_redirects=False,
    )
    assert r.status_code == 303
    again = env.client.get(
        "/dashboards/impact", headers={"Cookie": f"__Host-civis-dashboard={token}"}
    )
    assert again.status_code == 401
    r = env.client.post("/dashboards/session", data={"api_key": dpo["Authorization"][7:]})
    assert r.status_code == 401


def test_impact_page_signed_in_in_headless_chromium(
    ledger_env: LedgerEnv, city: City, tmp_path: Any
) -> None:
    from tests.api.test_dpo_page import _serve
    from tests.browser import browser_page, png_colours

    env = ledger_env
    key = env.headers("consumer", env.consumer)["Authorization"].removeprefix("Bearer ")
    server, thread, port = _serve(env)
    shot = tmp_path / "impact-live.png"
    try:
        with browser_page() as page:
            page.goto(f"http://127.0.0.1:{port}/dashboards/impact")
            page.fill("#api_key", key)
            page.click("#sign-in button[type=submit]")
            page.wait_for_selector("#cells")
            assert page.url == f"http://127.0.0.1:{port}/dashboards/impact"
            assert page.locator("#km-per-week rect.bar").count() == 2  # W49, W50
            gare = page.locator("#cells tr.suppressed")
            assert gare.count() >= 1 and "fewer than 10 people" in gare.first.inner_text()
            content = page.content()
            assert not any(s in content for s in _subject_ids(city))
            page.screenshot(path=str(shot), full_page=True)
            page.click("#sign-out")
            page.wait_for_selector("#sign-in")
    finally:
        server.should_exit = True
        thread.join(10)
    assert png_colours(shot) > 8


def test_k_is_the_ledger_parameter(ledger_env: LedgerEnv, city: City) -> None:
    """Governance lowers k to 3: the Gare cell (3 people) is shown from then on. Last in the
    module: it changes the chain's parameter for every later test."""
    env = ledger_env
    action = {"kind": "set_parameter", "parameter": "k_anonymity", "value": 3}
    out = api(env).propose(env.dpo.key, action, voting_for_ms=DAY_MS)
    from tests.api.test_consented_access import vote_through

    vote_through(env, int(out["result"]["proposal"]))
    metropolis = env.headers("consumer", env.consumer)
    r = env.client.get(f"/v1/dashboards/impact?dataset={city.dataset}", headers=metropolis)
    body = r.json()
    assert body["k"] == 3
    gare = next(c for c in body["cells"] if c["district"] == "Gare")
    assert gare["suppressed"] is False and gare["sums"]["km"] == 12.0


# -- the partner's dashboard over HTTP: needs the partner role and the redemptions query ----

needs_partner = pytest.mark.skipif(
    "partner" not in API_ROLES,
    reason="runs once the eco contracts (partner role, redemptions query) are merged",
)


@needs_partner
def test_partner_reads_its_own_redemptions_only(ledger_env: LedgerEnv) -> None:
    env = ledger_env
    partner = Wallet()
    r = env.client.get("/v1/dashboards/partner", headers=env.headers("partner", partner))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["partner"] == partner.id and body["rows"] == [] and body["count"] == 0
    consumer = env.headers("consumer", env.consumer)
    assert env.client.get("/v1/dashboards/partner", headers=consumer).status_code == 403
    r = env.client.get("/dashboards/partner", headers=env.headers("partner", partner))
    assert r.status_code == 200 and "No coupon spent" in r.text


def test_partner_dashboard_refuses_other_roles(client: TestClient, make_key: MakeKey) -> None:
    r = client.get(
        "/v1/dashboards/partner", headers={"Authorization": make_key("consumer")["Authorization"]}
    )
    assert r.status_code == 403
    r = client.get(
        "/dashboards/partner", headers={"Authorization": make_key("consumer")["Authorization"]}
    )
    assert r.status_code == 403 and 'id="sign-in"' in r.text


def test_a_priced_dataset_is_paid_at_its_listed_projection_price(
    ledger_env: LedgerEnv, city: City
) -> None:
    """The metropolis pays for its view of a priced dataset, as any consumer pays for an
    access: without credit it gets 402 and nothing; with credit it is charged the listed
    price, once per access, and its statement shows it."""
    env = ledger_env
    metropolis = env.headers("consumer", env.consumer)
    operator = env.headers("provider", env.provider)
    url = f"/v1/datasets/{city.dataset}/prices/projection"
    statement = f"/v1/members/{env.consumer.id}/statement"
    price = 10**7  # above any credit the other tests give this consumer
    r = env.client.put(url, headers=operator, json={"price_cents": price})
    assert r.status_code == 200, r.text
    try:
        before = env.client.get(statement, headers=metropolis).json()["totals"]
        r = env.client.get(f"/v1/dashboards/impact?dataset={city.dataset}", headers=metropolis)
        assert r.status_code == 402, r.text
        assert env.client.get(statement, headers=metropolis).json()["totals"] == before
        dpo = env.headers("dpo", env.dpo)
        deposit = {"member": env.consumer.id, "amount_cents": price, "reference": str(uuid.uuid4())}
        assert env.client.post("/v1/credits", headers=dpo, json=deposit).status_code == 201
        r = env.client.get(f"/v1/dashboards/impact?dataset={city.dataset}", headers=metropolis)
        assert r.status_code == 200, r.text
        assert [a["charged_cents"] for a in r.json()["accesses"]] == [price]
        after = env.client.get(statement, headers=metropolis).json()["totals"]
        assert after["paid"] == before["paid"] + price
    finally:
        env.client.put(url, headers=operator, json={"price_cents": 0})
