"""Node storage: round trips, garbage collection, and atomicity under SIGKILL."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import msgpack
import pytest

from ledger_bridge.crypto import SigningKey, digest
from ledger_bridge.pbft import messages as m
from ledger_bridge.pbft.records import KIND_LOG, KIND_META, META_SNAPSHOT, META_STABLE, META_VIEW
from ledger_bridge.storage import (
    DB_FILE,
    SCHEMA_VERSION,
    Batch,
    Storage,
    StorageError,
    key_seq,
    seq_key,
)


def test_batches_round_trip_across_a_reopen(tmp_path: Path) -> None:
    st = Storage(tmp_path)
    st.write(
        Batch(
            put=(("prepare", seq_key(3), b"p3"), ("prepare", seq_key(1), b"p1")),
            blocks=((1, b"b1"), (2, b"b2")),
            meta=(("view", b"\x02"),),
        )
    )
    st.close()
    st = Storage(tmp_path)
    assert list(st.records("prepare")) == [(seq_key(1), b"p1"), (seq_key(3), b"p3")]
    assert list(st.blocks()) == [(1, b"b1"), (2, b"b2")]
    assert st.block(2) == b"b2" and st.block(3) is None
    assert st.last_height() == 2
    assert st.meta("view") == b"\x02"
    assert st.kinds() == ["prepare"]


def test_garbage_collection_drops_only_keys_below_the_bound(tmp_path: Path) -> None:
    st = Storage(tmp_path)
    st.write(Batch(put=tuple(("commit", seq_key(s), b"c") for s in (1, 2, 255, 256, 300))))
    st.write(Batch(put=(("other", seq_key(1), b"o"),)))
    st.write(Batch(delete_kind_below=(("commit", seq_key(256)),)))
    assert [key_seq(k) for k, _ in st.records("commit")] == [256, 300]
    assert list(st.records("other")) == [(seq_key(1), b"o")]
    st.write(Batch(delete=(("commit", seq_key(300)),)))
    assert [key_seq(k) for k, _ in st.records("commit")] == [256]


def test_held_back_batches_land_in_order_as_one_transaction(tmp_path: Path) -> None:
    """The node holds back unsynced writes and lands them with the next fsynced one: order
    within the transaction is the order the replica produced them (a later put and a GC
    delete see the earlier puts), and it is one commit and one fsync, not one per batch."""
    st = Storage(tmp_path)
    st.write_many(
        [
            Batch(put=(("log", seq_key(1), b"old"), ("log", seq_key(2), b"two"))),
            Batch(),  # an empty Ready costs nothing
            Batch(put=(("log", seq_key(1), b"new"),), blocks=((1, b"b1"),)),
            Batch(delete_kind_below=(("log", seq_key(2)),), put=(("log", seq_key(3), b"3"),)),
        ],
        sync=True,
    )
    assert (st.writes, st.syncs) == (1, 1)
    assert list(st.records("log")) == [(seq_key(2), b"two"), (seq_key(3), b"3")]
    assert st.block(1) == b"b1"
    st.write_many([Batch(), Batch()], sync=True)
    assert (st.writes, st.syncs) == (1, 1)


def test_a_foreign_schema_version_is_refused(tmp_path: Path) -> None:
    st = Storage(tmp_path)
    st.write(Batch(meta=(("schema", str(SCHEMA_VERSION + 1).encode()),)))
    st.close()
    with pytest.raises(StorageError, match="schema"):
        Storage(tmp_path)


def test_a_corrupt_file_is_a_storage_error(tmp_path: Path) -> None:
    (tmp_path / "replica.sqlite3").write_bytes(b"not a database" * 100)
    with pytest.raises(StorageError):
        Storage(tmp_path)


_WRITER = """
import sys
from pathlib import Path
from ledger_bridge.storage import Batch, Storage, seq_key
st = Storage(Path(sys.argv[1]))
i = st.last_height()
print("ready", flush=True)
while True:
    i += 1
    # One batch = one block + 50 records + its meta: all or nothing after a kill.
    st.write(Batch(
        put=tuple(("log", seq_key(i * 100 + j), b"x" * 200) for j in range(50)),
        blocks=((i, b"block-%d" % i),),
        meta=(("height", str(i).encode()),),
    ))
"""


def test_a_kill_9_at_any_moment_leaves_whole_batches_only(tmp_path: Path) -> None:
    """Crash safety: SIGKILL the writer at arbitrary points, five times; every reopen sees
    an exact prefix of the batches, each complete, and writing resumes after it."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    heights = []
    for round_ in range(5):
        proc = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(tmp_path)], stdout=subprocess.PIPE, env=env
        )
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"ready"
        time.sleep(0.05 + 0.037 * round_)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        st = Storage(tmp_path)
        h = st.last_height()
        assert [height for height, _ in st.blocks()] == list(range(1, h + 1))
        assert st.meta("height") == (str(h).encode() if h else None)
        keys = [key_seq(k) for k, _ in st.records("log")]
        assert keys == [i * 100 + j for i in range(1, h + 1) for j in range(50)]
        st.close()
        heights.append(h)
    assert heights == sorted(heights) and heights[-1] > heights[0] > 0


def test_a_replica_rebuilt_from_its_storage_has_the_same_state(tmp_path: Path) -> None:
    """What the node persists per Ready (its `to_batch`) is enough to rebuild the replica:
    same view, same stable checkpoint, same application state after re-execution."""
    import asyncio

    from ledger_bridge.client import AsyncLedgerClient, InProcessTransport
    from ledger_bridge.crypto import SigningKey
    from ledger_bridge.kvapp import KVApp, encode_set
    from ledger_bridge.node import load_state, to_batch
    from ledger_bridge.pbft.config import ClusterConfig
    from ledger_bridge.pbft.replica import Ready, Replica

    keys = [SigningKey(bytes([i + 7]) * 32) for i in range(4)]
    config = ClusterConfig.create(
        [bytes(k.public_key) for k in keys], batch_wait_ms=0, checkpoint_interval=8, log_window=16
    )
    st = Storage(tmp_path, synchronous="OFF")

    def persist(i: int, ready: Ready) -> None:
        if i == 3:
            st.write(to_batch(ready.persist, ready.blocks))

    replicas = [Replica(config, i, keys[i], KVApp()) for i in range(4)]
    transport = InProcessTransport(replicas, on_ready=persist)

    async def load() -> None:
        client = AsyncLedgerClient(transport, [k.public_key for k in keys], 1)
        for i in range(21):
            await client.submit(encode_set(b"k%d" % i, b"v%d" % i))
        await transport.close()

    asyncio.run(load())
    original = replicas[3]
    assert original.h >= 16 and st.last_height() == original.last_executed
    rebuilt = Replica(config, 3, keys[3], KVApp(), durable=load_state(st))
    while rebuilt.has_ready():  # re-execution of committed log entries above the checkpoint
        rebuilt.advance(rebuilt.ready())
    assert (rebuilt.view, rebuilt.h) == (original.view, original.h)
    assert rebuilt.last_executed == original.last_executed
    assert rebuilt.app.state_root() == original.app.state_root()


def test_a_schema_1_store_is_migrated_and_its_blocks_keep_their_hashes(tmp_path: Path) -> None:
    """A store written before blocks carried `omitted` opens under the current schema: each
    block gets an empty list in place, decodes, and hashes as it did (the header does not
    cover it)."""
    req = m.make_request(SigningKey(digest(b"migration-client")), 1, b"tx")
    block = m.Block(
        1,
        0,
        b"\0" * 32,
        5,
        m.batch_digest(5, (req,)),
        (req,),
        (),
        b"r" * 32,
        b"s" * 32,
        (0,),
        (b"x" * 64,),
    )
    old = msgpack.unpackb(m.encode_block(block), raw=False)
    del old[7]  # schema 1: no `omitted` field
    db = _store_before_schema_3(tmp_path, 1)
    db.execute("INSERT INTO blocks VALUES (1, ?)", (msgpack.packb(old, use_bin_type=True),))
    db.execute("INSERT INTO records VALUES (?, ?, ?)", (KIND_LOG, seq_key(1), b"log"))
    db.commit()
    db.close()
    store = Storage(tmp_path)
    raw = store.block(1)
    assert raw is not None
    assert m.decode_block(raw) == block
    assert m.decode_block(raw).header_hash() == block.header_hash()
    assert store.meta("schema") == str(SCHEMA_VERSION).encode()
    assert list(store.records(KIND_LOG)) == [(seq_key(1), b"log")]
    store.close()


def _store_before_schema_3(path: Path, version: int) -> sqlite3.Connection:
    """An empty store of schema 1 or 2 (`records` WITHOUT ROWID), open for the caller's rows."""
    db = sqlite3.connect(path / DB_FILE)
    db.executescript(
        """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
        CREATE TABLE records (kind TEXT NOT NULL, key BLOB NOT NULL, value BLOB NOT NULL,
                              PRIMARY KEY (kind, key)) WITHOUT ROWID;
        CREATE TABLE blocks (height INTEGER PRIMARY KEY, block BLOB NOT NULL);
        """
    )
    db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(version).encode(),))
    return db


def _bytes_read() -> int:
    """Bytes this process has read through system calls (SQLite's page reads among them)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="needs Linux's /proc/self/io")
def test_a_write_beside_a_large_snapshot_does_not_read_it(tmp_path: Path) -> None:
    """Each block's write finds its place in `records` by key. With the snapshot's cell (the
    whole state) among the keys a search compares against, SQLite read the entire snapshot
    for every comparison, and a block's write cost grew with the state. The control: reading
    the snapshot does read its bytes, so the measure sees SQLite's reads."""
    snapshot = os.urandom(8 << 20)
    st = Storage(tmp_path, synchronous="OFF")
    st.write(
        Batch(
            put=(
                *((KIND_LOG, seq_key(i), os.urandom(1400)) for i in range(1, 200)),
                (KIND_META, META_SNAPSHOT, snapshot),
                (KIND_META, META_STABLE, b"s" * 300),
            )
        )
    )
    before = _bytes_read()
    for seq in range(200, 232):
        st.write(
            Batch(
                put=(
                    (KIND_LOG, seq_key(seq), os.urandom(1400)),
                    (KIND_META, META_STABLE, os.urandom(300)),
                    (KIND_META, META_VIEW, os.urandom(30)),
                ),
                delete_kind_below=((KIND_LOG, seq_key(seq - 150)),),
            ),
            sync=False,
        )
    assert _bytes_read() - before < len(snapshot) // 4
    st.close()
    st = Storage(tmp_path, synchronous="OFF")  # reopened: nothing of the file in its cache
    before = _bytes_read()
    assert dict(st.records(KIND_META))[META_SNAPSHOT] == snapshot
    assert _bytes_read() - before >= len(snapshot)
    st.close()


def test_a_schema_2_store_is_migrated_with_its_records(tmp_path: Path) -> None:
    """Schema 2 kept `records` WITHOUT ROWID; a store of it opens under schema 3 with every
    record, in a rowid table."""
    db = _store_before_schema_3(tmp_path, 2)
    rows = [(KIND_LOG, seq_key(i), os.urandom(100)) for i in range(1, 6)]
    rows.append((KIND_META, META_SNAPSHOT, os.urandom(50_000)))
    db.executemany("INSERT INTO records VALUES (?, ?, ?)", rows)
    db.commit()
    db.close()
    store = Storage(tmp_path)
    assert store.meta("schema") == str(SCHEMA_VERSION).encode() == b"3"
    assert sorted(
        (kind, key, value) for kind in store.kinds() for key, value in store.records(kind)
    ) == sorted(rows)
    store.close()
    (sql,) = (
        sqlite3.connect(tmp_path / DB_FILE)
        .execute("SELECT sql FROM sqlite_master WHERE name = 'records'")
        .fetchone()
    )
    assert "WITHOUT ROWID" not in sql.upper()


MARKER = b"MARKER-0123456789abcdef-redact!!"  # 32 recognisable bytes


def _marker_hits(data_dir: Path) -> list[str]:
    """Every file of the data directory (the database, its -wal and -shm) holding the
    marker, raw or as hex."""
    hits = []
    for path in sorted(data_dir.iterdir()):
        raw = path.read_bytes()
        for form in (MARKER, MARKER.hex().encode()):
            if form in raw:
                hits.append(f"{path.name}: {form[:8]!r}")
    return hits


def _block_with(txs: list[bytes], height: int = 1) -> m.Block:
    client = SigningKey(digest(b"storage-test-client"))
    reqs = tuple(m.make_request(client, i + 1, tx) for i, tx in enumerate(txs))
    return m.Block(
        height, 0, b"\0" * 32, 1_000, m.batch_digest(1_000, reqs), reqs, (), b"r" * 32,
        b"s" * 32, (0, 1, 2), (b"x" * 64,) * 3,
    )  # fmt: skip


def test_a_redacted_body_leaves_no_byte_in_the_database_or_its_wal(tmp_path: Path) -> None:
    """Invariant 7 on one replica's disk: after a redaction batch, the marker a request body
    held is in no file of the data directory, raw or hex: not in the block (now its
    digest), not in a deleted log record or an overwritten snapshot (secure_delete zeroes
    them), not in an old page image in the write-ahead log (truncated). The same scan
    finds it before the redaction, so it can fail."""
    st = Storage(tmp_path)
    block = _block_with([b"before", b"body:" + MARKER, b"after"])
    st.write(
        Batch(
            blocks=((1, m.encode_block(block)),),
            put=(("log", seq_key(1), b"logged " + MARKER), ("meta", b"snapshot", MARKER)),
        )
    )
    for h in range(2, 40):  # later writes: the marker's pages age in the WAL and the file
        st.write(Batch(blocks=((h, m.encode_block(_block_with([b"x%d" % h], h))),)))
    assert _marker_hits(tmp_path)  # the control
    st.write(
        Batch(
            delete_kind_below=(("log", seq_key(2)),),
            put=(("meta", b"snapshot", b"a newer snapshot"),),
            redact=((1, (1,)), (99, (0,))),  # a height the store lacks is skipped
        ),
        sync=False,
    )
    assert _marker_hits(tmp_path) == []
    assert st.redaction_checkpoints == 1
    stored = m.decode_block(st.block(1) or b"")
    assert stored.txs == [b"before", b"after"]
    assert stored.omitted == (m.Omission(1, m.request_digest(block.requests[1]), m.REDACTED),)
    # The block still proves what it ordered: same hash, same batch digest.
    assert stored.header_hash() == block.header_hash()
    assert m.digests_batch_digest(1_000, stored.request_digests() or []) == block.batch_digest
    st.close()
    assert _marker_hits(tmp_path) == []
    # Idempotent: redacting it again changes nothing.
    st = Storage(tmp_path)
    st.write(Batch(redact=((1, (1,)),)))
    assert st.block(1) == m.encode_block(stored)
