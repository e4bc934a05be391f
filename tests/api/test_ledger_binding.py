"""A vault database records its facts on one chain; the API refuses to start on another.

Why it matters: a recreated ledger directory (new validator keys) or a database pointed at the
wrong cluster would otherwise be found out only by a relay stuck on a fact the new chain's
contracts refuse, while receipts in the database name blocks the new chain never had.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from api.http.app import create_app
from api.http.settings import Settings
from api.services.gateway import LedgerGateway, WrongChain, bind_database
from ledger_bridge.genesis import GENESIS_FILE, create_local, load_genesis
from vault import db
from vault.models import LedgerBinding


def _genesis(directory: Path, chain_id: str = "civis-local") -> object:
    create_local(directory, 4, base_port=1, chain_id=chain_id, use_tls=False)
    return load_genesis(directory / GENESIS_FILE)


def test_first_start_binds_and_another_chain_is_refused(
    fresh_database_url: str, tmp_path: Path
) -> None:
    db.upgrade(fresh_database_url)
    engine = db.make_engine(fresh_database_url, pool_size=1)
    ours = _genesis(tmp_path / "a")
    same_id_other_keys = _genesis(tmp_path / "b")  # same chain id, new validator keys
    other_id = _genesis(tmp_path / "c", chain_id="civis-elsewhere")
    try:
        for _ in range(2):  # binding is idempotent for the same chain
            with Session(engine) as session, session.begin():
                bind_database(session, ours)  # type: ignore[arg-type]
        for wrong in (same_id_other_keys, other_id):
            with Session(engine) as session, session.begin(), pytest.raises(WrongChain):
                bind_database(session, wrong)  # type: ignore[arg-type]
        with Session(engine) as session:
            assert session.get(LedgerBinding, 1).chain_id == "civis-local"  # type: ignore[union-attr]
    finally:
        engine.dispose()


def test_the_api_does_not_start_on_a_database_of_another_chain(
    fresh_database_url: str, tmp_path: Path
) -> None:
    db.upgrade(fresh_database_url)
    settings = Settings(environment="test", data_dir=tmp_path / "data")
    gateways = []
    for name in ("first", "second"):
        create_local(tmp_path / name, 4, base_port=2, use_tls=False)
        gateways.append(LedgerGateway.from_directory(tmp_path / name, tmp_path / "keys"))
    try:
        app = create_app(settings, database_url=fresh_database_url, ledger=gateways[0])
        with TestClient(app) as client:
            assert client.get("/healthz").status_code == 200
        app = create_app(settings, database_url=fresh_database_url, ledger=gateways[1])
        with pytest.raises(WrongChain), TestClient(app):
            pass
    finally:
        for g in gateways:
            g.close()
