"""API fixtures: the real app (lifespan, PostgreSQL, key store) behind Starlette's TestClient.

The app commits for real (one transaction per request), so the API tests get a database of
their own (`api_database_url`): what they commit never shows up in the vault tests' listings
or retention sweeps. Inside it, every test makes its own members with unique ids and never
depends on what other tests stored.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from api.http.app import create_app
from api.http.settings import Settings
from api.services.keys import create_key
from tests.api.ledger_env import (  # noqa: F401  (fixtures)
    ledger_cluster,
    ledger_database_url,
    ledger_env,
)
from tests.conftest import PgServer
from vault import db

MakeKey = Callable[..., dict[str, str]]


@pytest.fixture(scope="module")
def api_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    data_dir: Path = tmp_path_factory.mktemp("civis-api")
    return Settings(
        environment="test",
        data_dir=data_dir,
        record_size_max_bytes=4096,
        upload_batch_rows=50,
        upload_body_max_bytes=256 * 1024,
        json_body_max_bytes=16 * 1024,
        # A revoked key is refused within this bound: short, so a test waits little for it.
        api_key_cache_s=0.5,
    )


@pytest.fixture(scope="session")
def api_database_url(pg_server: PgServer) -> Iterator[str]:
    url = pg_server.create_database("civis_api")
    db.upgrade(url)
    yield url
    pg_server.drop_database(url)


@pytest.fixture(scope="module")
def client(api_settings: Settings, api_database_url: str) -> Iterator[TestClient]:
    app = create_app(api_settings, database_url=api_database_url)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(scope="module")
def make_key(api_database_url: str) -> Iterator[MakeKey]:
    """Issue a committed API key; returns the Authorization header (and the member id)."""
    engine = db.make_engine(api_database_url, pool_size=1)

    def make(role: str, member_id: str | None = None) -> dict[str, str]:
        member = member_id or f"{role}-{uuid.uuid4().hex[:12]}"
        with Session(engine) as session:
            issued = create_key(session, member_id=member, role=role)
            session.commit()
        return {"Authorization": f"Bearer {issued.token}", "X-Test-Member": member}

    yield make
    engine.dispose()
