"""`python -m bench.ledger --timeline`: the attribution of node trace stamps to transactions,
on synthetic traces (the real run needs four replica processes and is a diagnosis, not a
test)."""

from __future__ import annotations

from bench.ledger import _median_offsets

MS = 1_000_000


def test_stamps_are_charged_to_the_transaction_whose_block_they_concern() -> None:
    # Two transactions from one client: request ids 7 and 8, committed at heights 3 and 4.
    spans = [(0, 5 * MS, 3, 7), (10 * MS, 14 * MS, 4, 8)]
    primary = [
        [1 * MS, "request", "Request", 7, -1],
        [2 * MS, "tx", "PrePrepare", 3, -1],
        [11 * MS, "request", "Request", 8, -1],
        [13 * MS, "tx", "PrePrepare", 4, -1],
    ]
    backup = [
        [3 * MS, "rx", "PrePrepare", 3, 0],
        [int(3.5 * MS), "fsync", "", -1, -1],
        [int(4.0 * MS), "fsynced", "", -1, -1],
        [int(4.1 * MS), "tx", "Commit", 3, -1],
        [int(4.2 * MS), "rx", "Commit", 3, 0],
        [int(4.3 * MS), "rx", "Commit", 3, 0],  # a duplicate: the first one counts
        [12 * MS, "rx", "PrePrepare", 4, 0],
        [int(12.5 * MS), "fsync", "", -1, -1],
        [int(13.5 * MS), "fsynced", "", -1, -1],
        [int(13.6 * MS), "tx", "Commit", 4, -1],
        [int(13.8 * MS), "reply", "Reply", 4, -1],  # one of two transactions: still half
    ]
    rows = {
        (r["replica"], r["event"]): r["ms"] for r in _median_offsets(spans, {0: primary, 1: backup})
    }
    assert rows[(-1, "client returned")] == 4.5  # median of 5 and 4
    assert rows[(0, "request in")] == 1.0
    assert rows[(0, "tx PrePrepare")] == 2.5  # 2 and 3 ms after each submit
    assert rows[(1, "rx PrePrepare from 0")] == 2.5
    assert rows[(1, "fsync start")] == 3.0  # 3.5 and 2.5: each fsync goes to its own COMMIT
    assert rows[(1, "fsync end")] == 3.75
    assert rows[(1, "rx Commit from 0")] == 4.2
    assert rows[(1, "reply Reply")] == 3.8
    assert (1, "rx Commit from 1") not in rows  # nobody stamped it
    assert [r["ms"] for r in _median_offsets(spans, {0: primary, 1: backup})] == sorted(
        rows.values()
    )
