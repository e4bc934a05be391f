"""`DirectJsonRoute`: a plain request skips FastAPI's handler, and every other request gets
exactly the answer FastAPI's handler gives.

Two apps serve one endpoint, one on a `BoundedJsonRoute` (FastAPI's handler) and one on a
`DirectJsonRoute`, with the same error handlers and body limit; each request goes to both and
the answers must match byte for byte. The callers' keys are remembered by a stand-in for the
process's `VerifiedKeys` (the real one is exercised against PostgreSQL by the access tests).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from typing import Annotated, Any, ClassVar

import fastapi.dependencies.utils
import fastapi.routing
import pytest
from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.testclient import TestClient
from pydantic import Field

from api.http import bodies, errors
from api.http.bodies import JSON_DEPTH_MAX, BoundedJsonRoute
from api.http.deps import Consumer, require_role, strict_query
from api.http.direct import DirectJsonRoute
from api.http.middleware import BodyLimit
from api.http.schemas import StrictIn
from api.services.keys import KeyExpired, Member

JSON_MAX_BYTES = 4096
CONSUMER = "cvk_consumer01_secret"
PROVIDER = "cvk_provider01_secret"
FORGOTTEN = "cvk_consumer02_secret"  # a valid consumer key this process does not remember
EXPIRED = "cvk_consumer03_secret"  # remembered, and refused as expired (KeyExpired, 401)


class ProbeIn(StrictIn):
    dataset_id: str = Field(min_length=1, max_length=64)
    subjects: list[str] | None = Field(default=None, max_length=3)


class _Keys:
    """`VerifiedKeys` as the routes call it: CONSUMER and PROVIDER remembered, FORGOTTEN
    verified only through `authenticate` (the database's turn), anything else unknown."""

    members: ClassVar[dict[str, Member]] = {
        CONSUMER: Member(member_id="c1", role="consumer", key_id="consumer01"),
        PROVIDER: Member(member_id="p1", role="provider", key_id="provider01"),
    }

    def remembered(self, token: str) -> Member | None:
        if token == EXPIRED:
            raise KeyExpired("consumer03", dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
        return self.members.get(token)

    def authenticate(self, session: object, token: str) -> Member | None:
        if token == EXPIRED:
            return self.remembered(token)
        if token == FORGOTTEN:
            return Member(member_id="c2", role="consumer", key_id="consumer02")
        return self.members.get(token)


class _NoDatabase:
    """The session `_released_member` opens around `authenticate`: nothing to query here."""

    def __call__(self) -> _NoDatabase:
        return self

    def __enter__(self) -> _NoDatabase:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def begin(self) -> _NoDatabase:
        return self


async def probe(body: ProbeIn, member: Consumer, request: Request) -> Response:
    """Echo what the endpoint was given."""
    given = {"body": body.model_dump(), "member": member.member_id}
    return Response(json.dumps(given), media_type="application/json")


def _app(route_class: type[fastapi.routing.APIRoute]) -> FastAPI:
    router = APIRouter(dependencies=[Depends(strict_query)], route_class=route_class)
    router.post("/probe")(probe)
    app = FastAPI()
    errors.install(app)
    app.include_router(router)
    app.add_middleware(
        BodyLimit,
        upload_max_bytes=JSON_MAX_BYTES,
        json_max_bytes=JSON_MAX_BYTES,
        idle_timeout_s=5,
        upload_timeout_s=5,
        json_timeout_s=5,
    )
    app.state.verified_keys = _Keys()
    app.state.member_standing = None
    app.state.sessions = _NoDatabase()
    return app


@pytest.fixture(scope="module")
def clients() -> Iterator[tuple[TestClient, TestClient]]:
    with (
        TestClient(_app(BoundedJsonRoute)) as general,
        TestClient(_app(DirectJsonRoute)) as direct,
    ):
        yield general, direct


@pytest.fixture
def solves(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many times FastAPI's handler solved a request's dependencies."""
    calls: list[int] = []
    solve = fastapi.dependencies.utils.solve_dependencies

    async def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return await solve(*args, **kwargs)

    monkeypatch.setattr(fastapi.routing, "solve_dependencies", counted)
    return calls


def _headers(key: str | None, content_type: str | None = "application/json") -> dict[str, str]:
    headers = {} if content_type is None else {"Content-Type": content_type}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    return headers


def _chunks(data: bytes) -> Iterator[bytes]:
    """A body sent without Content-Length, so the body limit finds it while it streams."""
    for i in range(0, len(data), 512):
        yield data[i : i + 512]


PLAIN = json.dumps({"dataset_id": "d1", "subjects": ["a"]}).encode()
DEEP = ("[" * (JSON_DEPTH_MAX + 5) + "]" * (JSON_DEPTH_MAX + 5)).encode()
# (what it shows, key, content type, query, body): each refused, or answered the long way.
CASES: list[tuple[str, str | None, str | None, str, bytes]] = [
    ("a query string", CONSUMER, "application/json", "?x=1", PLAIN),
    ("a repeated query", CONSUMER, "application/json", "?a=1&a=2", PLAIN),
    ("no content type", CONSUMER, None, "", PLAIN),
    ("a charset parameter", CONSUMER, "application/json; charset=utf-8", "", PLAIN),
    ("another content type", CONSUMER, "text/plain", "", PLAIN),
    ("a +json subtype", CONSUMER, "application/merge-patch+json", "", PLAIN),
    ("no key", None, "application/json", "", PLAIN),
    ("an unknown key", "cvk_nobody01_secret", "application/json", "", PLAIN),
    ("a key to look up", FORGOTTEN, "application/json", "", PLAIN),
    ("another role", PROVIDER, "application/json", "", PLAIN),
    ("an empty body", CONSUMER, "application/json", "", b""),
    ("broken JSON", CONSUMER, "application/json", "", b'{"dataset_id": '),
    ("JSON nested too deep", CONSUMER, "application/json", "", DEEP),
    ("a body that is not UTF-8", CONSUMER, "application/json", "", b'{"dataset_id": "\xff"}'),
    ("an unknown field", CONSUMER, "application/json", "", b'{"dataset_id": "d", "x": 1}'),
    ("a missing field", CONSUMER, "application/json", "", b'{"subjects": []}'),
    ("a wrong type", CONSUMER, "application/json", "", b'{"dataset_id": 7}'),
    (
        "too many items",
        CONSUMER,
        "application/json",
        "",
        b'{"dataset_id":"d","subjects":["a","b","c","d"]}',
    ),
    ("a JSON array", CONSUMER, "application/json", "", b"[]"),
    # Refused twice over: FastAPI parses the body before it checks the caller, and validates
    # it after.
    ("an expired key and broken JSON", EXPIRED, "application/json", "", b'{"dataset_id": '),
    ("an expired key and a bad body", EXPIRED, "application/json", "", b'{"dataset_id": 7}'),
    ("an expired key", EXPIRED, "application/json", "", PLAIN),
    ("another role and a bad body", PROVIDER, "application/json", "", b'{"x": 1}'),
    ("a bare string", CONSUMER, "application/json", "", b'"d1"'),
]


@pytest.mark.parametrize(("shows", "key", "content_type", "query", "body"), CASES)
def test_every_other_request_gets_fastapis_answer(
    clients: tuple[TestClient, TestClient],
    shows: str,
    key: str | None,
    content_type: str | None,
    query: str,
    body: bytes,
) -> None:
    general, direct = clients
    answers = [
        c.post("/probe" + query, content=body, headers=_headers(key, content_type))
        for c in (general, direct)
    ]
    assert (answers[1].status_code, answers[1].content) == (
        answers[0].status_code,
        answers[0].content,
    ), shows


@pytest.mark.parametrize("key", [CONSUMER, EXPIRED])
def test_a_body_past_the_limit_gets_the_same_413(
    clients: tuple[TestClient, TestClient], key: str
) -> None:
    big = json.dumps({"dataset_id": "d", "subjects": ["x" * JSON_MAX_BYTES]}).encode()
    answers = [c.post("/probe", content=_chunks(big), headers=_headers(key)) for c in clients]
    assert answers[0].status_code == 413
    assert (answers[1].status_code, answers[1].content) == (413, answers[0].content)


def test_a_plain_request_skips_the_solver_and_gets_the_same_answer(
    clients: tuple[TestClient, TestClient], solves: list[int]
) -> None:
    general, direct = clients
    first = general.post("/probe", content=PLAIN, headers=_headers(CONSUMER))
    assert len(solves) == 1
    second = direct.post("/probe", content=PLAIN, headers=_headers(CONSUMER))
    assert len(solves) == 1  # the short way
    assert first.status_code == second.status_code == 200
    assert (
        first.json()
        == second.json()
        == {
            "body": {"dataset_id": "d1", "subjects": ["a"]},
            "member": "c1",
        }
    )


def test_a_key_to_look_up_takes_fastapis_handler(
    clients: tuple[TestClient, TestClient], solves: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """...which takes the body as the short way parsed it, not parsed again."""
    _, direct = clients
    parses: list[bytes | str] = []
    parse = bodies.loads_bounded

    def counted(raw: bytes | str, *args: Any, **kwargs: Any) -> Any:
        parses.append(raw)
        return parse(raw, *args, **kwargs)

    monkeypatch.setattr(bodies, "loads_bounded", counted)  # what `Request.json` calls
    answer = direct.post("/probe", content=PLAIN, headers=_headers(FORGOTTEN))
    assert answer.status_code == 200 and answer.json()["member"] == "c2"
    assert len(solves) == 1 and parses == []


def _route(endpoint: Any) -> None:
    router = APIRouter(route_class=DirectJsonRoute)
    router.post("/other")(endpoint)


def test_an_endpoint_of_another_shape_is_refused_when_the_app_is_built() -> None:
    async def with_query(body: ProbeIn, member: Consumer, request: Request, q: str) -> Response:
        return Response()

    async def without_caller(body: ProbeIn, request: Request) -> Response:
        return Response()

    def some_member() -> Member:
        return _Keys.members[CONSUMER]

    async def other_caller(
        body: ProbeIn, member: Annotated[Member, Depends(some_member)], request: Request
    ) -> Response:
        return Response()

    async def two_roles(
        body: ProbeIn,
        member: Consumer,
        dpo: Annotated[Member, Depends(require_role("dpo"))],
        request: Request,
    ) -> Response:
        return Response()

    for endpoint in (with_query, without_caller, other_caller, two_roles):
        with pytest.raises(TypeError, match="not a"):
            _route(endpoint)
    _route(probe)  # the shape it takes

    async def audited() -> None:
        return None

    # A dependency the short way would skip: on the route, or on its router.
    with pytest.raises(TypeError, match="not a"):
        APIRouter(route_class=DirectJsonRoute).post("/o", dependencies=[Depends(audited)])(probe)
    with pytest.raises(TypeError, match="not a"):
        APIRouter(route_class=DirectJsonRoute, dependencies=[Depends(audited)]).post("/o")(probe)
    APIRouter(route_class=DirectJsonRoute, dependencies=[Depends(strict_query)]).post("/o")(probe)
