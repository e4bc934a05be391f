"""An async route's ledger clients live on its own event loop (api/services/gateway.py, lanes).

What must hold: a submission from an event loop runs on that loop's clients, not on the
gateway's thread; what it commits raises the height floor the gateway's own reads use (a read
after the access never comes from below it); and the app that served on the loop closes its
lane when its lifespan ends, so a stopped app leaves no connection to the replicas behind.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.http.app import create_app
from api.http.settings import Settings
from api.services.gateway import LedgerGateway, LedgerRefused, _Lane
from tests.api.ledger_env import LedgerEnv


def _refused_access(gateway: LedgerGateway) -> bytes:
    """An access the contracts refuse (no such dataset): ordered and answered all the same."""
    body = {"consumer": bytes(32), "dataset": str(uuid.uuid4()), "purpose": "billing"}
    return gateway.sign_as_vault("access.request", body).encode()


def _spy_on_lanes(gateway: LedgerGateway, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the threads the clients of every lane made from now on submit from."""
    threads: list[str] = []
    make = gateway._new_lane

    def spied() -> _Lane:
        lane = make()
        for client in list(lane.pool._queue):  # type: ignore[attr-defined]
            submit = client.submit

            async def recorded(*args: Any, _submit: Any = submit) -> Any:
                threads.append(threading.current_thread().name)
                return await _submit(*args)

            monkeypatch.setattr(client, "submit", recorded)
        return lane

    monkeypatch.setattr(gateway, "_new_lane", spied)
    return threads


def test_a_submission_from_a_loop_runs_on_that_loops_clients_and_raises_the_floor(
    ledger_env: LedgerEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    gateway = ledger_env.gateway
    threads = _spy_on_lanes(gateway, monkeypatch)
    before = gateway.height_seen

    async def go() -> tuple[bool, bool]:
        with pytest.raises(LedgerRefused):
            await gateway.submit_from(_refused_access(gateway))
        made = asyncio.get_running_loop() in gateway._lanes
        await gateway.close_lane()
        return made, asyncio.get_running_loop() in gateway._lanes

    made, left = asyncio.run(go())
    assert threads == [threading.current_thread().name]  # not "ledger-gateway"
    assert made and not left
    assert gateway.height_seen > before  # the gateway's reads start from the access's block


def test_the_app_closes_its_loops_lane_when_it_stops(
    ledger_env: LedgerEnv, api_settings: Settings, ledger_database_url: str
) -> None:
    gateway = ledger_env.gateway
    app = create_app(
        api_settings, database_url=ledger_database_url, ledger=gateway, background_jobs=False
    )
    lanes = set(gateway._lanes)
    with TestClient(app, raise_server_exceptions=False) as client:
        r = client.post(
            "/v1/access-requests",
            headers=ledger_env.headers("consumer", ledger_env.consumer),
            json={"dataset_id": str(uuid.uuid4()), "purpose": "billing"},
        )
        assert r.status_code == 404, r.text  # refused by the contracts: it went to the ledger
        serving = set(gateway._lanes) - lanes
        assert len(serving) == 1
        (loop,) = serving
        transport = gateway._lanes[loop].transport
        assert transport._conns  # connected to the replicas
    assert set(gateway._lanes) == lanes
    assert not transport._conns
