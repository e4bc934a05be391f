"""Migrations on a real PostgreSQL: reversible, and in agreement with the models."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from vault import db
from vault.models import Base


def test_upgrade_downgrade_upgrade_and_models_agree(fresh_database_url: str) -> None:
    db.upgrade(fresh_database_url)
    db.downgrade(fresh_database_url, "base")
    engine = create_engine(fresh_database_url)
    try:
        with engine.connect() as conn:
            assert set(inspect(conn).get_table_names()) <= {"alembic_version"}
        db.upgrade(fresh_database_url)
        with engine.connect() as conn:
            tables = set(inspect(conn).get_table_names())
            assert {"datasets", "uploads", "records", "key_secrets", "outbox"} <= tables
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
            assert diff == [], f"models and migrations disagree: {diff}"
    finally:
        engine.dispose()


def test_relay_request_ids_start_above_every_fact_id_ever_issued(fresh_database_url: str) -> None:
    """Before 0004 the relay's ledger request id was the fact id, and the replicas ignore an
    id at or below the last they executed for the relay: the new sequence must start above
    every id the old relay may have used, deleted facts included."""
    db.upgrade(fresh_database_url, "0003")
    engine = create_engine(fresh_database_url)
    try:
        with engine.begin() as conn:
            for _ in range(5):
                conn.execute(
                    text("INSERT INTO outbox (kind, payload) VALUES ('upload.anchor', '{}')")
                )
            conn.execute(text("DELETE FROM outbox WHERE id >= 4"))  # the newest facts are gone
        db.upgrade(fresh_database_url)
        with engine.begin() as conn:
            first = conn.execute(text("SELECT nextval('outbox_request_ids')")).scalar_one()
            assert first == 6
        db.downgrade(fresh_database_url, "0003")
        with engine.begin() as conn:
            assert conn.execute(text("SELECT to_regclass('outbox_request_ids')")).scalar() is None
    finally:
        engine.dispose()
