"""The DPO page renders the vault's real state and shows up in headless Chromium.

The last test is the whole path a DPO takes: a real HTTP server over the app with a real
ledger, Chromium posting the key in the sign-in form, the session cookie carrying the rest.
"""

from __future__ import annotations

import datetime as dt
import socket
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import uvicorn
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from api.http.dpo_page import DpoPageData, incident_rows, render_dpo_page, request_rows
from api.services.dpo_sessions import SESSION_COOKIE
from api.services.requests import SOON_DUE, close_request, open_request, pending_due_before
from tests.api.conftest import MakeKey
from tests.api.ledger_env import LedgerEnv
from tests.api.ledger_env import ledger_cluster as ledger_cluster  # fixture
from tests.api.ledger_env import ledger_env as ledger_env  # fixture
from tests.browser import browser_page, png_colours
from tests.vault.conftest import VaultServices, make_dataset
from tests.vault.conftest import services as services  # fixture
from vault.audit import erasure_log, retention_audit, retention_timeline
from vault.models import Incident
from vault.uploads import RecordIn, Uploader


def _at(when: dt.datetime) -> Callable[[], dt.datetime]:
    return lambda: when


def _page_data(session: Session, services: VaultServices, today: dt.date) -> DpoPageData:
    audit = retention_audit(session, today)
    return DpoPageData(
        today=today,
        timeline=retention_timeline(session, today),
        erasures=erasure_log(session),
        findings=[{"code": f.code, "detail": f.detail} for f in audit.findings],
        accesses_by_purpose=[("proof-of-address", 12), ("road-maintenance", 30)],
        accesses_by_consumer=[("bank-7f3a", 12), ("roads-91bc", 30)],
        replicas=[
            {"id": i, "college": c, "height": 42, "view": 0, "status": "up" if i else "down"}
            for i, c in enumerate(["providers", "services", "citizens", "providers"])
        ],
        ledger_height=42,
    )


def test_page_escapes_and_flags_overdue(session: Session, services: VaultServices) -> None:
    dataset = make_dataset(session, name="<script>alert(1)</script>", retention_days=5)
    Uploader(services.store, clock=lambda: dt.datetime(2026, 3, 1, tzinfo=dt.UTC)).upload(
        session, dataset.id, [RecordIn("s1", b"{}")]
    )
    html = render_dpo_page(_page_data(session, services, dt.date(2026, 3, 10)))
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;" in html
    assert "epoch-key-past-retention" in html  # the sweeper did not run: the audit says so
    assert 'class="bad"><td>2026-03-06' in html


def test_page_in_headless_chromium(
    session: Session, services: VaultServices, tmp_path: Path
) -> None:
    for day in (1, 2, 3):
        dataset = make_dataset(session, retention_days=30)
        when = dt.datetime(2026, 3, day, tzinfo=dt.UTC)
        Uploader(services.store, clock=_at(when)).upload(
            session, dataset.id, [RecordIn(f"s{i}", b"{}") for i in range(10 * day)]
        )
    services.eraser.erase_subject(session, "s1", reason="Art. 17", requester="dpo")
    html = render_dpo_page(_page_data(session, services, dt.date(2026, 3, 5)))
    shot = tmp_path / "dpo.png"
    with browser_page() as page:
        page.set_content(html)
        assert page.title() == "Civis Vault: Data Protection Officer"
        assert page.locator("#audit .ok").is_visible()
        bars = page.locator("#retention rect.bar")
        assert bars.count() == 3
        heights = [bars.nth(i).bounding_box()["height"] for i in range(3)]
        assert heights[0] < heights[1] < heights[2]  # 10, 20, 30 records
        assert page.locator("#erasures tbody tr").count() == 1
        assert "pending" in page.locator("#erasures").inner_text()
        assert page.locator("#ledger td.bad").inner_text() == "down"
        page.screenshot(path=str(shot), full_page=True)
    assert png_colours(shot) > 8  # a rendered page with charts, not a blank or error screen


def _incident(session: Session, title: str, discovered: dt.datetime) -> Incident:
    incident = Incident(
        id=uuid.uuid4(),
        title=title,
        discovered_at=discovered,
        deadline_at=discovered + dt.timedelta(hours=72),
        opened_by="dpo",
        state="open",
    )
    session.add(incident)
    session.flush()
    return incident


def test_open_incidents_show_their_deadline_and_time_left_in_chromium(
    session: Session, services: VaultServices
) -> None:
    now = dt.datetime(2026, 3, 10, 12, 0, tzinfo=dt.UTC)
    _incident(session, "<b>laptop</b> stolen", now - dt.timedelta(hours=60))  # 12 h left
    _incident(session, "misdirected e-mail", now - dt.timedelta(hours=2))  # 70 h left
    notified = _incident(session, "bank key stolen", now - dt.timedelta(hours=80))
    notified.notified_at = now - dt.timedelta(hours=10)
    data = _page_data(session, services, now.date())
    data.incidents = [r for r in incident_rows(session, now) if r["title"] in TITLES]
    html = render_dpo_page(data)
    assert "<b>laptop</b>" not in html  # escaped like every other value
    with browser_page() as page:
        page.set_content(html)
        rows = page.locator("#incidents tbody tr")
        assert rows.count() == 3
        # soonest deadline first; the one under a day and not notified is marked
        assert rows.nth(0).locator("td.deadline").inner_text() == "2026-03-10 04:00 UTC"
        assert rows.nth(0).locator("td.left").inner_text() == "notified"
        assert rows.nth(1).locator("td").first.inner_text() == "<b>laptop</b> stolen"
        assert rows.nth(1).locator("td.deadline").inner_text() == "2026-03-11 00:00 UTC"
        assert rows.nth(1).locator("td.left").inner_text() == "12 h 00 min left"
        assert rows.nth(1).get_attribute("class") == "bad"
        assert rows.nth(2).locator("td.left").inner_text() == "70 h 00 min left"
        assert rows.nth(2).get_attribute("class") is None
        assert "3 open" in page.locator("#incidents h2").inner_text()


TITLES = ("<b>laptop</b> stolen", "misdirected e-mail", "bank key stolen")


def test_the_page_lists_the_requests_overdue_and_due_within_a_week(
    session: Session, services: VaultServices, tmp_path: Path
) -> None:
    now = dt.datetime.now(dt.UTC)
    received = {
        "overdue": now - dt.timedelta(days=40),  # due ten days ago
        "soon": now - dt.timedelta(days=26),  # due in four or five days
        "later": now - dt.timedelta(days=2),  # due in four weeks: not listed
    }
    ids = {
        name: open_request(session, "erasure", f"<b>{name}</b>", None, when)
        for name, when in received.items()
    }
    done = open_request(session, "access", "answered", None, now - dt.timedelta(days=60))
    close_request(session, done, "done", at=now - dt.timedelta(days=59))
    pending = pending_due_before(session, now + SOON_DUE)
    overdue, soon = request_rows(pending, now)
    mine = {str(i) for i in ids.values()}
    data = _page_data(session, services, now.date())
    data.requests_overdue = [r for r in overdue if r["id"] in mine]
    data.requests_soon = [r for r in soon if r["id"] in mine]
    assert [r["id"] for r in data.requests_overdue] == [str(ids["overdue"])]
    assert [r["id"] for r in data.requests_soon] == [str(ids["soon"])]
    assert data.requests_overdue[0]["days"] == 9 or data.requests_overdue[0]["days"] == 10
    html = render_dpo_page(data)
    assert "<b>overdue</b>" not in html and "&lt;b&gt;overdue" in html
    with browser_page() as page:
        page.set_content(html)
        assert page.locator("#requests .bad").first.inner_text() == "1 overdue"
        overdue_rows = page.locator("#requests-overdue tbody tr.bad")
        assert overdue_rows.count() == 1
        assert "<b>overdue" in overdue_rows.inner_text()  # shown as text, not markup
        assert page.locator("#requests-soon tbody tr").count() == 1
        assert "<b>soon" in page.locator("#requests-soon").inner_text()
        links = {
            page.locator(f"#{a}").get_attribute("href")
            for a in ("ropa-json", "ropa-md", "dpia-md", "dpia-pdf")
        }
        assert links == {
            "/dpo/records-of-processing.json",
            "/dpo/records-of-processing.md",
            "/dpo/dpia.md",
            "/dpo/dpia.pdf",
        }
        page.screenshot(path=str(tmp_path / "requests.png"), full_page=True)
    assert png_colours(tmp_path / "requests.png") > 8


def _serve(env: LedgerEnv) -> tuple[uvicorn.Server, threading.Thread, int]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    # The TestClient already ran the app's lifespan: this server only adds real HTTP.
    config = uvicorn.Config(
        env.client.app, host="127.0.0.1", port=port, lifespan="off", log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="dpo-page-http", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "the HTTP server did not start"
        time.sleep(0.02)
    return server, thread, port


def test_dpo_signs_in_with_the_form_and_reads_the_page(
    ledger_env: LedgerEnv, tmp_path: Path
) -> None:
    env = ledger_env
    headers = env.headers("dpo", env.dpo)
    key = headers["Authorization"].removeprefix("Bearer ")
    discovered = dt.datetime.now(dt.UTC) - dt.timedelta(hours=60)
    title = f"stolen laptop {uuid.uuid4().hex[:6]}"
    r = env.client.post(
        "/v1/dpo/incidents",
        headers=headers,
        json={"title": title, "discovered_at": discovered.isoformat()},
    )
    assert r.status_code == 201, r.text
    deadline = (discovered + dt.timedelta(hours=72)).strftime("%Y-%m-%d %H:%M UTC")
    server, thread, port = _serve(env)
    shot = tmp_path / "dpo-live.png"
    try:
        with browser_page() as page:
            page.goto(f"http://127.0.0.1:{port}/dpo")
            assert page.locator("#sign-in").is_visible()
            page.fill("#api_key", key)
            page.click("#sign-in button[type=submit]")
            page.wait_for_selector("#ledger")
            assert page.title() == "Civis Vault: Data Protection Officer"
            assert page.url == f"http://127.0.0.1:{port}/dpo"  # the key is in no URL
            assert page.locator("#ledger td.ok").count() == 4  # four replicas up
            row = page.locator("#incidents tbody tr", has_text=title)
            assert row.locator("td.deadline").inner_text() == deadline
            assert row.locator("td.left").inner_text().startswith("11 h ")
            assert row.get_attribute("class") == "bad"  # under a day left, not notified
            assert "incident-notification-due" in page.locator("#incidents").inner_text()
            cookies = {c["name"]: c for c in page.context.cookies()}
            session = cookies[SESSION_COOKIE]
            assert session["httpOnly"] and session["secure"] and session["sameSite"] == "Strict"
            assert key.split("_")[-1] not in session["value"]
            assert page.evaluate("document.cookie") == ""  # no script can read it
            assert page.locator("#requests").is_visible()
            # the DPIA downloads with the session alone: the key is in no link
            with page.expect_download() as downloaded:
                page.click("#dpia-pdf")
            pdf = Path(downloaded.value.path()).read_bytes()
            assert pdf.startswith(b"%PDF-1.4") and downloaded.value.suggested_filename.startswith(
                "dpia-"
            )
            page.screenshot(path=str(shot), full_page=True)
            page.click("#sign-out")
            page.wait_for_selector("#sign-in")
            assert SESSION_COOKIE not in {c["name"] for c in page.context.cookies()}
    finally:
        server.should_exit = True
        thread.join(10)
    assert png_colours(shot) > 8


# -- negotiation: problem+json for a client that asks for JSON, HTML for a browser ----------

BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


def test_a_refused_page_answers_problem_json_to_a_json_client(
    client: TestClient, make_key: MakeKey
) -> None:
    consumer = make_key("consumer")["Authorization"]
    json_accepts = ("application/json", "application/problem+json", "text/html;q=0.5, */*")
    for accept in json_accepts:
        r = client.get("/dpo", headers={"Authorization": consumer, "Accept": accept})
        assert r.status_code == 403, accept
        assert r.headers["content-type"] == "application/problem+json", accept
        problem = r.json()
        assert problem["status"] == 403 and "Data Protection Officer" in problem["detail"]
    r = client.get("/dpo", headers={"Accept": "application/json"})
    assert (r.status_code, r.headers["content-type"]) == (401, "application/problem+json")
    assert r.headers["www-authenticate"] == "Bearer"
    assert r.json()["detail"]
    r = client.post(
        "/dpo/session",
        data={"api_key": "cvk_x_y"},
        headers={"Accept": "application/json"},
    )
    assert (r.status_code, r.headers["content-type"]) == (401, "application/problem+json")
    assert "cvk_x_y" not in r.text


def test_a_refused_page_answers_html_to_a_browser(client: TestClient, make_key: MakeKey) -> None:
    consumer = make_key("consumer")["Authorization"]
    for accept in (BROWSER_ACCEPT, "*/*", None):
        headers = {"Authorization": consumer} | ({"Accept": accept} if accept else {})
        r = client.get("/dpo", headers=headers)
        assert r.status_code == 403, accept
        assert r.headers["content-type"].startswith("text/html"), accept
        assert 'id="sign-in"' in r.text


def test_the_dpo_asking_the_page_for_json_is_sent_to_the_json_routes(
    client: TestClient, make_key: MakeKey
) -> None:
    dpo = make_key("dpo")["Authorization"]
    r = client.get("/dpo", headers={"Authorization": dpo, "Accept": "application/json"})
    assert (r.status_code, r.headers["content-type"]) == (406, "application/problem+json")
    assert "/v1/dpo/" in r.json()["detail"]
    r = client.get("/dpo", headers={"Authorization": dpo, "Accept": BROWSER_ACCEPT})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
