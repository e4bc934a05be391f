"""Port blocks for loopback clusters stay outside the kernel's ephemeral range (where the
replicas' own outgoing connections could hold a port a replica is about to listen on)."""

from __future__ import annotations

import random
import socket

from ledger_bridge import ports

OFFSETS = [0, 1, 2, 3, 100, 101, 102, 103]


def test_a_block_is_free_and_outside_the_ephemeral_range() -> None:
    first, last = ports.ephemeral_range()
    for seed in range(20):
        base = ports.free_block(OFFSETS, rng=random.Random(seed))
        assert all(not first <= base + d <= last for d in OFFSETS)
        assert all(ports.port_free(base + d) for d in OFFSETS)


def test_a_block_with_a_busy_port_is_passed_over() -> None:
    chosen = ports.free_block(OFFSETS, rng=random.Random(7))
    with socket.socket() as busy:
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
        busy.bind((ports.LOOPBACK, chosen + 101))
        busy.listen()
        again = ports.free_block(OFFSETS, rng=random.Random(7))  # same draws, same first pick
        assert again != chosen
        assert chosen + 101 not in {again + d for d in OFFSETS}


def test_cluster_block_covers_peers_and_clients() -> None:
    base = ports.cluster_block(4, client_offset=100)
    assert all(ports.port_free(base + d) for d in OFFSETS)


def test_a_block_takes_no_port_it_is_told_to_avoid() -> None:
    """A port chosen for something else and not bound yet (`up`'s API port, which uvicorn binds
    after the replicas start) is free to a bind test: `avoid` keeps the block off it."""
    chosen = ports.free_block(OFFSETS, rng=random.Random(11))
    for d in OFFSETS:
        again = ports.free_block(OFFSETS, rng=random.Random(11), avoid={chosen + d})
        assert chosen + d not in {again + e for e in OFFSETS}
    base = ports.cluster_block(4, client_offset=100, avoid={chosen + 100})
    assert chosen + 100 not in {base + d for d in OFFSETS}
