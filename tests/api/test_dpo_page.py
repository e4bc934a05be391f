"""The DPO console's pieces (the breach and request clocks, CSV defused), its sign-in over
real HTTP in headless Chromium, and its answers to clients that ask for JSON.

The views themselves, on a real `up` after the demo: tests/api/test_dpo_console.py.

The last test is the whole path a DPO takes: a real HTTP server over the app with a real
ledger, Chromium posting the key in the sign-in form, the session cookie carrying the rest.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import socket
import threading
import time
import uuid
from pathlib import Path

import uvicorn
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from api.http.dpo_page import incident_rows, request_row
from api.services.csv_export import FORMULA_STARTS, to_csv
from api.services.dpo_sessions import SESSION_COOKIE
from api.services.requests import open_request, pending_due_before
from tests.api.conftest import MakeKey
from tests.api.ledger_env import LedgerEnv
from tests.api.ledger_env import ledger_cluster as ledger_cluster  # fixture
from tests.api.ledger_env import ledger_env as ledger_env  # fixture
from tests.browser import browser_page, png_colours
from tests.vault.conftest import VaultServices
from tests.vault.conftest import services as services  # fixture
from vault.models import Incident


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


TITLES = ("<b>laptop</b> stolen", "misdirected e-mail", "bank key stolen")


def test_open_incidents_carry_their_deadline_and_time_left(
    session: Session, services: VaultServices
) -> None:
    now = dt.datetime(2026, 3, 10, 12, 0, tzinfo=dt.UTC)
    _incident(session, TITLES[0], now - dt.timedelta(hours=60))  # 12 h left
    _incident(session, TITLES[1], now - dt.timedelta(hours=2))  # 70 h left
    notified = _incident(session, TITLES[2], now - dt.timedelta(hours=80))
    notified.notified_at = now - dt.timedelta(hours=10)
    rows = [r for r in incident_rows(session, now) if r["title"] in TITLES]
    # soonest deadline first; the one under a day and not notified is urgent
    assert [r["title"] for r in rows] == [TITLES[2], TITLES[0], TITLES[1]]
    assert [r["left"] for r in rows] == ["notified", "12 h 00 min left", "70 h 00 min left"]
    assert [r["urgent"] for r in rows] == [False, True, False]
    assert rows[1]["deadline"] == "2026-03-11 00:00 UTC"


def test_the_register_clock_marks_the_overdue_and_the_soon_due(session: Session) -> None:
    now = dt.datetime.now(dt.UTC)
    received = {
        "overdue": now - dt.timedelta(days=40),  # due ten days ago
        "soon": now - dt.timedelta(days=26),  # due in four or five days
        "later": now - dt.timedelta(days=2),  # due in four weeks
    }
    ids = {
        name: open_request(session, "erasure", f"<b>{name}</b>", None, when)
        for name, when in received.items()
    }
    rows = {
        r.id: request_row(r, now)
        for r in pending_due_before(session, now + dt.timedelta(days=60))
        if r.id in set(ids.values())
    }
    overdue, soon, later = (rows[ids[n]] for n in ("overdue", "soon", "later"))
    assert overdue["overdue"] and overdue["clock"] in ("9 day(s) late", "10 day(s) late")
    assert soon["soon"] and not soon["overdue"] and soon["clock"].endswith("left")
    assert not later["soon"] and not later["overdue"]


HOSTILE = ["=1+2", "+SUM(A1)", "-2+3", "@cmd", "\tTAB", "\rCR", "a,b", 'say "hi"', "line\nbreak"]


def test_csv_cells_never_start_a_formula() -> None:
    text = to_csv(["value", "n"], [[v, 7] for v in HOSTILE] + [[None, -3]])
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == ["value", "n"]
    cells = [r[0] for r in rows[1:]]
    for cell, value in zip(cells, [*HOSTILE, ""], strict=True):
        assert not cell.startswith(FORMULA_STARTS), cell
        assert cell in (value, "'" + value)  # the text is kept, only defused
    assert [r[1] for r in rows[1:]] == ["7"] * len(HOSTILE) + ["-3"]  # numbers stay numbers


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
            assert page.title() == "Civis Vault: Data Protection Officer — Overview"
            assert page.url == f"http://127.0.0.1:{port}/dpo"  # the key is in no URL
            assert page.locator("#ledger .badge.ok").count() == 4  # four replicas up
            page.click("nav a[href='/dpo/queues']")
            page.wait_for_selector("#incidents")
            row = page.locator("#incidents tbody tr", has_text=title)
            assert row.locator("td.deadline").inner_text() == deadline
            assert "11 h " in row.locator("td.left").inner_text()
            assert row.get_attribute("class") == "urgent"  # under a day left, not notified
            assert "incident-notification-due" in page.locator("#findings").inner_text()
            cookies = {c["name"]: c for c in page.context.cookies()}
            session = cookies[SESSION_COOKIE]
            assert session["httpOnly"] and session["secure"] and session["sameSite"] == "Strict"
            assert key.split("_", 2)[2] not in session["value"]  # the secret, which may hold "_"
            assert page.evaluate("document.cookie") == ""  # no script can read it
            assert page.locator("#requests").is_visible()
            page.click("nav a[href='/dpo']")
            page.wait_for_selector("#documents")
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
