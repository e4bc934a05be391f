"""A real ledger behind the API for tests: four replica processes running the consent contracts.

Why one cluster per test module and not per test: starting four processes costs about a
second, and every test makes its own members, datasets and subjects (fresh keys), so tests
never read each other's state. The founding members are the vault (whose ledger key the app's
gateway signs with), the DPO, an admitted provider and an admitted consumer; a test that needs
another legal entity makes one and has it admitted by vote (`Members.admit`).

tests/api/conftest.py imports the fixtures, so every API test module can ask for them.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from api.http.app import create_app
from api.http.settings import Settings
from api.services.gateway import LedgerGateway
from api.services.keys import create_key
from ledger_bridge.cluster import Cluster
from ledger_bridge.contracts import tx
from ledger_bridge.crypto import SigningKey
from ledger_bridge.genesis import load_signing_key
from tests.conftest import PgServer
from tests.ledger_bridge.test_processes import _base_port
from vault import db

DAY_MS = 86_400_000


@dataclass
class Wallet:
    """A member's own Ed25519 key: a subject's wallet, a legal entity's signing key."""

    key: SigningKey = field(default_factory=SigningKey.generate)

    @property
    def id(self) -> str:
        return bytes(self.key.public_key).hex()

    def sign(self, chain_id: str, tx_type: str, body: dict[str, Any]) -> str:
        valid_until = int(time.time() * 1000) + 60_000
        return tx.sign(self.key, chain_id, tx_type, body, valid_until=valid_until).encode().hex()


@dataclass
class LedgerEnv:
    """What a test needs: the app, its ledger, the founding members, and key issuing."""

    client: TestClient
    cluster: Cluster
    gateway: LedgerGateway
    dpo: Wallet
    provider: Wallet
    consumer: Wallet
    validators: list[Wallet]
    make_key: Callable[[str, str], dict[str, str]]

    @property
    def chain_id(self) -> str:
        return self.gateway.chain_id

    def headers(self, role: str, member: Wallet | str | None = None) -> dict[str, str]:
        member_id = member.id if isinstance(member, Wallet) else (member or uuid.uuid4().hex)
        return self.make_key(member_id, role)

    def register_subject(self) -> Wallet:
        """A new resident, registered on the ledger with its own key."""
        wallet = Wallet()
        signed = wallet.sign(
            self.chain_id, "member.register", {"role": "subject", "college": "citizens"}
        )
        self.gateway.submit(bytes.fromhex(signed))
        return wallet

    def wait_anchored(self, dataset_id: str, upload_id: str, headers: dict[str, str]) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            r = self.client.get(f"/v1/datasets/{dataset_id}/uploads/{upload_id}", headers=headers)
            if r.json().get("state") == "anchored":
                return
            time.sleep(0.05)
        raise AssertionError("the upload was not anchored in time")


@pytest.fixture(scope="module")
def ledger_cluster(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Cluster, dict[str, Wallet]]]:
    base = tmp_path_factory.mktemp("ledger-env")
    keys_dir = base / "keys"
    keys_dir.mkdir()
    from api.services.gateway import VAULT_KEY_FILE, load_or_create_key

    vault = load_or_create_key(keys_dir / VAULT_KEY_FILE)
    wallets = {name: Wallet() for name in ("dpo", "provider", "consumer")}
    app_genesis = {
        "members": [
            {"public_key": bytes(vault.public_key).hex(), "role": "vault", "college": "providers"},
            {"public_key": wallets["dpo"].id, "role": "dpo", "college": "services"},
            {"public_key": wallets["provider"].id, "role": "provider", "college": "providers"},
            {"public_key": wallets["consumer"].id, "role": "consumer", "college": "services"},
        ]
    }
    params = {"app": "contracts", "batch_size_max": 64, "batch_wait_ms": 2}
    with Cluster(
        base / "ledger", 4, base_port=_base_port(), params=params, app_genesis=app_genesis
    ) as cluster:
        cluster.start()
        cluster.wait_ready()
        yield cluster, wallets


@pytest.fixture(scope="module")
def ledger_database_url(pg_server: PgServer) -> Iterator[str]:
    """A database of the module's own, like its chain: a vault database belongs to ONE chain.

    Outbox facts left by another module (anchors of datasets registered on that module's
    chain) would be refused by this chain's contracts and hold up the relay behind them.
    """
    url = pg_server.create_database("civis_ledger")
    db.upgrade(url)
    yield url
    pg_server.drop_database(url)


@pytest.fixture(scope="module")
def ledger_env(
    ledger_cluster: tuple[Cluster, dict[str, Wallet]],
    api_settings: Settings,
    ledger_database_url: str,
) -> Iterator[LedgerEnv]:
    api_database_url = ledger_database_url
    cluster, wallets = ledger_cluster
    keys_dir = cluster.directory.parent / "keys"
    gateway = LedgerGateway.from_directory(cluster.directory, keys_dir)
    settings = api_settings.model_copy(update={"relay_interval_s": 0.1, "receipt_wait_s": 15.0})
    app = create_app(settings, database_url=api_database_url, ledger=gateway)
    engine = db.make_engine(api_database_url, pool_size=1)

    def make_key(member_id: str, role: str) -> dict[str, str]:
        with Session(engine) as session:
            issued = create_key(session, member_id=member_id, role=role)
            session.commit()
        return {"Authorization": f"Bearer {issued.token}"}

    validators = [
        Wallet(load_signing_key(Path(cluster.directory / "keys" / f"node-{i}.key")))
        for i in range(cluster.genesis.n)
    ]
    try:
        with TestClient(app, raise_server_exceptions=False) as client:
            yield LedgerEnv(
                client,
                cluster,
                gateway,
                wallets["dpo"],
                wallets["provider"],
                wallets["consumer"],
                validators,
                make_key,
            )
    finally:
        gateway.close()
        engine.dispose()
