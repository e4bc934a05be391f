"""The single read's timeline: reads matched to their blocks, and their parts, from stamps.

The stamps are made here, as the replicas write them (ledger_bridge/node.py: [ns, event,
message kind, seq or request id, peer]), so each expected figure is known exactly."""

from __future__ import annotations

from typing import Any

import pytest

from bench.read_timeline import read_timeline

MS = 1_000_000


def _block(seq: int, at_ms: float, replies_ms: list[float]) -> dict[int, list[list[Any]]]:
    """One block's stamps: the request reaches the primary (replica 0) `at_ms`, its
    PRE-PREPARE half a millisecond later, each backup's PREPARE, one fsync before each
    replica's COMMIT, and each replica's reply at `replies_ms[replica]` after `at_ms`."""
    t = int(at_ms * MS)
    traces: dict[int, list[list[Any]]] = {
        0: [[t, "request", "Request", 90_000 + seq, -1], [t + MS // 2, "tx", "PrePrepare", seq, -1]]
    }
    for rid in range(4):
        stamps = traces.setdefault(rid, [])
        if rid:
            stamps.append([t + MS, "rx", "PrePrepare", seq, 0])
            stamps.append([t + 2 * MS, "tx", "Prepare", seq, -1])
        stamps.append([t + 3 * MS, "fsync", "", -1, -1])
        stamps.append([t + 4 * MS, "fsynced", "", -1, -1])
        stamps.append([t + 4 * MS + 1, "tx", "Commit", seq, -1])
        stamps.append([t + int(replies_ms[rid] * MS), "reply", "Reply", seq, -1])
    return traces


def _merge(*parts: dict[int, list[list[Any]]]) -> dict[int, list[list[Any]]]:
    merged: dict[int, list[list[Any]]] = {}
    for part in parts:
        for rid, stamps in part.items():
            merged.setdefault(rid, []).extend(stamps)
    return {rid: sorted(stamps) for rid, stamps in merged.items()}


def test_a_read_is_cut_at_its_request_its_pre_prepare_and_its_f_plus_first_reply() -> None:
    # The request reaches the primary 1 ms into the read; the replies come 6, 7, 8 and 9 ms
    # after it, so the f+1-th (second) is at 7 ms, 6.5 ms after the PRE-PREPARE.
    traces = _block(1, 1.0, [7.0, 6.0, 8.0, 9.0])
    timeline = read_timeline([(0, 10 * MS)], traces)
    assert timeline["reads"] == timeline["matched"] == 1
    assert timeline["read"] == {
        "before_ledger_ms": 1.0,
        "admission_ms": 0.5,
        "ledger_ms": 6.5,
        "after_ledger_ms": 2.0,
    }
    rows = {(r["replica"], r["event"]): r["ms"] for r in timeline["blocks"]}
    assert rows[(0, "tx PrePrepare")] == 0.0
    assert rows[(-1, "f+1-th reply")] == 6.5
    assert rows[(-1, "last reply")] == 8.5
    for rid in range(4):  # each fsync charged to the COMMIT that follows it
        assert (rows[(rid, "fsync start")], rows[(rid, "fsync end")]) == (2.5, 3.5)
    assert rows[(2, "rx PrePrepare from 0")] == 0.5


def test_a_read_that_spans_two_blocks_or_lacks_its_request_is_left_out() -> None:
    first = _block(1, 1.0, [4.0, 4.0, 5.0, 5.0])
    second = _block(2, 20.0, [4.0, 4.0, 5.0, 5.0])
    # The third block's request is stamped by a backup only: not the primary's arrival.
    third = _block(3, 40.0, [4.0, 4.0, 5.0, 5.0])
    third[0] = [s for s in third[0] if s[1] != "request"]
    third[1].append([40 * MS, "request", "Request", 3, -1])
    traces = _merge(first, second, third)
    spans = [(0, 30 * MS), (19 * MS, 29 * MS), (39 * MS, 49 * MS)]
    timeline = read_timeline(spans, traces)
    assert (timeline["reads"], timeline["matched"]) == (3, 1)
    assert timeline["read"]["ledger_ms"] == 3.5  # the second block's: 4 ms less 0.5
    with pytest.raises(RuntimeError, match="no read could be matched"):
        read_timeline([(0, 30 * MS)], traces)


def test_a_pre_prepare_a_backup_sends_again_leaves_the_read_as_it_was() -> None:
    # A backup re-sends the PRE-PREPARE to a peer that fell behind, 3 ms after the primary.
    traces = _block(1, 1.0, [7.0, 6.0, 8.0, 9.0])
    traces[2] = sorted([*traces[2], [4 * MS + MS // 2, "tx", "PrePrepare", 1, -1]])
    timeline = read_timeline([(0, 10 * MS)], traces)
    assert timeline["matched"] == 1
    assert timeline["read"]["admission_ms"] == 0.5
    assert timeline["read"]["ledger_ms"] == 6.5


def test_a_request_that_follows_the_reads_own_does_not_cut_its_admission_short() -> None:
    # Another client's request reaches the primary 0.4 ms after the read's, before the block.
    traces = _block(1, 1.0, [7.0, 6.0, 8.0, 9.0])
    traces[0] = sorted([*traces[0], [MS + 400_000, "request", "Request", 7, -1]])
    timeline = read_timeline([(0, 10 * MS)], traces)
    assert timeline["read"]["before_ledger_ms"] == 1.0
    assert timeline["read"]["admission_ms"] == 0.5
