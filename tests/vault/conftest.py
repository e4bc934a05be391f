"""Vault fixtures: a key store on a fresh master key file, and the library's services."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from vault import db
from vault.datasets import register_dataset
from vault.erasure import Eraser
from vault.keys import KeyStore, LocalKeyProvider
from vault.models import Dataset
from vault.reads import Reader
from vault.uploads import Uploader


@dataclass
class VaultServices:
    provider: LocalKeyProvider
    store: KeyStore
    uploader: Uploader
    reader: Reader
    eraser: Eraser


@pytest.fixture()
def committed_engine(fresh_database_url: str) -> Iterator[Engine]:
    """An engine on a database of its own, for tests that commit (concurrency, VACUUM)."""
    db.upgrade(fresh_database_url)
    engine = db.make_engine(fresh_database_url, pool_size=4)
    yield engine
    engine.dispose()


@pytest.fixture()
def services(tmp_path: Path) -> VaultServices:
    provider = LocalKeyProvider(tmp_path / "master.key")
    store = KeyStore(provider)
    return VaultServices(
        provider=provider,
        store=store,
        uploader=Uploader(store, record_size_max_bytes=4096, batch_rows=64),
        reader=Reader(store),
        eraser=Eraser(store),
    )


def make_dataset(session: Session, name: str | None = None, retention_days: int = 30) -> Dataset:
    return register_dataset(
        session,
        owner_id="provider-1",
        name=name or f"meters-{uuid.uuid4().hex[:8]}",
        category="energy",
        purposes=["billing", "proof-of-address"],
        retention_days=retention_days,
        legal_basis="consent",
    )
