"""Engines, sessions and migrations.

Why here: one place builds the engine (in the app's lifespan or a CLI command, never at
import) and one place runs `alembic upgrade head`, so tests, `civis-vault up` and the
sweeper all build the schema the same way. Services take a Session and may `flush()`;
only the caller that owns the transaction commits.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psycopg
from alembic import command
from alembic.config import Config
from psycopg import AsyncConnection
from sqlalchemy import Engine, create_engine, event, exc, make_url, text
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry, NullPool


def _migrations_dir() -> Path:
    """The alembic scripts: `vault/_migrations` in an installed wheel, else the checkout's.

    Why two places: the scripts live in the repository's top-level `migrations/` folder, and
    the wheel ships them inside the vault (pyproject.toml) so that no top-level `migrations` package
    of ours can collide with another distribution's. A source checkout (the editable dev
    install, or the repository on PYTHONPATH) has no `vault/_migrations` and reads the folder
    beside `vault/`; the packaged copy is looked for first because beside an installed `vault/`
    lies site-packages, where a `migrations/` would be someone else's.
    """
    here = Path(__file__).resolve().parent
    packaged = here / "_migrations"
    return packaged if (packaged / "env.py").is_file() else here.parent / "migrations"


MIGRATIONS_DIR = _migrations_dir()


# A pooled connection idle longer than this is checked with a round trip before it is used.
IDLE_PING_S = 10.0


def make_engine(
    url: str,
    *,
    pool_size: int = 10,
    max_overflow: int | None = None,
    idle_ping_s: float = IDLE_PING_S,
) -> Engine:
    """A pooled engine that checks only connections that sat idle; `max_overflow` connections
    beyond `pool_size` while every pooled one is busy (default: as many again).

    Why not SQLAlchemy's `pool_pre_ping`: it costs a round trip on every checkout, one per
    request, on a pool whose connections were in use a moment ago. A connection idle for
    `idle_ping_s` (the database may have restarted, or a firewall dropped it) is checked and
    replaced if dead; a busy one is used as is, and if the server died under it the request
    fails with 503 and the driver's disconnect error makes the pool drop every connection of
    that generation, so the next request reconnects."""
    overflow = pool_size if max_overflow is None else max_overflow
    engine = create_engine(url, pool_size=pool_size, max_overflow=overflow)
    _ping_after_idle(engine, idle_ping_s)
    return engine


def _ping_after_idle(engine: Engine, idle_ping_s: float) -> None:
    @event.listens_for(engine, "checkin")
    def checked_in(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def checked_out(dbapi_connection: Any, record: ConnectionPoolEntry, proxy: Any) -> None:
        since = record.info.get("idle_since")
        if since is None or time.monotonic() - since < idle_ping_s:
            return
        try:
            cursor = dbapi_connection.cursor()
            try:
                cursor.execute("SELECT 1")
            finally:
                cursor.close()
            dbapi_connection.rollback()
        except Exception:
            # The pool discards this connection and checks out another (or a new one).
            raise exc.DisconnectionError() from None


# How long a request waits for a free connection: SQLAlchemy's pool default, for both pools.
POOL_TIMEOUT_S = 30.0


class AsyncPool:
    """Connections for the reads an event loop makes itself, each statement committing on its
    own (autocommit, as `statement_session`): the consented access's read, without a thread
    to hand it to and back (docs/BENCHMARKS.md, "Access").

    It keeps the engine's policy: at most `size` connections, a wait of `timeout_s` for one
    (then SQLAlchemy's `TimeoutError`, which the API answers with a 503 like the engine's), a
    round trip to check a connection only after it sat idle `idle_ping_s`, and, when a use
    ends on a broken connection (the server restarted or went away), every idle one dropped
    with it, as the engine drops a disconnected pool, so the next request reconnects. A
    connection whose use ended in anything but an idle session is closed, never reused (a
    statement the task's cancellation interrupted is cancelled on the server by psycopg,
    which leaves the connection idle). The connection's parameters are the engine's own
    (`create_connect_args` of the psycopg dialect: host, socket, options, password, as the
    engine passes them). One pool per event loop: psycopg's asynchronous connections belong
    to the loop that made them."""

    def __init__(
        self,
        url: str,
        *,
        size: int = 10,
        timeout_s: float = POOL_TIMEOUT_S,
        idle_ping_s: float = IDLE_PING_S,
    ) -> None:
        parsed = make_url(url)
        _, self._connect_args = parsed.get_dialect()().create_connect_args(parsed)
        self._idle: list[tuple[AsyncConnection[Any], float]] = []  # (connection, idle since)
        self._slots = asyncio.Semaphore(size)
        self._timeout_s = timeout_s
        self._idle_ping_s = idle_ping_s
        self._closed = False

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[AsyncConnection[Any]]:
        """A connection for the duration of the block, returned to the pool after it."""
        if self._slots.locked():  # `wait_for` makes a task of the wait: only when one waits
            try:
                await asyncio.wait_for(self._slots.acquire(), self._timeout_s)
            except TimeoutError:
                raise exc.TimeoutError("no database connection free in time") from None
        else:
            await self._slots.acquire()
        try:
            if self._closed:
                raise exc.TimeoutError("the database pool is closed")
            conn = await self._checkout()
            try:
                yield conn
            finally:
                await self._checkin(conn)
        finally:
            self._slots.release()

    async def _checkout(self) -> AsyncConnection[Any]:
        """The most recently used idle connection (checked first if it idled long), else a
        new one."""
        while self._idle:
            conn, since = self._idle.pop()
            if time.monotonic() - since < self._idle_ping_s:
                return conn
            try:
                await conn.execute("SELECT 1")
            except psycopg.Error:
                await conn.close()  # the server restarted, or the network dropped it
                continue
            except BaseException:
                await conn.close()  # cancelled mid-check: its state is unknown
                raise
            return conn
        return await AsyncConnection.connect(**{**self._connect_args, "autocommit": True})

    async def _checkin(self, conn: AsyncConnection[Any]) -> None:
        if conn.broken:
            # The server went away under it: the idle ones are as dead, and each would fail
            # a request of its own before being dropped.
            idle, self._idle = self._idle, []
            for other, _ in idle:
                await other.close()
        idle_status = psycopg.pq.TransactionStatus.IDLE
        if self._closed or conn.closed or conn.info.transaction_status != idle_status:
            await conn.close()
        else:
            self._idle.append((conn, time.monotonic()))

    @property
    def saturated(self) -> bool:
        """Every connection is in use: a request now would wait for one."""
        return self._slots.locked()

    async def close(self) -> None:
        """Close the idle connections; one in use is closed when its use ends, and a request
        still waiting for one gets none."""
        self._closed = True
        idle, self._idle = self._idle, []
        for conn, _ in idle:
            await conn.close()


def driver_connection(session: Session) -> psycopg.Connection[Any]:
    """The psycopg connection under `session`, inside the session's transaction: for what
    SQLAlchemy does not reach (COPY, binary parameters and rows)."""
    connection = session.connection().connection.driver_connection
    if not isinstance(connection, psycopg.Connection):
        raise TypeError("the vault runs on PostgreSQL through psycopg")
    return connection


# What an upload's connection asks the kernel to queue: about 60 ms of the server's COPY work
# on 1 KiB records. Linux caps it at net.core.wmem_max (208 KiB unless raised; 4 MiB on these
# machines) and doubles it for its own bookkeeping.
COPY_SEND_BUFFER_BYTES = 4 * 1024 * 1024


def widen_send_buffer(fd: int, size: int = COPY_SEND_BUFFER_BYTES) -> None:
    """Let the kernel queue up to `size` bytes of output on `fd` when it is a Unix socket.

    Why: a COPY keeps PostgreSQL busy only while rows wait in the socket for it. A Unix
    socket's send buffer is fixed at net.core.wmem_default (208 KiB on most systems, about
    3 ms of the server's work on 1 KiB records), so while the uploader seals its next chunk
    the server empties it and waits: the upload then takes the sum of the two sides' work
    rather than the larger. TCP sizes its buffers itself, so a TCP socket is left alone. A
    connection keeps the wider buffer when it goes back to its pool: it is a ceiling, and
    memory is taken only by data queued. Where the socket cannot be changed (no descriptor
    left to duplicate it with), the upload goes on at the default buffer's pace."""
    try:
        with socket.socket(fileno=os.dup(fd)) as sock:
            if sock.family != socket.AF_UNIX:
                return
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) < size:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
    except OSError:
        return


def driver_rows(session: Session, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
    """The rows of `sql` (psycopg's placeholders: `%(name)b` sends a value in binary) run on
    the session's connection, inside its transaction.

    Why binary for bulk parameters: the driver adapts a list element by element in Python,
    1-5 µs an element in text format, ~0.3 µs in binary."""
    with driver_connection(session).cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)


@contextlib.contextmanager
def statement_session(sessions: sessionmaker[Session]) -> Iterator[Session]:
    """A session whose every statement commits on its own (PostgreSQL's autocommit): no BEGIN
    and no COMMIT around it, two round trips fewer.

    For reads that need no snapshot across statements. The default READ COMMITTED
    transaction gives each statement a snapshot of its own anyway, so for them it bought only
    the two round trips: a consented answer pages by (upload, leaf) position, which no write
    moves, and an erasure between two pages leaves the later page's erased records out, as if
    the read came after it. A read that needs one snapshot takes REPEATABLE READ (the
    streams of recorded reads do); writing in this session would commit every statement
    alone: use `sessions.begin()`."""
    engine = sessions.kw["bind"]
    with (
        engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection,
        sessions(bind=connection) as session,
    ):
        yield session


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    # Alembic's ini interpolation treats % specially.
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


# The advisory lock every `upgrade` holds while it migrates ("CIVM").
MIGRATION_LOCK_KEY = 0x4349564D


def upgrade(url: str, revision: str = "head") -> None:
    """Migrate to `revision`, one process at a time: several API instances starting together
    on one database would otherwise run the same DDL at once, and all but one fail (a
    duplicate table). Each waits for the lock, then finds the schema migrated and does
    nothing; the lock ends with the transaction the migration ran in."""
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.begin() as connection:
            connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
            config = alembic_config(url)
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
    finally:
        engine.dispose()


def downgrade(url: str, revision: str = "base") -> None:
    command.downgrade(alembic_config(url), revision)


@contextlib.contextmanager
def open_database(database_url: str | None, data_dir: Path) -> Iterator[str]:
    """The configured database, or the embedded one under `data_dir`; migrated to head.

    Why one helper: `civis-vault up`, `civis-vault keys rotate` and the sweeper must agree on
    which database they use when none is configured.
    """
    if database_url:
        upgrade(database_url)
        yield database_url
        return
    from vault.embedded import embedded_postgres

    with embedded_postgres(data_dir) as url:
        upgrade(url)
        yield url
