"""Blocks of listening ports for a loopback cluster, chosen outside the ephemeral range.

Why: a replica listens on fixed ports (they are in the genesis), and the other replicas,
dialling it before it has bound them, draw the local ports of those outgoing connections from
the kernel's ephemeral range. A listening port inside that range can be taken by one of them
for as long as the connection lives, and the replica then dies at start with EADDRINUSE
(seen in CI: `ledger up` lost replica 3 that way, on a block picked by binding port 0, which
is always in the range). The kernel never hands out a port below the range on its own.
"""

from __future__ import annotations

import random
import socket
from collections.abc import Collection, Sequence
from pathlib import Path

LOOPBACK = "127.0.0.1"
LOWEST = 10_000  # below this live well-known services; above the range's end, few ports fit
_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def ephemeral_range() -> tuple[int, int]:
    """The kernel's (first, last) ephemeral port; Linux's default where it cannot be read."""
    try:
        first, last = (int(p) for p in _RANGE_FILE.read_text().split())
    except (OSError, ValueError):
        return 32_768, 60_999
    return first, last


def port_free(port: int, host: str = LOOPBACK) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_block(
    offsets: Sequence[int],
    host: str = LOOPBACK,
    tries: int = 200,
    rng: random.Random | None = None,
    avoid: Collection[int] = (),
) -> int:
    """A base port such that base + d is free for every d in `offsets`, all of them outside
    the ephemeral range (below it when there is room, above it otherwise), and none in
    `avoid`: ports the caller has chosen for something else but not bound yet, which a bind
    test would find free."""
    first, last = ephemeral_range()
    span = max(offsets) + 1
    ranges = [(LOWEST, first - span), (last + 1, 65_536 - span)]
    usable = [(lo, hi) for lo, hi in ranges if hi > lo]
    if not usable:
        raise RuntimeError("no room outside the ephemeral port range for a port block")
    pick = rng or random.SystemRandom()
    for _ in range(tries):
        lo, hi = usable[0] if len(usable) == 1 or pick.random() < 0.9 else usable[1]
        base = pick.randrange(lo, hi)
        if all(base + d not in avoid and port_free(base + d, host) for d in offsets):
            return base
    raise RuntimeError(f"no block of free ports outside the ephemeral range on {host}")


def cluster_block(
    replicas: int, client_offset: int = 100, host: str = LOOPBACK, avoid: Collection[int] = ()
) -> int:
    """A base for n replicas: peers listen at base + i, clients at base + client_offset + i;
    none of them in `avoid` (see `free_block`)."""
    offsets = [*range(replicas), *range(client_offset, client_offset + replicas)]
    return free_block(offsets, host, avoid=avoid)
