"""`civis-vault bench upload`: the vault's upload path against raw AES-GCM and raw COPY.

Why ratios: these machines are shared and noisy, so every figure is set beside baselines
measured in the same run on the same bytes:
  (a) raw AES-256-GCM of the same payloads (the floor of any encrypting upload),
  (b) a raw binary COPY of the same number of ciphertext rows into a table shaped exactly like
      `records` (same columns, indexes and constraints), without any vault logic, on a
      connection whose socket queues as much as the uploader's (`vault.db.widen_send_buffer`).
Peak RSS is measured in a fresh child process per upload size (10k and the full size), because
ru_maxrss is a high-water mark: flat memory means the two peaks are about equal.
CPU per record is the steadiest figure on a shared machine: this process's CPU (the client
side: validation, encryption, row building) and, when the server runs on this machine, the
CPU of the PostgreSQL backend that serves the upload's connection (the COPY itself). The
vault upload and the raw COPY each start from a server at rest (bench/settle.py), so neither
pays for the buffers the other left to write, and on the embedded server each finds the WAL
segments it writes already made (`prepare_wal`), so neither pays for making them.
The full-size pair (the vault upload, then the raw COPY) runs `--repeats` times, each in a
fresh child: one pair's ratio moves by a third between runs minutes apart on this machine
(docs/BENCHMARKS.md), so the report states the median pair's ratio against the bar, every
pair's beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import psutil
import psycopg
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from bench.settle import prepare_wal, settle
from vault import db
from vault.crypto._hazmat import Aead
from vault.datasets import register_dataset
from vault.db import widen_send_buffer
from vault.keys import KeyStore, LocalKeyProvider
from vault.uploads import RecordIn, Uploader

PAYLOAD_BYTES = 1024
SUBJECTS = 1000
# WAL one record of 1 KiB writes, rounded up (~1.55 KB measured, indexes included).
WAL_BYTES_PER_RECORD = 2048
_POOL = 512
REPEATS = 3  # full-size pairs measured (`--repeats`)
BAR_RATIO_MIN = 0.8  # the vault upload's rate over the raw COPY's, at least


def _payloads() -> list[bytes]:
    """A pool of distinct 1 KiB JSON objects (cycled, so generating input costs nothing), in
    compact form: what most JSON writers emit by default (JavaScript's, Go's, Rust's, Java's
    usual ones; Python's only when asked), and what the vault stores for a payload sent over
    HTTP, so the library and the API store the same bytes."""
    pool = []
    for i in range(_POOL):
        fields = {"vehicle": f"V{i:05d}", "road": "A7", "pothole_depth_mm": i % 90}
        head = json.dumps(fields, separators=(",", ":"))
        pad = PAYLOAD_BYTES - len(head) - len(',"samples":""}') + 1
        pool.append((head[:-1] + ',"samples":"' + "x" * pad + '"}').encode())
    assert all(len(p) == PAYLOAD_BYTES for p in pool)
    return pool


def _records(n: int, pool: list[bytes], subjects: int = SUBJECTS) -> Iterator[RecordIn]:
    for i in range(n):
        yield RecordIn(f"subject-{i % subjects:05d}", pool[i % _POOL])


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _backend(conn: psycopg.Connection[Any]) -> psutil.Process | None:
    """The PostgreSQL backend process serving `conn`, when it runs on this machine."""
    row = conn.execute("SELECT pg_backend_pid()").fetchone()
    try:
        backend = psutil.Process(int(row[0])) if row else None
        if backend is not None:
            backend.cpu_times()
    except (psutil.Error, OSError):
        return None
    return backend


def _cpu(backend: psutil.Process | None) -> tuple[float, float | None]:
    """(this process's CPU seconds, the backend's CPU seconds or None), user + system."""
    server = None
    if backend is not None:
        t = backend.cpu_times()
        server = t.user + t.system
    return time.process_time(), server


def _cpu_us(
    before: tuple[float, float | None], after: tuple[float, float | None], n: int
) -> dict[str, float | None]:
    """CPU microseconds per record between two `_cpu` readings: client, server."""
    b_server, a_server = before[1], after[1]
    server = None if b_server is None or a_server is None else (a_server - b_server) * 1e6 / n
    return {
        "client": round((after[0] - before[0]) * 1e6 / n, 2),
        "server": None if server is None else round(server, 2),
    }


def _cpu_total(cpu_us: dict[str, float | None]) -> float:
    return sum(v for v in cpu_us.values() if v is not None)


def _raw_copy(
    engine: Engine, n: int, dataset_id: uuid.UUID, upload_id: uuid.UUID, subjects: int
) -> tuple[float, dict[str, float | None]]:
    """Raw COPY of as many ciphertext-sized rows into a table identical to `records` (same
    indexes and foreign key): its seconds and CPU per record."""
    envelope = b"\x01" * (PAYLOAD_BYTES + 31)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS bench_raw_records"))
        conn.execute(text("CREATE TABLE bench_raw_records (LIKE records INCLUDING ALL)"))
        conn.execute(
            text("ALTER TABLE bench_raw_records ADD FOREIGN KEY (upload_id) REFERENCES uploads(id)")
        )
    leaf = b"\x02" * 32
    with engine.connect() as conn:
        raw = conn.connection.driver_connection
        assert isinstance(raw, psycopg.Connection)
        widen_send_buffer(raw.pgconn.socket)  # the uploader's own connection does the same
        backend = _backend(raw)
        cpu = _cpu(backend)
        start = time.perf_counter()
        with (
            raw.transaction(),
            raw.cursor() as cur,
            cur.copy(
                "COPY bench_raw_records (id, dataset_id, upload_id, subject_id, leaf_index, "
                "leaf_hash, envelope) FROM STDIN (FORMAT BINARY)"
            ) as copy,
        ):
            copy.set_types(["uuid", "uuid", "uuid", "text", "int4", "bytea", "bytea"])
            for i in range(n):
                copy.write_row(
                    (
                        uuid.uuid4(),
                        dataset_id,
                        upload_id,
                        f"subject-{i % subjects:05d}",
                        i,
                        leaf,
                        envelope,
                    )
                )
        seconds = time.perf_counter() - start
        return seconds, _cpu_us(cpu, _cpu(backend), n)


def _measure(url: str, n: int, key_dir: Path, subjects: int = SUBJECTS) -> dict[str, Any]:
    """One run of all three paths on `n` records; returns timings in seconds."""
    pool = _payloads()
    engine = db.make_engine(url, pool_size=2)
    store = KeyStore(LocalKeyProvider(key_dir / "master.key"))
    out: dict[str, Any] = {"records": n, "payload_bytes": PAYLOAD_BYTES}

    aead = Aead(os.urandom(32))
    nonce = os.urandom(12)
    start = time.perf_counter()
    ciphertexts = 0
    for i in range(n):
        ciphertexts += len(aead.encrypt(nonce, pool[i % _POOL], b"aad"))
    out["raw_aes_gcm_s"] = time.perf_counter() - start

    with Session(engine) as session, session.begin():
        dataset = register_dataset(
            session,
            owner_id="bench",
            name=f"bench-{uuid.uuid4().hex[:8]}",
            category="mobility",
            purposes=["road-maintenance"],
            retention_days=365,
            legal_basis="consent",
        )
        dataset_id = dataset.id
    uploader = Uploader(store, record_size_max_bytes=4096, batch_rows=2000)
    out["postgres_settled"] = settle(url)
    with Session(engine) as session, session.begin():
        backend = _backend(db.driver_connection(session))
        cpu = _cpu(backend)
        start = time.perf_counter()
        result = uploader.upload(session, dataset_id, _records(n, pool, subjects))
    out["vault_s"] = time.perf_counter() - start
    out["vault_cpu_us"] = _cpu_us(cpu, _cpu(backend), n)
    assert result.record_count == n
    out["vault_peak_rss_mb"] = _rss_mb()

    settle(url)
    out["raw_copy_s"], out["raw_copy_cpu_us"] = _raw_copy(
        engine, n, dataset_id, result.upload_id, subjects
    )
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE bench_raw_records"))
    engine.dispose()
    return out


def _child(url: str, n: int, subjects: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="civis-bench-") as tmp:
        cmd = [sys.executable, "-m", "bench.upload", "--child", str(n), "--url", url, "--dir", tmp]
        cmd += ["--subjects", str(subjects)]
        done = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=1800)
        result: dict[str, Any] = json.loads(done.stdout)
        return result


def _pair_ratios(full: dict[str, Any]) -> tuple[float, float]:
    """One pair's ratios, raw COPY over vault: of their seconds, and of their CPU per record."""
    cpu = _cpu_total(full["raw_copy_cpu_us"]) / _cpu_total(full["vault_cpu_us"])
    return full["raw_copy_s"] / full["vault_s"], cpu


def run(args: argparse.Namespace) -> dict[str, Any]:
    n = int(args.records or 100_000)
    subjects = int(getattr(args, "subjects", None) or SUBJECTS)
    repeats = max(1, int(getattr(args, "repeats", None) or REPEATS))
    with ExitStack() as stack:
        url = os.environ.get("CIVIS_DATABASE_URL")
        if not url:
            from vault.embedded import embedded_postgres

            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="civis-bench-pg-")))
            url = stack.enter_context(embedded_postgres(tmp, "bench", delete_on_exit=True))
            server = "embedded-postgres"
        else:
            server = "CIVIS_DATABASE_URL"
        db.upgrade(url)
        wal_ready = server == "embedded-postgres" and prepare_wal(url, n * WAL_BYTES_PER_RECORD)
        small = _child(url, min(10_000, n), subjects)
        fulls = [_child(url, n, subjects) for _ in range(repeats)]
    pairs = sorted((_pair_ratios(f), i) for i, f in enumerate(fulls))
    (ratio, _), median = pairs[(len(pairs) - 1) // 2]
    full = fulls[median]
    mb = n * PAYLOAD_BYTES / 1e6
    return {
        "benchmark": "upload",
        "server": server,
        "records": n,
        "payload_bytes": PAYLOAD_BYTES,
        "subjects": subjects,
        "repeats": repeats,
        # The median pair's figures (by its ratio; of an even count, the lower one, the
        # one further from the bar).
        "vault": {
            "seconds": round(full["vault_s"], 3),
            "records_per_s": round(n / full["vault_s"]),
            "mb_per_s": round(mb / full["vault_s"], 1),
            "cpu_us_per_record": full["vault_cpu_us"],
        },
        "raw_aes_gcm": {
            "seconds": round(full["raw_aes_gcm_s"], 3),
            "records_per_s": round(n / full["raw_aes_gcm_s"]),
        },
        "raw_copy": {
            "seconds": round(full["raw_copy_s"], 3),
            "records_per_s": round(n / full["raw_copy_s"]),
            "cpu_us_per_record": full["raw_copy_cpu_us"],
        },
        "ratio_vault_to_raw_copy": round(ratio, 3),
        "ratios_vault_to_raw_copy": [round(_pair_ratios(f)[0], 3) for f in fulls],
        # The same ratio in CPU per record (client + server when the server is measurable),
        # of the median pair.
        "cpu_ratio_vault_to_raw_copy": round(_pair_ratios(full)[1], 3),
        "bar_ratio_min": BAR_RATIO_MIN,
        "bar_met": ratio >= BAR_RATIO_MIN,
        "ratio_vault_to_raw_aes_gcm": round(full["raw_aes_gcm_s"] / full["vault_s"], 3),
        # Both the vault upload and the raw COPY start from a server at rest (bench/settle.py).
        "postgres_settled": full["postgres_settled"],
        # Both find the WAL segments they write already made (`bench.settle.prepare_wal`).
        "postgres_wal_ready": wal_ready,
        "peak_rss_mb": {
            str(small["records"]): round(small["vault_peak_rss_mb"], 1),
            str(n): round(max(f["vault_peak_rss_mb"] for f in fulls), 1),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", type=int, required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--subjects", type=int, default=SUBJECTS)
    args = parser.parse_args()
    print(json.dumps(_measure(args.url, args.child, args.dir, args.subjects)))


if __name__ == "__main__":
    main()
