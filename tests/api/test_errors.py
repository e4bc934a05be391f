"""Every error leaves as RFC 9457 problem+json, and says nothing internal or personal."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api import errors
from vault.errors import InvalidRecord, RecordErased


@pytest.fixture()
def bare() -> Iterator[TestClient]:
    """An app with only the error handlers and routes that raise, no database."""
    app = FastAPI()
    errors.install(app)

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("SELECT * FROM records WHERE subject_id = 'jane.doe@example.org'")

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


def test_a_bug_is_a_500_that_says_nothing(
    bare: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    r = bare.get("/boom")
    assert r.status_code == 500
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json() == {
        "type": "about:blank",
        "title": "Internal error",
        "status": 500,
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
    assert "jane" not in r.text
