"""Replay a recorded block sequence in this process and print what it computed, as JSON.

Run as a subprocess by test_determinism.py, each time under another PYTHONHASHSEED: a replica
is a separate process, and anything the contracts decide from the iteration order of a set or
a dict of strings (randomised per process) would make two replicas disagree. It prints, for
every block, the result bytes, the state root and a digest of the snapshot, so the caller can
name the first block where two processes differ.

    python -m tests.ledger_bridge.contracts.model_replay SCENARIO
        [--restore-after H ...]         snapshot after block H, carry on in a fresh ConsentApp
        [--snapshot-after H --snapshot-out FILE]   also write the snapshot after block H
        [--start-from FILE]             start from a snapshot file instead of the genesis

The scenario file is msgpack: a list of [height, time_ms, prev_hash, [tx bytes, ...]], from
the genesis of `harness.Chain.new()` (deterministic keys, so every process builds it alike).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import msgpack

from ledger_bridge.app import BlockContext
from ledger_bridge.contracts.app import ConsentApp
from tests.ledger_bridge.contracts.harness import CHAIN, Chain

Block = tuple[int, int, bytes, list[bytes]]


def load(path: Path) -> list[Block]:
    rows = msgpack.unpackb(path.read_bytes(), raw=False)
    return [(int(h), int(t), bytes(p), [bytes(x) for x in txs]) for h, t, p, txs in rows]


def dump(blocks: list[Block]) -> bytes:
    return bytes(msgpack.packb([list(b) for b in blocks], use_bin_type=True))


def fresh_from(snapshot: bytes) -> ConsentApp:
    app = ConsentApp(CHAIN)
    app.restore(snapshot)
    return app


def replay(
    blocks: list[Block],
    *,
    start: bytes | None = None,
    restore_after: frozenset[int] = frozenset(),
    snapshot_after: int | None = None,
    snapshot_out: Path | None = None,
) -> dict[str, Any]:
    """Execute `blocks` (those after the start state's height) and describe every one."""
    app = Chain.new().app if start is None else fresh_from(start)
    first: int = app.state.get("meta", "height")
    out: dict[str, Any] = {
        "str_hash": hash("civis-vault"),  # shows the caller that PYTHONHASHSEED took effect
        "start_root": app.state_root().hex(),
        "blocks": [],
    }
    for height, time_ms, prev_hash, txs in blocks:
        if height <= first:
            continue
        results, root = app.execute(txs, BlockContext(height, time_ms, prev_hash))
        snapshot = app.snapshot()
        out["blocks"].append(
            {
                "height": height,
                "results": [r.hex() for r in results],
                "root": root.hex(),
                "snapshot_sha256": hashlib.sha256(snapshot).hexdigest(),
            }
        )
        if height == snapshot_after and snapshot_out is not None:
            snapshot_out.write_bytes(snapshot)
        if height in restore_after:
            app = fresh_from(snapshot)
            assert app.state_root() == root, f"restore after block {height} changed the root"
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("scenario", type=Path)
    parser.add_argument("--restore-after", type=int, action="append", default=[])
    parser.add_argument("--snapshot-after", type=int)
    parser.add_argument("--snapshot-out", type=Path)
    parser.add_argument("--start-from", type=Path)
    args = parser.parse_args(argv)
    out = replay(
        load(args.scenario),
        start=None if args.start_from is None else args.start_from.read_bytes(),
        restore_after=frozenset(args.restore_after),
        snapshot_after=args.snapshot_after,
        snapshot_out=args.snapshot_out,
    )
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
