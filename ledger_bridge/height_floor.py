"""The lowest block height a ledger read may come from: the highest one its clients saw committed.

Why a floor: a query answered by a replica that has not heard of a block yet (just back from
a partition or a stall) would show a write acknowledged moments before as missing. A client
refuses answers from below the heights its receipts (f+1 replicas agreeing) and the blocks
it verified carried (`AsyncLedgerClient._older_than_seen`), so what one process wrote, it
reads back. An answer's own height never raises the floor: it is one replica's word.

Why shared: an API instance of several worker processes is one service to its callers. A
write served by one worker and the read that follows it, served by another, must see the same
floor, or the read can go back in time (a member registered a moment before answering "no
member"). `HeightFloor.shared` keeps the floor in an 8-byte file mapped by every worker of the
instance; `up` creates it afresh before the workers start (`create`), so a floor left by an
earlier run, possibly of another chain, never applies.

Why a lock on both sides: a raise is a read, a compare and a write, and two workers raising at
once must not let the lower write land last; a read under the shared lock never sees half a
write. Each is one `flock` pair, about 3 µs, against the milliseconds of the read or
commit it guards. `flock` locks belong to the open file, not the thread: the threads of one
process (a gateway's loop thread, an API worker's serving loop) share one `HeightFloor`, whose
own lock keeps their raises apart; each process opens its own.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

_HEIGHT = struct.Struct("<Q")


class HeightFloor:
    """A block height that only rises; process-local unless opened on a shared file."""

    def __init__(self) -> None:
        # The highest height known to be at or below the floor: what this process wrote or
        # read there, and the whole floor when not shared. A raise to it or below needs no lock.
        self._known = 0
        self._fd: int | None = None
        self._map: mmap.mmap | None = None
        self._lock = threading.Lock()  # between this process's threads; `flock` between processes

    @classmethod
    def create(cls, path: Path, height: int = 0) -> None:
        """Write a floor of `height` at `path`, replacing any earlier one whole (a rename, so
        a worker of a previous run still mapping the old file never shares the new one)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fresh = path.with_name(path.name + ".new")
        fresh.write_bytes(_HEIGHT.pack(height))
        os.replace(fresh, path)

    @classmethod
    def shared(cls, path: Path) -> HeightFloor:
        """The floor kept in `path` (made by `create`), shared with every process that opens it."""
        floor = cls()
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            floor._map = mmap.mmap(fd, _HEIGHT.size)
            # A file system without `flock` (some network mounts) fails here, at the worker's
            # start, not in the middle of every ledger read after it.
            fcntl.flock(fd, fcntl.LOCK_EX)
            fcntl.flock(fd, fcntl.LOCK_UN)
        except BaseException:
            if floor._map is not None:
                floor._map.close()
            os.close(fd)
            raise
        floor._fd = fd
        return floor

    @contextlib.contextmanager
    def _locked(self, operation: int) -> Iterator[mmap.mmap]:
        """The shared mapping, under `flock` `operation` (LOCK_SH to read, LOCK_EX to raise)."""
        assert self._fd is not None and self._map is not None
        fcntl.flock(self._fd, operation)
        try:
            yield self._map
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    @property
    def height(self) -> int:
        """The floor now: no read may come from a lower block height."""
        if self._map is None:
            return self._known
        with self._lock:
            if self._map is None:  # closed meanwhile by another thread
                return self._known
            with self._locked(fcntl.LOCK_SH) as shared:
                height = int(_HEIGHT.unpack_from(shared)[0])
            self._known = max(self._known, height)
        return height

    def raise_to(self, height: int) -> None:
        """Make the floor at least `height` (a lower height leaves it as it is)."""
        if height <= self._known:
            return
        with self._lock:
            if self._map is not None:
                with self._locked(fcntl.LOCK_EX) as shared:
                    if height > _HEIGHT.unpack_from(shared)[0]:
                        _HEIGHT.pack_into(shared, 0, height)
            self._known = max(self._known, height)

    def close(self) -> None:
        """Unmap the shared file (a local floor holds nothing to release). Under the lock: a
        thread still reading or raising finishes first, and after it the floor is local."""
        with self._lock:
            if self._map is not None:
                self._map.close()
                self._map = None
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
