"""A personal data breach handled end to end, over the API, on four replica processes.

The story: a bank's ledger key is reported stolen. The DPO opens an incident (72 hours to
notify the supervisory authority, from the discovery); the cooperative suspends the bank
(every college votes); the bank's next access is refused, by the API and by the contracts;
the subjects affected are exactly those the access record shows the bank received; the
deadline shows on the DPO page; governance moves the bank to a new key, the stolen one is
refused for ever, and the consents follow the member. Then an affected subject is erased:
no answer, draft or incident row names them afterwards (invariant 7).

Attacks first, around it: free text naming a pseudonym, a resident's key as the incident's
member, a discovery in the future, a changed or deleted timeline entry, a closed incident
written to, a close with no notification; and the audit's findings about the 72 hours.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from api.services.affected import Scope, affected_subjects
from api.services.dpo_sessions import SESSION_COOKIE
from api.services.gateway import LedgerRefused
from api.services.member_standing import STANDING_TTL_S
from tests.api.ledger_env import DAY_MS, LedgerEnv, Wallet
from tests.api.test_consented_access import (
    api,
    notice,
    register_subject,
    setup_addresses,
    vote_through,
)
from tests.api.test_roles import admit

pytestmark = pytest.mark.timeout(300)


@dataclass
class Breach:
    """A utility's dataset of four citizens. `bank` (admitted for the story) consented-to by
    a, b and d, read them all once; c consented to the founding consumer only, which read c."""

    env: LedgerEnv
    bank: Wallet
    bank_headers: dict[str, str]
    dataset: str
    a: Wallet
    b: Wallet
    c: Wallet
    d: Wallet
    dpo: dict[str, str]


def _grant(env: LedgerEnv, citizen: Wallet, consumer: Wallet, dataset: str) -> None:
    api(env).grant_consent(
        citizen.key,
        consumer=consumer.id,
        purpose="billing",
        notice=notice(env, "billing", consumer),
        valid_for_ms=DAY_MS,
        dataset=dataset,
    )


def _read(env: LedgerEnv, headers: dict[str, str], dataset: str) -> Any:
    body = {"dataset_id": dataset, "purpose": "billing"}
    return env.client.post("/v1/access-requests", headers=headers, json=body)


@pytest.fixture(scope="module")
def breach(ledger_env: LedgerEnv) -> Breach:
    env = ledger_env
    bank = Wallet()
    admit(env, bank, "consumer", "services")
    a, b, c, d = (register_subject(env) for _ in range(4))
    dataset, _ = setup_addresses(env, [a, b, c, d], ("billing",))
    for citizen in (a, b, d):
        _grant(env, citizen, bank, dataset)
    _grant(env, c, env.consumer, dataset)
    bank_headers = env.headers("consumer", bank)
    r = _read(env, bank_headers, dataset)
    assert r.status_code == 200 and sorted(r.json()["granted"]) == sorted([a.id, b.id, d.id])
    r = _read(env, env.headers("consumer", env.consumer), dataset)
    assert r.status_code == 200 and r.json()["granted"] == [c.id]
    return Breach(env, bank, bank_headers, dataset, a, b, c, d, env.headers("dpo", env.dpo))


def _iso(when: dt.datetime) -> str:
    return when.isoformat()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _open(w: Breach, **body: Any) -> Any:
    body = {"title": "incident", "discovered_at": _iso(_now()), **body}
    return w.env.client.post("/v1/dpo/incidents", headers=w.dpo, json=body)


def _affected(w: Breach, incident: str, **params: Any) -> dict[str, Any]:
    r = w.env.client.get(
        f"/v1/dpo/incidents/{incident}/affected-subjects", headers=w.dpo, params=params
    )
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


def _decide(env: LedgerEnv, action: dict[str, Any]) -> None:
    out = api(env).propose(env.dpo.key, action, voting_for_ms=DAY_MS)
    vote_through(env, int(out["result"]["proposal"]))


def _refused_within_ttl(env: LedgerEnv, headers: dict[str, str], code: str) -> None:
    """A key's API requests are refused `code` once the API looks the member up again."""
    deadline = time.monotonic() + STANDING_TTL_S + 5
    while True:
        r = env.client.get("/v1/purposes", headers=headers)
        if r.status_code == 403 and r.json()["detail"].startswith(f"{code}:"):
            assert r.headers["content-type"] == "application/problem+json"
            return
        assert time.monotonic() < deadline, f"still answered {r.status_code} {r.text}"
        time.sleep(0.2)


# -- the story --------------------------------------------------------------------------------


def test_a_stolen_consumer_key_from_report_to_rotation(breach: Breach) -> None:
    w, env = breach, breach.env
    discovered = _now() - dt.timedelta(hours=2)
    r = _open(
        w,
        title="bank reports its ledger key stolen",
        discovered_at=_iso(discovered),
        member=w.bank.id,
    )
    assert r.status_code == 201, r.text
    incident = r.json()
    deadline = dt.datetime.fromisoformat(incident["deadline_at"])
    assert deadline == discovered + dt.timedelta(hours=72)

    # the stolen key still works, until every college has voted
    assert _read(env, w.bank_headers, w.dataset).status_code == 200
    _decide(env, {"kind": "suspend_member", "member": w.bank.id})
    # the contracts refuse it at once, whoever signs for it ...
    with pytest.raises(LedgerRefused) as refused:
        env.gateway.act(
            "access.request",
            {"consumer": bytes.fromhex(w.bank.id), "dataset": w.dataset, "purpose": "billing"},
        )
    assert refused.value.code == "member_suspended" and refused.value.status == 403
    r = _read(env, w.bank_headers, w.dataset)
    assert r.status_code == 403 and r.headers["content-type"] == "application/problem+json"
    assert r.json()["detail"].startswith("member_suspended:") and "records" not in r.json()
    # ... and the API refuses its keys on every route, ledger or not
    _refused_within_ttl(env, w.bank_headers, "member_suspended")

    affected = _affected(w, incident["id"])
    assert affected["subjects"] == sorted([w.a.id, w.b.id, w.d.id])  # not c: another consumer's
    assert affected["total"] == 3 and affected["complete"] is True
    [row] = affected["by_dataset"]
    assert (row["dataset_id"], row["subjects"], row["accesses"]) == (w.dataset, 3, 2)
    # the founding consumer's accesses name c, and only c, from the same dataset
    others = _affected(w, incident["id"], member=env.consumer.id)
    assert others["subjects"] == [w.c.id]

    page = env.client.get("/dpo/queues", headers={**w.dpo, "Accept": "text/html"})
    assert page.status_code == 200
    assert "bank reports its ledger key stolen" in page.text
    assert deadline.strftime("%Y-%m-%d %H:%M UTC") in page.text
    assert "69 h" in page.text and "min left" in page.text

    # governance moves the member to a new key: the stolen one is refused for ever
    new = Wallet()
    assert api(env).register(new.key, "consumer", "services")["result"]["status"] == "pending"
    _decide(env, {"kind": "rotate_member_key", "member": w.bank.id, "new_key": new.id})
    _decide(env, {"kind": "reinstate_member", "member": new.id})
    _refused_within_ttl(env, w.bank_headers, "key_rotated")
    r = _read(env, env.headers("consumer", new), w.dataset)
    assert r.status_code == 200, r.text
    # the consents a, b and d gave the bank under its old key follow the member
    assert sorted(r.json()["granted"]) == sorted([w.a.id, w.b.id, w.d.id])


def test_the_story_as_facts_draft_and_closure(breach: Breach) -> None:
    w, env = breach, breach.env
    r = _open(w, title="bank key: the notification", member=env.consumer.id)
    incident = r.json()["id"]
    facts = [
        {"kind": "nature", "text": "A consumer's signing key was copied from its server."},
        {"kind": "categories", "text": "Postal addresses of residents (billing)."},
        {"kind": "approximate_numbers", "subjects": 3, "records": 3},
        {"kind": "consequences", "text": "Addresses may be known to a third party."},
        {"kind": "measures", "text": "The member was suspended by governance."},
        {"kind": "risk", "risk": "high", "text": "Addresses identify people at home."},
    ]
    for fact in facts:
        r = env.client.post(f"/v1/dpo/incidents/{incident}/facts", headers=w.dpo, json=fact)
        assert r.status_code == 201, r.text
    assert [f["n"] for f in api_incident(w, incident)["timeline"]] == [1, 2, 3, 4, 5, 6]

    # not notified: it stays open
    r = env.client.post(f"/v1/dpo/incidents/{incident}/close", headers=w.dpo, json={})
    assert r.status_code == 409 and r.headers["content-type"] == "application/problem+json"

    draft = env.client.get(f"/v1/dpo/incidents/{incident}/notification-draft", headers=w.dpo)
    assert draft.status_code == 200 and draft.headers["content-type"].startswith("text/markdown")
    md = draft.text
    for part in (
        "## (a) Nature of the breach",
        "A consumer's signing key was copied",
        "Postal addresses of residents",
        "data subjects about 3; records about 3",
        "1 data subject(s)",  # the founding consumer received c only
        "## (b) Data Protection Officer",
        "[to complete: the DPO's name and contact details]",
        "## (c) Likely consequences",
        "## (d) Measures taken or proposed",
        "still active on the ledger",
        "# What happened to your data (GDPR Art. 34)",
    ):
        assert part in md, part
    assert w.c.id not in md  # counts, never pseudonyms

    notified = {"kind": "notified", "text": "CNIL notification ref. 2027-118"}
    r = env.client.post(f"/v1/dpo/incidents/{incident}/facts", headers=w.dpo, json=notified)
    assert r.status_code == 201
    r = env.client.post(
        f"/v1/dpo/incidents/{incident}/close", headers=w.dpo, json={"summary": "Closed."}
    )
    assert r.status_code == 200 and r.json()["state"] == "closed"
    assert r.json()["timeline"][-1]["kind"] == "note"
    # closed: its timeline is final
    r = env.client.post(f"/v1/dpo/incidents/{incident}/facts", headers=w.dpo, json=facts[0])
    assert r.status_code == 409


def api_incident(w: Breach, incident: str) -> dict[str, Any]:
    r = w.env.client.get(f"/v1/dpo/incidents/{incident}", headers=w.dpo)
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


# -- attacks ----------------------------------------------------------------------------------


def _incident_count(w: Breach) -> int:
    r = w.env.client.get("/v1/dpo/incidents", headers=w.dpo, params={"state": "all"})
    return len(r.json()["incidents"])


def test_free_text_naming_a_pseudonym_or_a_residents_key_is_refused_and_stores_nothing(
    breach: Breach,
) -> None:
    w = breach
    before = _incident_count(w)
    attempts = [
        {"title": f"leak of {w.a.id}"},
        {"title": f"leak of {w.a.id.upper()}"},
        {"member": w.a.id},  # a resident: the incident would keep their pseudonym
        {"member": Wallet().id},  # no member at all
        {"discovered_at": _iso(_now() + dt.timedelta(hours=1))},
        {
            "window_start": _iso(_now()),
            "window_end": _iso(_now() - dt.timedelta(hours=1)),
        },
        {"title": "bell\x07"},
        # times at the edge of what a computer holds: no 500, a 422
        {"discovered_at": "0001-01-01T00:00:00+14:00"},
        {"discovered_at": "0001-01-01T00:00:00Z"},
        {"window_start": "0001-01-01T00:00:00+14:00"},
        {"window_end": "9999-12-31T23:59:59-14:00"},
    ]
    for attempt in attempts:
        r = _open(w, **attempt)
        assert r.status_code == 422, (attempt, r.text)
        assert r.headers["content-type"] == "application/problem+json"
        assert w.a.id not in r.text and w.a.id.upper() not in r.text
    assert _incident_count(w) == before

    incident = _open(w, title="free text").json()["id"]
    fact = {"kind": "note", "text": f"the subject {w.b.id} called us"}
    r = w.env.client.post(f"/v1/dpo/incidents/{incident}/facts", headers=w.dpo, json=fact)
    assert r.status_code == 422 and w.b.id not in r.text
    for bad in (
        {"kind": "nature"},
        {"kind": "risk", "text": "why"},
        {"kind": "note", "text": "x", "subjects": 3},
        {"kind": "approximate_numbers"},
        {"kind": "notified", "at": _iso(_now() - dt.timedelta(days=3))},  # before discovery
        {"kind": "notified", "at": "0001-01-01T00:00:00+14:00"},
        {"kind": "notified", "at": "9999-12-31T23:59:59-14:00"},
    ):
        r = w.env.client.post(f"/v1/dpo/incidents/{incident}/facts", headers=w.dpo, json=bad)
        assert r.status_code == 422, (bad, r.text)
    assert api_incident(w, incident)["timeline"] == []


def test_the_timeline_is_append_only_in_the_database(
    breach: Breach, ledger_database_url: str
) -> None:
    w = breach
    incident = _open(w, title="append only").json()["id"]
    fact = {"kind": "nature", "text": "as first written"}
    assert w.env.client.post(
        f"/v1/dpo/incidents/{incident}/facts", headers=w.dpo, json=fact
    ).is_success
    engine = create_engine(ledger_database_url)
    try:
        for statement in (
            "UPDATE incident_facts SET text = 'rewritten' WHERE incident_id = :i",
            "DELETE FROM incident_facts WHERE incident_id = :i",
        ):
            with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
                conn.execute(text(statement), {"i": incident})
    finally:
        engine.dispose()
    assert api_incident(w, incident)["timeline"][0]["text"] == "as first written"


# -- the audit of the 72 hours ----------------------------------------------------------------


def _findings(w: Breach) -> dict[str, set[str]]:
    r = w.env.client.get("/v1/dpo/incidents", headers=w.dpo)
    out: dict[str, set[str]] = {}
    for f in r.json()["findings"]:
        out.setdefault(f["incident"], set()).add(f["code"])
    return out


def _fact(w: Breach, incident: str, **fact: Any) -> None:
    r = w.env.client.post(f"/v1/dpo/incidents/{incident}/facts", headers=w.dpo, json=fact)
    assert r.status_code == 201, r.text


def test_incidents_nearing_or_past_72_hours_without_notification_are_findings(
    breach: Breach,
) -> None:
    w = breach

    def opened(hours_ago: float) -> str:
        when = _now() - dt.timedelta(hours=hours_ago)
        out: str = _open(w, title=f"{hours_ago} h", discovered_at=_iso(when)).json()["id"]
        return out

    fresh, nearing, overdue = opened(1), opened(50), opened(80)
    unlikely, in_time, late, late_with_reasons = opened(80), opened(60), opened(80), opened(80)
    _fact(w, unlikely, kind="risk", risk="unlikely", text="encrypted, keys safe")
    _fact(w, in_time, kind="notified", text="ref 1")
    _fact(w, late, kind="notified", text="ref 2")
    _fact(w, late_with_reasons, kind="delay_reasons", text="the breach spanned a weekend")
    _fact(w, late_with_reasons, kind="notified", text="ref 3")

    found = _findings(w)
    assert fresh not in found and unlikely not in found and in_time not in found
    assert found[nearing] == {"incident-notification-due"}
    assert found[overdue] == {"incident-notification-overdue"}
    assert found[late] == {"incident-notified-late-without-reasons"}
    assert late_with_reasons not in found
    page = w.env.client.get("/dpo/queues", headers={**w.dpo, "Accept": "text/html"}).text
    assert "incident-notification-overdue" in page and "overdue by 8" in page


# -- invariant 7: after an erasure, nothing of the incident names the subject -----------------


def test_an_erased_subject_is_named_by_no_answer_draft_or_row_of_an_incident(
    breach: Breach, ledger_database_url: str
) -> None:
    w, env = breach, breach.env
    incident = _open(w, title="before an erasure", dataset_id=w.dataset).json()["id"]
    before = _affected(w, incident)
    assert {w.a.id, w.d.id} <= set(before["subjects"])  # the control: the scan finds them
    held = _affected(w, incident, include_held="true")
    assert {w.a.id, w.b.id, w.c.id, w.d.id} <= set(held["subjects"])

    r = env.client.post("/v1/erasures", headers=w.dpo, json={"subject_id": w.d.id})
    assert r.status_code == 201, r.text
    after = _affected(w, incident, include_held="true")
    assert w.d.id not in after["subjects"] and w.a.id in after["subjects"]
    assert after["total"] == held["total"] - 1
    draft = env.client.get(f"/v1/dpo/incidents/{incident}/notification-draft", headers=w.dpo)
    assert w.d.id not in draft.text
    engine = create_engine(ledger_database_url)
    try:
        with engine.connect() as conn:
            for dump in (
                "SELECT string_agg(t::text, '') FROM incidents t",
                "SELECT string_agg(t::text, '') FROM incident_facts t",
            ):
                assert w.d.id not in (conn.execute(text(dump)).scalar() or "")
    finally:
        engine.dispose()


# -- the decryptions hook ---------------------------------------------------------------------


@pytest.fixture()
def hook_session(ledger_database_url: str) -> Iterator[Session]:
    """A session whose `decryptions` is a table of the test's own schema, shaped as the
    design names its columns: this tree has no such table, a merged one has the real one."""
    schema = f"hook_{uuid.uuid4().hex[:8]}"
    engine = create_engine(
        ledger_database_url, connect_args={"options": f"-c search_path={schema},public"}
    )
    with engine.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
        conn.execute(
            text(
                f"CREATE TABLE {schema}.decryptions (id bigserial PRIMARY KEY, at timestamptz, "
                "reader text, reader_role text, kind text, subject text, dataset_id uuid, "
                "record_count integer)"
            )
        )
    try:
        with Session(engine) as session:
            yield session
    finally:
        with engine.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        engine.dispose()


def test_decryptions_count_as_affected_subjects_through_the_hook(
    breach: Breach, hook_session: Session
) -> None:
    w = breach
    reader = Wallet().id  # a key with no access on the ledger: only decryptions name subjects
    rows = [
        (reader, w.a.id, w.dataset, 2, _now() - dt.timedelta(hours=1)),
        (reader, w.b.id, w.dataset, 1, _now() - dt.timedelta(days=3)),  # before the window
        (reader, "~" + "0" * 64, w.dataset, 5, _now()),  # forgotten by an erasure
        (Wallet().id, w.c.id, w.dataset, 1, _now()),  # another reader
    ]
    for who, subject, dataset, count, at in rows:
        hook_session.execute(
            text(
                "INSERT INTO decryptions (at, reader, reader_role, kind, subject, dataset_id, "
                "record_count) VALUES (:at, :r, 'consumer', 'consumer_access', :s, :d, :n)"
            ),
            {"at": at, "r": who, "s": subject, "d": dataset, "n": count},
        )
    hook_session.flush()
    since = _now() - dt.timedelta(days=1)
    out = affected_subjects(hook_session, w.env.gateway, Scope(member=reader, since=since))
    assert out.subjects == [w.a.id]
    [row] = out.by_dataset
    assert (row.subjects, row.accesses, row.decrypted_records) == (1, 0, 2)
    everyone = affected_subjects(hook_session, w.env.gateway, Scope(member=reader))
    assert everyone.subjects == sorted([w.a.id, w.b.id])


# -- the client -------------------------------------------------------------------------------


def test_the_client_handles_an_incident_and_pages_its_affected_subjects(breach: Breach) -> None:
    from api.client import CivisClient, Conflict

    w, env = breach, breach.env
    dpo = CivisClient(http=env.client).with_key(w.dpo["Authorization"].removeprefix("Bearer "))
    hours_ago = (_now() - dt.timedelta(hours=3)).isoformat()
    incident = dpo.open_incident("client", discovered_at=hours_ago, dataset_id=w.dataset)
    assert incident["state"] == "open" and incident["dataset_id"] == w.dataset
    pages = list(dpo.iter_affected_subjects(incident["id"], include_held=True, limit=2))
    subjects = [s for page in pages for s in page["subjects"]]
    assert len(pages) >= 2 and subjects == sorted(set(subjects))  # no gap, no repeat
    assert subjects == sorted(set(subjects) | {w.a.id, w.b.id, w.c.id})
    with pytest.raises(Conflict):
        dpo.close_incident(incident["id"])  # neither notified nor assessed unlikely
    dpo.add_incident_fact(incident["id"], "risk", risk="unlikely", text="nothing left the vault")
    assert "Not required unless the risk is high" in dpo.notification_draft(incident["id"])
    assert dpo.close_incident(incident["id"])["state"] == "closed"
    assert incident["id"] in {i["id"] for i in dpo.incidents(state="closed")["incidents"]}
    assert dpo.incident(incident["id"])["risk"] == "unlikely"


def _page_cookie(env: LedgerEnv, headers: dict[str, str]) -> str:
    key = headers["Authorization"].removeprefix("Bearer ")
    r = env.client.post(
        "/dpo/session",
        content=f"api_key={key}",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        follow_redirects=False,
    )
    assert r.status_code == 303, r.text
    return str(r.headers["set-cookie"].split(";")[0].split("=", 1)[1])


def test_a_suspended_dpo_key_opens_no_route_and_no_page(ledger_env: LedgerEnv) -> None:
    """The DPO's key is the one that reads every subject's export: governance suspends a
    founder as it does a bank, and the API must refuse that key on every route, on the DPO
    page by header, by a session cookie opened before, and at a new sign-in."""
    env = ledger_env
    deputy = Wallet()
    admit(env, deputy, "dpo", "services")
    headers = env.headers("dpo", deputy)
    citizen = register_subject(env)
    export = f"/v1/subjects/{citizen.id}/export"
    assert env.client.get(export, headers=headers).status_code == 200
    cookie = _page_cookie(env, headers)
    _decide(env, {"kind": "suspend_member", "member": deputy.id})

    _refused_within_ttl(env, headers, "member_suspended")
    r = env.client.get(export, headers=headers)
    assert r.status_code == 403 and r.json()["detail"].startswith("member_suspended:")
    page = {"Accept": "text/html"}
    assert env.client.get("/dpo", headers={**headers, **page}).status_code == 403
    by_cookie = env.client.get("/dpo", headers={**page, "Cookie": f"{SESSION_COOKIE}={cookie}"})
    assert by_cookie.status_code == 403 and "incident" not in by_cookie.text.lower()
    key = headers["Authorization"].removeprefix("Bearer ")
    again = env.client.post(
        "/dpo/session",
        content=f"api_key={key}",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        follow_redirects=False,
    )
    assert again.status_code == 403 and "set-cookie" not in again.headers
