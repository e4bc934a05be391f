"""A benchmark's phase starts from a PostgreSQL at rest: checkpointed when the role may, and
with the server's processes idle when it runs on this machine; on the benchmark's own server,
with the WAL segments it will write already made."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
from sqlalchemy import make_url

from bench.settle import prepare_wal, settle
from tests.conftest import PgServer
from vault.embedded import embedded_postgres

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


@contextlib.contextmanager
def _unprivileged(pg_server: PgServer) -> Iterator[tuple[str, str]]:
    """A database of its own, and (the admin's conninfo, a URL to it as a role with no
    privilege beyond logging in)."""
    url = pg_server.create_database("civis_settle")
    role = f"civis_settle_{uuid.uuid4().hex[:8]}"
    admin = _conninfo(url, database="postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN")
    try:
        yield admin, make_url(url).set(username=role, password=None).render_as_string()
    finally:
        pg_server.drop_database(url)
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"DROP ROLE IF EXISTS {role}")


def test_a_role_that_may_not_checkpoint_is_measured_as_it_is(pg_server: PgServer) -> None:
    with _unprivileged(pg_server) as (_, as_role):
        assert settle(as_role) == {"checkpointed": False, "idle": True}


def _segments(pgdata: Path) -> set[str]:
    return {p.name for p in (pgdata / "pg_wal").iterdir() if len(p.name) == 24}


def _load(url: str, rows: int) -> None:
    """About 0.55 KB of WAL per row."""
    with psycopg.connect(_conninfo(url), autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS filler AS SELECT 0 AS g, '' AS pad WITH NO DATA")
        conn.execute(
            "INSERT INTO filler SELECT g, repeat('x', 500) FROM generate_series(1, %s) AS g",
            (rows,),
        )


def test_a_bulk_load_after_prepare_wal_makes_no_wal_segment(tmp_path: Path) -> None:
    """On a young server a bulk load makes (and zero-fills) every WAL segment it writes, the
    control below; after `prepare_wal` for as much WAL, the same load writes into segments
    made ahead and recycled by the checkpoint: no new segment file appears."""
    rows = 100_000  # ~55 MB of WAL: past three segment boundaries, whatever was made ahead
    with embedded_postgres(tmp_path / "young", "settle", delete_on_exit=True) as url:
        pgdata = tmp_path / "young" / "pg"
        settle(url)
        before = _segments(pgdata)
        _load(url, rows)
        assert len(_segments(pgdata) - before) >= 2  # the control: segments made by the load
    with embedded_postgres(tmp_path / "ready", "settle", delete_on_exit=True) as url:
        pgdata = tmp_path / "ready" / "pg"
        assert prepare_wal(url, 96 * 1024 * 1024)
        settle(url)
        before = _segments(pgdata)
        assert len(before) >= 6
        _load(url, rows)
        made = _segments(pgdata) - before
        assert not made, made


def test_prepare_wal_leaves_a_server_the_role_may_not_configure(pg_server: PgServer) -> None:
    with _unprivileged(pg_server) as (admin, as_role):
        with psycopg.connect(admin, autocommit=True) as conn:
            before = conn.execute("SHOW min_wal_size").fetchone()
        assert prepare_wal(as_role, 96 * 1024 * 1024) is False
        with psycopg.connect(admin, autocommit=True) as conn:
            assert conn.execute("SHOW min_wal_size").fetchone() == before
