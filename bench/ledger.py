"""`civis-vault bench ledger --json`: 4 replica processes under closed-loop clients.

Measures, on this machine, in one run:
- tx/s and p50/p99 commit latency at batch sizes 1, 10, 100, 500 (the primary's
  `batch_size_max`; as many closed-loop clients as the batch size, one for size 1, so the
  primary can fill its batches);
- the unavailability window after SIGKILL of the primary under load: the time from the kill
  to the first commit after it, and to the first 250 ms bucket back at half the pre-kill rate;
- `faults`: after a single fault (SIGKILL then restart, SIGSTOP then SIGCONT) under 8
  clients, the time from the heal until all 4 replicas vote again (`voting`), against the bar
  of 5 s;
- `client_port_tls`: what TLS on the client port costs, at batch size 100 and 100 clients:
  the same cluster set-up with a TLS client port and with a plain one (peers on TLS both
  times), alternated twice, and the ratio of their throughputs (the bar is >= 0.9);
- `redaction`: the time and CPU a replica's store takes to apply one subject's erasure at
  100,000 blocks (`bench.redaction`; no cluster, the store built directly);
- the baseline: the same client load (same signed requests, same framing) against ONE
  unreplicated process that verifies the signature and executes the KV app directly, so the
  report is a ratio (these shared 2-core machines are noisy; absolute numbers are context).

Replicas run as `civis-vault up` runs them: TLS between replicas and on the client ports,
where the clients prove the operator's read key. Clients run in this process on asyncio; the
replicas are separate processes. With 2 cores
shared by 4 replicas and the clients, CPU is the bottleneck and the figures say so. A second,
warm-up-free run per point records each replica's CPU time and fsyncs per committed tx
(`replica_cpu_ms_per_tx`, `fsyncs_per_tx`). `CIVIS_NODE_PROFILE=<dir>` makes every replica
write a CPU-time cProfile there when it stops.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import psutil

from bench import redaction
from ledger_bridge import eventloop, kvapp, ports
from ledger_bridge.client import AsyncLedgerClient, TcpClientTransport
from ledger_bridge.cluster import Cluster
from ledger_bridge.crypto import SigningKey
from ledger_bridge.pbft import messages as m
from ledger_bridge.transport import encode_frame, pack, read_frame, unpack

BATCH_SIZES = (1, 10, 100, 500)
POINT_S = 4.0
WARMUP_S = 1.0
KILL_CLIENTS = 50
KILL_BATCH = 100
BUCKET_S = 0.25

Submit = Callable[[int], Awaitable[None]]


def _free_base_port() -> int:
    """Peers at +0..+7, clients at +100..+107, outside the ephemeral range."""
    return ports.cluster_block(8)


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def closed_loop(
    make_submit: Callable[[int], Submit], clients: int, duration_s: float, warmup_s: float
) -> tuple[list[float], list[float]]:
    """Run `clients` loops, each awaiting one submit at a time; (completion times, latencies)
    of the requests that completed after the warm-up."""
    done_at: list[float] = []
    latencies: list[float] = []
    start = time.monotonic()
    measure_from = start + warmup_s
    stop_at = measure_from + duration_s

    async def loop(c: int) -> None:
        submit = make_submit(c)
        i = 0
        while time.monotonic() < stop_at:
            t0 = time.monotonic()
            await submit(i)
            t1 = time.monotonic()
            if t1 >= measure_from and t1 <= stop_at:
                done_at.append(t1)
                latencies.append((t1 - t0) * 1000)
            i += 1

    await asyncio.gather(*(loop(c) for c in range(clients)))
    return done_at, latencies


def _summary(done_at: list[float], latencies: list[float], duration_s: float) -> dict[str, Any]:
    return {
        "tx": len(latencies),
        "tx_per_s": round(len(latencies) / duration_s, 1),
        "p50_ms": round(_pct(latencies, 0.50), 2),
        "p99_ms": round(_pct(latencies, 0.99), 2),
        "mean_ms": round(statistics.fmean(latencies), 2) if latencies else None,
    }


def _ledger_submit(transport: TcpClientTransport, cluster: Cluster) -> Callable[[int], Submit]:
    def make(c: int) -> Submit:
        client = AsyncLedgerClient(
            transport, cluster.genesis.public_keys(), cluster.genesis.f, timeout_ms=60_000
        )

        async def submit(i: int) -> None:
            await client.submit(kvapp.encode_set(f"k{c}-{i}".encode(), b"v" * 32))

        return submit

    return make


async def _ledger_point(
    cluster: Cluster, clients: int, duration_s: float, warmup_s: float = WARMUP_S
) -> dict[str, Any]:
    transport = cluster.client_transport()
    make_submit = _ledger_submit(transport, cluster)
    procs = [psutil.Process(cluster.pid(i)) for i in range(cluster.n)]
    try:
        # One untimed commit per client first: connections, TLS and the first view are set-up,
        # and on a loaded machine they can outlast a short warm-up and leave the window empty.
        await asyncio.gather(*(make_submit(c)(-1) for c in range(clients)))
        cpu0 = [sum(p.cpu_times()[:2]) for p in procs]
        writes0 = [int((cluster.status(i) or {}).get("fsyncs", 0)) for i in range(cluster.n)]
        done_at, lat = await closed_loop(make_submit, clients, duration_s, warmup_s)
    finally:
        await transport.close()
    # Where the time goes: CPU each replica burned and fsynced writes it made, per committed
    # tx over the whole run (warm-up included, so divide by every tx the clients completed).
    total = max(1, sum(1 for _ in done_at)) if warmup_s == 0 else None
    cpu1 = [sum(p.cpu_times()[:2]) for p in procs]
    writes1 = [int((cluster.status(i) or {}).get("fsyncs", 0)) for i in range(cluster.n)]
    out = _summary(done_at, lat, duration_s)
    if total:
        out["replica_cpu_ms_per_tx"] = [
            round((b - a) * 1000 / total, 3) for a, b in zip(cpu0, cpu1, strict=True)
        ]
        out["fsyncs_per_tx"] = [
            round((b - a) / total, 2) for a, b in zip(writes0, writes1, strict=True)
        ]
    return out


def _cluster(directory: Path, batch: int, client_tls: bool = True) -> Cluster:
    return Cluster(
        directory,
        4,
        base_port=_free_base_port(),
        use_tls=True,
        params={"batch_size_max": batch, "batch_wait_ms": 2 if batch > 1 else 0},
        client_tls=client_tls,
    )


@contextlib.contextmanager
def _running_cluster(
    directory: Path, batch: int, attempts: int = 3, client_tls: bool = True
) -> Iterator[Cluster]:
    """A started, ready cluster. Other test runs on a shared machine can take a port between
    `_free_base_port` and the replicas' bind: a replica that exits (or never answers) at
    start-up is retried on a fresh directory and port block."""
    for attempt in range(attempts):
        cluster = _cluster(directory / f"try{attempt}", batch, client_tls)
        try:
            cluster.start()
            cluster.wait_ready()
        except (RuntimeError, TimeoutError):
            cluster.close()
            if attempt == attempts - 1:
                raise
            continue
        with cluster:
            yield cluster
        return


def client_port_tls(directory: Path, duration_s: float, rounds: int = 2) -> dict[str, Any]:
    """Batch size 100 and 100 clients against a TLS client port and a plain one, alternated
    `rounds` times (a shared machine's load drifts: alternation spreads it over both), each
    on a fresh cluster; the mean throughput of each and their ratio."""
    points: dict[str, list[dict[str, Any]]] = {"tls": [], "plain": []}
    for r in range(rounds):
        for name in ("plain", "tls"):
            where = directory / f"{name}{r}"
            with _running_cluster(where, 100, client_tls=name == "tls") as cluster:
                points[name].append(eventloop.run(_ledger_point(cluster, 100, duration_s)))
    mean = {k: statistics.fmean(p["tx_per_s"] for p in v) for k, v in points.items()}
    return {
        "clients": 100,
        "batch_size_max": 100,
        "tls": points["tls"],
        "plain": points["plain"],
        "tls_tx_per_s": round(mean["tls"], 1),
        "plain_tx_per_s": round(mean["plain"], 1),
        "ratio_tls_to_plain": round(mean["tls"] / mean["plain"], 3) if mean["plain"] else None,
    }


async def _kill_primary(cluster: Cluster, duration_s: float) -> dict[str, Any]:
    """Kill the primary a third of the way into a load; measure the gap and the recovery."""
    transport = cluster.client_transport()
    kill_at: list[float] = []

    async def killer() -> None:
        await asyncio.sleep(WARMUP_S + duration_s / 3)
        status = cluster.status(1) or {}
        primary = int(status.get("primary", 0))
        kill_at.append(time.monotonic())
        cluster.kill(primary)

    try:
        loop_task = closed_loop(
            _ledger_submit(transport, cluster), KILL_CLIENTS, duration_s, WARMUP_S
        )
        (done_at, _lat), _ = await asyncio.gather(loop_task, killer())
    finally:
        await transport.close()
    t_kill = kill_at[0]
    before = [t for t in done_at if t < t_kill]
    after = sorted(t for t in done_at if t >= t_kill)
    start = min(done_at) if done_at else t_kill
    rate_before = len(before) / max(t_kill - start, 1e-9)
    first_after = (after[0] - t_kill) if after else None
    recovered = None
    t = t_kill
    while after and t < after[-1]:
        in_bucket = sum(1 for x in after if t <= x < t + BUCKET_S)
        if in_bucket / BUCKET_S >= rate_before / 2:
            recovered = t + BUCKET_S - t_kill
            break
        t += BUCKET_S
    return {
        "clients": KILL_CLIENTS,
        "batch_size_max": KILL_BATCH,
        "tx_per_s_before_kill": round(rate_before, 1),
        "first_commit_after_kill_s": None if first_after is None else round(first_after, 3),
        "back_to_half_rate_s": None if recovered is None else round(recovered, 3),
        "tx_after_kill": len(after),
    }


# -- faults: time from a single fault's heal back to 4 voting replicas ----------------------

FAULT_CLIENTS = 8
FAULT_HOLD_S = 2.0  # how long the fault lasts under load before the heal
RECOVERY_BAR_S = 5.0
RECOVERY_TIMEOUT_S = 30.0
VOTING_LAG_BLOCKS = 8  # executing this close to the top counts as keeping up


def voting(status: dict[str, Any] | None, view: int, top: int) -> bool:
    """A replica votes: active in the cluster's view, not muted after a restart, executing
    near the top (the node's `status` fields)."""
    return (
        status is not None
        and status.get("view") == view
        and bool(status.get("view_active"))
        and not status.get("muted")
        and top - int(status.get("last_executed", 0)) <= VOTING_LAG_BLOCKS
    )


def _all_voting(cluster: Cluster) -> bool:
    statuses = [cluster.status(i) for i in range(cluster.n)]
    views = [s["view"] for s in statuses if s is not None]
    if len(views) < cluster.n:
        return False
    view = max(set(views), key=views.count)
    top = max(int(s.get("last_executed", 0)) for s in statuses if s is not None)
    return all(voting(s, view, top) for s in statuses)


async def _one_fault(cluster: Cluster, kind: str, victim: int) -> float | None:
    """Seconds from the heal to 4 voting replicas, None past RECOVERY_TIMEOUT_S."""
    transport = cluster.client_transport()
    result: list[float | None] = []

    async def fault() -> None:
        await asyncio.sleep(WARMUP_S)
        if kind == "kill":
            cluster.kill(victim)
        else:
            cluster.pause(victim)
        await asyncio.sleep(FAULT_HOLD_S)
        if kind == "kill":
            cluster.start([victim])
            await asyncio.to_thread(cluster.wait_ready, [victim])
        else:
            cluster.resume(victim)
        healed = time.monotonic()
        while time.monotonic() - healed < RECOVERY_TIMEOUT_S:
            if await asyncio.to_thread(_all_voting, cluster):
                result.append(time.monotonic() - healed)
                return
            await asyncio.sleep(0.05)
        result.append(None)

    try:
        duration_s = WARMUP_S + FAULT_HOLD_S + RECOVERY_TIMEOUT_S
        load = asyncio.ensure_future(
            closed_loop(_ledger_submit(transport, cluster), FAULT_CLIENTS, duration_s, 0)
        )
        await fault()
        load.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await load
    finally:
        await transport.close()
    return result[0] if result else None


def faults(directory: Path) -> dict[str, Any]:
    """Each single fault on a fresh cluster: the heal-to-voting time of every run."""
    out: dict[str, Any] = {"bar_s": RECOVERY_BAR_S, "clients": FAULT_CLIENTS}
    for kind, victim in (("kill", 0), ("kill", 2), ("pause", 0), ("pause", 2)):
        with _running_cluster(directory / f"{kind}{victim}", 20) as cluster:
            took = eventloop.run(_one_fault(cluster, kind, victim))
        out[f"{kind}_replica_{victim}_s"] = None if took is None else round(took, 2)
    figures = [v for k, v in out.items() if k.endswith("_s") and k != "bar_s"]
    out["within_bar"] = all(v is not None and v <= RECOVERY_BAR_S for v in figures)
    return out


# -- baseline: one unreplicated process executing the KV app ---------------------------------


async def _serve_baseline(port: int) -> None:
    """Verify each request's signature, execute it with the KV app, reply. Requests that
    arrive in the same event-loop turn execute as one block, like a batch."""
    app = kvapp.KVApp()
    height = 0
    pending: list[tuple[m.Request, asyncio.StreamWriter]] = []
    scheduled = False

    def flush() -> None:
        nonlocal height, scheduled
        scheduled = False
        batch, pending[:] = list(pending), []
        if not batch:
            return
        height += 1
        from ledger_bridge.app import BlockContext

        results, _root = app.execute(
            [r.tx for r, _ in batch], BlockContext(height, time.time_ns() // 10**6, b"\0" * 32)
        )
        for (req, writer), result in zip(batch, results, strict=True):
            writer.write(
                encode_frame(pack({"op": "reply", "rid": req.request_id, "result": result}))
            )

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal scheduled
        from ledger_bridge.transport import set_nodelay

        set_nodelay(writer)
        with contextlib.suppress(Exception):
            while (frame := await read_frame(reader)) is not None:
                req = m.decode(unpack(frame)["request"])
                assert isinstance(req, m.Request)
                if not m.verify_request(req):
                    continue
                pending.append((req, writer))
                if not scheduled:
                    scheduled = True
                    asyncio.get_running_loop().call_soon(flush)

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


async def _baseline_point(port: int, clients: int, duration_s: float) -> dict[str, Any]:
    def make(c: int) -> Submit:
        key = SigningKey.generate()
        conn: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        rid = [time.time_ns() // 1000]

        async def submit(i: int) -> None:
            if not conn:
                conn.append(await asyncio.open_connection("127.0.0.1", port))
            reader, writer = conn[0]
            rid[0] += 1
            req = m.make_request(key, rid[0], kvapp.encode_set(f"k{c}-{i}".encode(), b"v" * 32))
            writer.write(encode_frame(pack({"op": "submit", "request": m.encode(req)})))
            frame = await read_frame(reader)
            assert frame is not None

        return submit

    done_at, lat = await closed_loop(make, clients, duration_s, WARMUP_S)
    return _summary(done_at, lat, duration_s)


def _baseline(duration_s: float) -> dict[str, Any]:
    port = _free_base_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.ledger", "--serve-baseline", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert time.monotonic() < deadline, "baseline server did not start"
            time.sleep(0.05)
        return {
            str(b): eventloop.run(_baseline_point(port, max(1, b), duration_s)) for b in BATCH_SIZES
        }
    finally:
        proc.kill()
        proc.wait()


def run(args: argparse.Namespace) -> dict[str, Any]:
    duration_s = float(os.environ.get("CIVIS_BENCH_POINT_S", POINT_S))
    sizes = [int(s) for s in os.environ.get("CIVIS_BENCH_BATCHES", "").split(",") if s] or list(
        BATCH_SIZES
    )
    out: dict[str, Any] = {
        "point_s": duration_s,
        "cores": os.cpu_count(),
        # Replicas, clients and the baseline all run on this loop (CIVIS_EVENT_LOOP=asyncio
        # for the stock one; the nodes inherit the variable).
        "event_loop": "uvloop" if eventloop.uses_uvloop() else "asyncio",
        "ledger": {},
    }
    with tempfile.TemporaryDirectory(prefix="civis-bench-ledger-") as tmp:
        for b in sizes:
            with _running_cluster(Path(tmp) / f"b{b}", b) as cluster:
                point = eventloop.run(_ledger_point(cluster, max(1, b), duration_s))
                # A second, warm-up-free run gives CPU and fsyncs per committed tx.
                probe = eventloop.run(_ledger_point(cluster, max(1, b), 2.0, warmup_s=0))
                point["replica_cpu_ms_per_tx"] = probe.get("replica_cpu_ms_per_tx")
                point["fsyncs_per_tx"] = probe.get("fsyncs_per_tx")
            out["ledger"][str(b)] = {"clients": max(1, b), **point}
        # Between 10 and 100 clients lies the knee where >= 1,000 tx/s meets p99 <= 100 ms.
        with _running_cluster(Path(tmp) / "knee", KILL_BATCH) as cluster:
            out["ledger"]["100/50clients"] = {
                "clients": KILL_CLIENTS,
                **eventloop.run(_ledger_point(cluster, KILL_CLIENTS, duration_s)),
            }
        out["client_port_tls"] = client_port_tls(Path(tmp) / "client-port", duration_s)
        with _running_cluster(Path(tmp) / "kill", KILL_BATCH) as cluster:
            out["primary_kill"] = eventloop.run(_kill_primary(cluster, 3 * duration_s))
        out["faults"] = faults(Path(tmp) / "faults")
    out["baseline_unreplicated"] = _baseline(duration_s)
    out["redaction"] = redaction.measure()
    out["ratio_ledger_to_baseline_tx_per_s"] = {
        b: round(out["ledger"][b]["tx_per_s"] / out["baseline_unreplicated"][b]["tx_per_s"], 3)
        for b in out["ledger"]
        if b in out["baseline_unreplicated"] and out["baseline_unreplicated"][b]["tx_per_s"]
    }
    return out


# One timed request: (start ns, end ns, block height, request id).
Span = tuple[int, int, int, int]


async def _timed_submits(cluster: Cluster, requests: int, warmup: int) -> list[Span]:
    """One closed-loop client: (start ns, end ns, block height, request id) per request."""
    transport = cluster.client_transport()
    client = AsyncLedgerClient(
        transport, cluster.genesis.public_keys(), cluster.genesis.f, timeout_ms=60_000
    )
    spans: list[Span] = []
    try:
        for i in range(warmup + requests):
            t0 = time.monotonic_ns()
            receipt = await client.submit(kvapp.encode_set(b"t%d" % i, b"v" * 32))
            if i >= warmup:
                spans.append((t0, time.monotonic_ns(), receipt.block_height, receipt.request_id))
    finally:
        await transport.close()
    return spans


# The first time of each (replica, event), by block height or by request id.
Stamped = dict[int, dict[tuple[int, str], int]]


def stamps_by_block(traces: dict[int, list[list[Any]]]) -> tuple[Stamped, Stamped]:
    """The replicas' stamps (`read_traces`) by block and by request: per block height, the
    first time of each (replica, event), an fsync charged to the COMMIT it precedes (as
    "fsync start" and "fsync end"); per request id, when it reached each replica ("request
    in")."""
    by_height: Stamped = {}
    by_request: Stamped = {}
    for rid, events in traces.items():
        synced: tuple[int, int] | None = None
        started = 0
        for t, event, kind, seq, peer in events:
            if event == "fsync":
                started = t
            elif event == "fsynced":
                synced = (started, t)
            elif event == "request":
                by_request.setdefault(seq, {}).setdefault((rid, "request in"), t)
            else:
                name = f"{event} {kind}" + (f" from {peer}" if event == "rx" else "")
                slot = by_height.setdefault(seq, {})
                slot.setdefault((rid, name), t)
                if event == "tx" and kind == "Commit" and synced is not None:
                    slot.setdefault((rid, "fsync start"), synced[0])
                    slot.setdefault((rid, "fsync end"), synced[1])
                    synced = None
    return by_height, by_request


def _median_offsets(spans: list[Span], traces: dict[int, list[list[Any]]]) -> list[dict[str, Any]]:
    """Per (replica, event): the median ms from the client's submit to the event's first
    occurrence for that transaction's block; an fsync is charged to the COMMIT it precedes,
    a request to the block its receipt names."""
    by_height, by_request = stamps_by_block(traces)
    offsets: dict[tuple[int, str], list[float]] = {}
    for t0, t1, height, request_id in spans:
        offsets.setdefault((-1, "client returned"), []).append((t1 - t0) / 1e6)
        seen = {**by_height.get(height, {}), **by_request.get(request_id, {})}
        for key, t in seen.items():
            offsets.setdefault(key, []).append((t - t0) / 1e6)
    return median_rows(offsets, len(spans))


def median_rows(offsets: dict[tuple[int, str], list[float]], count: int) -> list[dict[str, Any]]:
    """Per (replica, event) seen in at least half of `count` transactions: the median of its
    `offsets` (ms), in time order."""
    rows = [
        {"ms": round(statistics.median(v), 3), "replica": k[0], "event": k[1], "n": len(v)}
        for k, v in offsets.items()
        if len(v) >= count // 2
    ]
    return sorted(rows, key=lambda r: r["ms"])


def timeline(requests: int = 600, warmup: int = 300) -> list[dict[str, Any]]:
    """`python -m bench.ledger --timeline`: where one unbatched transaction's time goes.

    A batch-1 cluster whose nodes stamp CLOCK_MONOTONIC (one clock for every process on the
    host) at each frame in and out and around each fsync (`CIVIS_NODE_TRACE`), one closed-loop
    client; for each (replica, event), the median ms since the client started the submit.
    Replica -1 is the client. Why: the CPU profiles say what a replica spends, not what the
    client waits for; this shows where that wait goes (the fsync window, queueing on the two
    cores).
    """
    with tempfile.TemporaryDirectory(prefix="civis-bench-timeline-") as tmp:
        trace_dir = Path(tmp) / "trace"
        trace_dir.mkdir()
        with tracing(trace_dir), _running_cluster(Path(tmp), 1) as cluster:
            spans = eventloop.run(_timed_submits(cluster, requests, warmup))
        traces = read_traces(trace_dir)
    return _median_offsets(spans, traces)


@contextlib.contextmanager
def tracing(trace_dir: Path) -> Iterator[None]:
    """Replicas started inside stamp each frame in and out and each fsync on CLOCK_MONOTONIC
    (`CIVIS_NODE_TRACE`: the replica processes inherit it) and write their stamps to
    `trace_dir` when they stop (`read_traces`)."""
    os.environ["CIVIS_NODE_TRACE"] = str(trace_dir)
    try:
        yield
    finally:
        del os.environ["CIVIS_NODE_TRACE"]


def read_traces(trace_dir: Path, replicas: int = 4) -> dict[int, list[list[Any]]]:
    """Each replica's stamps, by replica id, as `tracing`'s replicas wrote them: [ns, event,
    message kind, seq or request id, peer] each."""
    traces = {
        int(p.stem.split("-")[1]): json.loads(p.read_text()) for p in trace_dir.glob("trace-*.json")
    }
    if len(traces) != replicas:
        raise RuntimeError(f"{len(traces)} of {replicas} replicas wrote a trace")
    return traces


def profile_in_process(txs: int = 300) -> None:
    """`python -m bench.ledger --profile`: cProfile of 4 replicas driven in one process
    (no sockets, no fsync), one client, unbatched: where a replica's CPU goes."""
    import cProfile
    import pstats

    from ledger_bridge.client import InProcessTransport
    from ledger_bridge.pbft.config import ClusterConfig
    from ledger_bridge.pbft.replica import Replica

    keys = [SigningKey(bytes([i + 1]) * 32) for i in range(4)]
    config = ClusterConfig.create(
        [bytes(k.public_key) for k in keys], batch_wait_ms=0, batch_size_max=1
    )
    transport = InProcessTransport([Replica(config, i, keys[i], kvapp.KVApp()) for i in range(4)])

    async def go() -> None:
        client = AsyncLedgerClient(transport, [k.public_key for k in keys], 1)
        for i in range(txs):
            await client.submit(kvapp.encode_set(b"k%d" % i, b"v" * 32))
        await transport.close()

    profiler = cProfile.Profile()
    profiler.enable()
    eventloop.run(go())
    profiler.disable()
    stats = pstats.Stats(profiler)
    print(f"CPU per tx, 4 replicas + client: {stats.total_tt / txs * 1000:.2f} ms")  # type: ignore[attr-defined]
    stats.sort_stats("tottime").print_stats(12)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--serve-baseline":
        eventloop.run(_serve_baseline(int(sys.argv[2])))
    elif sys.argv[1:] == ["--profile"]:
        profile_in_process()
    elif sys.argv[1:] == ["--timeline"]:
        print(json.dumps(timeline(), indent=1))
    elif sys.argv[1:] == ["--faults"]:
        with tempfile.TemporaryDirectory(prefix="civis-bench-faults-") as tmp:
            print(json.dumps(faults(Path(tmp)), indent=1))
