"""The replica's durable record format (`ledger_bridge.pbft.records`) is what every existing
store holds: these pin its bytes to the documented msgpack layouts, so a change to a codec
that would leave old stores unreadable fails here, not at a node's restart."""

from __future__ import annotations

import msgpack

from ledger_bridge.pbft import messages as m
from ledger_bridge.pbft.records import (
    KIND_LOG,
    KIND_META,
    META_STABLE,
    META_VIEW,
    CheckpointRecord,
    Loaded,
    LogRecord,
    ViewRecord,
    decode_count,
    encode_count,
    seq_key,
)
from tests.ledger_bridge.pbft.harness import key, request


def _pp(seq: int) -> m.PrePrepare:
    reqs = (request(seq),)
    pp = m.PrePrepare(0, seq, m.batch_digest(5, reqs), 5, reqs, 0)
    return m.sign(pp, key(0))


def _commit(seq: int, i: int) -> m.Commit:
    return m.sign(m.Commit(0, seq, _pp(seq).batch_digest, i, b""), key(i))


def _checkpoint(i: int) -> m.Checkpoint:
    return m.sign(m.Checkpoint(4, b"d" * 32, b"r" * 32, i, b""), key(i))


def test_log_record_bytes_are_the_documented_layout_and_read_back() -> None:
    pp, commits = _pp(3), (_commit(3, 0), _commit(3, 1), _commit(3, 2))
    raw = LogRecord.of(pp, None, (pp, commits)).encode()
    expected = [m.encode(pp), b"", [m.encode(c) for c in commits], m.encode(pp)]
    assert raw == msgpack.packb(expected, use_bin_type=True)
    back = LogRecord.decode(raw)
    assert back.accepted() == pp and back.prepared() is None
    assert back.committed_batch() == (pp, commits)
    empty = LogRecord.of(None, None, None)
    assert empty.encode() == msgpack.packb([b"", b"", [], b""], use_bin_type=True)
    assert LogRecord.decode(empty.encode()).committed_batch() is None


def test_meta_records_are_the_documented_layouts() -> None:
    proof = tuple(_checkpoint(i) for i in range(3))
    stable = CheckpointRecord(4, b"d" * 32, proof)
    encoded_proof = [m.encode(c) for c in proof]
    assert stable.encode() == msgpack.packb([4, b"d" * 32, encoded_proof], use_bin_type=True)
    snapshot = CheckpointRecord(4, b"d" * 32, proof, b"state")
    assert snapshot.encode() == msgpack.packb(
        [4, b"d" * 32, encoded_proof, b"state"], use_bin_type=True
    )
    assert CheckpointRecord.decode(snapshot.encode()) == snapshot
    assert CheckpointRecord.decode(stable.encode()) == stable
    view = ViewRecord(7, False, True)
    assert view.encode() == msgpack.packb([7, False, True])
    assert ViewRecord.decode(view.encode()) == view
    assert encode_count(3) == msgpack.packb(3) and decode_count(encode_count(3)) == 3


def test_a_two_field_view_record_reads_as_not_suspecting() -> None:
    assert ViewRecord.decode(msgpack.packb([2, True])) == ViewRecord(2, True, False)


def test_loaded_reads_the_rows_a_store_hands_back() -> None:
    records = {
        KIND_META: [
            (META_STABLE, CheckpointRecord(4, b"d" * 32, ()).encode()),
            (META_VIEW, ViewRecord(1, True, False).encode()),
        ],
        KIND_LOG: [(seq_key(s), LogRecord.of(_pp(s), None, None).encode()) for s in (3, 5, 6)],
    }
    loaded = Loaded.read(records)
    assert loaded.view == ViewRecord(1, True, False) and loaded.snapshot is None
    assert loaded.stable is not None and loaded.stable.seq == 4
    assert loaded.redactions_applied is None
    assert [seq for seq, _ in loaded.log_records(above=4)] == [5, 6]
