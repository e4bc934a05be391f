"""The `redaction` section of `civis-vault bench ledger --json` (also `python -m bench.redaction`).

What it measures: the time, wall and CPU, a replica's store takes to apply one subject's
erasure (docs/PBFT.md, "Redaction") at 100,000 blocks: the rewrite of every block holding one
of the subject's requests (each body replaced by its digest), in the transaction that raises
the applied count, fsynced as the node does, then the write-ahead log's truncation
(`wal_checkpoint(TRUNCATE)`), all with `secure_delete` on. The store is built directly with
`Storage`: realistic small blocks (1 to 4 signed requests of ~200 bytes, a 3-signature
certificate), the subject's requests spread over the whole height range.

Why the store and not the cluster: the replica core's part (the blocks it holds in memory,
at most `state_transfer_blocks_max`) is microseconds; the cost that grows with the ledger is
the store's, one indexed read and write per position plus the checkpoint of the WAL.
"""

from __future__ import annotations

import json
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from ledger_bridge.crypto import SigningKey, digest
from ledger_bridge.pbft import messages as m
from ledger_bridge.storage import Batch, Storage

BLOCKS = 100_000
SUBJECT_POSITIONS = 200  # one subject's transactions over the ledger's life
BUILD_BATCH = 1_000  # blocks per transaction while building
POOL = 2_000  # distinct signed requests of other clients (signing 250,000 would dominate)


def _tx(i: int, who: bytes) -> bytes:
    body = b'{"op":"access.record","by":"%s","n":%d,"pad":"%s"}'
    return body % (who.hex().encode(), i, b"x" * 40)


def _block(height: int, reqs: tuple[m.Request, ...]) -> m.Block:
    return m.Block(
        height, 0, digest(b"%d" % (height - 1)), 1_700_000_000_000 + height,
        m.batch_digest(0, reqs), reqs, (), digest(b"r%d" % height), digest(b"s%d" % height),
        (0, 1, 2), (b"\x01" * 64, b"\x02" * 64, b"\x03" * 64),
    )  # fmt: skip


def build(directory: Path, blocks: int, positions: int, seed: int = 7) -> list[tuple[int, int]]:
    """A store of `blocks` blocks; returns the subject's (height, batch index) positions."""
    rng = random.Random(seed)  # a benchmark's layout, not crypto
    others = [SigningKey(digest(b"bench-client-%d" % c)) for c in range(50)]
    pool = [m.make_request(others[i % 50], i + 1, _tx(i, b"o" * 32)) for i in range(POOL)]
    subject = SigningKey(digest(b"bench-subject"))
    subject_heights = set(rng.sample(range(1, blocks + 1), positions))
    out: list[tuple[int, int]] = []
    storage = Storage(directory, synchronous="OFF")
    rows: list[tuple[int, bytes]] = []
    for h in range(1, blocks + 1):
        reqs = [pool[rng.randrange(POOL)] for _ in range(rng.randint(1, 4))]
        if h in subject_heights:
            k = rng.randrange(len(reqs) + 1)
            tx = _tx(h, bytes(subject.public_key))
            reqs.insert(k, m.make_request(subject, h, tx))
            out.append((h, k))
        rows.append((h, m.encode_block(_block(h, tuple(reqs)))))
        if len(rows) == BUILD_BATCH:
            storage.write(Batch(blocks=tuple(rows)))
            rows = []
    if rows:
        storage.write(Batch(blocks=tuple(rows)))
    storage.close()
    return out


def measure(blocks: int = BLOCKS, positions: int = SUBJECT_POSITIONS) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="civis-bench-redaction-") as tmp:
        directory = Path(tmp)
        started = time.perf_counter()
        where = build(directory, blocks, positions)
        build_s = time.perf_counter() - started
        storage = Storage(directory)  # FULL, as a node opens it
        # Some ordinary traffic first, so the WAL holds pages when the redaction comes.
        storage.write(Batch(put=(("log", b"x" * 8, b"y" * 2_000),)))
        redact = tuple((h, (k,)) for h, k in sorted(where))
        batch = Batch(put=(("meta", b"redactions", b"%d" % positions),), redact=redact)
        wall, cpu = time.perf_counter(), time.process_time()
        storage.write(batch, sync=True)
        wall_ms = (time.perf_counter() - wall) * 1000
        cpu_ms = (time.process_time() - cpu) * 1000
        left = sum(1 for h, k in where if k not in _omitted(storage, h))
        db_bytes = sum(p.stat().st_size for p in directory.iterdir())
        storage.close()
    assert left == 0, f"{left} positions not redacted"
    return {
        "blocks": blocks,
        "positions": positions,
        "apply_ms": round(wall_ms, 1),
        "apply_cpu_ms": round(cpu_ms, 1),
        "ms_per_position": round(wall_ms / positions, 3),
        "store_mb": round(db_bytes / 1e6, 1),
        "build_s": round(build_s, 1),
        "includes": "block rewrites + applied count in one fsynced transaction, WAL truncate",
    }


def _omitted(storage: Storage, height: int) -> set[int]:
    raw = storage.block(height)
    return {o.index for o in m.decode_block(raw).omitted} if raw else set()


if __name__ == "__main__":
    print(json.dumps(measure(), indent=1))
