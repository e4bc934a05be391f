"""Backfill: a store with holes becomes contiguous from its peers, and only with blocks that
link to its own chain and carry a commit certificate.

The chains are real: signed blocks committed by the seeded simulator (some with refused
requests left out, `omitted`), held in real SQLite stores; a peer is a store the fetch reads,
and a hostile peer is one whose store holds altered blocks. The process test at the end makes
holes the way the fault campaign did (a replica brought back by state transfer) and watches a
replica process fill them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from ledger_bridge.backfill import Backfill
from ledger_bridge.cluster import Cluster
from ledger_bridge.crypto import VerifyKey
from ledger_bridge.pbft import messages as m
from ledger_bridge.pbft.blocks import verify_chain
from ledger_bridge.sim.core import Scenario, Simulator
from ledger_bridge.storage import Batch, Storage
from tests.ledger_bridge.test_processes import Load, _base_port


@pytest.fixture(scope="module")
def chain() -> tuple[list[m.Block], list[VerifyKey]]:
    sc = Scenario(seed=3, clients=3, requests_per_client=8, batch_size_max=1, refused_every=4)
    sim = Simulator(sc).run()
    blocks = [sim.nodes[0].blocks[h] for h in sorted(sim.nodes[0].blocks)]
    assert len(blocks) >= 20 and any(b.omitted for b in blocks)
    return blocks, [k.public_key for k in sim.keys]


def _store(path: Path, blocks: list[m.Block]) -> Storage:
    storage = Storage(path, synchronous="OFF")
    storage.write(Batch(blocks=tuple((b.height, m.encode_block(b)) for b in blocks)))
    return storage


def _fetch_from(stores: list[Storage]) -> Callable[[int, int], asyncio.Future[bytes | None]]:
    async def fetch(peer: int, height: int) -> bytes | None:
        return stores[peer].block(height)

    return fetch  # type: ignore[return-value]


def _fill(backfill: Backfill) -> None:
    """Run the real loop until the store has no hole left (or give up after 20 s)."""

    async def go() -> None:
        task = asyncio.create_task(backfill.run())
        try:
            deadline = time.monotonic() + 20
            while backfill.storage.holes() and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)  # one more round: nothing may be stored past the holes
        finally:
            task.cancel()

    asyncio.run(go())


def test_holes_lists_missing_ranges_below_the_top_only(
    tmp_path: Path, chain: tuple[list[m.Block], list[VerifyKey]]
) -> None:
    blocks, _ = chain
    store = _store(tmp_path, [b for b in blocks if b.height not in {1, 2, 7, 10, 11, 12}])
    assert store.holes() == [(1, 2), (7, 7), (10, 12)]
    assert store.holes(start=8) == [(10, 12)]
    assert store.holes(limit=2) == [(1, 2), (7, 7)]
    # Nothing above the top is a hole, and nothing is filled there or over a stored block.
    top = store.last_height()
    forged = m.encode_block(dataclasses.replace(blocks[2], state_root=bytes(32)))
    assert store.fill_holes([(3, forged), (top + 1, forged), (7, m.encode_block(blocks[6]))]) == 1
    assert store.block(3) == m.encode_block(blocks[2]) and store.block(top + 1) is None
    assert store.holes() == [(1, 2), (10, 12)]


def test_a_store_with_holes_becomes_the_peers_chain(
    tmp_path: Path, chain: tuple[list[m.Block], list[VerifyKey]]
) -> None:
    blocks, keys = chain
    missing = {1, 2, 3, 5, *range(9, 19)}
    store = _store(tmp_path / "me", [b for b in blocks if b.height not in missing])
    peers = [_store(tmp_path / f"p{i}", blocks) for i in range(2)]
    backfill = Backfill(
        store, keys, [0, 1], _fetch_from(peers), blocks_per_s=10_000, chunk_blocks=4
    )
    _fill(backfill)
    assert store.holes() == []
    assert [raw for _, raw in store.blocks()] == [m.encode_block(b) for b in blocks]
    assert verify_chain([m.decode_block(raw) for _, raw in store.blocks()], keys)
    assert backfill.status()["backfilled"] == len(missing)
    assert backfill.status()["missing_blocks"] == 0
    assert backfill.stats.refused == backfill.stats.unlinked == 0


def test_a_peer_serving_altered_or_uncertified_blocks_is_refused(
    tmp_path: Path, chain: tuple[list[m.Block], list[VerifyKey]]
) -> None:
    """Attack: a Byzantine peer serves, for each missing height, a block whose certificate
    still verifies but whose state root it changed (the certificate does not cover it), or a
    block whose certificate is cut to one signature. Neither may enter the store; the honest
    peer's blocks fill the holes."""
    blocks, keys = chain
    missing = set(range(4, 16))
    altered = [
        dataclasses.replace(b, state_root=bytes(32))
        if b.height % 2
        else dataclasses.replace(b, signers=b.signers[:1], certificate=b.certificate[:1])
        for b in blocks
    ]
    store = _store(tmp_path / "me", [b for b in blocks if b.height not in missing])
    hostile = _store(tmp_path / "hostile", altered)

    alone = Backfill(store, keys, [0], _fetch_from([hostile]), blocks_per_s=10_000)
    asyncio.run(alone.fill_chunk(4, 15))
    assert store.holes() == [(4, 15)] and alone.stats.filled == 0 and alone.stats.refused >= 1

    honest = _store(tmp_path / "honest", blocks)
    both = Backfill(
        store, keys, [0, 1], _fetch_from([hostile, honest]), blocks_per_s=10_000, chunk_blocks=3
    )
    _fill(both)
    assert store.holes() == [] and both.stats.refused >= 1
    assert [raw for _, raw in store.blocks()] == [m.encode_block(b) for b in blocks]


def test_a_store_that_contradicts_the_filled_chain_is_reported(
    tmp_path: Path, chain: tuple[list[m.Block], list[VerifyKey]]
) -> None:
    """The block under a hole is this store's own; when the filled blocks (which link to the
    block above the hole) do not name it, the store is inconsistent and the backfill says so."""
    blocks, keys = chain
    mine = [b for b in blocks if b.height not in {6, 7}]
    mine[4] = dataclasses.replace(mine[4], results_digest=bytes(32))  # height 5, altered
    store = _store(tmp_path / "me", mine)
    backfill = Backfill(store, keys, [0], _fetch_from([_store(tmp_path / "p", blocks)]))
    asyncio.run(backfill.fill_chunk(6, 7))
    assert store.holes() == [] and backfill.stats.unlinked == 1


def test_blocks_executed_but_never_stored_are_filled_up_to_the_executed_head(
    tmp_path: Path, chain: tuple[list[m.Block], list[VerifyKey]]
) -> None:
    """A state transfer moves the core's head past the store's top without the blocks in
    between: they are holes too, anchored by the hash of the block the core executed last."""
    blocks, keys = chain
    store = _store(tmp_path / "me", blocks[:5])
    head = blocks[15]
    backfill = Backfill(
        store,
        keys,
        [0],
        _fetch_from([_store(tmp_path / "p", blocks)]),
        blocks_per_s=10_000,
        head=lambda: (head.height, head.header_hash()),
    )
    assert backfill.scan() == [(6, 16)]
    _fill(backfill)
    assert [h for h, _ in store.blocks()] == list(range(1, 17))
    assert verify_chain([m.decode_block(raw) for _, raw in store.blocks()], keys)


# -- a replica process fills the holes state transfer left ---------------------------------

PARAMS = {
    "batch_size_max": 1,
    "batch_wait_ms": 0,
    "checkpoint_interval": 8,
    "log_window": 16,
    "state_transfer_blocks_max": 4,
}


@pytest.mark.e2e
def test_a_replica_back_from_state_transfer_fills_its_store(tmp_path: Path) -> None:
    with Cluster(tmp_path / "ledger", 4, base_port=_base_port(), params=PARAMS) as cluster:
        cluster.start()
        cluster.wait_ready()
        with Load(cluster, clients=4) as load:
            load.wait_for(20)
            cluster.pause(3)  # far behind the checkpoints: it comes back by state transfer
            load.wait_for(len(load.receipts) + 150)
            cluster.resume(3)
            load.wait_for(len(load.receipts) + 60)
        top = (cluster.status(0) or {})["height"]
        deadline = time.monotonic() + 60
        while True:
            status = cluster.status(3) or {}
            if status.get("height", 0) >= top and status.get("missing_blocks", 1) == 0:
                break
            assert time.monotonic() < deadline, (
                f"replica 3 never reached {top} contiguously: {status}; replica 0: "
                f"{cluster.status(0)}; replica 3's log: {cluster.log(3).read_text()[-3000:]}"
            )
            time.sleep(0.2)
        assert status["backfilled"] > 0, "no hole was made: the test proves nothing"
    store = Storage(tmp_path / "ledger" / "data" / "node-3")
    heights = [h for h, _ in store.blocks()]
    assert heights == list(range(1, heights[-1] + 1))
    chain = [m.decode_block(raw) for _, raw in store.blocks()]
    assert verify_chain(chain, cluster.genesis.public_keys())
    for tx, receipt in load.receipts:
        assert tx in chain[receipt.block_height - 1].txs


def test_a_body_the_application_redacted_is_never_stored_from_a_peer(
    tmp_path: Path, chain: tuple[list[m.Block], list[VerifyKey]]
) -> None:
    """Attack: after a subject's erasure, a Byzantine peer still serves the erased request's
    body (its block unredacted: the certificate and hash verify either way). The backfill
    stores the block with that body replaced by its digest, as the honest peers serve it,
    and counts the body; the chain still verifies."""
    blocks, keys = chain
    missing = set(range(4, 12))
    redacted = {5: frozenset({0}), 9: frozenset({0, 7})}  # index 7: outside the batch
    store = _store(tmp_path / "me", [b for b in blocks if b.height not in missing])
    hostile = _store(tmp_path / "hostile", blocks)
    backfill = Backfill(
        store,
        keys,
        [0],
        _fetch_from([hostile]),
        blocks_per_s=10_000,
        redacted_at=lambda h: redacted.get(h, frozenset()),
    )
    _fill(backfill)
    assert store.holes() == []
    stored = [m.decode_block(raw) for _, raw in store.blocks()]
    for b in stored:
        want = m.redact_block(blocks[b.height - 1], redacted.get(b.height, ()))[0]
        assert b == want
    assert [o.code for o in stored[4].omitted] == [m.REDACTED]
    assert all(r not in stored[8].requests for r in blocks[8].requests[:1])
    assert backfill.stats.unredacted_refused == 2
    assert verify_chain(stored, keys)
