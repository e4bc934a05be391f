"""The ledger height floor an API instance's worker processes share (ledger_bridge/height_floor.py).

What it must give: a read served by one process never comes from a state older than a write
another process of the instance saw committed. The attack on the unshared floor is played
with two transports over one cluster, each standing for a worker: the writer's commits leave
replica 3 behind, and the reader, asking replica 3 first, gets the old value unless it knows
the writer's height.
"""

from __future__ import annotations

import asyncio
import struct
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ledger_bridge import height_floor
from ledger_bridge.client import AsyncLedgerClient, InProcessTransport
from ledger_bridge.crypto import SigningKey
from ledger_bridge.height_floor import HeightFloor
from ledger_bridge.kvapp import KVApp, encode_get, encode_set
from ledger_bridge.pbft.config import ClusterConfig
from ledger_bridge.pbft.replica import Replica

RAISER = """
import sys
from pathlib import Path
from ledger_bridge.height_floor import HeightFloor

floor = HeightFloor.shared(Path(sys.argv[1]))
for height in range(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])):
    floor.raise_to(height)
    assert floor.height >= height
floor.close()
"""


def _raise_in_child(path: Path, start: int, stop: int, step: int = 1) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", RAISER, str(path), str(start), str(stop), str(step)],
        cwd=Path(__file__).resolve().parents[2],
    )


def test_a_height_raised_in_another_process_is_the_floor_here(tmp_path: Path) -> None:
    path = tmp_path / "floor"
    HeightFloor.create(path)
    floor = HeightFloor.shared(path)
    try:
        assert floor.height == 0
        assert _raise_in_child(path, 42, 43).wait(30) == 0
        assert floor.height == 42
        floor.raise_to(7)  # lower: what the other process saw stands
        assert floor.height == 42
        floor.raise_to(50)
        assert floor.height == 50
    finally:
        floor.close()


def test_processes_raising_at_once_leave_the_highest_height(tmp_path: Path) -> None:
    """Four processes raise interleaved heights concurrently: no lower write lands last."""
    path = tmp_path / "floor"
    HeightFloor.create(path)
    children = [_raise_in_child(path, k, 100_000 + k, 4) for k in range(4)]
    assert [child.wait(60) for child in children] == [0] * 4
    floor = HeightFloor.shared(path)
    try:
        assert floor.height == 99_999  # the last height of k = 3
    finally:
        floor.close()


def test_a_new_run_starts_from_its_own_floor_not_the_last_runs(tmp_path: Path) -> None:
    """`create` replaces the file: a floor left by an earlier run (maybe of another chain,
    higher than this one will reach for a while) must not hold this run's reads back."""
    path = tmp_path / "floor"
    HeightFloor.create(path)
    earlier = HeightFloor.shared(path)
    earlier.raise_to(10_000)
    HeightFloor.create(path, 3)
    now = HeightFloor.shared(path)
    try:
        assert now.height == 3
        earlier.raise_to(20_000)  # a worker of the earlier run, still mapping the old file
        assert now.height == 3
    finally:
        earlier.close()
        now.close()


def test_a_local_floor_only_rises() -> None:
    floor = HeightFloor()
    floor.raise_to(5)
    floor.raise_to(3)
    assert floor.height == 5


class _PausedRead:
    """The floor's 8-byte height format, except that the first read of the mapping by
    `thread` waits (at most 0.5 s) for `resume`, after setting `paused`: a thread switch between
    a raise's read of the shared height and its write, made to happen."""

    size = 8

    def __init__(self, thread: threading.Thread) -> None:
        self.thread = thread
        self.paused, self.resume = threading.Event(), threading.Event()
        self.first = True

    def unpack_from(self, buffer: Any) -> tuple[int, ...]:
        read = struct.unpack_from("<Q", buffer)
        if self.first and threading.current_thread() is self.thread:
            self.first = False
            self.paused.set()
            self.resume.wait(0.5)
        return read

    def pack_into(self, buffer: Any, offset: int, height: int) -> None:
        struct.pack_into("<Q", buffer, offset, height)


def _in_a_pause(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, other: Callable[[HeightFloor], None]
) -> tuple[HeightFloor, threading.Thread]:
    """A floor shared at height 100 whose first read of the mapping by this thread pauses,
    and a started thread that calls `other(floor)` in that pause, then lets the read go on."""
    path = tmp_path / "floor"
    HeightFloor.create(path, 100)
    floor = HeightFloor.shared(path)
    paused = _PausedRead(threading.current_thread())
    monkeypatch.setattr(height_floor, "_HEIGHT", paused)

    def run() -> None:
        paused.paused.wait(2.0)
        other(floor)
        paused.resume.set()

    thread = threading.Thread(target=run)
    thread.start()
    return floor, thread


def test_two_threads_raising_one_shared_floor_never_lower_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gateway's loop thread and an API worker's serving loop raise one floor. `flock`
    excludes open files, not threads: without a lock of its own, the second thread's raise
    to 110 lands while the first is between reading 100 and writing 105, and 105 lands last."""
    floor, other = _in_a_pause(tmp_path, monkeypatch, lambda f: f.raise_to(110))
    try:
        floor.raise_to(105)
        other.join(10)
        assert floor.height == 110
    finally:
        floor.close()


def test_a_floor_closed_by_one_thread_while_another_reads_it_stays_readable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A gateway closed while a serving loop's read of the floor is halfway: the read ends
    first (it would otherwise unlock a closed file), and the floor reads as local after."""
    floor, other = _in_a_pause(tmp_path, monkeypatch, HeightFloor.close)
    try:
        assert floor.height == 100
    finally:
        other.join(10)
    assert floor.height == 100  # what it knew, now that nothing is shared


def _replicas() -> tuple[list[Replica], list[SigningKey]]:
    keys = [SigningKey(bytes([i + 1]) * 32) for i in range(4)]
    config = ClusterConfig.create(
        [bytes(k.public_key) for k in keys], batch_wait_ms=0, heartbeat_ms=10
    )
    return [Replica(config, i, keys[i], KVApp()) for i in range(4)], keys


def _read_after_write(writer_floor: HeightFloor, reader_floor: HeightFloor) -> bytes:
    """The writer's transport commits `k = new` without replica 3; the reader's, over the
    same replicas, then asks replica 3 first: what does it read?"""
    replicas, keys = _replicas()
    public = [k.public_key for k in keys]

    async def go() -> bytes:
        written = InProcessTransport(replicas, height_floor=writer_floor)
        read = InProcessTransport(replicas, height_floor=reader_floor)
        writer = AsyncLedgerClient(written, public, 1, retry_ms=50, timeout_ms=10_000)
        reader = AsyncLedgerClient(read, public, 1)
        try:
            await writer.submit(encode_set(b"k", b"old"))
            written.crash(3)  # replica 3 hears nothing more: it stays at the old value
            await writer.submit(encode_set(b"k", b"new"))
            return await reader.query(encode_get(b"k"), replica=3)
        finally:
            await writer.close()
            await reader.close()
            await written.close()
            await read.close()

    return asyncio.run(asyncio.wait_for(go(), 30))


def test_a_read_by_another_worker_sees_the_write_before_it(tmp_path: Path) -> None:
    path = tmp_path / "floor"
    HeightFloor.create(path)
    writer_floor, reader_floor = HeightFloor.shared(path), HeightFloor.shared(path)
    try:
        assert _read_after_write(writer_floor, reader_floor) == b"new"
    finally:
        writer_floor.close()
        reader_floor.close()


def test_control_workers_that_do_not_share_the_floor_read_the_past() -> None:
    """What the shared floor prevents: each worker with its own floor, the reader takes
    replica 3's answer, from before the write it follows."""
    assert _read_after_write(HeightFloor(), HeightFloor()) == b"old"


class _LyingReplica3(InProcessTransport):
    """Replica 3 answers queries from a height far beyond the chain's (a Byzantine replica)."""

    async def call(self, replica: int, op: str, args: dict[str, Any]) -> dict[str, Any]:
        answer = await super().call(replica, op, args)
        if replica == 3 and op == "query":
            answer["height"] = 1 << 62
        return answer


def test_a_lying_replicas_height_does_not_refuse_every_later_read(tmp_path: Path) -> None:
    """One replica's word on its height must not become the instance's floor: a replica
    answering at 2^62 would have every later read, by every worker, refused as stale."""
    path = tmp_path / "floor"
    HeightFloor.create(path)
    floor = HeightFloor.shared(path)
    replicas, keys = _replicas()
    public = [k.public_key for k in keys]

    async def go() -> bytes:
        transport = _LyingReplica3(replicas, height_floor=floor)
        client = AsyncLedgerClient(transport, public, 1, retry_ms=50, timeout_ms=10_000)
        try:
            await client.submit(encode_set(b"k", b"v"))
            await client.query(encode_get(b"k"), replica=3)  # the lie
            transport.crash(3)  # the honest replicas alone must still answer
            return await client.query(encode_get(b"k"), replica=0)
        finally:
            await client.close()
            await transport.close()

    try:
        assert asyncio.run(asyncio.wait_for(go(), 30)) == b"v"
        assert floor.height < 1 << 62
    finally:
        floor.close()
