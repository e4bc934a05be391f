"""Hostile request bodies: deep nesting and huge field names get a short 4xx, and a short log.

What a user would notice: a 2 KB request must not make the API answer 500 and write a long
traceback to its log (an attacker fills the disk and buries real incidents), and an error must
never hand back, or log, an unbounded piece of what the client sent.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient

from api.http.app import create_app
from api.http.bodies import JSON_DEPTH_MAX
from api.http.settings import Settings
from tests.api.conftest import MakeKey, api_database_url, api_settings, make_key  # noqa: F401
from tests.api.ledger_env import (  # noqa: F401  (fixtures)
    LedgerEnv,
    ledger_cluster,
    ledger_database_url,
    ledger_env,
)

NDJSON = {"content-type": "application/x-ndjson"}
# What a refusal may cost: the answer and the whole captured log stay under this.
ANSWER_BYTES_MAX = 1024
LOG_BYTES_MAX = 1024


@pytest.fixture(scope="module")
def client(api_settings: Settings, api_database_url: str) -> Iterator[TestClient]:  # noqa: F811
    # Records as large as the default, so a 60 KB line is a record and not a 413.
    settings = api_settings.model_copy(
        update={"record_size_max_bytes": 64 * 1024, "json_body_max_bytes": 1024 * 1024}
    )
    app = create_app(settings, database_url=api_database_url)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def _dataset(client: TestClient, headers: dict[str, str]) -> str:
    body = {
        "name": f"meters-{uuid.uuid4().hex[:8]}",
        "category": "energy",
        "purposes": ["billing"],
        "retention_days": 30,
        "legal_basis": "contract",
    }
    r = client.post("/v1/datasets", json=body, headers=headers)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def _nested(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


def _draft(author: str, body: str) -> str:
    """A consent.grant draft request, its `body` given as JSON text."""
    return f'{{"type":"consent.grant","author":"{author}","body":{body}}}'


def _grant_draft(author: str, dataset: str, *, fields: bool = False) -> str:
    """A draft whose body is a well-formed consent.grant but for `dataset` (JSON text);
    `fields` adds a one-field list, which the body check, stopping at `dataset`, never reads."""
    more = ',"fields":["lat"]' if fields else ""
    body = (
        f'{{"subject":"{author}","consumer":"{author}","purpose":"billing",'
        f'"valid_until":4102444800000,"dataset":{dataset}{more}}}'
    )
    return _draft(author, body)


def _draft_nested_to(author: str, depth: int, *, fields: bool = False) -> str:
    """`_grant_draft` with its `dataset` nested so that the whole document is `depth` levels
    deep, as `bodies.nesting_exceeds` counts: the draft's map is level 1, its body level 2,
    and the `dataset` value's maps levels 3 to `depth`. Without `fields` the document holds
    exactly `depth` brackets, with it one more. Why both: `loads_bounded` walks a document
    only when it holds more brackets than the bound. One level past the bound is sent without
    `fields`, so a count that skips the walk one bracket too late lets it through; the bound
    itself with `fields`, so it is walked, and a walk that stops one level too early refuses
    it."""
    return _grant_draft(author, _nested(depth - 2), fields=fields)


def _assert_refused_quietly(r: object, caplog: pytest.LogCaptureFixture, status: int = 422) -> None:
    import httpx

    assert isinstance(r, httpx.Response)
    assert r.status_code == status, r.text[:300]
    assert r.headers["content-type"] == "application/problem+json"
    assert len(r.content) < ANSWER_BYTES_MAX
    # The service's own log: the test client's lines (httpx logs each URL it calls) are not.
    logged = [r for r in caplog.records if not r.name.startswith("httpx")]
    text = "\n".join(f"{r.name} {r.getMessage()} {r.exc_text or ''}" for r in logged)
    assert "Traceback" not in text and all(r.exc_info is None for r in logged)
    assert len(text) < LOG_BYTES_MAX, text[:500]
    assert len(logged) <= 1


@pytest.mark.parametrize(
    "document",
    # 900 levels would get past the parser and break the draft builder; 8,000 (16 KB of
    # brackets, the JSON body limit of these tests) break the parser itself; one level past
    # the bound is where `test_a_draft_at_the_depth_bound_reaches_the_body_check` stops.
    [
        lambda author: _draft(author, _nested(900)),
        lambda author: _draft(author, '{"a":' + "[" * 8_000 + "]" * 8_000 + "}"),
        lambda author: _draft_nested_to(author, JSON_DEPTH_MAX + 1),
    ],
    ids=["900-objects", "8000-arrays", "one-past-the-bound"],
)
def test_a_deeply_nested_draft_is_a_422_with_one_short_log_line(
    ledger_env: LedgerEnv,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
    document: Callable[[str], str],
) -> None:
    caplog.set_level(logging.INFO)
    r = ledger_env.client.post(
        "/v1/drafts",
        content=document(ledger_env.consumer.id),
        headers={"content-type": "application/json"},
    )
    _assert_refused_quietly(r, caplog)
    detail = r.json()["detail"]
    assert detail == f"the JSON body is nested deeper than {JSON_DEPTH_MAX} levels", detail


def test_a_draft_at_the_depth_bound_reaches_the_body_check(ledger_env: LedgerEnv) -> None:  # noqa: F811
    """A document exactly `JSON_DEPTH_MAX` levels deep passes the depth bound (one more is
    refused by it, in the test above) and meets the body check behind it, which names the
    field it refuses. No consent body is that deep, so a 201 cannot be had at the bound: the
    control is the same draft with a plain dataset id, drafted, so the 422 is the nesting's
    alone and comes from the body check, not from anything else in the draft."""
    author = ledger_env.consumer.id
    plain = ledger_env.client.post(
        "/v1/drafts",
        content=_grant_draft(author, f'"{uuid.uuid4()}"'),
        headers={"content-type": "application/json"},
    )
    assert plain.status_code == 201, plain.text
    r = ledger_env.client.post(
        "/v1/drafts",
        content=_draft_nested_to(author, JSON_DEPTH_MAX, fields=True),
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 422, r.text
    assert r.json()["title"] == "Invalid transaction", r.text
    assert r.json()["detail"].startswith("body.dataset: must be an identifier"), r.text


def test_a_deeply_nested_upload_line_is_a_422_naming_the_line(
    client: TestClient,
    make_key: MakeKey,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    owner = make_key("provider")
    ds = _dataset(client, owner)
    good = json.dumps({"subject_id": "s1", "payload": {"ok": 1}}).encode()
    deep = b'{"subject_id":"s2","payload":' + b"[" * 30_000 + b"]" * 30_000 + b"}"
    assert len(good + deep) < 61_000
    caplog.set_level(logging.INFO)
    r = client.post(
        f"/v1/datasets/{ds}/uploads", content=good + b"\n" + deep + b"\n", headers=owner | NDJSON
    )
    _assert_refused_quietly(r, caplog)
    assert r.json()["line"] == 2
    listed = client.get(f"/v1/datasets/{ds}/uploads", headers=owner)
    assert listed.json() == []  # nothing partial is stored


def test_a_payload_nested_past_the_bound_but_parseable_is_refused_too(
    client: TestClient,
    make_key: MakeKey,  # noqa: F811
) -> None:
    owner = make_key("provider")
    ds = _dataset(client, owner)
    line = json.dumps({"subject_id": "s1", "payload": json.loads(_nested(JSON_DEPTH_MAX + 1))})
    r = client.post(f"/v1/datasets/{ds}/uploads", content=line.encode(), headers=owner | NDJSON)
    assert r.status_code == 422
    ok = json.dumps({"subject_id": "s1", "payload": json.loads(_nested(JSON_DEPTH_MAX - 2))})
    r = client.post(f"/v1/datasets/{ds}/uploads", content=ok.encode(), headers=owner | NDJSON)
    assert r.status_code == 201, r.text


def test_a_60_kb_field_name_in_an_upload_is_not_echoed(
    client: TestClient,
    make_key: MakeKey,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    owner = make_key("provider")
    ds = _dataset(client, owner)
    name = "n" * 60_000
    line = json.dumps({"subject_id": "s1", "payload": {}, name: 1}).encode()
    caplog.set_level(logging.INFO)
    r = client.post(f"/v1/datasets/{ds}/uploads", content=line, headers=owner | NDJSON)
    _assert_refused_quietly(r, caplog)
    assert "nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn" not in r.text


def test_a_60_kb_field_name_in_a_json_body_is_not_echoed(
    client: TestClient,
    make_key: MakeKey,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    owner = make_key("provider")
    body = {
        "name": "meters",
        "category": "energy",
        "purposes": ["billing"],
        "retention_days": 30,
        "legal_basis": "contract",
        "n" * 60_000: 1,
    }
    caplog.set_level(logging.INFO)
    r = client.post("/v1/datasets", json=body, headers=owner)
    _assert_refused_quietly(r, caplog)


def test_a_60_kb_query_parameter_name_is_not_echoed(
    client: TestClient,
    make_key: MakeKey,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    owner = make_key("provider")
    caplog.set_level(logging.INFO)
    r = client.get("/v1/datasets?" + "n" * 60_000 + "=1", headers=owner)
    _assert_refused_quietly(r, caplog)


def test_a_pseudonym_ending_in_a_newline_is_refused_and_nothing_stored(
    client: TestClient,
    make_key: MakeKey,  # noqa: F811
) -> None:
    """ "s1\\n" would be a subject apart from "s1": an erasure of "s1" would leave its records."""
    owner = make_key("provider")
    ds = _dataset(client, owner)
    lines = [
        json.dumps({"subject_id": "s1", "payload": {"ok": 1}}),
        json.dumps({"subject_id": "s1\n", "payload": {"ok": 2}}),
    ]
    body = ("\n".join(lines) + "\n").encode()
    r = client.post(f"/v1/datasets/{ds}/uploads", content=body, headers=owner | NDJSON)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["line"] == 2
    assert client.get(f"/v1/datasets/{ds}/uploads", headers=owner).json() == []
