"""The database gone: every route that needs it answers 503 problem+json with Retry-After,
never a 500, and the API recovers by itself once it is back (the WAN scenarios restart a real
PostgreSQL under load: tests/netns/test_wan.py).

Here the server is a port where nothing listens, the way a stopped or restarting PostgreSQL
looks to a client: the connection is refused before any SQL.
"""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from api.http.app import create_app
from api.http.errors import PROBLEM_JSON
from api.http.settings import Settings
from tests.conftest import free_port

# Well formed, so authentication asks the database for it.
TOKEN = "cvk_0123456789abcdef_" + "A" * 43


def test_routes_answer_503_problem_json_while_the_database_is_unreachable(
    tmp_path: Path,
) -> None:
    url = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/civis?connect_timeout=2"
    app = create_app(Settings(data_dir=tmp_path), database_url=url)
    with TestClient(app, raise_server_exceptions=False) as client:
        for method, path in (("GET", "/v1/datasets"), ("GET", "/readyz")):
            answer = client.request(method, path, headers={"Authorization": f"Bearer {TOKEN}"})
            assert answer.status_code == 503, (path, answer.text)
            assert answer.headers["content-type"] == PROBLEM_JSON
            body = answer.json()
            assert body["status"] == 503
            assert "127.0.0.1" not in answer.text  # no address, no SQL, no driver message
        assert answer.json()["title"] == "Not ready"
        down = client.get("/v1/datasets", headers={"Authorization": f"Bearer {TOKEN}"})
        assert down.json()["title"] == "Database unavailable"
        assert down.headers["Retry-After"] == "2"
        assert client.get("/healthz").status_code == 200  # the process itself is alive
