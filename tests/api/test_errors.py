"""Every error leaves as RFC 9457 problem+json, and says nothing internal or personal."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Annotated, Literal

import anyio
import psycopg
import pytest
from fastapi import Body, FastAPI
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient
from pydantic import BaseModel
from starlette.requests import ClientDisconnect
from starlette.types import Message, Scope

from api.http import errors
from api.http.app import create_app
from api.http.settings import Settings
from tests.api.conftest import MakeKey
from vault.errors import InvalidRecord, RecordErased


@pytest.fixture()
def bare() -> Iterator[TestClient]:
    """An app with only the error handlers and routes that raise, no database."""
    app = FastAPI()
    errors.install(app)

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("SELECT * FROM records WHERE subject_id = 'jane.doe@example.org'")

    @app.get("/boom/{rest:path}")
    def boom_at(rest: str) -> None:
        raise RuntimeError("a bug")

    @app.get("/erased")
    def erased() -> None:
        raise RecordErased("record 7 was erased")

    @app.get("/bad-record")
    def bad_record() -> None:
        raise InvalidRecord("payload is not valid JSON", position=12)

    @app.post("/items")
    def items(n: int) -> int:
        return n

    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def test_a_bug_is_a_500_that_says_nothing_internal(
    bare: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    r = bare.get("/boom")
    assert r.status_code == 500
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json() == {
        "type": "about:blank",
        "title": "Internal error",
        "status": 500,
        "detail": errors.fallback_detail(500),  # fixed, the same for every bug
        "instance": "/boom",
    }
    assert "jane" not in caplog.text  # the log names the exception type only


def test_vault_errors_keep_status_title_detail_and_position(bare: TestClient) -> None:
    r = bare.get("/erased")
    assert (r.status_code, r.json()["title"]) == (410, "Record erased")
    r = bare.get("/bad-record")
    assert r.status_code == 422
    assert r.json()["record"] == 12
    assert "line" not in r.json()  # only upload routes know the line offset


def test_routing_errors(bare: TestClient) -> None:
    r = bare.get("/nowhere")
    assert (r.status_code, r.json()["title"]) == (404, "Not Found")
    r = bare.get("/items")
    assert r.status_code == 405
    assert r.headers["allow"] == "POST"
    assert r.headers["content-type"] == "application/problem+json"


def test_validation_errors_name_fields_not_values(bare: TestClient) -> None:
    r = bare.post("/items?n=jane.doe")
    assert r.status_code == 422
    problem = r.json()
    assert problem["errors"] == [
        {"loc": "query.n", "type": "int_parsing", "msg": problem["errors"][0]["msg"]}
    ]
    assert problem["detail"].startswith("query.n: ")  # the field and what is wrong with it
    assert "jane" not in r.text


@pytest.mark.parametrize(
    ("accept", "json_wanted"),
    [
        (None, False),
        ("", False),
        ("*/*", False),  # curl
        ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", False),  # browser
        ("application/json", True),
        ("application/problem+json", True),
        ("application/*", True),
        ("text/html;q=0.5, */*", True),  # the most specific range weighs
        ("application/json;q=0.5, text/html", False),
        ("application/json;q=nan", False),
        ("application/json;q=2", False),
    ],
)
def test_prefers_json_reads_the_accept_weights(accept: str | None, json_wanted: bool) -> None:
    assert errors.prefers_json(accept) is json_wanted


# -- every route of the real app -----------------------------------------------------------

# Methods a client may try on any path; HEAD is left out (its answer has no body to read).
PROBED_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


def _sample_url(path_format: str) -> str:
    """A concrete URL for a route template: every path parameter becomes `x1`."""
    return re.sub(r"\{[^}]+\}", "x1", path_format)


def _routes(app: FastAPI) -> list[tuple[re.Pattern[str], frozenset[str], str]]:
    """(path regex, declared methods, template) of every route, included routers flattened."""
    found = []
    for route in iter_route_contexts(app.routes):
        if route.path_regex is not None and route.methods:
            found.append((route.path_regex, frozenset(route.methods), str(route.path_format)))
    return found


def test_every_route_answers_a_wrong_method_with_405_listing_its_methods(
    client: TestClient,
) -> None:
    routes = _routes(client.app)  # type: ignore[arg-type]
    assert len(routes) > 30, "the app's routers were not flattened"
    for url in sorted({_sample_url(template) for _, _, template in routes}):
        allowed = set().union(*(methods for regex, methods, _ in routes if regex.match(url)))
        for method in sorted(set(PROBED_METHODS) - allowed):
            r = client.request(method, url)
            assert r.status_code == 405, (method, url, r.status_code)
            assert r.headers["content-type"] == "application/problem+json"
            listed = {m.strip() for m in r.headers.get("allow", "").split(",") if m.strip()}
            assert listed == allowed, (method, url, r.headers.get("allow"))
            detail = r.json().get("detail", "")
            assert all(m in detail for m in allowed), (method, url, detail)


# The problems a client meets without a bug of ours: each says what to do about it.
# (what, role of the key sent or None, method, url, headers, body, status)
JSON = {"content-type": "application/json"}
PROBLEMS: list[tuple[str, str | None, str, str, dict[str, str], bytes | None, int]] = [
    ("unknown path", None, "GET", "/v1/nowhere", {}, None, 404),
    ("wrong method", None, "DELETE", "/v1/datasets", {}, None, 405),
    ("no key", None, "GET", "/v1/datasets", {}, None, 401),
    ("bad key", None, "GET", "/v1/datasets", {"Authorization": "Bearer cvk_x_y"}, None, 401),
    ("wrong role", "consumer", "GET", "/v1/dpo/outbox", {}, None, 403),
    ("repeated query", "provider", "GET", "/v1/datasets?limit=1&limit=2", {}, None, 422),
    ("malformed JSON", "provider", "POST", "/v1/datasets", JSON, b"{", 422),
    ("not an object", "provider", "POST", "/v1/datasets", JSON, b"[]", 422),
    ("nested too deep", "provider", "POST", "/v1/datasets", JSON, b"[" * 40 + b"]" * 40, 422),
    ("declared too large", None, "POST", "/v1/datasets", JSON, b"x" * (20 * 1024), 413),
]


@pytest.mark.parametrize(
    ("what", "role", "method", "url", "headers", "body", "status"),
    PROBLEMS,
    ids=[p[0] for p in PROBLEMS],
)
def test_every_problem_has_a_detail(
    client: TestClient,
    make_key: MakeKey,
    what: str,
    role: str | None,
    method: str,
    url: str,
    headers: dict[str, str],
    body: bytes | None,
    status: int,
) -> None:
    if role is not None:
        headers = {**headers, "Authorization": make_key(role)["Authorization"]}
    r = client.request(method, url, headers=headers, content=body)
    assert r.status_code == status, (what, r.text)
    assert r.headers["content-type"] == "application/problem+json"
    problem = r.json()
    assert problem["title"] and problem["detail"].strip(), (what, problem)
    assert problem["detail"] != problem["title"], (what, problem)


def test_a_body_over_the_limit_while_streaming_has_a_detail(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(20):
            yield b" " * 1024

    r = client.post("/v1/datasets", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert "bytes" in r.json()["detail"]


def test_a_body_that_stops_arriving_is_a_408_with_a_detail(
    api_settings: Settings, api_database_url: str
) -> None:
    """Driven at the ASGI level: the body's first chunk arrives, the rest never does."""
    settings = api_settings.model_copy(update={"body_idle_timeout_s": 0.2})
    app = create_app(settings, database_url=api_database_url)
    sent: list[Message] = []
    chunks: Iterator[Message] = iter([{"type": "http.request", "body": b"{", "more_body": True}])

    async def receive() -> Message:
        chunk = next(chunks, None)
        if chunk is None:
            await anyio.sleep_forever()
        return chunk or {}

    async def send(message: Message) -> None:
        sent.append(message)

    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/datasets",
        "raw_path": b"/v1/datasets",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json")],
        "client": ("127.0.0.1", 1),
        "server": ("testserver", 80),
        "state": {},
    }

    async def call() -> None:
        with anyio.fail_after(30):  # a generous bound, so a regression fails instead of hanging
            await app(scope, receive, send)

    anyio.run(call)
    assert sent[0]["status"] == 408
    problem = json.loads(b"".join(m.get("body", b"") for m in sent[1:]))
    assert "stopped arriving" in problem["detail"]


def test_a_client_that_left_gets_a_problem_with_a_detail() -> None:
    """Nobody reads it, but it has the shape of every other problem."""
    app = FastAPI()
    errors.install(app)

    @app.get("/gone")
    def gone() -> None:
        raise ClientDisconnect()

    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.get("/gone").json()["detail"]


# -- malformed JSON ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        '{"name": "meters" "category": "energy"}',
        '{\n  "name": "meters",\n  "category": "energy",\n  "purposes": ["billing",]\n}',
        '{"name": "na\u00efve", "category": energy}',
        '{"name": "meters"',
    ],
    ids=["missing comma", "trailing comma on line 4", "bare word after a non-ASCII char", "cut"],
)
def test_malformed_json_names_the_line_and_column(
    client: TestClient, make_key: MakeKey, raw: str
) -> None:
    with pytest.raises(json.JSONDecodeError) as parsed:
        json.loads(raw)
    expected = f"line {parsed.value.lineno}, column {parsed.value.colno}"
    r = client.post(
        "/v1/datasets",
        content=raw.encode(),
        headers={**make_key("provider"), "content-type": "application/json"},
    )
    assert r.status_code == 422
    problem = r.json()
    assert problem["detail"].startswith("the body is not JSON: "), problem
    assert problem["detail"].endswith(expected), problem
    assert (problem["line"], problem["column"]) == (parsed.value.lineno, parsed.value.colno)
    assert "meters" not in r.text and "energy" not in r.text  # nothing of the body comes back


def test_a_json_body_that_is_not_utf8_says_so(client: TestClient) -> None:
    r = client.post(
        "/v1/datasets",
        content=b'{"name": "caf\xe9"}',
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 422
    assert r.json()["detail"] == "the body is not JSON: it is not valid utf-8 (byte 14)"


@pytest.mark.parametrize(
    ("error", "down"),
    [
        (psycopg.errors.AdminShutdown("terminating connection"), True),  # 57P01
        (psycopg.errors.TooManyConnections("too many clients"), True),  # 53300
        (psycopg.OperationalError("connection refused"), True),  # no SQLSTATE: client side
        (psycopg.InterfaceError("the connection is closed"), True),
        (psycopg.errors.UndefinedTable("no such table"), False),  # a bug of ours: a 500
        (psycopg.errors.UniqueViolation("duplicate"), False),
        (ValueError("not a database error"), False),
    ],
)
def test_the_driver_s_own_errors_are_classified_as_sqlalchemy_s_are(
    error: Exception, down: bool
) -> None:
    """The event loop's reads raise psycopg's errors unwrapped (vault/db.py `AsyncPool`): the
    database gone is a 503, a statement it refused a 500, as for the engine's."""
    assert errors.database_down(error) is down


# -- refused input is not echoed back whole -------------------------------------------------------


class _Cat(BaseModel):
    type: Literal["cat"]


class _Dog(BaseModel):
    type: Literal["dog"]


@pytest.fixture()
def echoing() -> Iterator[TestClient]:
    """The bare app with a route whose body is a tagged union, as the drafts route's is: pydantic
    quotes an unknown tag in its message."""
    app = FastAPI()
    errors.install(app)

    @app.post("/pets")
    def pets(pet: Annotated[_Cat | _Dog, Body(discriminator="type")]) -> str:
        return pet.type

    @app.get("/things/{thing}")
    def things(thing: int) -> int:
        return thing

    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def test_a_long_path_is_not_echoed_whole_in_instance(echoing: TestClient) -> None:
    """A 60 KB path, refused (422 for a bad id, 404 for no route), comes back cut, with how much
    was left out, not as a 60 KB answer."""
    marker = "MARKER" + "W" * 60_000
    for path in (f"/things/{marker}", f"/nowhere/{marker}"):
        r = echoing.get(path)
        assert r.status_code in (404, 422), r.text
        assert r.headers["content-type"] == "application/problem+json"
        assert len(r.content) < 2_000, len(r.content)
        instance = r.json()["instance"]
        assert instance.startswith(path[: errors.PATH_CHARS_MAX])
        assert instance.endswith(f"…(+{len(path) - errors.PATH_CHARS_MAX})")


def test_a_short_path_is_echoed_as_it_is(echoing: TestClient) -> None:
    r = echoing.get("/things/abc")
    assert r.status_code == 422 and r.json()["instance"] == "/things/abc"


def test_an_unknown_tag_is_not_quoted_whole(echoing: TestClient) -> None:
    """pydantic's message for an unknown tag quotes the tag: a 10 KB tag must not come back
    whole, in `detail` or in `errors`."""
    tag = "MARKER-" + "V" * 10_000
    r = echoing.post("/pets", json={"type": tag})
    assert r.status_code == 422, r.text
    assert len(r.content) < 2_000, len(r.content)
    assert "V" * (errors.MSG_CHARS_MAX + 1) not in r.text
    assert "union_tag_invalid" in r.text  # the refusal still names its reason
    short = echoing.post("/pets", json={"type": "bird"})
    assert "'bird'" in short.json()["errors"][0]["msg"]  # a short message is kept whole


def test_a_bug_s_log_line_masks_keys_and_cuts_the_path(
    bare: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    """The 500's log line names the path, but a subject's pseudonym in it is masked and a
    60 KB path is cut: a log outlives an erasure, and the path is the caller's input."""
    pseudonym = "ab" * 32
    caplog.set_level("ERROR")
    r = bare.get(f"/boom/{pseudonym}/" + "W" * 60_000)
    assert r.status_code == 500
    logged = "\n".join(rec.getMessage() for rec in caplog.records)
    assert "/boom/<key>/WWW" in logged and pseudonym not in logged
    masked = len("/boom/<key>/") + 60_000
    assert len(logged) < 1_000 and f"…(+{masked - errors.PATH_CHARS_MAX})" in logged
