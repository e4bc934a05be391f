"""Exactly-once ledger facts across crashes (issue 6 item 3, invariant 5).

A real relay process ships the outbox of a real PostgreSQL to a real 4-replica cluster and is
SIGKILLed at each step (before the submission, after the ledger committed but before the
database knows, after marking); a restarted relay finishes the job. Afterwards every fact is
on the ledger exactly once, at the height the database recorded.
"""

from __future__ import annotations

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

from ledger_bridge.client import LedgerClient, TcpClientTransport
from ledger_bridge.cluster import Cluster
from tests.ledger_bridge.test_processes import _base_port
from tests.vault.conftest import VaultServices, make_dataset
from tests.vault.conftest import committed_engine as committed_engine  # fixture
from tests.vault.conftest import services as services  # fixture
from vault.models import OutboxFact
from vault.uploads import RecordIn

pytestmark = pytest.mark.e2e
CLIENT_SEED = bytes(range(32))


@pytest.fixture()
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    params = {"batch_size_max": 10, "batch_wait_ms": 2}
    with Cluster(tmp_path / "ledger", 4, base_port=_base_port(), params=params) as c:
        c.start()
        c.wait_ready()
        yield c


def _relay(url: str, cluster: Cluster, crash_at: str | None) -> subprocess.CompletedProcess[str]:
    keys = ",".join(k.hex() for k in cluster.genesis.public_keys())
    env = {k: v for k, v in os.environ.items() if k != "CIVIS_CRASH_AT"}
    if crash_at:
        env["CIVIS_CRASH_AT"] = crash_at
    args = [
        sys.executable,
        "-m",
        "tests.api.relay_child",
        url,
        ",".join(cluster.client_addresses()),
        keys,
        CLIENT_SEED.hex(),
        str(cluster.genesis.f),
    ]
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("crash_at", ["before-submit", "after-submit", "after-mark"])
def test_a_crash_at_any_step_records_each_fact_once(
    cluster: Cluster,
    committed_engine: Engine,
    services: VaultServices,
    crash_at: str,
) -> None:
    url = committed_engine.url.render_as_string(hide_password=False)
    with Session(committed_engine) as session, session.begin():
        dataset = make_dataset(session)
        up = services.uploader.upload(session, dataset.id, [RecordIn("alice", b"{}")] * 3)
        services.eraser.erase_subject(session, "alice", reason="Art. 17", requester="dpo")
        services.eraser.expire_epoch(session, dataset.id, up.retention_day)
    crashed = _relay(url, cluster, crash_at)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    done = _relay(url, cluster, None)
    assert done.returncode == 0, done.stderr[-2000:]
    again = _relay(url, cluster, None)
    assert json.loads(again.stdout) == {"shipped": 0}

    with Session(committed_engine) as session:
        facts = session.scalars(select(OutboxFact).order_by(OutboxFact.id)).all()
    assert [f.kind for f in facts] == ["upload.anchor", "erasure.record", "retention.expire"]
    assert all(f.sent_at is not None and f.block_height for f in facts)
    with LedgerClient(
        lambda: TcpClientTransport(cluster.client_addresses()),
        cluster.genesis.public_keys(),
        cluster.genesis.f,
    ) as client:
        top = client.status(0)["height"]
        on_chain: dict[int, list[int]] = {}
        for height in range(1, top + 1):
            for req in client.get_block(height).requests:
                for fact in facts:
                    if b"fact/%d" % fact.id in req.tx:
                        on_chain.setdefault(fact.id, []).append(height)
    assert on_chain == {f.id: [f.block_height] for f in facts}, "each fact exactly once"
