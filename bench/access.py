"""`civis-vault bench access --json`: consent-checked access over HTTP against the same read
without the ledger step.

What it runs, as `civis-vault up` runs it: the API under uvicorn in a child process, a real
4-replica consent-contracts cluster (replica processes, TLS, the `up` batch parameters) behind
the API's ledger gateway, and PostgreSQL (a new database on the server `--database-url`, else
`CIVIS_DATABASE_URL`, names; else an embedded server in a temporary directory). Everything is
set up through the HTTP API with the project's client (`api.client`): one dataset, `--records`
subjects (100 by default) who register with their own keys, one 1 KiB record each (the payloads
of `bench upload`), the upload anchored, and every subject's signed consent for one consumer
and purpose.

What it measures, on this machine, in one run, at 1, 8 and 32 closed-loop consumers (each a
thread with its own keep-alive connection and one request in flight):
- access: `POST /v1/access-requests` for the dataset and purpose, answered with all the
  records (Merkle proofs included) after the contracts granted every subject on the ledger;
- baseline: the same records with proofs through the same HTTP stack, PostgreSQL and key
  store, without the ledger step: the provider's `GET /v1/datasets/{id}/records?limit=N`;
and the ratio of the two (these 2-core machines are shared and noisy: compare ratios, not
absolutes). The latency aim is p50 <= 20 ms and p99 <= 100 ms at 8 consumers.

Then, on the same system:
- single_record: one consumer asking for one named subject's record, the consented read a
  service makes about one citizen, ledger decision included (aim: p50 <= 5 ms);
- in_process_limit: the same 100 records the access delivers, fetched, decrypted, proved and
  encoded to the same JSON text by the vault's reader in this process, with no HTTP and no
  ledger: the physical limit of an answer. `api_cpu_ratio_to_limit` sets the API's CPU per
  answer beside it, at each consumer count.

Consumers read the response bytes and check the status, but do not parse the JSON while
measuring: parsing is the consumer's cost, not the service's. So the measured requests are
sent on a bare keep-alive connection of the standard library's `http.client`
(`ConsumerConnection`: pre-encoded body, no parsing), not through the project's client, whose
methods parse every answer. Why not `httpx` there: the consumers share the machine's two
cores with the system they measure, and `httpx` spent 1.0-1.3 ms of CPU per request,
`http.client` 0.3 ms (docs/BENCHMARKS.md, "Access"). One answer
of each kind is parsed and checked before the measurement (every record, the anchored root in
every proof).
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import math
import os
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
from sqlalchemy.orm import Session

from api.client import CivisClient, public_hex
from api.client.notices import notice_body
from bench.settle import server_cpu_s
from bench.upload import _POOL, PAYLOAD_BYTES, _payloads
from ledger_bridge.cluster import Cluster
from ledger_bridge.crypto import SigningKey
from vault import db

CONSUMERS = (1, 8, 32)  # one consumer, the aim's 8, and a crowd
POINT_S = 8.0  # the shortest measured window per point (`--seconds`)
WARMUP_S_MAX = 1.0
# A point on a loaded machine may need longer than POINT_S to collect enough answers for a
# p99; these bound how long it may wait (warm-up, and a multiple of the window).
WARMUP_S_CAP = 120.0
MIN_ANSWERS_PER_CONSUMER = 3
POINT_S_MAX_FACTOR = 8
POLL_S = 0.01
REQUEST_TIMEOUT_S = 120.0
RECORDS = 100  # "authorised access of 100 records" (`--records`)
# Founded to read whole records (ledger_bridge/contracts/app.py FOUNDING_DECLARATIONS); road
# maintenance reads named fields only.
PURPOSE = "billing"
# The bars an answer of `RECORDS` records is held to at `BAR_CONSUMERS` closed-loop consumers:
# its latency, the answers the system gives per second, and the API's CPU per answer.
BAR_CONSUMERS = 8
BAR_P50_MS = 20.0
BAR_P99_MS = 100.0
BAR_REQUESTS_PER_S = 200.0
BAR_API_CPU_MS = 3.0
SINGLE_RECORD_BAR_P50_MS = 5.0  # one named subject's record, one consumer, ledger included
SETUP_THREADS = 16  # set-up only: registrations and consents are independent transactions
START_TIMEOUT_S = 90.0  # imports alone took 10 s on this machine under load
ANCHOR_TIMEOUT_S = 60.0
CLUSTER_TRIES = 3


@dataclass(frozen=True)
class Hosts:
    """Where the replicas and the API run when not all on loopback (`bench wan`): replica i
    at `addresses[i]`, started under `launcher(i)` (a test host's `ip netns exec`); the API
    at `api_address`, under `api_launcher`. The consumers are this process, wherever its
    thread stands."""

    addresses: list[str]
    launcher: Callable[[int], list[str]]
    api_address: str
    api_launcher: list[str]


# Test hosts have each a port space of their own: fixed ports.
HOSTS_BASE_PORT = 26600
HOSTS_API_PORT = 8000


@dataclass
class Member:
    """A ledger identity of the run: its Ed25519 key; its member id is the public key's hex."""

    key: SigningKey = field(default_factory=SigningKey.generate)

    @property
    def id(self) -> str:
        return public_hex(self.key)


@dataclass
class Fixture:
    """What the measurement needs once setup is done."""

    base: str
    dataset_id: str
    records: int
    consumer_key: str
    provider_key: str
    server_pid: int
    replica_pids: list[int]
    postmaster: int | None  # the embedded PostgreSQL's, when it is ours to watch
    subject_id: str  # one consenting subject: the single-record read asks about them
    database_url: str
    data_dir: Path

    def headers(self, key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}


class ConsumerConnection:
    """One consumer's keep-alive HTTP/1.1 connection to the API, as lean as a load generator
    can be in Python (see the module docstring): a request is its method, path, pre-encoded
    body and headers; an answer is its status and body bytes, read whole."""

    def __init__(self, base: str) -> None:
        url = httpx.URL(base)
        self._conn = http.client.HTTPConnection(url.host, url.port, timeout=REQUEST_TIMEOUT_S)

    def send(
        self, method: str, path: str, headers: dict[str, str], body: bytes | None = None
    ) -> tuple[int, bytes]:
        self._conn.request(method, path, body, headers)
        response = self._conn.getresponse()
        return response.status, response.read()

    def close(self) -> None:
        self._conn.close()


@dataclass
class Point:
    """One closed-loop measurement: the requests answered inside its window (after warm-up).

    A request sent before the window opened but answered inside it counts: leaving those out
    would drop exactly the slow ones from the p99.
    """

    latencies_s: list[float]
    errors: int
    seconds: float
    cpu_s: dict[str, float]

    def summary(self) -> dict[str, Any]:
        n = len(self.latencies_s)
        per_request = {k: round(1000 * v / n, 2) if n else None for k, v in self.cpu_s.items()}
        return {
            "seconds": round(self.seconds, 2),
            "requests": n,
            "errors": self.errors,
            "requests_per_s": round(n / self.seconds, 1),
            "p50_ms": _ms(_percentile(self.latencies_s, 0.50)),
            "p99_ms": _ms(_percentile(self.latencies_s, 0.99)),
            "cpu_ms_per_request": per_request,
        }


def _percentile(values: list[float], q: float) -> float:
    """Nearest rank: the smallest value with at least q of the values at or below it."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def _ms(seconds: float) -> float | None:
    return None if math.isnan(seconds) else round(1000 * seconds, 2)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def bench_database(server_url: str | None, tmp: Path) -> Iterator[tuple[str, str]]:
    """A new, migrated database for this run, dropped at the end: (SQLAlchemy URL, label).

    On `server_url` (`--database-url`, else `CIVIS_DATABASE_URL`) a database of the run's own
    is created, never the one named: a database an earlier run left holds outbox facts of a
    chain that no longer exists, which the API's ordered relay would try first, forever, and
    tables grown by earlier runs would slow this one. Without a server, an embedded one.
    """
    url = server_url or os.environ.get("CIVIS_DATABASE_URL")
    if not url:
        from vault.embedded import embedded_postgres

        with embedded_postgres(tmp / "pg", "bench", delete_on_exit=True) as embedded:
            db.upgrade(embedded)
            yield embedded, "embedded-postgres"
        return
    import psycopg
    from sqlalchemy import make_url

    name = f"civis_bench_{uuid.uuid4().hex[:12]}"
    admin = make_url(url).set(drivername="postgresql", database="postgres")
    conninfo = admin.render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        own = make_url(url).set(database=name).render_as_string(hide_password=False)
        db.upgrade(own)
        yield own, "external (--database-url / CIVIS_DATABASE_URL), a database of the run's own"
    finally:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# -- the system under test ------------------------------------------------------------------------


def _serve(
    url: str,
    data_dir: Path,
    port: int,
    host: str = "127.0.0.1",
    workers: int = 1,
    background_jobs: bool = True,
) -> None:
    """The child process: the API of `civis-vault up`, with its `workers` worker processes
    (api/cli/serving.py), on a ledger founded by the parent; without its background jobs when
    another API runs them."""
    from api.cli import layout, serving
    from api.http.settings import Settings

    spec = serving.ApiSpec(
        Settings(environment="test", data_dir=data_dir),
        url,
        layout.ledger_dir(data_dir),
        layout.keys_dir(data_dir),
        background_jobs=background_jobs,
    )
    if not serving.serve(spec, workers=workers, host=host, port=port, log_level="warning"):
        raise SystemExit("the API workers could not start")


def found_cluster(
    data_dir: Path,
    members: dict[str, Member],
    founders: Sequence[dict[str, str]] = (),
    hosts: Hosts | None = None,
) -> Cluster:
    """A local contracts chain as `up` founds one, plus an admitted provider and consumer.

    The provider and the consumer are founding members so the run needs no governance vote
    (the vote is not what is measured). The vault's key is the one the API's gateway loads.
    With `hosts`, replica i runs on test host i (`bench wan`): its address, its launcher.
    """
    from api.cli import bootstrap, layout
    from api.services.gateway import RELAY_KEY_FILE, VAULT_KEY_FILE, load_or_create_key

    keys = layout.keys_dir(data_dir)
    vault = load_or_create_key(keys / VAULT_KEY_FILE)
    load_or_create_key(keys / RELAY_KEY_FILE)
    app_genesis = bootstrap.founding_app_genesis(vault.public_key.hex(), members["dpo"].id)
    app_genesis["members"] += [
        {"public_key": members["provider"].id, "role": "provider", "college": "providers"},
        {"public_key": members["consumer"].id, "role": "consumer", "college": "services"},
        *founders,
    ]
    return Cluster(
        layout.ledger_dir(data_dir),
        bootstrap.DEFAULT_REPLICAS,
        base_port=(
            bootstrap.choose_base_port(bootstrap.DEFAULT_REPLICAS)
            if hosts is None
            else HOSTS_BASE_PORT
        ),
        use_tls=True,
        params=bootstrap.LEDGER_PARAMS,
        app_genesis=app_genesis,
        hosts=None if hosts is None else hosts.addresses,
        launcher=None if hosts is None else hosts.launcher,
    )


@contextmanager
def running_cluster(
    tmp: Path,
    members: dict[str, Member],
    founders: Sequence[dict[str, str]] = (),
    hosts: Hosts | None = None,
) -> Iterator[tuple[Path, Cluster]]:
    """Started and ready; a fresh chain is tried again if a replica lost its port to another
    program between choosing the ports and binding them (the machine is shared). `founders`:
    more founding members of the genesis than the provider and the consumer."""
    for attempt in range(CLUSTER_TRIES):
        data_dir = tmp / f"data-{attempt}"
        data_dir.mkdir()
        with found_cluster(data_dir, members, founders, hosts) as cluster:
            cluster.start()
            try:
                cluster.wait_ready()
            except (RuntimeError, TimeoutError):
                if attempt == CLUSTER_TRIES - 1:
                    raise
                continue
            yield data_dir, cluster
            return


@contextmanager
def _api_server(
    url: str,
    data_dir: Path,
    host: str = "127.0.0.1",
    launcher: Sequence[str] = (),
    workers: int | None = None,
    background_jobs: bool = True,
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """The API in a child process, with `workers` worker processes (default: as `up` chooses),
    ready (database and ledger quorum) before this yields."""
    from api.cli.serving import default_workers

    port = _free_port() if host == "127.0.0.1" else HOSTS_API_PORT
    n = default_workers() if workers is None else workers
    serve = ["--serve", url, str(data_dir), str(port), "--host", host, "--workers", str(n)]
    if not background_jobs:
        serve.append("--no-background-jobs")
    server = subprocess.Popen([*launcher, sys.executable, "-m", "bench.access", *serve])
    base = f"http://{host}:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError("the API did not become ready (database and ledger quorum)")
            time.sleep(0.1)
        yield base, server
    finally:
        stop_process(server)


def stop_process(
    process: subprocess.Popen[Any], timeout_s: float = 30, terminate: bool = True
) -> None:
    """`process` ended (asked to with `terminate`, else left to end by itself, as a child at
    the end of its input does), killed if it has not within `timeout_s`: a server left
    running would outlive the database it uses."""
    if terminate:
        process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# -- set-up through the API ------------------------------------------------------------------------


def _api_key(url: str, member_id: str, role: str) -> str:
    """As `civis-vault apikey create` issues one: bound to the member's ledger public key."""
    from api.services.keys import create_key

    engine = db.make_engine(url, pool_size=1)
    try:
        with Session(engine) as session, session.begin():
            token = create_key(session, member_id=member_id, role=role).token
    finally:
        engine.dispose()
    return token


def _parallel(base: str, fn: Callable[[CivisClient, Member], object], who: list[Member]) -> None:
    """Set-up calls from a few threads, each with a client (and a connection) of its own."""
    local = threading.local()
    clients: list[CivisClient] = []
    lock = threading.Lock()

    def call(member: Member) -> None:
        client = getattr(local, "client", None)
        if client is None:
            client = local.client = CivisClient(base)
            with lock:
                clients.append(client)
        fn(client, member)

    try:
        with ThreadPoolExecutor(SETUP_THREADS) as pool:
            list(pool.map(call, who))
    finally:
        for c in clients:
            c.close()


def _ndjson(subjects: list[Member]) -> bytes:
    pool = _payloads()
    return b"".join(
        b'{"subject_id":"%s","payload":%s}\n' % (s.id.encode(), pool[i % _POOL])
        for i, s in enumerate(subjects)
    )


def _set_up(
    url: str, base: str, members: dict[str, Member], n: int
) -> tuple[str, str, str, str, str]:
    """Dataset, subjects, their records (anchored) and consents, through the client.

    Returns the dataset id, the anchored Merkle root, the provider's and the consumer's API
    keys, and the first subject's id.
    """
    provider = _api_key(url, members["provider"].id, "provider")
    consumer = _api_key(url, members["consumer"].id, "consumer")
    subjects = [Member() for _ in range(n)]
    consumer_id = members["consumer"].id
    with CivisClient(base, api_key=provider) as client:
        dataset = client.create_dataset(
            f"bench-access-{uuid.uuid4().hex[:8]}",
            category="mobility",
            purposes=[PURPOSE],
            retention_days=365,
            legal_basis="consent",
        )["id"]
        _parallel(base, lambda c, s: c.register(s.key, "subject", "citizens"), subjects)
        upload = client.upload(
            dataset,
            _ndjson(subjects),
            media_type="application/x-ndjson",
            timeout_s=ANCHOR_TIMEOUT_S,
        )
        notice = _notice(client.with_key(consumer), consumer_id)
        _parallel(
            base,
            lambda c, s: c.grant_consent(
                s.key, consumer=consumer_id, purpose=PURPOSE, notice=notice, dataset=dataset
            ),
            subjects,
        )
    return dataset, upload["merkle_root"], provider, consumer, subjects[0].id


def _notice(consumer: CivisClient, consumer_id: str) -> str:
    """The notice the subjects read before consenting, published by the consumer: its hash."""
    body = notice_body(
        recipient=consumer_id,
        purpose=PURPOSE,
        purpose_text="the access benchmark reads your record to time consent-checked access",
        retention="for the benchmark's run",
        controller="Civis Vault benchmark",
        contact="the operator running the benchmark",
    )
    return consumer.publish_notice(body)["notice_hash"]


def _check_answers(fx: Fixture, merkle_root: str) -> None:
    """Both reads deliver every record with a proof against the anchored root, before timing."""
    with CivisClient(fx.base, api_key=fx.consumer_key) as consumer:
        access = consumer.access(fx.dataset_id, PURPOSE)
        baseline = consumer.with_key(fx.provider_key).records(fx.dataset_id, limit=fx.records)
    for name, records in (("access", access["records"]), ("baseline", baseline)):
        if len(records) != fx.records:
            raise RuntimeError(f"{name} delivered {len(records)} of {fx.records} records")
        if any(r["proof"]["merkle_root"] != merkle_root for r in records):
            raise RuntimeError(f"{name}: a record's proof is not against the anchored root")
    if len(access["granted"]) != fx.records:
        raise RuntimeError("the contracts did not grant every consenting subject")
    with CivisClient(fx.base, api_key=fx.consumer_key) as consumer:
        single = consumer.access(fx.dataset_id, PURPOSE, subjects=[fx.subject_id])["records"]
    if [r["subject_id"] for r in single] != [fx.subject_id]:
        raise RuntimeError("the single-record read did not deliver its subject's one record")


# -- closed-loop consumers ------------------------------------------------------------------------


def _postmaster(pgdata: Path) -> int | None:
    """The embedded server's postmaster (it detaches from us, so it is found by its -D)."""
    for proc in psutil.process_iter(["name", "cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if proc.info["name"] == "postgres" and str(pgdata) in " ".join(cmdline):
            return int(proc.pid)
    return None


def _cpu_s(pids: dict[str, list[int]], postmaster: int | None) -> dict[str, float]:
    """CPU seconds (user + system) so far, per group of processes; this process as "client",
    the API's process with its worker processes as "api", and the embedded PostgreSQL
    (postmaster, every backend alive now and every backend it reaped) as "postgres"."""
    groups = dict(pids)
    if "api" in groups:
        groups["api"] = _with_children(groups["api"])
    out: dict[str, float] = {}
    for name, group in groups.items():
        total = 0.0
        for pid in group:
            try:
                t = psutil.Process(pid).cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += t.user + t.system
        out[name] = total
    server = None if postmaster is None else server_cpu_s(postmaster)
    if server is not None:
        # Backends that ended (the pool closes its overflow connections) were reaped by the
        # postmaster: their CPU is in its children's times, not lost.
        out["postgres"] = server
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out["client"] = usage.ru_utime + usage.ru_stime
    return out


def _with_children(pids: list[int]) -> list[int]:
    """`pids` and every process below them (the API's worker processes)."""
    out = list(pids)
    for pid in pids:
        try:
            out += [c.pid for c in psutil.Process(pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
    return out


def _warm_up(answered: list[int], warmup_s: float) -> None:
    """At least `warmup_s`, and until every consumer had an answer (WARMUP_S_CAP at most)."""
    began = time.perf_counter()
    cap = began + WARMUP_S_CAP
    while time.perf_counter() < cap and (
        time.perf_counter() - began < warmup_s or min(answered) == 0
    ):
        time.sleep(POLL_S)


def _fill_window(
    answers: list[tuple[float, float]], first: int, start: float, wanted: int, point_s: float
) -> None:
    """At least `point_s` and `wanted` answers after the `first`; POINT_S_MAX_FACTOR times
    `point_s` at most. `answers` only grows, so reading its length needs no lock."""
    while True:
        time.sleep(POLL_S)
        elapsed = time.perf_counter() - start
        if elapsed >= POINT_S_MAX_FACTOR * point_s:
            return
        if elapsed >= point_s and len(answers) - first >= wanted:
            return


def _closed_loop(
    fx: Fixture,
    send: Callable[[ConsumerConnection], tuple[int, bytes]],
    consumers: int,
    warmup_s: float,
    point_s: float,
) -> Point:
    """`consumers` threads, each sending its next request as soon as the last one answered.

    Warm-up: at least `warmup_s`, and until every consumer has had an answer (at 32 consumers
    on a loaded machine one round can take seconds; measuring before then would time a queue
    still filling). Window: at least `point_s` and MIN_ANSWERS_PER_CONSUMER answers per
    consumer, so a p99 rests on more than a handful of answers; at most POINT_S_MAX_FACTOR
    times `point_s`. Counted: the answers that arrived inside the window.
    """
    stop = threading.Event()
    lock = threading.Lock()
    answers: list[tuple[float, float]] = []  # (sent, answered), in order of answer
    answered = [0] * consumers
    errors = [0]
    pids = {"api": [fx.server_pid], "replicas": fx.replica_pids}

    def consumer(i: int) -> None:
        client = ConsumerConnection(fx.base)
        try:
            while not stop.is_set():
                t0 = time.perf_counter()
                status, body = send(client)
                t1 = time.perf_counter()
                with lock:
                    if status != 200 or not body:
                        errors[0] += 1
                    else:
                        answers.append((t0, t1))
                        answered[i] += 1
        finally:
            client.close()

    threads = [threading.Thread(target=consumer, args=(i,)) for i in range(consumers)]
    for t in threads:
        t.start()
    try:
        _warm_up(answered, warmup_s)
        with lock:
            first = len(answers)
            start = time.perf_counter()
        cpu_before = _cpu_s(pids, fx.postmaster)
        _fill_window(answers, first, start, MIN_ANSWERS_PER_CONSUMER * consumers, point_s)
        with lock:
            window = answers[first:]
            end = time.perf_counter()
        cpu_after = _cpu_s(pids, fx.postmaster)
    finally:
        stop.set()
        for t in threads:
            t.join()
    return Point(
        latencies_s=[t1 - t0 for t0, t1 in window],
        errors=errors[0],
        seconds=end - start,
        # A backend that started inside the window counts from zero: all its CPU is the window's.
        cpu_s={k: cpu_after[k] - cpu_before.get(k, 0.0) for k in cpu_after},
    )


def _measure(fx: Fixture, consumers: tuple[int, ...], point_s: float) -> list[dict[str, Any]]:
    warmup_s = min(WARMUP_S_MAX, point_s / 4)
    access_body = json.dumps({"dataset_id": fx.dataset_id, "purpose": PURPOSE}).encode()
    access_headers = {**fx.headers(fx.consumer_key), "Content-Type": "application/json"}
    provider_headers = fx.headers(fx.provider_key)
    records_path = f"/v1/datasets/{fx.dataset_id}/records?limit={fx.records}"

    def access(client: ConsumerConnection) -> tuple[int, bytes]:
        return client.send("POST", "/v1/access-requests", access_headers, access_body)

    def baseline(client: ConsumerConnection) -> tuple[int, bytes]:
        return client.send("GET", records_path, provider_headers)

    points = []
    for c in consumers:
        base = _closed_loop(fx, baseline, c, warmup_s, point_s).summary()
        acc = _closed_loop(fx, access, c, warmup_s, point_s).summary()

        def ratio(key: str, a: dict[str, Any] = acc, b: dict[str, Any] = base) -> float | None:
            return round(a[key] / b[key], 2) if a[key] and b[key] else None

        points.append(
            {
                "consumers": c,
                "access": acc,
                "baseline": base,
                "ratio_p50": ratio("p50_ms"),
                "ratio_p99": ratio("p99_ms"),
                "ratio_requests_per_s": ratio("requests_per_s"),
            }
        )
    return points


def _single_record(fx: Fixture, point_s: float) -> dict[str, Any]:
    """One consumer asking for one named subject's record: the consented read a service makes
    about one citizen, the ledger's decision included."""
    body = json.dumps(
        {"dataset_id": fx.dataset_id, "purpose": PURPOSE, "subjects": [fx.subject_id]}
    ).encode()
    headers = {**fx.headers(fx.consumer_key), "Content-Type": "application/json"}

    def one(client: ConsumerConnection) -> tuple[int, bytes]:
        return client.send("POST", "/v1/access-requests", headers, body)

    point = _closed_loop(fx, one, 1, min(WARMUP_S_MAX, point_s / 4), point_s).summary()
    p50 = point["p50_ms"]
    return {
        **point,
        "p50_ms_max": SINGLE_RECORD_BAR_P50_MS,
        "p50_met": p50 is not None and p50 <= SINGLE_RECORD_BAR_P50_MS,
    }


@contextmanager
def limit_answers(
    database_url: str,
    data_dir: Path,
    dataset_id: str,
    granted: list[str],
    uploads: list[uuid.UUID],
) -> Iterator[Callable[[], int]]:
    """The in-process limit's answer, one per call (its size in bytes): the records of
    `granted` in `uploads` fetched, decrypted, proved and encoded to the access's JSON text
    by the vault's reader in this process, on a connection of its own, with no HTTP and no
    ledger. Warmed once (connection, prepared statements, the upload's tree) before this
    yields."""
    from api.http import records_json
    from api.http.settings import Settings
    from vault import reads
    from vault.keys import KeyStore, make_provider

    settings = Settings(environment="test", data_dir=data_dir)
    reader = reads.Reader(KeyStore(make_provider(settings, create=False)))
    engine = db.make_engine(database_url, pool_size=1)
    dataset = uuid.UUID(dataset_id)

    def answer_bytes() -> int:
        with Session(engine) as session, session.begin():
            found = reader.made_by_dataset(
                session,
                dataset,
                records_json.access_record_text,
                subjects=granted,
                uploads=uploads,
                anchored_only=True,
            )
            part = ",".join(found).encode()
        return len(records_json.document(b"[", [part], b"]"))

    try:
        answer_bytes()
        yield answer_bytes
    finally:
        engine.dispose()


def granted_answer(fx: Fixture) -> tuple[list[str], list[uuid.UUID], int]:
    """What one access of the consumer delivers: the granted subjects, the uploads their
    records came from, and the number of records."""
    with CivisClient(fx.base, api_key=fx.consumer_key) as consumer:
        answer = consumer.access(fx.dataset_id, PURPOSE)
    uploads = sorted({uuid.UUID(r["upload_id"]) for r in answer["records"]}, key=str)
    return list(answer["granted"]), uploads, len(answer["records"])


def _in_process_limit(fx: Fixture, point_s: float) -> dict[str, Any]:
    """The physical limit of an answer: the same records the access delivers (the subjects the
    contracts granted, in the uploads they named), made by `limit_answers`. CPU is this
    process's (one thread), and PostgreSQL's when the run started it."""
    granted, uploads, records = granted_answer(fx)
    with limit_answers(fx.database_url, fx.data_dir, fx.dataset_id, granted, uploads) as answer:
        latencies: list[float] = []
        cpu = _cpu_s({}, fx.postmaster)
        began = time.perf_counter()
        while time.perf_counter() - began < point_s or len(latencies) < 10:
            t0 = time.perf_counter()
            size = answer()
            latencies.append(time.perf_counter() - t0)
        after = _cpu_s({}, fx.postmaster)
    n = len(latencies)
    return {
        "answers": n,
        "records_per_answer": records,
        "bytes_per_answer": size,
        "p50_ms": _ms(_percentile(latencies, 0.50)),
        "cpu_ms_per_answer": {k: round(1000 * (after[k] - cpu.get(k, 0.0)) / n, 3) for k in after},
    }


def _limit_ratios(points: list[dict[str, Any]], limit: dict[str, Any]) -> dict[str, Any]:
    """The API's CPU per answer over the in-process limit's, at each consumer count."""
    floor = limit["cpu_ms_per_answer"]["client"]
    return {
        str(p["consumers"]): round(p["access"]["cpu_ms_per_request"]["api"] / floor, 2)
        if floor and p["access"]["cpu_ms_per_request"].get("api")
        else None
        for p in points
    }


def _bars(points: list[dict[str, Any]]) -> dict[str, Any]:
    """The point at `BAR_CONSUMERS` against its bars; a figure the point lacks (no answer in
    its window, no CPU sampled) meets none."""
    at = next((p for p in points if p["consumers"] == BAR_CONSUMERS), None)
    side: dict[str, Any] = {} if at is None else at["access"]
    p50, p99 = side.get("p50_ms"), side.get("p99_ms")
    per_s = side.get("requests_per_s")
    api_cpu = side.get("cpu_ms_per_request", {}).get("api")
    return {
        "consumers": BAR_CONSUMERS,
        "p50_ms_max": BAR_P50_MS,
        "p99_ms_max": BAR_P99_MS,
        "requests_per_s_min": BAR_REQUESTS_PER_S,
        "api_cpu_ms_max": BAR_API_CPU_MS,
        "p50_ms": p50,
        "p99_ms": p99,
        "requests_per_s": per_s,
        "api_cpu_ms": api_cpu,
        "p50_met": p50 is not None and p50 <= BAR_P50_MS,
        "p99_met": p99 is not None and p99 <= BAR_P99_MS,
        "requests_per_s_met": per_s is not None and per_s >= BAR_REQUESTS_PER_S,
        "api_cpu_met": api_cpu is not None and api_cpu <= BAR_API_CPU_MS,
    }


@contextmanager
def access_fixture(
    n: int, database_url: str | None, hosts: Hosts | None = None, workers: int | None = None
) -> Iterator[tuple[Fixture, dict[str, Any]]]:
    """The system under test, set up and checked: PostgreSQL, the cluster, the API (with
    `workers` worker processes, default as `up` chooses), the dataset of `n` consenting
    subjects; yields the fixture and what the report says of it."""
    from api.cli.serving import default_workers

    members = {name: Member() for name in ("dpo", "provider", "consumer")}
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="civis-bench-")))
        url, server = stack.enter_context(bench_database(database_url, tmp))
        data_dir, cluster = stack.enter_context(running_cluster(tmp, members, hosts=hosts))
        api_host = "127.0.0.1" if hosts is None else hosts.api_address
        launcher = [] if hosts is None else hosts.api_launcher
        api_workers = default_workers() if workers is None else workers
        base, api = stack.enter_context(_api_server(url, data_dir, api_host, launcher, api_workers))
        started = time.perf_counter()
        dataset, root, provider, consumer, subject = _set_up(url, base, members, n)
        setup_s = time.perf_counter() - started
        fx = Fixture(
            base=base,
            dataset_id=dataset,
            records=n,
            consumer_key=consumer,
            provider_key=provider,
            server_pid=api.pid,
            replica_pids=[cluster.pid(i) for i in range(cluster.n)],
            postmaster=_postmaster(tmp / "pg") if server == "embedded-postgres" else None,
            subject_id=subject,
            database_url=url,
            data_dir=data_dir,
        )
        _check_answers(fx, root)
        yield (
            fx,
            {
                "server": server,
                "replicas": cluster.n,
                "api_workers": api_workers,
                "setup_s": round(setup_s, 2),
            },
        )


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The benchmark; `args`: records, seconds, database_url (and consumers, a tuple, for
    callers other than the CLI), each optional."""
    # One log line per request would cost the consumers' process CPU the report counts.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    n = int(getattr(args, "records", None) or RECORDS)
    point_s = float(getattr(args, "seconds", None) or POINT_S)
    consumers = tuple(getattr(args, "consumers", None) or CONSUMERS)
    workers = getattr(args, "workers", None)
    with access_fixture(n, getattr(args, "database_url", None), workers=workers) as (fx, meta):
        points = _measure(fx, consumers, point_s)
        single = _single_record(fx, point_s)
        limit = _in_process_limit(fx, point_s)
    return {
        "benchmark": "access",
        "server": meta["server"],
        "replicas": meta["replicas"],
        "api_workers": meta["api_workers"],
        "records": n,
        "payload_bytes": PAYLOAD_BYTES,
        "point_s": point_s,
        "min_answers_per_consumer": MIN_ANSWERS_PER_CONSUMER,
        "setup_s": meta["setup_s"],
        "access": "POST /v1/access-requests {dataset_id, purpose}: ledger access.request, "
        "then the granted subjects' records with proofs",
        "baseline": f"GET /v1/datasets/{{id}}/records?limit={n} (provider): the same records "
        "with proofs, no ledger step",
        "points": points,
        "bar": _bars(points),
        "single_record": single,
        "in_process_limit": limit,
        "api_cpu_ratio_to_limit": _limit_ratios(points, limit),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--serve", nargs=3, metavar=("URL", "DIR", "PORT"), required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--no-background-jobs", action="store_true")
    args = parser.parse_args()
    url, data_dir, port = args.serve
    _serve(url, Path(data_dir), int(port), args.host, args.workers, not args.no_background_jobs)


if __name__ == "__main__":
    main()
