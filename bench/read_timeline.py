"""`civis-vault bench read-timeline`: where a single-record read's time goes between processes.

Why: CPU per read says what each process spends, not what the consumer waits for. The read
crosses the consumer, the API, PostgreSQL and four replicas, all on two cores, and its bar is
a latency. This puts one clock on all of them. The replicas stamp each frame
in and out and each fsync (`CIVIS_NODE_TRACE`, CLOCK_MONOTONIC, one clock for every process on
the host), and the consumer stamps each read's start and end on the same clock.

The system is the access benchmark's (bench/access.py: embedded PostgreSQL, the cluster, the
API as `up` runs it). One consumer reads one named subject's record again and again, as the
benchmark's single-record point does. Each read is matched to the block its access went into:
the one PRE-PREPARE sent during the read. Then, in ms:
- `blocks`: per (replica, event), the median time since the PRE-PREPARE; an fsync is charged
  to the COMMIT it precedes. Replica -1 stands for what is computed over the replicas: the
  f+1-th reply (after it the API goes on) and the last reply.
- `read`: the medians of the read's four parts. `before_ledger` runs from the consumer's send
  until the request reaches the primary: the consumer, then the API up to its signed request.
  `admission` runs from there to the PRE-PREPARE: the primary's checks. `ledger` runs from the
  PRE-PREPARE to the f+1-th reply. `after_ledger` runs from there until the consumer has the
  answer: the API's read, decryption and answer.
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import access, ledger

READ_S = 4.0  # the measured reads' window (`--seconds`)
WARM_READS = 20  # first reads, not measured: the API's ledger clients and caches warm up
F = 1  # the benchmark's cluster: four replicas, f = 1
# A read's parts, in order (see the module docstring).
READ_PARTS = ("before_ledger", "admission", "ledger", "after_ledger")

# One read: (start ns, end ns) on CLOCK_MONOTONIC, as the consumer saw it.
ReadSpan = tuple[int, int]
# A replica's stamp: (ns, event, message kind, seq or request id, peer), as node.py writes it.
Stamp = list[Any]


def _reads(
    records: int, seconds: float, trace_dir: Path, database_url: str | None
) -> list[ReadSpan]:
    """The access benchmark's system (on `database_url`'s server, or an embedded one), its
    replicas tracing to `trace_dir`, and one consumer's reads of one subject's record for
    `seconds` after `WARM_READS`. The replicas write their traces as the system stops, before
    this returns."""
    with ledger.tracing(trace_dir), access.access_fixture(records, database_url) as (fx, _):
        body = json.dumps(
            {"dataset_id": fx.dataset_id, "purpose": access.PURPOSE, "subjects": [fx.subject_id]}
        ).encode()
        headers = {**fx.headers(fx.consumer_key), "Content-Type": "application/json"}
        connection = access.ConsumerConnection(fx.base)
        spans: list[ReadSpan] = []
        try:
            for _ in range(WARM_READS):
                connection.send("POST", "/v1/access-requests", headers, body)
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                t0 = time.monotonic_ns()
                status, _ = connection.send("POST", "/v1/access-requests", headers, body)
                if status != 200:
                    raise RuntimeError(f"a single-record read was answered {status}")
                spans.append((t0, time.monotonic_ns()))
        finally:
            connection.close()
        return spans


def _pre_prepares(blocks: ledger.Stamped) -> list[tuple[int, int, int]]:
    """(time, sequence number, primary) of each block's PRE-PREPARE, in time order: its
    first sending. A backup re-sends a PRE-PREPARE to a peer that fell behind (stamped as its
    own `tx`); counted as a second one, it would leave the read out."""
    first: dict[int, tuple[int, int, int]] = {}
    for seq, slot in blocks.items():
        for (rid, name), t in slot.items():
            if name == "tx PrePrepare" and (seq not in first or t < first[seq][0]):
                first[seq] = (t, seq, rid)
    return sorted(first.values())


def _arrivals(traces: dict[int, list[Stamp]]) -> dict[int, list[int]]:
    """Per replica, each time a request reached it, in order (request ids are the clients',
    so two clients' requests may share one: the stamps are read as they are)."""
    return {
        rid: sorted(t for t, event, *_ in stamps if event == "request")
        for rid, stamps in traces.items()
    }


def _arrival(requests: list[int], t0: int, pp: int) -> int | None:
    """The first time a request reached the primary between the read's start and its block's
    PRE-PREPARE (None if none did): the read's own request comes first; another client's, or
    a retry, may follow it before the block is proposed."""
    i = bisect.bisect_left(requests, t0)
    return requests[i] if i < len(requests) and requests[i] <= pp else None


def read_timeline(spans: list[ReadSpan], traces: dict[int, list[Stamp]]) -> dict[str, Any]:
    """The timeline of the reads `spans` from the replicas' `traces` (see the module docstring).
    A read during which no PRE-PREPARE, or more than one, was sent is left out, as is one whose
    request or f+1 replies are not in the traces."""
    blocks, _ = ledger.stamps_by_block(traces)
    pre_prepares = _pre_prepares(blocks)
    times = [t for t, _, _ in pre_prepares]
    requests = _arrivals(traces)
    offsets: dict[tuple[int, str], list[float]] = {}
    parts: dict[str, list[float]] = {p: [] for p in READ_PARTS}
    for t0, t1 in spans:
        lo, hi = bisect.bisect_left(times, t0), bisect.bisect_right(times, t1)
        if hi - lo != 1:
            continue
        pp, seq, primary = pre_prepares[lo]
        slot = blocks[seq]
        replies = sorted(t for (_, name), t in slot.items() if name == "reply Reply")
        arrived = _arrival(requests.get(primary, []), t0, pp)
        if len(replies) <= F or arrived is None:
            continue
        for key, t in slot.items():
            offsets.setdefault(key, []).append((t - pp) / 1e6)
        offsets.setdefault((-1, "f+1-th reply"), []).append((replies[F] - pp) / 1e6)
        offsets.setdefault((-1, "last reply"), []).append((replies[-1] - pp) / 1e6)
        ends = (t0, arrived, pp, replies[F], t1)
        for part, (a, b) in zip(READ_PARTS, itertools.pairwise(ends), strict=True):
            parts[part].append((b - a) / 1e6)
    matched = len(parts["ledger"])
    if not matched:
        raise RuntimeError("no read could be matched to the block of its access")
    return {
        "reads": len(spans),
        "matched": matched,
        "p50_ms": round(statistics.median((t1 - t0) / 1e6 for t0, t1 in spans), 3),
        "read": {f"{p}_ms": round(statistics.median(v), 3) for p, v in parts.items()},
        "blocks": ledger.median_rows(offsets, matched),
    }


def timeline(
    records: int = access.RECORDS, seconds: float = READ_S, database_url: str | None = None
) -> dict[str, Any]:
    """The system up, the reads made and matched to their blocks (see the module docstring)."""
    with tempfile.TemporaryDirectory(prefix="civis-bench-read-timeline-") as tmp:
        trace_dir = Path(tmp)
        spans = _reads(records, seconds, trace_dir, database_url)
        traces = ledger.read_traces(trace_dir)
    return read_timeline(spans, traces)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """`civis-vault bench read-timeline`; `args`: records, seconds, database_url (each
    optional)."""
    return {
        "benchmark": "read-timeline",
        **timeline(
            int(getattr(args, "records", None) or access.RECORDS),
            float(getattr(args, "seconds", None) or READ_S),
            getattr(args, "database_url", None),
        ),
    }


if __name__ == "__main__":
    print(json.dumps(run(argparse.Namespace()), indent=1))
