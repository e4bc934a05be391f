"""An async route's ledger clients live on its own event loop (api/services/gateway.py, lanes).

What must hold: a submission from a loop with a lane runs on that loop's clients, not on the
gateway's thread, and from a loop without one still goes through the gateway's thread; what
it commits raises the height floor the gateway's own reads use (a read after the access never
comes from below it); a borrowed client always goes back to its pool, a cancelled submission
included; and nothing is left connected to the replicas once the app that served on the loop
stops, or the gateway closes.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.http.app import create_app
from api.http.settings import Settings
from api.services.gateway import LedgerGateway, LedgerRefused, LedgerUnavailable, _Lane
from ledger_bridge.crypto import SigningKey
from tests.api.ledger_env import LedgerEnv


def _refused_access(gateway: LedgerGateway) -> bytes:
    """An access the contracts refuse (no such dataset): ordered and answered all the same."""
    body = {"consumer": bytes(32), "dataset": str(uuid.uuid4()), "purpose": "billing"}
    return gateway.sign_as_vault("access.request", body).encode()


def _spy_on_submits(gateway: LedgerGateway, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the threads from which the gateway's clients submit from now on: those of
    the lanes made from now on, and those of the gateway's own pool."""
    threads: list[str] = []

    def spy(pool: asyncio.Queue[Any]) -> None:
        for client in list(pool._queue):  # type: ignore[attr-defined]

            async def recorded(*args: Any, _submit: Any = client.submit) -> Any:
                threads.append(threading.current_thread().name)
                return await _submit(*args)

            monkeypatch.setattr(client, "submit", recorded)

    make = gateway._new_lane

    def spied() -> _Lane:
        lane = make()
        spy(lane.pool)
        return lane

    monkeypatch.setattr(gateway, "_new_lane", spied)
    spy(gateway._pool)
    return threads


def test_a_submission_from_a_loops_lane_runs_there_and_raises_the_floor(
    ledger_env: LedgerEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    gateway = ledger_env.gateway
    threads = _spy_on_submits(gateway, monkeypatch)
    before = gateway.height_seen

    async def go() -> tuple[bool, bool]:
        await gateway.open_lane()
        with pytest.raises(LedgerRefused):
            await gateway.submit_from(_refused_access(gateway))
        made = asyncio.get_running_loop() in gateway._lanes
        await gateway.close_lane()
        return made, asyncio.get_running_loop() in gateway._lanes

    made, left = asyncio.run(go())
    assert threads == [threading.current_thread().name]  # not "ledger-gateway"
    assert made and not left
    assert gateway.height_seen > before  # the gateway's reads start from the access's block


def test_a_loop_without_a_lane_submits_through_the_gateways_thread(
    ledger_env: LedgerEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A caller that opened no lane has nothing to close: no lane is made for it."""
    gateway = ledger_env.gateway
    threads = _spy_on_submits(gateway, monkeypatch)
    lanes = set(gateway._lanes)

    async def go() -> None:
        with pytest.raises(LedgerRefused):
            await gateway.submit_from(_refused_access(gateway))

    asyncio.run(go())
    assert threads == ["ledger-gateway"]
    assert set(gateway._lanes) == lanes


def test_every_borrowed_client_goes_back_a_cancelled_submission_included(
    ledger_env: LedgerEnv,
) -> None:
    gateway = ledger_env.gateway

    async def go() -> tuple[int, int, int]:
        await gateway.open_lane()
        lane = gateway._lanes[asyncio.get_running_loop()]
        try:
            size = lane.pool.qsize()
            for _ in range(size + 3):  # more submissions than clients, one after the other
                with pytest.raises(LedgerRefused):
                    await gateway.submit_from(_refused_access(gateway))
            after_refusals = lane.pool.qsize()
            task = asyncio.create_task(gateway.submit_from(_refused_access(gateway)))
            await asyncio.sleep(0)  # it borrowed a client and sent its request
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            after_cancel = lane.pool.qsize()
            for _ in range(size):  # every client, the cancelled one's included, still works
                with pytest.raises(LedgerRefused):
                    await gateway.submit_from(_refused_access(gateway))
            return size, after_refusals, after_cancel
        finally:
            await gateway.close_lane()

    size, after_refusals, after_cancel = asyncio.run(go())
    assert size > 0 and after_refusals == after_cancel == size


def test_a_closed_lane_opens_no_connection_again(ledger_env: LedgerEnv) -> None:
    """A submission still in flight when the app stops must not reconnect what it closed."""
    gateway = ledger_env.gateway

    async def go() -> dict[int, Any]:
        await gateway.open_lane()
        lane = gateway._lanes[asyncio.get_running_loop()]
        with pytest.raises(LedgerRefused):
            await gateway.submit_from(_refused_access(gateway))
        assert lane.transport._conns
        await gateway.close_lane()
        await lane.transport.send(0, b"late")
        return lane.transport._conns

    assert asyncio.run(go()) == {}


def test_a_connection_being_made_when_the_lane_closes_is_not_kept(ledger_env: LedgerEnv) -> None:
    gateway = ledger_env.gateway

    async def go() -> dict[int, Any]:
        lane = gateway._new_lane()
        sending = asyncio.create_task(lane.transport.send(0, b"early"))
        await asyncio.sleep(0)  # it is dialling replica 0
        await lane.close()
        await sending
        return lane.transport._conns

    assert asyncio.run(go()) == {}


@pytest.fixture
def own_gateway(ledger_env: LedgerEnv) -> Iterator[LedgerGateway]:
    """A gateway of the test's own over the module's cluster (closing it is the test)."""
    directory = ledger_env.cluster.directory
    gateway = LedgerGateway.from_directory(directory, directory.parent / "keys")
    yield gateway
    if not gateway._closed:
        gateway.close()


def test_closing_the_gateway_closes_a_lane_its_loop_left_open(own_gateway: LedgerGateway) -> None:
    """An app sharing the gateway still serves on another thread's loop when the gateway's
    owner closes it: that lane is closed on its loop, and no submission goes through after."""
    loop = asyncio.new_event_loop()
    serving = threading.Thread(target=loop.run_forever)
    serving.start()
    try:

        async def serve() -> _Lane:
            await own_gateway.open_lane()
            with pytest.raises(LedgerRefused):
                await own_gateway.submit_from(_refused_access(own_gateway))
            return own_gateway._lanes[asyncio.get_running_loop()]

        lane = asyncio.run_coroutine_threadsafe(serve(), loop).result(30)
        assert lane.transport._conns
        own_gateway.close()
        assert not lane.transport._conns and not own_gateway._lanes
        late = asyncio.run_coroutine_threadsafe(
            own_gateway.submit_from(_refused_access(own_gateway)), loop
        )
        with pytest.raises(LedgerUnavailable):
            late.result(30)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        serving.join(10)
        loop.close()


def test_the_app_opens_a_lane_on_its_loop_and_closes_it_when_it_stops(
    ledger_env: LedgerEnv, api_settings: Settings, ledger_database_url: str
) -> None:
    gateway = ledger_env.gateway
    app = create_app(
        api_settings, database_url=ledger_database_url, ledger=gateway, background_jobs=False
    )
    lanes = set(gateway._lanes)
    with TestClient(app, raise_server_exceptions=False) as client:
        serving = set(gateway._lanes) - lanes
        assert len(serving) == 1
        (loop,) = serving
        transport = gateway._lanes[loop].transport
        r = client.post(
            "/v1/access-requests",
            headers=ledger_env.headers("consumer", ledger_env.consumer),
            json={"dataset_id": str(uuid.uuid4()), "purpose": "billing"},
        )
        assert r.status_code == 404, r.text  # refused by the contracts: it went to the ledger
        assert transport._conns  # the lane's own connections carried it
    assert set(gateway._lanes) == lanes
    assert not transport._conns


def test_the_relays_key_is_marked_shared_and_the_pools_keys_are_not(ledger_env: LedgerEnv) -> None:
    """Every worker loads the relay's key, so its client sends each request to every replica
    (`AsyncLedgerClient.shared_key`); a pool client's key is its own, introduced once."""
    gateway = LedgerGateway(
        ledger_env.cluster.genesis,
        ledger_env.gateway.vault_key,
        clients=2,
        relay_key=SigningKey.generate(),
    )
    try:
        assert gateway._relay.shared_key
        pool = list(gateway._pool._queue)  # type: ignore[attr-defined]
        assert pool and not any(client.shared_key for client in pool)
    finally:
        gateway.close()
