"""Alembic migrations for the vault schema (run by `vault.db.upgrade`)."""
