"""/readyz: database always, the ledger quorum (2f+1 of 3f+1 answering) when configured."""

from __future__ import annotations

import threading
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


def test_a_replica_slow_to_answer_does_not_hold_up_a_quorum_of_the_others() -> None:
    """A silently dead replica costs a status call its whole timeout (the connect deadline,
    or the gateway's cap); asked in turn, it would hold /readyz that long, past what a load
    balancer's probe waits. Asked at once, the other three make the quorum without it: here
    replica 0 answers only when released, after the probe has said ready."""
    release = threading.Event()

    def status(replica: int) -> dict[str, int]:
        if replica == 0:
            release.wait(30)
        return {"height": 3}

    probe = LedgerQuorumProbe(status, 4)
    answers: list[str | None] = []
    asking = threading.Thread(target=lambda: answers.append(probe.check()))
    asking.start()
    asking.join(10)
    answered_first = not asking.is_alive()  # before replica 0 was let go
    release.set()
    asking.join(30)
    assert answered_first and answers == [None]


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
