"""Exactly-once ledger facts across crashes (issue 6 item 3, invariant 5).

A real relay process ships the outbox of a real PostgreSQL to a real 4-replica cluster running
the consent contracts, and is SIGKILLed at each step (before the submission, after the ledger
committed but before the database knows, after marking); a restarted relay finishes the job.
Afterwards every fact is on the ledger exactly once, as the contract transaction the database
recorded (tx id and height), and the contracts' state agrees: the upload is anchored and then
expired, the subject's erasure recorded with the destroyed commitments.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from api.ledger import VAULT_KEY_FILE, LedgerGateway, fact_nonce, load_or_create_key
from ledger_bridge.cluster import Cluster
from ledger_bridge.contracts import tx
from ledger_bridge.crypto import SigningKey
from tests.ledger_bridge.test_processes import _base_port
from tests.vault.conftest import VaultServices, make_dataset
from tests.vault.conftest import committed_engine as committed_engine  # fixture
from tests.vault.conftest import services as services  # fixture
from vault.models import OutboxFact
from vault.uploads import RecordIn, Uploader

pytestmark = pytest.mark.e2e


PROVIDER = SigningKey(bytes(range(1, 33)))
SUBJECT = bytes(range(32, 64)).hex()  # a subject's pseudonym: their wallet key, in hex


@pytest.fixture()
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    keys = tmp_path / "keys"
    vault = load_or_create_key(keys / VAULT_KEY_FILE)
    app_genesis = {
        "members": [
            {"public_key": bytes(vault.public_key).hex(), "role": "vault", "college": "providers"},
            {
                "public_key": bytes(PROVIDER.public_key).hex(),
                "role": "provider",
                "college": "providers",
            },
        ]
    }
    params = {"app": "contracts", "batch_size_max": 10, "batch_wait_ms": 2}
    with Cluster(
        tmp_path / "ledger", 4, base_port=_base_port(), params=params, app_genesis=app_genesis
    ) as c:
        c.start()
        c.wait_ready()
        yield c


def _relay(cluster: Cluster, url: str, crash_at: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CIVIS_CRASH_AT"}
    if crash_at:
        env["CIVIS_CRASH_AT"] = crash_at
    keys = cluster.directory.parent / "keys"
    args = [sys.executable, "-m", "tests.api.relay_child", url, str(cluster.directory), str(keys)]
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("crash_at", ["before-submit", "after-submit", "after-mark"])
def test_a_crash_at_any_step_records_each_fact_once(
    cluster: Cluster,
    committed_engine: Engine,
    services: VaultServices,
    crash_at: str,
) -> None:
    url = committed_engine.url.render_as_string(hide_password=False)
    keys = cluster.directory.parent / "keys"
    gateway = LedgerGateway.from_directory(cluster.directory, keys, clients=1)
    try:
        # Uploaded ten days ago with a one-day retention: its epoch has ended by contract time.
        past = dt.datetime.now(dt.UTC) - dt.timedelta(days=10)
        uploader = Uploader(services.store, clock=lambda: past)
        with Session(committed_engine) as session, session.begin():
            dataset = make_dataset(session, retention_days=1)
            gateway.act(
                "dataset.register",
                {
                    "dataset": str(dataset.id),
                    "owner": bytes(PROVIDER.public_key),
                    "category": "energy",
                    "purposes": ["billing"],
                    "retention_days": 1,
                    "legal_basis": "consent",
                },
            )
            up = uploader.upload(session, dataset.id, [RecordIn(SUBJECT, b"{}")] * 3)
            services.eraser.erase_subject(session, SUBJECT, reason="dpo_decision", requester="dpo")
            services.eraser.expire_epoch(session, dataset.id, up.retention_day)
        crashed = _relay(cluster, url, crash_at)
        assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
        done = _relay(cluster, url, None)
        assert done.returncode == 0, done.stderr[-2000:]
        again = _relay(cluster, url, None)
        assert json.loads(again.stdout) == {"shipped": 0}

        with Session(committed_engine) as session:
            facts = session.scalars(select(OutboxFact).order_by(OutboxFact.id)).all()
        assert [f.kind for f in facts] == ["upload.anchor", "erasure.record", "retention.expire"]
        assert all(f.sent_at is not None and f.block_height for f in facts)
        # Each fact's transaction (found by the vault's nonce for it) is on the chain once,
        # committed with the result the contracts gave, at the recorded height and tx id.
        nonces = {fact_nonce(f.id): f for f in facts}
        on_chain: dict[int, list[tuple[int, str]]] = {}
        top = max((gateway.status(i) or {}).get("height", 0) for i in range(4))
        for height in range(1, top + 1):
            for req in gateway.block(height).requests:
                signed = tx.decode(req.tx)
                if signed.author == gateway.vault_id and signed.nonce in nonces:
                    fact = nonces[signed.nonce]
                    on_chain.setdefault(fact.id, []).append((height, signed.tx_id.hex()))
        assert on_chain == {f.id: [(f.block_height, f.tx_id)] for f in facts}, "each fact once"
        upload = gateway.query("upload", upload=str(up.upload_id))["result"]
        assert upload["status"] == "expired"
        [erasure] = gateway.query("erasures", subject=SUBJECT)["result"]
        assert erasure["reason"] == "dpo_decision" and len(erasure["key_commitments"]) == 1
    finally:
        gateway.close()
