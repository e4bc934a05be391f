"""/healthz, /readyz without a database, and /metrics by route template (never raw ids)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import make_url

from api.http.app import create_app
from api.http.settings import Settings
from tests.api.conftest import MakeKey


def test_readyz_is_503_when_the_database_is_gone(api_database_url: str, tmp_path: Path) -> None:
    missing = make_url(api_database_url).set(database="civis_no_such_database")
    app = create_app(
        Settings(data_dir=tmp_path), database_url=missing.render_as_string(hide_password=False)
    )
    with TestClient(app) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        r = client.get("/readyz")
        assert r.status_code == 503
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["detail"] == "database: unreachable"
        assert "civis_no_such_database" not in r.text


def test_metrics_count_by_route_template(client: TestClient, make_key: MakeKey) -> None:
    p = make_key("provider")
    body = {
        "name": "metered",
        "category": "energy",
        "purposes": ["billing"],
        "retention_days": 30,
        "legal_basis": "contract",
    }
    ds = client.post("/v1/datasets", json=body, headers=p).json()["id"]
    assert client.get(f"/v1/datasets/{ds}", headers=p).status_code == 200
    assert client.get("/v1/datasets", headers={}).status_code == 401
    text = client.get("/metrics").text
    assert 'route="/v1/datasets/{dataset_id}",status="200"' in text
    assert 'method="GET",route="/v1/datasets",status="401"' in text
    assert "civis_http_request_duration_seconds_bucket" in text
    assert ds not in text  # ids (and anything personal in a path) never become labels


def test_a_chunked_json_body_over_the_limit_is_413(client: TestClient, make_key: MakeKey) -> None:
    p = make_key("provider")

    def chunks() -> Iterator[bytes]:
        yield b'{"name": "'
        for _ in range(40):
            yield b"x" * 1024
        yield b'"}'

    r = client.post(
        "/v1/datasets",
        content=chunks(),
        headers={**p, "content-type": "application/json"},
    )
    assert r.status_code == 413
    assert r.headers["content-type"] == "application/problem+json"
