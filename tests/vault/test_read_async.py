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
from sqlalchemy import Engine, exc, make_url, text, update
from sqlalchemy.orm import Session

from tests.vault.conftest import VaultServices, make_dataset
from vault import db, reads
from vault.crypto.merkle import MerkleTree
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
        expected = _sync(paged, committed_engine, dataset, **how)
        assert expected, how
        # Pages of 3 end inside an upload and across two; the trees come from the database
        # (the cache emptied), then from the cache the first read filled.
        reads._trees.clear()
        for page_rows in (3, 1000):
            got = _async(fresh_database_url, paged, dataset, page_rows=page_rows, **how)
            assert got == expected, (how, page_rows)
    assert all(r.subject_id != "s2" for r in expected)
    anchored = _async(fresh_database_url, paged, dataset, **named)
    assert {r.upload_id for r in anchored} == set(uploads[:2])
    assert len(anchored) == 2 * 2 * 2  # s0 and s4, two records each, in two anchored uploads


def test_a_tree_too_large_to_cache_is_built_once_per_read(
    committed_engine: Engine,
    fresh_database_url: str,
    services: VaultServices,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A tree larger than the cache's bound is not kept: a read loads and builds it once per
    upload it reads, whatever the number of pages the upload spans, as the read on a
    session does."""
    dataset, uploads = _fill(committed_engine, services)
    built: list[int] = []

    class Counted(MerkleTree):
        def __init__(self, leaves: Any) -> None:
            built.append(len(leaves))
            super().__init__(leaves)

    monkeypatch.setattr(reads, "MerkleTree", Counted)
    monkeypatch.setattr(reads, "_trees", reads._TreeCache(4))
    reader = Reader(services.store)
    expected = _sync(reader, committed_engine, dataset, uploads=uploads)
    assert built == [10, 10, 10]  # three uploads of ten records
    built.clear()
    got = _async(fresh_database_url, reader, dataset, uploads=uploads, page_rows=3)
    assert got == expected and built == [10, 10, 10]


async def _pid(pool: db.AsyncPool) -> int:
    async with pool.connection() as connection:
        row = await (await connection.execute("SELECT pg_backend_pid()")).fetchone()
        assert row is not None
        return int(row[0])


def _terminate(engine: Engine, *pids: int) -> None:
    with engine.connect() as connection:
        for pid in pids:
            assert connection.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid}).scalar()


def test_the_pool_reuses_a_connection_and_replaces_one_dropped_while_idle(
    database_url: str, engine: Engine
) -> None:
    async def run() -> None:
        pool = db.AsyncPool(database_url, size=1, idle_ping_s=3600.0)
        first = await _pid(pool)
        assert await _pid(pool) == first
        # Not idle long enough to be checked: the dead connection fails its statement, and
        # the failed use closes it rather than handing it out again.
        _terminate(engine, first)
        with pytest.raises(psycopg.OperationalError):
            await _pid(pool)
        assert await _pid(pool) != first
        await pool.close()
        pinged = db.AsyncPool(database_url, size=1, idle_ping_s=0.0)
        third = await _pid(pinged)
        _terminate(engine, third)
        assert await _pid(pinged) != third  # the checkout's ping found it dead
        await pinged.close()

    asyncio.run(run())


def test_after_a_restart_one_request_fails_not_one_per_pooled_connection(
    database_url: str, engine: Engine
) -> None:
    """The server gone under every pooled connection (a restart): the first use fails and
    takes the idle connections with it, as the engine drops a disconnected pool."""

    async def run() -> list[str]:
        pool = db.AsyncPool(database_url, size=3, idle_ping_s=3600.0)
        held = [pool.connection() for _ in range(3)]
        pids = [await _pid_of(await h.__aenter__()) for h in held]
        for h in held:
            await h.__aexit__(None, None, None)
        _terminate(engine, *pids)
        outcomes = []
        for _ in range(4):
            try:
                outcomes.append("new" if await _pid(pool) not in pids else "dead")
            except psycopg.OperationalError:
                outcomes.append("failed")
        await pool.close()
        return outcomes

    assert asyncio.run(run()) == ["failed", "new", "new", "new"]


async def _pid_of(connection: psycopg.AsyncConnection[Any]) -> int:
    row = await (await connection.execute("SELECT pg_backend_pid()")).fetchone()
    assert row is not None
    return int(row[0])


def test_a_cancelled_use_leaves_no_statement_running_and_a_working_pool(
    database_url: str, engine: Engine
) -> None:
    """A request cancelled mid-statement (the app shutting down under it): psycopg cancels
    the statement on the server, and the next use of the pool works."""

    async def cancelled_then_next() -> int:
        pool = db.AsyncPool(database_url, size=1)
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
        await pool.close()
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
    async def run() -> tuple[int, int]:
        pool = db.AsyncPool(database_url, size=1)
        async with pool.connection() as connection:
            await connection.execute("BEGIN")
            first = await _pid_of(connection)
        second = await _pid(pool)
        await pool.close()
        return first, second

    first, second = asyncio.run(run())
    assert second != first
    with engine.connect() as connection:
        gone = connection.execute(
            text("SELECT count(*) FROM pg_stat_activity WHERE pid = :p"), {"p": first}
        ).scalar_one()
    assert gone == 0


def test_a_wait_for_a_connection_is_bounded_and_leaks_no_slot(database_url: str) -> None:
    async def run() -> int:
        pool = db.AsyncPool(database_url, size=1, timeout_s=0.2)
        async with pool.connection():
            with pytest.raises(exc.TimeoutError):
                async with pool.connection():
                    pass  # pragma: no cover - never reached
        pid = await _pid(pool)  # the slot the timed-out wait never took is still there
        await pool.close()
        return pid

    assert asyncio.run(run()) > 0


def test_the_pool_connects_with_the_engine_s_parameters(database_url: str) -> None:
    """Parameters in the URL reach the connection as the engine passes them: an `options`
    value with a space (a server setting for the session) is one value, not two."""
    url = make_url(database_url).update_query_dict(
        {"options": "-c statement_timeout=4321", "application_name": "civis reads"}
    )

    async def run() -> tuple[str, str]:
        pool = db.AsyncPool(url.render_as_string(hide_password=False), size=1)
        async with pool.connection() as connection:
            timeout = await (await connection.execute("SHOW statement_timeout")).fetchone()
            name = await (await connection.execute("SHOW application_name")).fetchone()
        await pool.close()
        assert timeout is not None and name is not None
        return str(timeout[0]), str(name[0])

    assert asyncio.run(run()) == ("4321ms", "civis reads")


def test_a_closed_pool_hands_out_nothing(database_url: str) -> None:
    """Not to a request after `close`, nor to one that was waiting for a connection when the
    pool closed."""

    async def run() -> None:
        pool = db.AsyncPool(database_url, size=1)
        held = pool.connection()
        await held.__aenter__()
        assert pool.saturated
        waiting = asyncio.create_task(_pid(pool))
        await asyncio.sleep(0.05)
        await pool.close()
        await held.__aexit__(None, None, None)
        with pytest.raises(exc.TimeoutError):
            await waiting
        with pytest.raises(exc.TimeoutError):
            await _pid(pool)
        assert not pool.saturated  # every slot given back

    asyncio.run(run())
