"""Migrations on a real PostgreSQL: reversible, and in agreement with the models."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

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
