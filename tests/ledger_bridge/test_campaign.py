"""A fault campaign on real replica processes under 8 clients, checked from the stores.

Faults: SIGKILL and restart, SIGSTOP/SIGCONT, a partition (a replica cut off for longer
than its log window, so it comes back by state transfer; made by pausing it, which cuts it
both ways), and a double kill (two of four replicas at once: no quorum, progress stops, then
resumes after restart). Once healed and idle, every replica's store must hold every
acknowledged transaction exactly once, at its receipt's height, with no hole, no duplicate,
identical headers and a chain that verifies from genesis.

The short campaign runs in CI; `pytest --campaign` runs the long one.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from ledger_bridge.cluster import STOP_TIMEOUT_S, Cluster
from ledger_bridge.pbft import messages as m
from ledger_bridge.pbft.blocks import verify_chain
from ledger_bridge.storage import Storage
from tests.ledger_bridge.test_processes import Load, _base_port

pytestmark = pytest.mark.e2e

PARAMS = {"batch_size_max": 20, "batch_wait_ms": 2, "checkpoint_interval": 16, "log_window": 32}
HEAL_TIMEOUT_S = 90.0


def _kill(cluster: Cluster, load: Load, rng: random.Random) -> None:
    victim = rng.randrange(cluster.n)
    cluster.kill(victim)
    load.wait_for(len(load.receipts) + 100, timeout_s=60)
    cluster.start([victim])
    cluster.wait_ready([victim])


def _pause(cluster: Cluster, load: Load, rng: random.Random) -> None:
    victim = rng.randrange(cluster.n)
    cluster.pause(victim)
    load.wait_for(len(load.receipts) + 50, timeout_s=60)
    cluster.resume(victim)


def _partition(cluster: Cluster, load: Load, rng: random.Random) -> None:
    victim = rng.randrange(cluster.n)
    cluster.pause(victim)  # well past its log window: it needs a state transfer, then backfill
    load.wait_for(len(load.receipts) + 1500, timeout_s=60)
    cluster.resume(victim)


def _double_kill(cluster: Cluster, load: Load, rng: random.Random) -> None:
    victims = rng.sample(range(cluster.n), 2)
    for v in victims:
        cluster.kill(v)
    time.sleep(1.0)  # what was committed before the kills gets its replies
    stalled = len(load.receipts)
    time.sleep(2.0)
    assert len(load.receipts) == stalled, "2 of 4 replicas cannot commit anything"
    cluster.start(victims)
    cluster.wait_ready(victims)
    load.wait_for(stalled + 100, timeout_s=60)


Fault = Callable[[Cluster, Load, random.Random], None]
FAULTS: dict[str, Fault] = {
    "kill": _kill,
    "pause": _pause,
    "partition": _partition,
    "double kill": _double_kill,
}


def _healed(cluster: Cluster) -> int:
    """Wait until every replica stores the same top with no hole; return that top."""
    deadline = time.monotonic() + HEAL_TIMEOUT_S
    while True:
        statuses = [cluster.status(i) or {} for i in range(cluster.n)]
        tops = {s.get("height") for s in statuses}
        if len(tops) == 1 and all(s.get("missing_blocks") == 0 for s in statuses):
            return int(statuses[0]["height"])
        assert time.monotonic() < deadline, f"never healed: {statuses}"
        time.sleep(0.5)


def _check_stores(directory: Path, cluster: Cluster, load: Load) -> None:
    keys = cluster.genesis.public_keys()
    chains: list[list[m.Block]] = []
    for i in range(cluster.n):
        store = Storage(directory / "data" / f"node-{i}")
        try:
            chains.append([m.decode_block(raw) for _, raw in store.blocks()])
        finally:
            store.close()
    for i, chain in enumerate(chains):
        assert [b.height for b in chain] == list(range(1, len(chain) + 1)), f"holes in {i}"
        assert verify_chain(chain, keys), f"replica {i}'s chain does not verify"
        assert [b.header_hash() for b in chain] == [b.header_hash() for b in chains[0]]
    chain = chains[0]
    where = Counter(tx for block in chain for tx in block.txs)
    assert not [tx for tx, count in where.items() if count > 1], "a transaction in two blocks"
    for tx, receipt in load.receipts:
        assert where[tx] == 1 and tx in chain[receipt.block_height - 1].txs


def _campaign(tmp_path: Path, seed: int, rounds: list[str]) -> None:
    rng = random.Random(seed)
    directory = tmp_path / "ledger"
    with Cluster(directory, 4, base_port=_base_port(), params=PARAMS) as cluster:
        cluster.start()
        cluster.wait_ready()
        with Load(cluster, clients=8) as load:
            load.wait_for(100)
            for name in rounds:
                FAULTS[name](cluster, load, rng)
                load.wait_for(len(load.receipts) + 50, timeout_s=60)
        assert not load.errors, load.errors
        _healed(cluster)
    _check_stores(directory, cluster, load)


def test_short_campaign_every_fault_once(tmp_path: Path) -> None:
    _campaign(tmp_path, seed=1, rounds=list(FAULTS))


@pytest.mark.slow
def test_long_campaign(tmp_path: Path) -> None:
    seed = int(os.environ.get("CIVIS_CAMPAIGN_SEED", "7"))
    rng = random.Random(seed)
    print(f"campaign seed {seed} (CIVIS_CAMPAIGN_SEED reproduces the order of faults)")
    _campaign(tmp_path, seed, [rng.choice(list(FAULTS)) for _ in range(24)])


def test_a_replica_stops_on_sigterm_while_its_peers_are_paused(tmp_path: Path) -> None:
    """Its links to paused peers never acknowledge a close; it must stop by itself anyway,
    before the launcher would have to SIGKILL it."""
    with Cluster(tmp_path / "ledger", 4, base_port=_base_port(), params=PARAMS) as cluster:
        cluster.start()
        cluster.wait_ready()
        with Load(cluster, clients=2) as load:
            load.wait_for(50)
        for i in (0, 1, 2):
            cluster.pause(i)
        try:
            time.sleep(0.5)  # frames to the paused peers pile up in replica 3's buffers
            os.kill(cluster.pid(3), signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT_S
            while cluster.running(3) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not cluster.running(3), "replica 3 ignored SIGTERM"
        finally:
            for i in (0, 1, 2):
                cluster.resume(i)
