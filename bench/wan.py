"""`civis-vault bench wan --json`: the ledger and the access path over a wide-area network.

What it runs, in one run, so every figure has its baseline beside it:
- the ledger benchmark's two ends (`bench ledger`: 4 replica processes, TLS, kv application,
  closed-loop clients): batched (`batch_size_max` 500, 500 clients) and unbatched (1, one
  client), over loopback, then over test hosts (`tests/netns/hosts.py`: one network namespace
  per replica, each in a site of its own, the clients in a fifth) at one-way delays of 0, 10
  and 25 ms between sites;
- at each delay, a view change: the primary's site is cut off under 50 clients; the time until
  the other three are active in a new view, until the first commit in it, and, once healed,
  until all four vote again;
- the access benchmark's 8-consumer point (`bench access`: the API, PostgreSQL, a contracts
  cluster, 100 consenting subjects, `POST /v1/access-requests` against the same records read
  without the ledger step), over loopback, then with the replicas on test hosts and the API
  and the consumers in the vault's site, at each delay.

Reported at each point: throughput, p50, p99, and CPU per operation (the replicas', summed;
the switch that emulates the WAN is the harness's own cost, reported apart). The bars, at
25 ms: batched throughput at least half the same run's 0 ms figure over the same hosts;
unbatched p50 at most four one-way delays plus the loopback p50 (a commit is a request, a
PRE-PREPARE, a PREPARE round and a COMMIT round before the replies; the reply is the fifth
leg, which overlaps the client's next request only when batched).

Root only (network namespaces); elsewhere the report says why it skipped them. These 2-core
machines are shared: read ratios within the run and CPU per operation, not absolutes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import psutil

from bench import access
from bench import ledger as lb
from ledger_bridge import eventloop
from ledger_bridge.cluster import Cluster
from tests.netns.hosts import Network, Profile, can_run

DELAYS_MS = (0, 10, 25)
BATCHED = 500  # batch_size_max and closed-loop clients
UNBATCHED = 1
VIEW_CHANGE_CLIENTS = 50
VIEW_CHANGE_TIMEOUT_S = 60.0
ACCESS_CONSUMERS = 8
POINT_S = 4.0
BASE_PORT = 26600
REPLICAS = 4
HOSTS = {**{f"r{i}": f"college-{i}" for i in range(REPLICAS)}, "api": "vault", "cl": "vault"}


def _params(batch: int) -> dict[str, Any]:
    return {"batch_size_max": batch, "batch_wait_ms": 2 if batch > 1 else 0}


def _cpu_s(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system + times.children_user + times.children_system
    return total


def _wire_pid(net: Network | None) -> list[int]:
    return [] if net is None else net.wire_pids()


async def _point(
    cluster: Cluster, clients: int, point_s: float, net: Network | None = None
) -> dict[str, Any]:
    """One closed-loop point (`bench ledger`'s), with CPU per committed transaction."""
    transport = cluster.client_transport()
    replicas = [cluster.pid(i) for i in range(cluster.n)]
    cpu0, wire0 = _cpu_s(replicas), _cpu_s(_wire_pid(net))
    started = time.monotonic()
    try:
        done_at, latencies = await lb.closed_loop(
            lb._ledger_submit(transport, cluster), clients, point_s, lb.WARMUP_S
        )
    finally:
        await transport.close()
    # CPU over the whole point, warm-up included: divided by every transaction completed.
    total = max(1, len(latencies) * (point_s + lb.WARMUP_S) / point_s)
    out = lb._summary(done_at, latencies, point_s)
    out["replica_cpu_ms_per_tx"] = round((_cpu_s(replicas) - cpu0) * 1000 / total, 3)
    if net is not None:
        out["wire_cpu_ms_per_tx"] = round((_cpu_s(_wire_pid(net)) - wire0) * 1000 / total, 3)
    out["elapsed_s"] = round(time.monotonic() - started, 1)
    return out


def _loopback_ledger(tmp: Path, point_s: float) -> dict[str, Any]:
    out = {}
    for name, batch in (("batched", BATCHED), ("unbatched", UNBATCHED)):
        with lb._running_cluster(tmp / f"loop-{name}", batch) as cluster:
            point = eventloop.run(_point(cluster, max(1, batch), point_s))
        out[name] = {"batch_size_max": batch, "clients": batch, **point}
    return out


@contextmanager
def _hosts_cluster(net: Network, directory: Path, batch: int) -> Iterator[Cluster]:
    """Replica i on test host r<i>, as `civis-vault node` there; the caller's thread is on
    the clients' host, where `cluster.status` and the clients dial from."""
    addresses = [net[f"r{i}"].address for i in range(REPLICAS)]
    with Cluster(
        directory,
        REPLICAS,
        base_port=BASE_PORT,
        use_tls=True,
        params=_params(batch),
        hosts=addresses,
        launcher=lambda i: net[f"r{i}"].command([]),
    ) as cluster:
        cluster.start()
        cluster.wait_ready()
        yield cluster


def _status_views(cluster: Cluster, replicas: list[int]) -> set[tuple[int, bool]] | None:
    statuses = [cluster.status(i, 0.5) for i in replicas]
    if any(s is None for s in statuses):
        return None
    return {(int(s["view"]), bool(s["view_active"])) for s in statuses if s is not None}


async def _view_change(cluster: Cluster, net: Network) -> dict[str, Any]:
    """Cut the primary's site off under load: seconds to a new active view among the other
    three, and to the first commit after the cut; then heal and wait for all four voting."""
    transport = cluster.client_transport()
    status = cluster.status(0) or {}
    view, primary = int(status.get("view", 0)), int(status.get("primary", 0))
    others = [i for i in range(REPLICAS) if i != primary]
    marks: dict[str, float] = {}

    async def cut() -> None:
        await asyncio.sleep(lb.WARMUP_S)
        net.isolate(f"college-{primary}")
        marks["cut"] = time.monotonic()
        while time.monotonic() - marks["cut"] < VIEW_CHANGE_TIMEOUT_S:
            views = await asyncio.to_thread(_status_views, cluster, others)
            if views is not None and len(views) == 1:
                (v, active) = next(iter(views))
                if v > view and active:
                    marks["new_view"] = time.monotonic()
                    break
            await asyncio.sleep(0.05)

    try:
        load = lb.closed_loop(
            lb._ledger_submit(transport, cluster), VIEW_CHANGE_CLIENTS, 8.0, lb.WARMUP_S
        )
        (done_at, _), _ = await asyncio.gather(load, cut())
    finally:
        await transport.close()
    net.heal([f"college-{primary}"], [h for h in net.hosts if h != f"r{primary}"])
    # Requests the old primary had already ordered may still commit just after the cut: the
    # service is back when requests commit in the new view.
    since = marks.get("new_view", marks["cut"])
    after = sorted(t for t in done_at if t >= since)
    healed = time.monotonic()
    while not await asyncio.to_thread(lb._all_voting, cluster):
        if time.monotonic() - healed > VIEW_CHANGE_TIMEOUT_S:
            break
        await asyncio.sleep(0.1)
    return {
        "clients": VIEW_CHANGE_CLIENTS,
        "new_view_s": round(marks["new_view"] - marks["cut"], 3) if "new_view" in marks else None,
        "first_commit_in_new_view_s": round(after[0] - marks["cut"], 3) if after else None,
        "all_voting_after_heal_s": round(time.monotonic() - healed, 3),
    }


def _hosts_ledger(net: Network, tmp: Path, point_s: float) -> dict[str, Any]:
    out: dict[str, Any] = {str(d): {} for d in DELAYS_MS}
    for name, batch in (("batched", BATCHED), ("unbatched", UNBATCHED)):
        with _hosts_cluster(net, tmp / f"hosts-{name}", batch) as cluster:
            for delay in DELAYS_MS:
                net.wan(Profile(delay_ms=delay))
                point = eventloop.run(_point(cluster, max(1, batch), point_s, net))
                out[str(delay)][name] = {"batch_size_max": batch, "clients": batch, **point}
                if name == "batched":
                    out[str(delay)]["view_change"] = eventloop.run(_view_change(cluster, net))
    net.wan(Profile())
    return out


def _access_point(fx: access.Fixture, point_s: float) -> dict[str, Any]:
    point = access._measure(fx, (ACCESS_CONSUMERS,), point_s)[0]
    return {"consumers": ACCESS_CONSUMERS, **point}


def _hosts_access(net: Network, records: int, point_s: float) -> dict[str, Any]:
    hosts = access.Hosts(
        addresses=[net[f"r{i}"].address for i in range(REPLICAS)],
        launcher=lambda i: net[f"r{i}"].command([]),
        api_address=net["api"].address,
        api_launcher=net["api"].command([]),
    )
    out = {}
    with access.access_fixture(records, None, hosts) as (fx, meta):
        for delay in DELAYS_MS:
            net.wan(Profile(delay_ms=delay))
            out[str(delay)] = _access_point(fx, point_s)
        out["setup_s"] = meta["setup_s"]
    net.wan(Profile())
    return out


def _bars(report: dict[str, Any]) -> dict[str, Any]:
    hosts = report.get("hosts_ledger")
    if not hosts:
        return {}
    top = str(DELAYS_MS[-1])
    batched_0 = hosts["0"]["batched"]["tx_per_s"]
    batched_top = hosts[top]["batched"]["tx_per_s"]
    unbatched_p50 = hosts[top]["unbatched"]["p50_ms"]
    loop_p50 = report["loopback_ledger"]["unbatched"]["p50_ms"]
    p50_max = 4 * DELAYS_MS[-1] + loop_p50
    ratio = round(batched_top / batched_0, 3) if batched_0 else None
    return {
        "delay_ms": DELAYS_MS[-1],
        "batched_ratio_to_0ms": ratio,
        "batched_ratio_min": 0.5,
        "batched_met": ratio is not None and ratio >= 0.5,
        "unbatched_p50_ms": unbatched_p50,
        "unbatched_p50_max_ms": round(p50_max, 2),
        "unbatched_met": unbatched_p50 <= p50_max,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    seconds = getattr(args, "seconds", None) or os.environ.get("CIVIS_BENCH_POINT_S")
    point_s = float(seconds) if seconds else POINT_S
    records = int(getattr(args, "records", None) or access.RECORDS)
    report: dict[str, Any] = {
        "benchmark": "wan",
        "point_s": point_s,
        "cores": os.cpu_count(),
        "delays_ms": list(DELAYS_MS),
        "topology": "each replica in a site of its own; clients, API and PostgreSQL in the "
        "vault's site; the delay is one way between two sites, none inside a site",
    }
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="civis-bench-wan-")))
        report["loopback_ledger"] = _loopback_ledger(tmp, point_s)
        with access.access_fixture(records, None) as (fx, _):
            report["loopback_access"] = _access_point(fx, point_s)
        reason = can_run()
        if reason is not None:
            report["hosts_skipped"] = reason
            return report
        net = stack.enter_context(Network(HOSTS))
        stack.enter_context(net["cl"].entered())
        report["hosts_ledger"] = _hosts_ledger(net, tmp, point_s)
        report["hosts_access"] = _hosts_access(net, records, point_s)
    report["bars"] = _bars(report)
    return report
