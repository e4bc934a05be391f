"""A replica cut off from its peers does not serve its old state as the current one.

Real replica processes on loopback. The attack: while a replica hears none of its peers, the
others go on committing (here: they are paused, so nobody commits, but the replica cannot
tell a pause from a partition), and a client asking that replica would read whatever it
executed last, as if it were the chain's latest. A query is answered only by a replica in
touch with a quorum (`Replica.serves_current`); blocks stay readable everywhere (each carries
its certificate). The partition itself, with commits going on elsewhere, is played on the
test hosts' WAN (tests/netns/test_wan.py, the minority partition).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ledger_bridge.client import AsyncLedgerClient, LedgerClient
from ledger_bridge.cluster import Cluster
from ledger_bridge.kvapp import encode_get, encode_set
from ledger_bridge.node import READ_CURRENT_WITHIN_MS
from tests.ledger_bridge.test_processes import PARAMS, _base_port

pytestmark = pytest.mark.e2e


@pytest.fixture()
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with Cluster(tmp_path / "ledger", 4, base_port=_base_port(), params=PARAMS) as c:
        c.start()
        c.wait_ready()
        yield c


def _call(cluster: Cluster, replica: int, op: str, **args: Any) -> dict[str, Any]:
    async def go() -> dict[str, Any]:
        transport = cluster.client_transport()
        try:
            return await transport.call(replica, op, args)
        finally:
            await transport.close()

    return asyncio.run(go())


def _served_at(
    cluster: Cluster, replica: int, key: bytes, value: bytes, height: int, timeout_s: float = 10.0
) -> None:
    """Wait until `replica` itself answers `key` with `value` from a state at `height` or
    above. f+1 replies do not say that the fourth replica has executed the block: on a busy
    machine it may still wait for the others' COMMITs when they are paused, and would then
    be stale at an older height than the receipt's."""
    deadline = time.monotonic() + timeout_s
    while True:
        answer = _call(cluster, replica, "query", request=encode_get(key))
        if answer.get("result") == value and answer.get("height", 0) >= height:
            return
        assert time.monotonic() < deadline, answer
        time.sleep(0.05)


def test_a_replica_that_hears_no_quorum_refuses_queries_as_stale(cluster: Cluster) -> None:
    genesis = cluster.genesis
    with LedgerClient(cluster.client_transport, genesis.public_keys(), genesis.f) as client:
        receipt = client.submit(encode_set(b"k", b"v1"))
    _served_at(cluster, 3, b"k", b"v1", receipt.block_height)
    for i in (0, 1, 2):
        cluster.pause(i)
    try:
        time.sleep(READ_CURRENT_WITHIN_MS / 1000 + 1.0)
        answer = _call(cluster, 3, "query", request=encode_get(b"k"))
        assert answer.get("error") == "stale", answer
        assert answer.get("height") == receipt.block_height  # says how old its state is
        assert "result" not in answer
        # A certified block is still served: it is as true there as anywhere.
        block = _call(cluster, 3, "block", height=receipt.block_height)
        assert isinstance(block.get("block"), bytes)
        status = cluster.status(3)
        assert status is not None and status["stale_reads"] >= 1
    finally:
        for i in (0, 1, 2):
            cluster.resume(i)
    deadline = time.monotonic() + 10
    while (answer := _call(cluster, 3, "query", request=encode_get(b"k"))).get("error"):
        assert time.monotonic() < deadline, answer
        time.sleep(0.1)
    assert answer["result"] == b"v1"


def test_a_client_reads_past_a_stale_replica(cluster: Cluster) -> None:
    """Replica 3, paused alone for longer than `READ_CURRENT_WITHIN_MS`, is behind once it
    resumes; until it caught up, a query asked of it first is answered by another replica,
    with the latest value. (Paused for less, it may answer from its state of the pause: a
    query's answer is current within that bound, not linearizable; docs/PBFT.md.)"""
    genesis = cluster.genesis

    async def go() -> bytes:
        transport = cluster.client_transport()
        client = AsyncLedgerClient(transport, genesis.public_keys(), genesis.f)
        try:
            await client.submit(encode_set(b"k", b"old"))
            cluster.pause(3)
            for i in range(40):  # far more than batches in flight: replica 3 is behind
                await client.submit(encode_set(b"k", b"new%d" % i))
            cluster.resume(3)
            return await client.query(encode_get(b"k"), replica=3)
        finally:
            await client.close()
            await transport.close()

    assert asyncio.run(go()) == b"new39"
