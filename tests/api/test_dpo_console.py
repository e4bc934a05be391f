"""The DPO console as a DPO uses it: Chromium against a real `civis-vault up` after the demo.

One `up` (PostgreSQL, four replica processes, the API under uvicorn) and one `civis-vault
demo` run, then a Chromium that signs in with the DPO's key through the form, as a person
does, and reads every view: it loads, names show instead of keys, every chart writes the
values its table lists, a subject search finds the demo's citizens, a click on a bar lists
the decisions it counts (the same as the JSON access log), exports download and parse, and
axe-core (vendored under tests/vendor, never shipped) reports no WCAG 2.1 AA violation.

Each view is screenshotted at 1400 px (the paths are printed, run with -s to see them; they
stay in pytest's tmp dir) and measured at 1024, 1400 and 1920 px: no element of a card
reaches past the card, and the page never scrolls sideways.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.client.wallet import Wallet
from api.services.keys import create_key
from api.services.requests import close_request, open_request
from tests.api.test_e2e_up import System, _demo, running_system
from tests.browser import CHROMIUM_FLAGS, chromium_path, png_colours
from tests.conftest import PgServer
from vault.models import Record

pytestmark = pytest.mark.e2e

AXE = Path(__file__).resolve().parents[1] / "vendor" / "axe-core" / "axe.min.js"
WIDTHS = (1024, 1400, 1920)
VIEWS = {
    "overview": "/dpo",
    "overview-7-days": "/dpo?days=7",
    "queues": "/dpo/queues",
    "accesses": "/dpo/accesses",
    "erasures": "/dpo/erasures",
    "members": "/dpo/members",
    "subjects": "/dpo/subjects",
    "block": "/dpo/blocks/3",
}


@dataclass
class Console:
    system: System
    token: str
    page: Any  # a signed-in Playwright page
    shots: Path
    citizens: list[str]  # the pseudonyms the demo's wallets derived

    def url(self, path: str) -> str:
        return self.system.up.url + path

    def open(self, path: str) -> None:
        self.page.goto(self.url(path))
        self.page.wait_for_load_state("load")
        if self.page.locator("#chart-data").count():
            self.page.wait_for_function(
                "() => [...document.querySelectorAll('canvas')]"
                ".every(c => c.dataset.values !== undefined)"
            )

    def v1(self, path: str, **params: Any) -> Any:
        r = httpx.get(
            self.url(path), params=params, headers={"Authorization": f"Bearer {self.token}"}
        )
        assert r.status_code == 200, r.text
        return r.json()


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory, pg_server: PgServer) -> Iterator[Console]:
    from playwright.sync_api import sync_playwright

    with running_system(tmp_path_factory, pg_server, "civis_console") as system:
        played = _demo(system, system.up.url)
        assert played.returncode == 0, played.stdout[-3000:] + played.stderr[-3000:]
        with Session(system.engine) as session, session.begin():
            token = create_key(session, member_id=system.dpo.public_key.hex(), role="dpo").token
        wallets = sorted((system.data_dir / "demo" / "wallets").glob("*.key"))
        pseudonyms = [
            key.public_key.hex() for w in wallets for key in Wallet.open(w).pseudonyms().values()
        ]
        # Those holding readable records first: the wallets' files have random names, and the
        # current pseudonym of a relationship the DPO erased holds nothing at all (its summary
        # is empty), so the first of them in file order is not always a subject with data.
        with Session(system.engine) as session:
            holding = set(
                session.scalars(
                    select(Record.subject_id).where(
                        Record.subject_id.in_(pseudonyms), Record.envelope.is_not(None)
                    )
                )
            )
        citizens = sorted(pseudonyms, key=lambda p: p not in holding)
        assert citizens[0] in holding
        shots = tmp_path_factory.mktemp("dpo-console-screenshots")
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_FLAGS)
            try:
                # bypass_csp: the test injects axe-core; the app's CSP rightly forbids that
                context = browser.new_context(
                    viewport={"width": 1400, "height": 900}, accept_downloads=True, bypass_csp=True
                )
                page = context.new_page()
                page.goto(system.up.url + "/dpo")
                page.fill("#api_key", token)
                page.click("#sign-in button[type=submit]")
                page.wait_for_selector("#kpis")
                yield Console(system, token, page, shots, citizens)
            finally:
                browser.close()


# What the page measures: every element of a card inside the card, the page no wider than
# the window. Elements with no box (closed <details>, hidden) are skipped.
OVERFLOW_JS = """() => {
  const out = [];
  const root = document.documentElement;
  if (root.scrollWidth > root.clientWidth + 1)
    out.push(`page ${root.scrollWidth}px wide in a ${root.clientWidth}px window`);
  for (const card of document.querySelectorAll('.card, .kpi')) {
    const c = card.getBoundingClientRect();
    if (c.right > root.clientWidth + 1) out.push(`card ${card.id} ends at ${c.right}`);
    for (const el of card.querySelectorAll('*')) {
      const r = el.getBoundingClientRect();
      if (r.width === 0 && r.height === 0) continue;
      if (r.left < c.left - 1 || r.right > c.right + 1)
        out.push(`${card.id || card.className} > ${el.tagName}.${el.className}: ` +
                 `${Math.round(r.left)}..${Math.round(r.right)} outside ` +
                 `${Math.round(c.left)}..${Math.round(c.right)}`);
    }
  }
  return out;
}"""


def _overflows(c: Console) -> list[str]:
    found: list[str] = c.page.evaluate(OVERFLOW_JS)
    return found


def test_each_view_loads_shows_names_and_nothing_overflows(console: Console) -> None:
    c = console
    errors: list[str] = []
    c.page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    subject = c.citizens[0]
    views = {**VIEWS, "subject": f"/dpo/subjects/{subject}"}
    for name, path in views.items():
        for width in WIDTHS:
            c.page.set_viewport_size({"width": width, "height": 900})
            c.open(path)
            assert c.page.title().startswith("Civis Vault: Data Protection Officer"), name
            assert _overflows(c) == [], f"{name} at {width} px"
            if width == 1400:
                shot = c.shots / f"{name}.png"
                c.page.screenshot(path=str(shot), full_page=True)
                print(f"screenshot {name}: {shot}")
                assert png_colours(shot) > 8
    assert errors == []  # no script error, no CSP refusal, no missing file
    c.page.set_viewport_size({"width": 1400, "height": 900})
    c.open("/dpo/members")
    text = c.page.locator("#members").inner_text()
    for name in ("Utility Lumen-", "Bank Crédit-", "Road service Voirie-", "Validator 0"):
        assert name in text
    c.open("/dpo")
    consumers = c.page.locator("#accesses-per-consumer table.figures").text_content() or ""
    assert "Bank Crédit-" in consumers and "Road service Voirie-" in consumers
    assert not re.search(r"\b[0-9a-f]{64}\b", c.page.locator("main").inner_text())


def _chart_specs(c: Console) -> list[dict[str, Any]]:
    specs: list[dict[str, Any]] = json.loads(c.page.locator("#chart-data").inner_text())
    return specs


def test_every_chart_writes_its_values_and_totals(console: Console) -> None:
    c = console
    for days in (7, 30, 90):
        c.open(f"/dpo?days={days}")
        for spec in _chart_specs(c):
            values = [v for s in spec["series"] for v in s["values"]]
            total = c.page.locator(f"#{spec['id']} .total").inner_text()
            assert int(total) == sum(values), spec["id"]
            if not sum(values):
                continue
            canvas = c.page.locator(f"#{spec['id']}-canvas")
            written = json.loads(canvas.get_attribute("data-values") or "[]")
            expected = [
                [i, j, v]
                for i, s in enumerate(spec["series"])
                for j, v in enumerate(s["values"])
                if v
            ]
            assert written == expected, spec["id"]  # every non-zero bar has its number on it
            c.page.locator(f"#{spec['id']} details summary").click()
            cells = c.page.locator(f"#{spec['id']} table.figures tbody td").all_inner_texts()
            assert [int(x) for x in cells] == [
                s["values"][j] for j in range(len(spec["labels"])) for s in spec["series"]
            ]
    c.open("/dpo?days=30")
    per_day = {s["label"]: sum(s["values"]) for s in _chart_specs(c)[0]["series"]}
    log = c.v1("/v1/dpo/access-log", limit=1000)["accesses"]
    assert per_day == {
        "granted": sum(1 for a in log if a["outcome"] == "granted"),
        "refused": sum(1 for a in log if a["outcome"] == "refused"),
    }
    held = c.page.locator("#retention-outlook .total").inner_text()
    assert int(held) > 0  # the demo's records are held for a year: the outlook shows them


def test_a_subject_search_finds_the_demos_citizens(console: Console) -> None:
    c = console
    found = 0
    for pseudonym in c.citizens[:6]:
        c.open("/dpo/subjects")
        c.page.fill("#q", pseudonym[:10])
        c.page.click("#subject-search button[type=submit]")
        c.page.wait_for_load_state("load")
        assert pseudonym[:12] not in c.page.url.split("?")[-1] or "/dpo/subjects/" in c.page.url
        if c.page.url.endswith(f"/dpo/subjects/{pseudonym}"):
            found += 1
            assert c.page.locator("#subject-datasets").is_visible()
            assert c.page.locator("#subject-consents").is_visible()
    assert found >= 3  # the erased citizens' pseudonyms are forgotten; the others are found
    alice = next(p for p in c.citizens if _has_access(c, p))
    c.open(f"/dpo/subjects/{alice}")
    rows = c.page.locator("#subject-accesses tbody tr")
    assert rows.count() == len(c.v1("/v1/dpo/access-log", subject=alice)["accesses"])
    consents = c.page.locator("#subject-consents").inner_text()
    named = [m["display_name"] for m in c.v1("/v1/dpo/members")["members"] if m["display_name"]]
    assert any(name in consents for name in named)  # the recipient by its name
    package = json.loads(_clicked(c, "#subject-package"))
    assert alice in json.dumps(package["records"]) and package["accesses"]
    c.open(f"/dpo/subjects/{alice}")  # the DPO's read is recorded where the subject sees it
    assert "Data Protection Officer" in c.page.locator("#subject-reads tbody").inner_text()


def _has_access(c: Console, pseudonym: str) -> bool:
    return bool(c.v1("/v1/dpo/access-log", subject=pseudonym)["accesses"])


def test_a_click_on_a_bar_lists_the_decisions_it_counts(console: Console) -> None:
    c = console
    c.open("/dpo?days=30")
    spec = next(s for s in _chart_specs(c) if s["id"] == "accesses-per-purpose")
    purpose = spec["labels"][0]
    box = c.page.locator("#accesses-per-purpose-canvas").bounding_box()
    bar = c.page.evaluate(
        "() => { const m = Chart.getChart('accesses-per-purpose-canvas').getDatasetMeta(0)"
        ".data[0]; return [m.x - m.width / 2 + 2, m.y]; }"
    )
    c.page.mouse.click(box["x"] + bar[0], box["y"] + bar[1])
    c.page.wait_for_url(re.compile(r"/dpo/accesses\?"))
    assert f"purpose={purpose}" in c.page.url and "outcome=granted" in c.page.url
    shown = [int(x) for x in c.page.locator("#accesses tbody tr td:first-child").all_inner_texts()]
    expected = [
        a["access"]
        for a in c.v1("/v1/dpo/access-log", purpose=purpose, outcome="granted")["accesses"]
    ]
    assert shown == expected and shown
    assert spec["series"][0]["values"][0] == len(shown)
    # each decision links to its block, where the receipt's transaction is marked
    first = c.page.locator("#accesses tbody tr").first
    tx = first.locator("button.copy").last.get_attribute("data-copy")
    first.locator("a[href^='/dpo/blocks/']").click()
    c.page.wait_for_selector("#block-transactions")
    marked = c.page.locator("#block-transactions tr[aria-current=true]")
    assert marked.locator("button.copy").last.get_attribute("data-copy") == tx
    assert "access.request" in marked.inner_text()


def _download(c: Console, path: str) -> bytes:
    """A download with the browser's session cookie alone (the key is in no link). Through
    the context's request API: Chromium blocks a page's many downloads without a click."""
    r = c.page.context.request.get(c.url(path))
    assert r.status == 200, (path, r.status)
    assert r.headers["content-disposition"].startswith("attachment; filename="), path
    body: bytes = r.body()
    return body


def _clicked(c: Console, selector: str) -> bytes:
    """A download as a person takes it: a click on the page's link."""
    with c.page.expect_download() as got:
        c.page.click(selector)
    return Path(got.value.path()).read_bytes()


def _rows(body: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(body.decode("utf-8"))))


def test_exports_download_and_parse(console: Console) -> None:
    c = console
    c.open("/dpo")
    log = c.v1("/v1/dpo/access-log", limit=1000)["accesses"]
    c.open("/dpo/accesses")
    accesses = _rows(_clicked(c, "#accesses-csv"))
    assert [int(r["access"]) for r in accesses] == [a["access"] for a in log]
    assert {r["consumer_name"] for r in accesses} >= {"Bank Crédit-" + _run_id(c)}
    per_purpose = _rows(_download(c, "/dpo/figures/accesses-per-purpose.csv?days=30"))
    assert sum(int(r["total"]) for r in per_purpose) == len(log)
    for name in ("requests", "outbox", "findings", "incidents"):
        _rows(_download(c, f"/dpo/queues/{name}.csv"))
    members = _rows(_download(c, "/dpo/members.csv"))
    assert any(r["display_name"].startswith("Utility Lumen-") for r in members)
    assert len(_rows(_download(c, "/dpo/erasures.csv"))) >= 1
    assert sum(int(r["records"]) for r in _rows(_download(c, "/dpo/retention.csv"))) > 0
    for pdf in ("/dpo/audit.pdf", "/dpo/records-of-processing.pdf", "/dpo/dpia.pdf"):
        assert _download(c, pdf).startswith(b"%PDF-1.4"), pdf
    subject = c.citizens[0]
    assert _rows(_download(c, f"/dpo/subjects/{subject}/summary.csv"))


def _run_id(c: Console) -> str:
    names = [m["display_name"] or "" for m in c.v1("/v1/dpo/members")["members"]]
    return next(n for n in names if n.startswith("Bank Crédit-")).removeprefix("Bank Crédit-")


def test_a_name_written_as_a_formula_stays_text_in_the_csv(console: Console) -> None:
    c = console
    members = c.v1("/v1/dpo/members")["members"]
    target = next(m for m in members if m["role"] == "consumer")
    r = httpx.put(
        c.url(f"/v1/dpo/members/{target['member_id']}/name"),
        json={"display_name": '=HYPERLINK("http://x.invalid","open")', "contact": "@SUM(1,1)"},
        headers={"Authorization": f"Bearer {c.token}"},
    )
    assert r.status_code == 200, r.text
    try:
        c.open("/dpo")
        rows = _rows(_download(c, "/dpo/members.csv"))
        mine = next(x for x in rows if x["member_id"] == target["member_id"])
        assert mine["display_name"] == "'" + '=HYPERLINK("http://x.invalid","open")'
        assert mine["contact"] == "'@SUM(1,1)"
        c.open("/dpo/members")  # on the page it is text, as written
        assert '=HYPERLINK("http://x.invalid","open")' in c.page.locator("#members").inner_text()
    finally:
        httpx.put(
            c.url(f"/v1/dpo/members/{target['member_id']}/name"),
            json={"display_name": target["display_name"], "contact": target["contact"]},
            headers={"Authorization": f"Bearer {c.token}"},
        )


def test_a_residents_pseudonym_gets_no_name(console: Console) -> None:
    c = console
    for key, status in ((c.citizens[0], 422), ("ab" * 32, 404)):
        r = httpx.put(
            c.url(f"/v1/dpo/members/{key}/name"),
            json={"display_name": "Alice Martin"},
            headers={"Authorization": f"Bearer {c.token}"},
        )
        assert r.status_code == status, r.text
        assert r.headers["content-type"] == "application/problem+json"
    assert "Alice Martin" not in json.dumps(c.v1("/v1/dpo/members"))


def test_axe_core_reports_no_wcag_aa_violation(console: Console) -> None:
    c = console
    script = AXE.read_text()
    views = {**VIEWS, "subject": f"/dpo/subjects/{c.citizens[0]}"}
    for name, path in views.items():
        c.open(path)
        c.page.add_script_tag(content=script)
        found = c.page.evaluate(
            "async () => (await axe.run(document, {runOnly: {type: 'tag', values: "
            "['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa']}})).violations"
            ".map(v => [v.id, v.nodes.slice(0, 3).map(n => n.target.join(' '))])"
        )
        assert found == [], f"{name}: {found}"


def test_an_overdue_request_stands_out_in_the_work_queues(console: Console) -> None:
    c = console
    received = dt.datetime.now(dt.UTC) - dt.timedelta(days=40)  # a month and ten days ago
    with Session(c.system.engine) as session, session.begin():
        late = open_request(session, "access", c.citizens[-1], None, received)
    try:
        c.open("/dpo/queues")
        row = c.page.locator(f"#requests tr[data-request='{late}']")
        assert row.get_attribute("class") == "overdue"
        assert "overdue" in row.inner_text() and "day(s) late" in row.inner_text()
        assert "1 overdue" in c.page.locator("#requests").inner_text()
        c.open("/dpo")
        tile = c.page.locator("#kpis li", has_text="requests pending")
        assert "alert" in (tile.get_attribute("class") or "")
        assert _overflows(c) == []
    finally:
        with Session(c.system.engine) as session, session.begin():
            close_request(session, late, "done")


# Last: it signs out.
def test_the_keyboard_reaches_every_view_and_the_session_ends_on_the_server(
    console: Console,
) -> None:
    c = console
    c.open("/dpo")
    c.page.keyboard.press("Tab")
    assert c.page.evaluate("document.activeElement.className") == "skip"
    hrefs = []
    for _ in range(8):
        c.page.keyboard.press("Tab")
        hrefs.append(c.page.evaluate("document.activeElement.getAttribute('href')"))
    assert {"/dpo/queues", "/dpo/accesses", "/dpo/subjects", "/dpo/members"} <= set(hrefs)
    cookie = next(x for x in c.page.context.cookies() if x["name"].startswith("__Host-"))
    assert cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Strict"
    c.page.click("#sign-out")
    c.page.wait_for_selector("#sign-in")
    stolen = httpx.get(c.url("/dpo"), cookies={cookie["name"]: cookie["value"]})
    assert stolen.status_code == 401  # the row went: a copy of the cookie opens nothing
