"""The event loop's own reads: `Reader.by_dataset_async` on an `AsyncPool` connection reads what
`Reader.by_dataset` reads, record for record, and the pool keeps the engine's policy (one
connection reused, a dropped one replaced after idling, a broken use never handed out again, a
bounded wait that ends in the error the API answers with a 503)."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, exc, text, update
from sqlalchemy.orm import Session

from tests.vault.conftest import VaultServices, make_dataset
from vault import db, reads
from vault.models import Upload
from vault.reads import Reader, RecordOut
from vault.uploads import RecordIn


def _sync(reader: Reader, engine: Engine, dataset: uuid.UUID, **how: Any) -> list[RecordOut]:
    with Session(engine) as session:
        return list(reader.by_dataset(session, dataset, **how))


def _async(url: str, reader: Reader, dataset: uuid.UUID, **how: Any) -> list[RecordOut]:
    async def read() -> list[RecordOut]:
        pool = db.AsyncPool(url, size=1)
        try:
            async with pool.connection() as connection:
                return [
                    r
                    async for page in reader.by_dataset_async(connection, dataset, **how)
                    for r in page
                ]
        finally:
            await pool.close()

    return asyncio.run(read())


def _fill(engine: Engine, services: VaultServices) -> tuple[uuid.UUID, list[uuid.UUID]]:
    """Two anchored uploads of five subjects, two records each, one subject erased; one
    pending upload."""
    with Session(engine) as session, session.begin():
        dataset = make_dataset(session)
        subjects = [f"s{i}" for i in range(5)]
        uploads = [
            services.uploader.upload(
                session,
                dataset.id,
                [RecordIn(s, json.dumps({"u": u, "s": s}).encode()) for s in subjects * 2],
            ).upload_id
            for u in range(3)
        ]
        session.execute(update(Upload).where(Upload.id.in_(uploads[:2])).values(state="anchored"))
        services.eraser.erase_subject(
            session, "s2", dataset_id=dataset.id, reason="Art. 17", requester="dpo"
        )
        return dataset.id, uploads


def test_the_async_read_reads_what_the_read_on_a_session_reads(
    committed_engine: Engine, fresh_database_url: str, services: VaultServices
) -> None:
    dataset, uploads = _fill(committed_engine, services)
    paged = Reader(services.store)
    named = {"subjects": ["s0", "s2", "s4"], "uploads": uploads, "anchored_only": True}
    for how in (named, {"uploads": uploads}, {"subjects": ["s1"], "uploads": uploads[1:]}):
        reads._trees.__init__(reads.TREE_CACHE_LEAVES)  # type: ignore[misc]  # trees loaded anew
        expected = _sync(paged, committed_engine, dataset, **how)
        assert expected, how
        # Pages of 3 end inside an upload and across two; the trees come from the database
        # first, then from the cache the first read filled.
        for page_rows in (3, 1000):
            got = _async(fresh_database_url, paged, dataset, page_rows=page_rows, **how)
            assert got == expected, (how, page_rows)
    assert all(r.subject_id != "s2" for r in expected)
    anchored = _async(fresh_database_url, paged, dataset, **named)
    assert {r.upload_id for r in anchored} == set(uploads[:2])
    assert len(anchored) == 2 * 2 * 2  # s0 and s4, two records each, in two anchored uploads


def test_a_large_tree_is_built_from_the_database_each_time_it_is_needed(
    committed_engine: Engine, fresh_database_url: str, services: VaultServices
) -> None:
    """A tree larger than the cache's bound is not kept: each read loads and builds it."""
    dataset, uploads = _fill(committed_engine, services)
    small = reads._TreeCache(4)
    saved, reads._trees = reads._trees, small
    try:
        got = _async(fresh_database_url, Reader(services.store), dataset, uploads=uploads)
    finally:
        reads._trees = saved
    assert got == _sync(Reader(services.store), committed_engine, dataset, uploads=uploads)
    assert small.get(uploads[0], 10) is None


def _backend(pool: db.AsyncPool) -> int:
    async def pid() -> int:
        async with pool.connection() as connection:
            row = await (await connection.execute("SELECT pg_backend_pid()")).fetchone()
            assert row is not None
            return int(row[0])

    return asyncio.run(pid())


def _terminate(engine: Engine, pid: int) -> None:
    with engine.connect() as connection:
        assert connection.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid}).scalar()


def test_the_pool_reuses_a_connection_and_replaces_one_dropped_while_idle(
    database_url: str, engine: Engine
) -> None:
    pool = db.AsyncPool(database_url, size=1, idle_ping_s=3600.0)
    first = _backend(pool)
    assert _backend(pool) == first
    # Not idle long enough to be checked: the dead connection fails its statement, and the
    # failed use closes it rather than handing it out again.
    _terminate(engine, first)
    with pytest.raises(psycopg.OperationalError):
        _backend(pool)
    second = _backend(pool)
    assert second != first
    pinged = db.AsyncPool(database_url, size=1, idle_ping_s=0.0)
    third = _backend(pinged)
    _terminate(engine, third)
    assert _backend(pinged) not in (third, 0)  # the checkout's ping found it dead


def test_a_cancelled_use_leaves_no_statement_running_and_a_working_pool(
    database_url: str, engine: Engine
) -> None:
    """A request cancelled mid-statement (its client went away): psycopg cancels the statement
    on the server, and the next use of the pool works."""
    pool = db.AsyncPool(database_url, size=1)

    async def cancelled_then_next() -> int:
        started = asyncio.Event()

        async def slow() -> None:
            async with pool.connection() as connection:
                started.set()
                await connection.execute("SELECT pg_sleep(30)")

        task = asyncio.create_task(slow())
        await started.wait()
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        async with pool.connection() as connection:
            row = await (await connection.execute("SELECT 1")).fetchone()
            assert row is not None
            return int(row[0])

    assert asyncio.run(cancelled_then_next()) == 1
    with engine.connect() as connection:
        sleeping = connection.execute(
            text("SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(30)%'")
        ).scalar_one()
    assert sleeping == 0


def test_a_use_that_leaves_a_transaction_open_does_not_return_its_connection(
    database_url: str, engine: Engine
) -> None:
    pool = db.AsyncPool(database_url, size=1)

    async def open_transaction() -> int:
        async with pool.connection() as connection:
            await connection.execute("BEGIN")
            row = await (await connection.execute("SELECT pg_backend_pid()")).fetchone()
            assert row is not None
            return int(row[0])

    first = asyncio.run(open_transaction())
    assert _backend(pool) != first
    with engine.connect() as connection:
        gone = connection.execute(
            text("SELECT count(*) FROM pg_stat_activity WHERE pid = :p"), {"p": first}
        ).scalar_one()
    assert gone == 0


def test_a_wait_for_a_connection_is_bounded(database_url: str) -> None:
    pool = db.AsyncPool(database_url, size=1, timeout_s=0.2)

    async def second_while_first_is_held() -> None:
        async with pool.connection(), pool.connection():
            pass  # pragma: no cover - never reached

    with pytest.raises(exc.TimeoutError):
        asyncio.run(second_while_first_is_held())
