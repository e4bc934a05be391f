"""The pool checks a connection only when it sat idle: a busy pool costs no round trip per
checkout, and a connection the server dropped while idle is replaced before anyone uses it."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, exc, text

from vault import db


def _backend(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(text("SELECT pg_backend_pid()")).scalar_one())


def _terminate(admin: Engine, pid: int) -> None:
    with admin.connect() as connection:
        assert connection.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid}).scalar()


def test_a_connection_dropped_while_idle_is_replaced_before_use(
    database_url: str, engine: Engine
) -> None:
    pooled = db.make_engine(database_url, pool_size=1, idle_ping_s=0.0)
    try:
        first = _backend(pooled)
        _terminate(engine, first)
        # The checkout pings the idle connection, finds it dead and opens another.
        assert _backend(pooled) != first
    finally:
        pooled.dispose()


def test_a_recently_used_connection_is_not_pinged(database_url: str, engine: Engine) -> None:
    pooled = db.make_engine(database_url, pool_size=1, idle_ping_s=3600.0)
    try:
        first = _backend(pooled)
        _terminate(engine, first)
        # No ping: the dead connection is handed out and the statement fails ...
        with pytest.raises(exc.OperationalError), pooled.connect() as connection:
            connection.execute(text("SELECT 1"))
        # ... and the disconnect empties the pool, so the next checkout reconnects.
        assert _backend(pooled) != first
    finally:
        pooled.dispose()
