"""Node-local durable storage: one SQLite file per replica, in its data directory.

What it is for: everything a replica must find again after `kill -9` to rejoin without losing
a committed block and without contradicting what it already said (PBFT §4.1: a replica that
forgets a PREPARE or COMMIT it sent could vote twice): the protocol's durable state (view,
message log), committed blocks with their certificates, stable checkpoints and the application
snapshot that goes with the latest one.

Why SQLite in WAL mode: each `Ready.persist` is written in one transaction; when the core
says `must_sync`, it is fsynced (synchronous=FULL) before the node sends a single message that
depends on it (etcd's "save BEFORE sending" rule). The other writes need no fsync: the node
holds them back (20 ms at most) and lands them, in order, in the same transaction as the next
fsynced one (`write_many`), or alone without an fsync (synchronous=NORMAL) when the timer
fires first. A kill or a power cut may lose them; the core tolerates that (see
`Ready.must_sync`). A torn write leaves the previous transaction intact, so the state on disk
is always one the replica actually reached. Measured on the benchmark machine: a FULL commit
costs 0.5-1.4 ms of wall time, a NORMAL one 0.05 ms and ~0.14 ms of CPU; the core asks for
one fsync per batch instead of three, and the node makes one commit per batch, not three.

What it must never do: hold plaintext personal data (the ledger never carries any) or a
private key (those live in the 0600 key file named by the node config), nor keep a body the
replica redacted (a subject's erasure, docs/PBFT.md "Redaction"): `secure_delete` zeroes the
bytes of every deleted or overwritten row, and a batch that redacts ends with a
`wal_checkpoint(TRUNCATE)`, so no page image holding the old body survives in the file or
in its write-ahead log.

The layout is deliberately dumb: the replica's durable records are opaque msgpack blobs keyed
by (kind, key). Their format is the replica core's (`ledger_bridge.pbft.records`, which also
defines `seq_key`), so a change in the core's message set needs no migration here.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import msgpack

from ledger_bridge.pbft import messages as m
from ledger_bridge.pbft.messages import Block
from ledger_bridge.pbft.records import key_seq as key_seq
from ledger_bridge.pbft.records import seq_key as seq_key

SCHEMA_VERSION = 3
DB_FILE = "replica.sqlite3"

# `records` is a rowid table with its (kind, key) key in an index, not a WITHOUT ROWID table:
# there the whole row is the b-tree's key, and SQLite reads a cell's entire payload, overflow
# pages and all, to compare a key against it. Every search that passes the durable snapshot's
# cell (the whole state, megabytes) would read all of it, and each block's write would cost
# more as the state grows. The index's cells hold the key and a rowid only.
_RECORDS = """
CREATE TABLE IF NOT EXISTS {name} (
    kind TEXT NOT NULL,
    key BLOB NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (kind, key)
);
"""

_SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
"""
    + _RECORDS.format(name="records")
    + """
CREATE TABLE IF NOT EXISTS blocks (
    height INTEGER PRIMARY KEY,
    block BLOB NOT NULL
);
"""
)


class StorageError(Exception):
    """The data directory is unusable (wrong schema version, corrupt file)."""


@dataclass(frozen=True)
class Batch:
    """Everything one `Ready` asks to persist, written in a single fsynced transaction.

    `put`/`delete` touch the replica's records; `blocks` appends committed blocks
    (height -> encoded block with its certificate); `meta` sets small named values;
    `redact` replaces, in stored blocks, the bodies at (height, batch indices) by their
    digests (`messages.redact_block`), after `blocks` (see `Ready.redact`).
    """

    put: tuple[tuple[str, bytes, bytes], ...] = ()
    delete: tuple[tuple[str, bytes], ...] = ()
    delete_kind_below: tuple[tuple[str, bytes], ...] = ()  # GC: drop keys < bound of a kind
    blocks: tuple[tuple[int, bytes], ...] = ()
    meta: tuple[tuple[str, bytes], ...] = ()
    redact: tuple[tuple[int, tuple[int, ...]], ...] = ()

    def empty(self) -> bool:
        return not (
            self.put
            or self.delete
            or self.delete_kind_below
            or self.blocks
            or self.meta
            or self.redact
        )


class Storage:
    """The replica's SQLite file. Not thread-safe: one node loop owns it."""

    def __init__(self, data_dir: Path, *, synchronous: str = "FULL") -> None:
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = data_dir / DB_FILE
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None)
            # Deleted and overwritten rows are zeroed in place, not left in free space: a
            # redacted body, an old snapshot or a garbage-collected log record is gone from
            # the file, not only from the tables. A per-connection setting: set at each open.
            self._db.execute("PRAGMA secure_delete=ON")
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL: the WAL is fsynced at every commit, so what we acknowledged survives a
            # power cut, not only a process kill. Tests of pure logic may pass "OFF".
            assert synchronous in {"FULL", "NORMAL", "OFF"}
            self._db.execute(f"PRAGMA synchronous={synchronous}")
            self._sync_level = synchronous
            self._lazy_level = "NORMAL" if synchronous == "FULL" else synchronous
            self._level = synchronous
            self._db.executescript(_SCHEMA)
            self._check_version()
        except sqlite3.DatabaseError as exc:
            raise StorageError(f"cannot open {self.path}: {exc}") from None
        self.writes = 0
        self.syncs = 0
        self.redaction_checkpoints = 0

    def _check_version(self) -> None:
        row = self._db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        if row is None:
            self._db.execute(
                "INSERT INTO meta (key, value) VALUES ('schema', ?)",
                (str(SCHEMA_VERSION).encode(),),
            )
            return
        version = int(row[0])
        if version not in (1, 2, SCHEMA_VERSION):
            raise StorageError(f"{self.path} has schema {version}, expected {SCHEMA_VERSION}")
        if version == 1:
            self._migrate_blocks_to_2()
        if version <= 2:
            self._migrate_records_to_3()

    def _migrate_records_to_3(self) -> None:
        """Schema 3 keeps `records` in a rowid table (see `_RECORDS`): the rows are copied
        into one, which takes the old table's name. One transaction, so a crash leaves either
        schema whole; `secure_delete` zeroes the old table's pages as they are freed."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute(_RECORDS.format(name="records_3"))
            db.execute(
                "INSERT INTO records_3 (kind, key, value) "
                "SELECT kind, key, value FROM records ORDER BY kind, key"
            )
            db.execute("DROP TABLE records")
            db.execute("ALTER TABLE records_3 RENAME TO records")
            db.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (b"3",))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _migrate_blocks_to_2(self) -> None:
        """Schema 2 blocks carry `omitted`, the refused requests whose bodies they leave out
        (after `requests`, the seventh field). A schema-1 block left none out: it gets an
        empty list, its hash and certificate unchanged (neither covers the field's shape).
        One transaction, so a crash leaves either schema whole."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            rows = db.execute("SELECT height, block FROM blocks").fetchall()
            for height, raw in rows:
                obj = msgpack.unpackb(bytes(raw), raw=False)
                if isinstance(obj, list) and obj and obj[0] == Block.TAG and len(obj) == 11:
                    obj.insert(7, [])
                    packed = msgpack.packb(obj, use_bin_type=True)
                    db.execute("UPDATE blocks SET block = ? WHERE height = ?", (packed, height))
            db.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (b"2",))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self._db.close()

    def write(self, batch: Batch, *, sync: bool = True) -> None:
        """Apply a batch atomically; with `sync`, durably (returns after the fsync, which
        also covers every earlier unsynced write)."""
        self.write_many((batch,), sync=sync)

    def write_many(self, batches: Iterable[Batch], *, sync: bool = True) -> None:
        """Apply several batches, in order, as ONE transaction (one commit, at most one
        fsync). Why: the node holds back the writes that need no fsync and lands them with
        the next one that does; a SQLite commit costs ~0.14 ms of CPU even unsynced, and a
        replica would make three per transaction it orders (measured, `bench ledger`)."""
        todo = [b for b in batches if not b.empty()]
        if not todo:
            return
        db = self._db
        level = self._sync_level if sync else self._lazy_level
        if level != self._level:
            db.execute(f"PRAGMA synchronous={level}")  # no I/O; allowed between transactions
            self._level = level
        db.execute("BEGIN IMMEDIATE")
        try:
            for batch in todo:
                self._apply(batch)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self.writes += 1
        self.syncs += sync and level == "FULL"
        if any(b.redact for b in todo):
            self.truncate_wal()

    def truncate_wal(self) -> None:
        """Copy the write-ahead log into the database file and cut it to zero bytes: the
        log still holds the page images from before a redaction (secure_delete zeroes the
        database file's copy, not the log's)."""
        busy, _, _ = self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if busy:
            raise StorageError("write-ahead log not truncated: another connection reads it")
        self.redaction_checkpoints += 1

    def _apply(self, batch: Batch) -> None:
        db = self._db
        for kind, bound in batch.delete_kind_below:
            db.execute("DELETE FROM records WHERE kind = ? AND key < ?", (kind, bound))
        if batch.delete:
            db.executemany("DELETE FROM records WHERE kind = ? AND key = ?", batch.delete)
        if batch.put:
            db.executemany(
                "INSERT OR REPLACE INTO records (kind, key, value) VALUES (?, ?, ?)",
                batch.put,
            )
        if batch.blocks:
            db.executemany(
                "INSERT OR REPLACE INTO blocks (height, block) VALUES (?, ?)", batch.blocks
            )
        if batch.meta:
            db.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", batch.meta)
        for height, indices in batch.redact:
            self._redact(height, indices)

    def _redact(self, height: int, indices: Iterable[int]) -> bool:
        """Replace the bodies at `indices` of the stored block at `height` by their digests
        (inside the caller's transaction); False if there was nothing to remove."""
        db = self._db
        row = db.execute("SELECT block FROM blocks WHERE height = ?", (height,)).fetchone()
        if row is None:
            return False
        redacted, removed = m.redact_block(m.decode_block(bytes(row[0])), indices)
        if not removed:
            return False
        db.execute(
            "UPDATE blocks SET block = ? WHERE height = ?", (m.encode_block(redacted), height)
        )
        return True

    def fill_holes(self, blocks: Iterable[tuple[int, bytes]], executed: int = 0) -> int:
        """Store blocks only at heights the store lacks, below its top or up to `executed`
        (the core's last executed height); return how many.

        Why only holes and never an overwrite: these blocks come from peers (backfill, see
        `ledger_bridge.backfill`), and a block this replica stored itself is what it executed
        and certified; a height above both bounds is the replica core's to store, in order,
        as it executes. Not fsynced: a block lost in a crash is fetched again.
        """
        rows = list(blocks)
        if not rows:
            return 0
        db = self._db
        if self._level != self._lazy_level:
            db.execute(f"PRAGMA synchronous={self._lazy_level}")
            self._level = self._lazy_level
        db.execute("BEGIN IMMEDIATE")
        try:
            top = max(self.last_height() - 1, executed)
            before = db.total_changes
            db.executemany(
                "INSERT OR IGNORE INTO blocks (height, block) VALUES (?, ?)",
                [(h, b) for h, b in rows if 1 <= h <= top],
            )
            inserted = db.total_changes - before
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self.writes += 1
        return inserted

    # -- reads ----------------------------------------------------------------------------

    def holes(self, start: int = 1, limit: int = 64, executed: int = 0) -> list[tuple[int, int]]:
        """Missing heights as (first, last) ranges, lowest first: below the top block, and
        above it up to `executed` (blocks the core executed without storing, e.g. those a
        state transfer did not ship). Only heights >= `start` are looked at (below it the
        caller knows the store is contiguous, so a large store is not rescanned from height 1
        each time). Height 1 counts: a store whose lowest block is above 1 lacks all below."""
        top = self.last_height()
        out: list[tuple[int, int]] = []
        if executed > top and top < start:
            return [(start, executed)] if executed >= start else []
        first = self._db.execute(
            "SELECT min(height) FROM blocks WHERE height >= ?", (start,)
        ).fetchone()
        if first is None or first[0] is None:
            return []
        if int(first[0]) > start:
            out.append((start, int(first[0]) - 1))
        rows = self._db.execute(
            "SELECT prev + 1, height - 1 FROM ("
            " SELECT height, lag(height) OVER (ORDER BY height) AS prev"
            " FROM blocks WHERE height >= ?"
            ") WHERE height > prev + 1 ORDER BY height LIMIT ?",
            (start, limit),
        )
        out += [(int(lo), int(hi)) for lo, hi in rows]
        if executed > top:
            out.append((top + 1, executed))
        return out[:limit]

    def meta(self, key: str) -> bytes | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else bytes(row[0])

    def records(self, kind: str) -> Iterator[tuple[bytes, bytes]]:
        """All records of one kind in key order."""
        for key, value in self._db.execute(
            "SELECT key, value FROM records WHERE kind = ? ORDER BY key", (kind,)
        ):
            yield bytes(key), bytes(value)

    def kinds(self) -> list[str]:
        return [r[0] for r in self._db.execute("SELECT DISTINCT kind FROM records ORDER BY 1")]

    def block(self, height: int) -> bytes | None:
        row = self._db.execute("SELECT block FROM blocks WHERE height = ?", (height,)).fetchone()
        return None if row is None else bytes(row[0])

    def blocks(self, start: int = 1, end: int | None = None) -> Iterator[tuple[int, bytes]]:
        """Blocks with start <= height (< end), in height order."""
        hi = end if end is not None else 1 << 62
        for height, block in self._db.execute(
            "SELECT height, block FROM blocks WHERE height >= ? AND height < ? ORDER BY height",
            (start, hi),
        ):
            yield int(height), bytes(block)

    def last_height(self) -> int:
        row = self._db.execute("SELECT max(height) FROM blocks").fetchone()
        return int(row[0]) if row and row[0] is not None else 0


def puts(kind: str, items: Iterable[tuple[bytes, bytes]]) -> tuple[tuple[str, bytes, bytes], ...]:
    return tuple((kind, k, v) for k, v in items)
