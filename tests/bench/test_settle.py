"""A benchmark's phase starts from a PostgreSQL at rest: checkpointed when the role may, and
with the server's processes idle when it runs on this machine."""

from __future__ import annotations

import uuid

import psycopg
from sqlalchemy import make_url

from bench.settle import settle
from tests.conftest import PgServer

REDO = "SELECT redo_lsn FROM pg_control_checkpoint()"


def _conninfo(url: str, database: str | None = None) -> str:
    parsed = make_url(url).set(drivername="postgresql")
    if database is not None:
        parsed = parsed.set(database=database)
    return parsed.render_as_string(hide_password=False)


def test_a_local_server_is_checkpointed_and_waited_for(pg_server: PgServer) -> None:
    url = pg_server.create_database("civis_settle")
    try:
        with psycopg.connect(_conninfo(url), autocommit=True) as conn:
            conn.execute(
                "CREATE TABLE filler AS "
                "SELECT g, repeat('x', 500) AS pad FROM generate_series(1, 20000) AS g"
            )
            before = conn.execute(REDO).fetchone()
            assert settle(url) == {"checkpointed": True, "idle": True}
            after = conn.execute(REDO).fetchone()
        assert before is not None and after is not None and after[0] > before[0]
    finally:
        pg_server.drop_database(url)


def test_a_role_that_may_not_checkpoint_is_measured_as_it_is(pg_server: PgServer) -> None:
    url = pg_server.create_database("civis_settle")
    role = f"civis_settle_{uuid.uuid4().hex[:8]}"
    admin = _conninfo(url, database="postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN")
    try:
        state = settle(make_url(url).set(username=role, password=None).render_as_string())
        assert state == {"checkpointed": False, "idle": True}
    finally:
        pg_server.drop_database(url)
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"DROP ROLE IF EXISTS {role}")
