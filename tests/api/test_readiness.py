"""/readyz: database always, the ledger quorum (2f+1 of 3f+1 answering) when configured."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.http.app import create_app
from api.http.settings import Settings
from api.services.readiness import LedgerQuorumProbe


def _status_with_down(down: set[int]) -> Callable[[int], dict[str, int]]:
    def status(replica: int) -> dict[str, int]:
        if replica in down:
            raise ConnectionRefusedError(f"10.0.0.{replica}:7000 refused")
        return {"height": 3}

    return status


@pytest.mark.parametrize(
    ("replicas", "down", "ready"),
    [
        (4, set(), True),
        (4, {3}, True),
        (4, {0, 3}, False),
        (7, {1, 4}, True),
        (7, {0, 1, 2}, False),
    ],
)
def test_quorum_probe(replicas: int, down: set[int], ready: bool) -> None:
    probe = LedgerQuorumProbe(_status_with_down(down), replicas)
    reason = probe.check()
    assert (reason is None) == ready
    if reason is not None:
        assert "10.0.0" not in reason  # no address leaks into the public answer


def test_cluster_size_must_be_3f_plus_1() -> None:
    with pytest.raises(ValueError):
        LedgerQuorumProbe(_status_with_down(set()), 5)


def test_readyz_reports_the_ledger(database_url: str, tmp_path: Path) -> None:
    down: set[int] = set()
    probe = LedgerQuorumProbe(_status_with_down(down), 4)
    app = create_app(Settings(data_dir=tmp_path), database_url=database_url, probes=[probe])
    with TestClient(app) as client:
        r = client.get("/readyz")
        assert r.json() == {"status": "ready", "checks": {"database": "ok", "ledger": "ok"}}
        down |= {1, 2}
        r = client.get("/readyz")
        assert r.status_code == 503
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["detail"] == "ledger: 2 of 4 replicas answer, 3 needed"
        assert client.get("/healthz").status_code == 200  # liveness does not depend on it
