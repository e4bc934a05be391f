"""Real replica processes on loopback: load, SIGKILL, SIGSTOP/SIGCONT, restart from the WAL.

The property every test checks: every request acknowledged to the client (f+1
matching replies) is in every correct replica's chain at the height its receipt names, and
each chain verifies against the genesis validator keys alone (`verify_chain`).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ledger_bridge import ports
from ledger_bridge.client import AsyncLedgerClient, Receipt, TcpClientTransport
from ledger_bridge.cluster import Cluster
from ledger_bridge.kvapp import encode_set
from ledger_bridge.pbft.blocks import Block, verify_chain

pytestmark = pytest.mark.e2e

PARAMS = {"batch_size_max": 50, "batch_wait_ms": 2}


def _base_port() -> int:
    """A free block (peers at +0..+3, clients at +100..+103) outside the ephemeral range, so
    the replicas' own outgoing connections cannot hold one of its ports (`ledger_bridge.ports`)."""
    return ports.cluster_block(4)


@pytest.fixture()
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with Cluster(tmp_path / "ledger", 4, base_port=_base_port(), params=PARAMS) as c:
        c.start()
        c.wait_ready()
        yield c


class Load:
    """`clients` closed-loop clients in a background thread, each with its own key."""

    def __init__(self, cluster: Cluster, clients: int = 8) -> None:
        self.cluster = cluster
        self.clients = clients
        self.receipts: list[tuple[bytes, Receipt]] = []
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _one(self, c: int, transport: TcpClientTransport) -> None:
        client = AsyncLedgerClient(
            transport, self.cluster.genesis.public_keys(), self.cluster.genesis.f, timeout_ms=30_000
        )
        i = 0
        while not self._stop.is_set():
            tx = encode_set(f"c{c}-{i}".encode(), f"v{i}".encode())
            try:
                receipt = await client.submit(tx)
            except Exception as exc:
                self.errors.append(exc)
                return
            self.receipts.append((tx, receipt))
            i += 1

    async def _main(self) -> None:
        transport = self.cluster.client_transport()
        await asyncio.gather(*(self._one(c, transport) for c in range(self.clients)))
        await transport.close()

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)
        assert not self._thread.is_alive(), "load did not finish"

    def wait_for(self, count: int, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.receipts) < count:
            assert not self.errors, self.errors
            assert time.monotonic() < deadline, f"only {len(self.receipts)} of {count} acked"
            time.sleep(0.02)


def _chain(cluster: Cluster, replica: int, height: int) -> list[Block]:
    async def go() -> list[Block]:
        transport = cluster.client_transport()
        client = AsyncLedgerClient(transport, cluster.genesis.public_keys(), cluster.genesis.f)
        try:
            return [await client.get_block(h, replica) for h in range(1, height + 1)]
        finally:
            await transport.close()

    return asyncio.run(go())


def _wait_height(cluster: Cluster, replicas: list[int], height: int, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        heights = [(cluster.status(r) or {}).get("height", -1) for r in replicas]
        if all(h >= height for h in heights):
            return
        assert time.monotonic() < deadline, f"heights {heights} never reached {height}"
        time.sleep(0.1)


def _check(cluster: Cluster, load: Load, correct: list[int]) -> None:
    """Every acked tx is in every correct replica's verified chain at its receipt's height."""
    assert not load.errors, load.errors
    assert load.receipts
    top = max(r.block_height for _, r in load.receipts)
    _wait_height(cluster, correct, top)
    keys = cluster.genesis.public_keys()
    chains = {r: _chain(cluster, r, top) for r in correct}
    for r, chain in chains.items():
        assert verify_chain(chain, keys), f"replica {r}'s chain does not verify"
        assert [b.header_hash() for b in chain] == [b.header_hash() for b in chains[correct[0]]]
        for tx, receipt in load.receipts:
            assert tx in chain[receipt.block_height - 1].txs, f"acked tx missing on replica {r}"


def test_four_replicas_commit_a_client_load_and_the_chains_verify(cluster: Cluster) -> None:
    with Load(cluster) as load:
        load.wait_for(300)
    _check(cluster, load, [0, 1, 2, 3])


def test_sigkill_of_the_primary_loses_no_acknowledged_request(cluster: Cluster) -> None:
    with Load(cluster) as load:
        load.wait_for(100)
        primary = (cluster.status(1) or {})["primary"]
        cluster.kill(primary)
        before = len(load.receipts)
        load.wait_for(before + 200, timeout_s=40)  # the others elect a new primary
    assert (cluster.status((primary + 1) % 4) or {})["view"] >= 1
    _check(cluster, load, [r for r in range(4) if r != primary])


def test_a_paused_backup_catches_up_after_sigcont(cluster: Cluster) -> None:
    with Load(cluster) as load:
        load.wait_for(50)
        cluster.pause(3)
        load.wait_for(len(load.receipts) + 200)  # 3 of 4 still commit
        cluster.resume(3)
        load.wait_for(len(load.receipts) + 50)
    _check(cluster, load, [0, 1, 2, 3])


def test_a_killed_backup_restarts_from_its_wal_and_rejoins(cluster: Cluster) -> None:
    with Load(cluster) as load:
        load.wait_for(100)
        cluster.kill(2)
        load.wait_for(len(load.receipts) + 150)
        cluster.start([2])
        cluster.wait_ready([2])
        load.wait_for(len(load.receipts) + 100)
    _check(cluster, load, [0, 1, 2, 3])


def test_malformed_client_frames_close_that_connection_only(cluster: Cluster) -> None:
    import struct

    from ledger_bridge.transport import encode_frame, pack, split_address

    host, port = split_address(cluster.client_addresses()[0])
    garbage = [
        struct.pack(">I", 1 << 30) + b"x",  # over the frame limit
        encode_frame(b"\xc1\xc1"),  # not msgpack
        encode_frame(pack({"op": "submit", "request": b"\x00" * 40})),  # not a Request
        encode_frame(pack({"op": "block", "height": (1 << 64) - 1})),  # absurd height
    ]
    for payload in garbage:
        with socket.create_connection((host, port), timeout=2) as s:
            s.sendall(payload)
            s.settimeout(2)
            with contextlib.suppress(TimeoutError):
                s.recv(65536)
    status = cluster.status(0)
    assert status is not None and status["dropped_client"] >= 1
    with Load(cluster, clients=1) as load:
        load.wait_for(5)
    _check(cluster, load, [0, 1, 2, 3])
