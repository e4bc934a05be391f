"""Several API instances starting at once on one new database all migrate it: one does the
work, the others wait for it (an advisory lock) and find nothing left to do. Without the lock
they ran the same DDL at once and blocked on each other's locks, or failed on a duplicate
table."""

from __future__ import annotations

import threading

from sqlalchemy import create_engine, text

from vault import db


def test_concurrent_upgrades_of_a_new_database_all_succeed(fresh_database_url: str) -> None:
    errors: list[BaseException] = []
    start = threading.Barrier(3)

    def migrate() -> None:
        start.wait()
        try:
            db.upgrade(fresh_database_url)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=migrate) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(t.is_alive() for t in threads), "an upgrade hangs (waiting on another's DDL)"
    assert errors == []
    engine = create_engine(fresh_database_url)
    try:
        with engine.connect() as conn:
            versions = conn.execute(text("SELECT version_num FROM alembic_version")).all()
        assert len(versions) == 1
    finally:
        engine.dispose()
