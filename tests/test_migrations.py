"""Migrations on a real PostgreSQL: reversible, and in agreement with the models."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.exc import IntegrityError

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


def test_keys_and_datasets_from_before_0006_keep_working(fresh_database_url: str) -> None:
    """0006 adds key expiry and the dataset.register receipt: existing keys stay keys without
    an expiry (they work until revoked), existing datasets have no receipt, and going back
    drops both columns."""
    db.upgrade(fresh_database_url, "0005")
    engine = create_engine(fresh_database_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO api_keys (id, secret_hash, member_id, role) "
                    "VALUES ('00112233aabbccdd', '\\x00', 'utility-1', 'provider')"
                )
            )
            conn.execute(
                text(
                    "INSERT INTO datasets (id, owner_id, name, category, purposes, "
                    "retention_days, legal_basis) VALUES (gen_random_uuid(), 'utility-1', "
                    "'meters', 'energy', '[\"billing\"]', 30, 'contract')"
                )
            )
        db.upgrade(fresh_database_url)
        with engine.begin() as conn:
            assert conn.execute(text("SELECT expires_at FROM api_keys")).one() == (None,)
            assert conn.execute(
                text("SELECT register_tx_id, register_height FROM datasets")
            ).one() == (None, None)
        db.downgrade(fresh_database_url, "0005")
        with engine.connect() as conn:
            inspector = inspect(conn)
            assert "expires_at" not in {c["name"] for c in inspector.get_columns("api_keys")}
            assert "register_tx_id" not in {c["name"] for c in inspector.get_columns("datasets")}
    finally:
        engine.dispose()


def test_partners_hold_api_keys_from_0009_and_lose_them_going_back(
    fresh_database_url: str,
) -> None:
    insert = text(
        "INSERT INTO api_keys (id, secret_hash, member_id, role) "
        "VALUES (:id, '\\x00', 'partner-key', 'partner')"
    )
    db.upgrade(fresh_database_url, "0008")
    engine = create_engine(fresh_database_url)
    try:
        with pytest.raises(IntegrityError), engine.begin() as conn:
            conn.execute(insert, {"id": "k-before"})  # the role did not exist yet
        db.upgrade(fresh_database_url)
        with engine.begin() as conn:
            conn.execute(insert, {"id": "k-after"})
        db.downgrade(fresh_database_url, "0008")
        with engine.begin() as conn:
            assert conn.execute(text("SELECT count(*) FROM api_keys")).scalar_one() == 0
            with pytest.raises(IntegrityError):
                conn.execute(insert, {"id": "k-again"})
    finally:
        engine.dispose()
