"""/readyz over a real LedgerClient (in-process PBFT replicas): ready with 3 of 4, not with 2."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from api.http.app import create_app
from api.http.settings import Settings
from api.services.readiness import LedgerQuorumProbe
from ledger_bridge.client import InProcessTransport, LedgerClient
from ledger_bridge.crypto import SigningKey
from ledger_bridge.kvapp import KVApp
from ledger_bridge.pbft.config import ClusterConfig
from ledger_bridge.pbft.replica import Replica


def test_readyz_follows_the_ledger_quorum(api_database_url: str, tmp_path: Path) -> None:
    keys = [SigningKey(bytes([i + 1]) * 32) for i in range(4)]
    config = ClusterConfig.create([bytes(k.public_key) for k in keys], batch_wait_ms=0)
    transports: list[InProcessTransport] = []

    def make_transport() -> InProcessTransport:
        transports.append(
            InProcessTransport([Replica(config, i, keys[i], KVApp()) for i in range(4)])
        )
        return transports[0]

    with LedgerClient(make_transport, [k.public_key for k in keys], 1) as ledger:
        probe = LedgerQuorumProbe(ledger.status, 4)
        app = create_app(Settings(data_dir=tmp_path), database_url=api_database_url, probes=[probe])
        with TestClient(app) as client:
            assert client.get("/readyz").json()["checks"] == {"database": "ok", "ledger": "ok"}
            transports[0].crash(3)
            assert client.get("/readyz").status_code == 200  # f = 1 replica down: still 2f+1
            transports[0].crash(0)
            r = client.get("/readyz")
            assert r.status_code == 503
            assert r.json()["detail"] == "ledger: 2 of 4 replicas answer, 3 needed"
