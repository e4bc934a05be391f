"""Redaction on real replica processes (docs/PBFT.md, "Redaction"): a marker written to the
ledger, then forgotten (the KV application's stand-in for a subject's erasure), and a
checkpoint past the forget made stable. Then no file of any replica's directory holds the
marker, raw or hex (the database, its write-ahead log, the snapshots, the logs), while the
same scan found it before the forget; blocks served on the client port show the omission;
and every chain still verifies from genesis with the validator keys alone.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from ledger_bridge.client import AsyncLedgerClient
from ledger_bridge.cluster import Cluster
from ledger_bridge.kvapp import encode_forget, encode_get, encode_set
from ledger_bridge.pbft import messages as m
from ledger_bridge.pbft.blocks import Block, verify_chain
from tests.ledger_bridge.test_processes import _base_port

pytestmark = pytest.mark.e2e

MARKER = b"MARKER-erased-subject-0123456789"  # 32 recognisable bytes
PARAMS = {"batch_size_max": 1, "batch_wait_ms": 1, "checkpoint_interval": 4, "log_window": 8}
WAIT_S = 60.0


def _marker_hits(directory: Path) -> list[str]:
    """Every file under `directory` holding the marker, raw or as hex."""
    hits = []
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        raw = path.read_bytes()
        for form in (MARKER, MARKER.hex().encode()):
            if form in raw:
                hits.append(f"{path.relative_to(directory)}: {form[:12]!r}")
    return hits


async def _submit_all(client: AsyncLedgerClient, txs: list[bytes]) -> list[int]:
    heights = []
    for tx in txs:
        receipt = await client.submit(tx)
        assert receipt.result == b"ok", receipt.result
        heights.append(receipt.block_height)
    return heights


def _wait_redacted(cluster: Cluster, applied: int) -> list[dict[str, object]]:
    deadline = time.monotonic() + WAIT_S
    while True:
        statuses = [cluster.status(i) or {} for i in range(cluster.n)]
        done = [s.get("redactions_applied", 0) for s in statuses]
        if all(isinstance(d, int) and d >= applied for d in done):
            return statuses
        assert time.monotonic() < deadline, f"redactions applied: {done}, want {applied}"
        time.sleep(0.1)


def test_a_forgotten_marker_leaves_no_byte_on_any_replica(tmp_path: Path) -> None:
    root = tmp_path / "ledger"
    with Cluster(root, 4, base_port=_base_port(), params=PARAMS) as cluster:
        cluster.start()
        cluster.wait_ready()

        async def go() -> tuple[list[int], list[list[Block]]]:
            transport = cluster.client_transport()
            keys = cluster.genesis.public_keys()
            client = AsyncLedgerClient(transport, keys, cluster.genesis.f, timeout_ms=30_000)
            try:
                written = await _submit_all(
                    client,
                    [encode_set(MARKER, b"value of " + MARKER), encode_set(b"other", b"kept")],
                )
                # The control: the marker is on disk (blocks, logged batches) before.
                await asyncio.sleep(0.2)
                for i in range(cluster.n):
                    await client.status(i)  # lands the replica's held-back writes
                assert _marker_hits(root), "the scan finds nothing even before the forget"
                forgot = await _submit_all(client, [encode_forget(MARKER)])
                pads = [encode_set(b"pad%d" % k, b"x") for k in range(2 * PARAMS["log_window"])]
                top = (await _submit_all(client, pads))[-1]
                _wait_redacted(cluster, 2)  # the set and the forget itself
                assert await client.query(encode_get(MARKER), 0) == b""
                chains = [
                    [await client.get_block(h, r) for h in range(1, top + 1)]
                    for r in range(cluster.n)
                ]
                return [*written, *forgot], chains
            finally:
                await transport.close()

        (marker_at, other_at, forget_at), chains = asyncio.run(go())
        statuses = [cluster.status(i) or {} for i in range(cluster.n)]  # flushes writes
        for s in statuses:
            assert s["redactions_pending"] == 0 and s["unredacted_refused"] == 0
        hits = _marker_hits(root)
    assert hits == []
    keys = cluster.genesis.public_keys()
    for chain in chains:
        # Served over the client port (each block's certificate checked by the client).
        assert verify_chain(chain, keys)
        by_height = {b.height: b for b in chain}
        for h in (marker_at, forget_at):
            assert [o.code for o in by_height[h].omitted] == [m.REDACTED]
            assert by_height[h].requests == ()
        assert by_height[other_at].txs == [encode_set(b"other", b"kept")]
        assert not any(MARKER in tx for b in chain for tx in b.txs)
