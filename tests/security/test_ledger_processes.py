"""Hostile clients against real replica processes, straight on the replicas' client ports.

- A flood of large requests from many fresh keys: without the byte bounds, forty 1 MiB
  requests would halt every replica for good ("local frame over the limit").
- Junk from a key that is no member, and a registration carrying a made-up personal record
  in an extra field: without admission control both would be stored whole in blocks.
- Forged requests naming another client's key: a replica that bound a client's replies to a
  connection before checking the signature would send them to the forger.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ledger_bridge import genesis as gen
from ledger_bridge.client import AsyncLedgerClient, LedgerClient, TcpClientTransport
from ledger_bridge.cluster import Cluster
from ledger_bridge.contracts import codec, tx
from ledger_bridge.crypto import SigningKey
from ledger_bridge.kvapp import encode_set
from ledger_bridge.pbft import messages as m
from ledger_bridge.storage import DB_FILE
from tests.ledger_bridge.contracts.harness import key
from tests.ledger_bridge.test_processes import _base_port, _wait_height

pytestmark = pytest.mark.e2e

VAULT = key(50)  # a founding member, so the genesis is the contracts' usual one
MARKER = b"Jeanne-Martin-12-rue-des-Lilas-FR7630006000011234567890189"


@pytest.fixture()
def kv(tmp_path: Path) -> Iterator[Cluster]:
    params = {"batch_size_max": 100, "batch_wait_ms": 2}
    with Cluster(tmp_path / "ledger", 4, base_port=_base_port(), params=params) as c:
        c.start()
        c.wait_ready()
        yield c


@pytest.fixture()
def contracts(tmp_path: Path) -> Iterator[Cluster]:
    app_genesis = {
        "members": [{"public_key": VAULT.public_key.hex(), "role": "vault", "college": "providers"}]
    }
    params = {"app": "contracts", "batch_size_max": 16, "batch_wait_ms": 2}
    with Cluster(
        tmp_path / "ledger", 4, base_port=_base_port(), params=params, app_genesis=app_genesis
    ) as c:
        c.start()
        c.wait_ready()
        yield c


def _client(cluster: Cluster, signer: SigningKey | None = None) -> LedgerClient:
    g = cluster.genesis
    return LedgerClient(
        lambda: cluster.client_transport(),
        g.public_keys(),
        g.f,
        signing_key=signer,
    )


def _flood(cluster: Cluster, clients: int, tx_for: Any) -> list[int]:
    """`clients` fresh keys, each submitting one request from `tx_for(i)` to every replica at
    once; the heights of the answers (0: refused before ordering)."""

    async def one(i: int, transport: TcpClientTransport) -> int:
        g = cluster.genesis
        client = AsyncLedgerClient(transport, g.public_keys(), g.f, timeout_ms=60_000)
        return (await client.submit(tx_for(i))).block_height

    async def main() -> list[int]:
        transport = cluster.client_transport()
        try:
            return list(await asyncio.gather(*(one(i, transport) for i in range(clients))))
        finally:
            await transport.close()

    return asyncio.run(main())


def _blocks(cluster: Cluster, replica: int) -> list[m.Block]:
    top = (cluster.status(replica) or {}).get("height", 0)
    with _client(cluster) as client:
        return [client.get_block(h, replica) for h in range(1, top + 1)]


def _store_hits(cluster: Cluster, needle: bytes) -> int:
    """Blocks, as each replica stores them in SQLite, holding `needle`."""
    hits = 0
    for i in range(cluster.n):
        path = gen.load_node_config(cluster.node_files[i]).data_dir / DB_FILE
        with sqlite3.connect(path) as db:
            hits += sum(needle in bytes(row[0]) for row in db.execute("SELECT block FROM blocks"))
    return hits


def test_a_flood_of_large_requests_from_fresh_keys_does_not_halt_the_cluster(
    kv: Cluster,
) -> None:
    """Forty near-maximal requests the application accepts, then forty 1 MiB ones: the first
    are ordered in byte-bounded batches, the second refused at the door; the cluster goes on
    committing, and no replica ever dropped a message as too large to send."""
    value_max = 60 * 1024
    heights = _flood(kv, 40, lambda i: encode_set(b"flood-%d" % i, os.urandom(value_max)))
    assert min(heights) >= 1
    junk = [m.make_request(SigningKey.generate(), 1, os.urandom(1024 * 1024)) for _ in range(40)]
    asyncio.run(_send_raw(kv, [m.encode(r) for r in junk]))
    with _client(kv) as client:
        receipt = client.submit(encode_set(b"after", b"the flood"))
    assert receipt.block_height > max(heights)
    _wait_height(kv, [0, 1, 2, 3], receipt.block_height)
    for i in range(4):
        status = kv.status(i)
        assert status is not None and status["dropped_oversize"] == 0
    ordered = [b for b in _blocks(kv, 1) if b.requests]
    assert max(len(b.requests) for b in ordered) < 40  # byte-bounded, not count-bounded
    junk_digests = {m.request_digest(r) for r in junk}
    assert not any(m.request_digest(r) in junk_digests for b in ordered for r in b.requests)


async def _send_raw(cluster: Cluster, requests: list[bytes]) -> None:
    from ledger_bridge.transport import encode_frame, pack, split_address

    for address in cluster.client_addresses():
        host, port = split_address(address)
        for raw in requests:
            try:
                _, writer = await asyncio.open_connection(host, port)
                writer.write(encode_frame(pack({"op": "submit", "request": raw})))
                await writer.drain()
                writer.close()
            except OSError:
                pass  # a replica may close a connection that sends this much before any proof


def test_junk_and_refused_registrations_never_reach_a_block(contracts: Cluster) -> None:
    g = contracts.genesis
    now = int(time.time() * 1000)
    junk = MARKER * 3000  # ~170 KB from a key that is no member: not even a transaction
    with _client(contracts) as client:
        refused = client.submit(junk)
    assert refused.block_height == 0  # answered by f+1 replicas without being ordered
    assert codec.decode(refused.result)["code"] == "malformed"

    # A registration carrying made-up personal details in an extra field: its shape is
    # wrong for ever, so it is refused before ordering.
    stranger = SigningKey.generate()
    body = {"role": "subject", "college": "citizens", "profile": MARKER.decode() * 2000}
    signed = tx.sign(stranger, g.chain_id, "member.register", body, valid_until=now + 60_000)
    with _client(contracts) as client:
        padded = client.submit(signed.encode())
    assert padded.block_height == 0
    assert codec.decode(padded.result)["code"] == "invalid"
    # One of the right shape that the rules refuse (no such college): ordered, since only
    # execution can tell, and kept in its block by digest and code alone.
    body = {"role": "subject", "college": MARKER.decode().lower()[:64]}
    signed = tx.sign(stranger, g.chain_id, "member.register", body, valid_until=now + 60_000)
    with _client(contracts) as client:
        receipt = client.submit(signed.encode())
    result = codec.decode(receipt.result)
    assert result["ok"] is False and result["code"] == "invalid"
    assert receipt.block_height >= 1

    _wait_height(contracts, [0, 1, 2, 3], receipt.block_height)
    needle = MARKER.lower()[:40]
    for i in range(4):
        blocks = _blocks(contracts, i)
        block = blocks[receipt.block_height - 1]
        assert [o.code for o in block.omitted] == [b"invalid"]
        assert not any(MARKER in m.encode(b) or needle in m.encode(b) for b in blocks)
    assert _store_hits(contracts, MARKER) == 0
    assert _store_hits(contracts, needle) == 0
    assert _store_hits(contracts, bytes(stranger.public_key)) == 0
    # The control: the same scan finds an accepted registration's key in every store.
    citizen = SigningKey.generate()
    body = {"role": "subject", "college": "citizens"}
    ok = tx.sign(citizen, g.chain_id, "member.register", body, valid_until=now + 60_000)
    with _client(contracts) as client:
        kept = client.submit(ok.encode())
    assert codec.decode(kept.result)["ok"] is True
    _wait_height(contracts, [0, 1, 2, 3], kept.block_height)
    assert _store_hits(contracts, bytes(citizen.public_key)) == 4


class _CountingTransport(TcpClientTransport):
    """Counts the submissions it carries: a request answered on its first send went to the
    primary alone; a diverted reply shows as a re-send to every replica."""

    sends = 0

    def send_now(self, replica: int, request: bytes, client: bytes = b"") -> bool:
        self.sends += 1  # the client's every send starts here (`send` after, if not connected)
        return super().send_now(replica, request, client)


def test_forged_requests_cannot_divert_another_clients_replies(kv: Cluster) -> None:
    victim = SigningKey.generate()
    forged = [
        m.encode(m.Request(bytes(victim.public_key), 10**18 + i, b"x", b"\x00" * 64))
        for i in range(200)
    ]
    heights: list[int] = []
    sends: list[int] = []

    async def attack_and_work() -> None:
        g = kv.genesis
        transport = _CountingTransport(kv.client_addresses())
        client = AsyncLedgerClient(transport, g.public_keys(), g.f, victim, timeout_ms=20_000)
        try:
            await client.submit(encode_set(b"victim-hello", b"v"))  # every replica knows us
            # From here a request goes to the primary alone, and the backups' replies reach us
            # only through the connection each of them bound to our key. A forger that could
            # re-bind it would leave us one reply short of f+1, and we would re-send to all.
            for i in range(10):
                await _send_raw(kv, forged[i * 20 : (i + 1) * 20])
                before = transport.sends
                heights.append(
                    (await client.submit(encode_set(b"victim-%d" % i, b"v"))).block_height
                )
                sends.append(transport.sends - before)
        finally:
            await transport.close()

    asyncio.run(attack_and_work())
    assert min(heights) >= 1
    assert sends == [1] * 10, "a reply was diverted: the client had to re-send"
    dropped = sum((kv.status(i) or {}).get("dropped_client", 0) for i in range(4))
    assert dropped >= 200 * 4 * 9 // 10
