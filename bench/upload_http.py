"""`civis-vault bench upload-http`: an NDJSON upload over HTTP against the library upload.

The bar (issue 5): uploading over HTTP costs at most 2x the vault library's upload of the same
records. Both run in the same run on the same database and the same 1 KiB payloads (those of
`bench upload`); the API runs under uvicorn in a child process, as in production, and the body
is streamed with chunked encoding (no Content-Length, never held whole by either side).
Flat memory: the server's peak RSS (VmHWM) after a 10k-record upload and after the full upload
are about equal when the body is streamed in constant memory.
"""

from __future__ import annotations

import argparse
import os
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
from sqlalchemy.orm import Session

from bench.upload import _POOL, PAYLOAD_BYTES, SUBJECTS, _payloads, _records
from vault import db
from vault.datasets import register_dataset
from vault.keys import KeyStore, LocalKeyProvider
from vault.uploads import Uploader

CHUNK_BYTES = 64 * 1024


def _ndjson(n: int, pool: list[bytes]) -> Iterator[bytes]:
    """The same records as `bench upload`, one NDJSON line each, in ~64 KiB chunks."""
    buf = bytearray()
    for i in range(n):
        buf += b'{"subject_id":"subject-%05d","payload":' % (i % SUBJECTS)
        buf += pool[i % _POOL] + b"}\n"
        if len(buf) >= CHUNK_BYTES:
            yield bytes(buf)
            buf.clear()
    if buf:
        yield bytes(buf)


def _vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(url: str, data_dir: Path, port: int) -> None:
    import uvicorn

    from api.app import create_app
    from vault.config import Settings

    settings = Settings(
        environment="test",
        data_dir=data_dir,
        record_size_max_bytes=4096,
        upload_body_max_bytes=64 * 1024**3,
    )
    uvicorn.run(create_app(settings, database_url=url), port=port, log_level="warning")


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


def _measure(url: str, n: int, tmp: Path) -> dict[str, Any]:
    from api.keys import create_key

    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "bench.upload_http", "--serve", url, str(tmp), str(port)]
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError("the API did not start")
            time.sleep(0.1)
        engine = db.make_engine(url, pool_size=1)
        with Session(engine) as session, session.begin():
            token = create_key(session, member_id="bench-provider", role="provider").token
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/x-ndjson"}
        pool = _payloads()
        out: dict[str, Any] = {}
        with httpx.Client(base_url=base, headers=headers, timeout=3600) as client:
            for label, count in (("small", min(10_000, n)), ("full", n)):
                dataset_id = _dataset(url, "bench-provider")
                start = time.perf_counter()
                r = client.post(f"/v1/datasets/{dataset_id}/uploads", content=_ndjson(count, pool))
                elapsed = time.perf_counter() - start
                assert r.status_code == 201, r.text
                assert r.json()["record_count"] == count
                out[label] = {
                    "records": count,
                    "http_s": elapsed,
                    "server_peak_rss_mb": _vm_hwm_mb(server.pid),
                }
        # The library baseline, same records, same database, same key store (master key file).
        store = KeyStore(LocalKeyProvider(tmp / "master.key", create=False))
        uploader = Uploader(store, record_size_max_bytes=4096, batch_rows=2000)
        dataset_id = _dataset(url, "bench-provider")
        start = time.perf_counter()
        with Session(engine) as session, session.begin():
            result = uploader.upload(session, dataset_id, _records(n, pool))
        out["library_s"] = time.perf_counter() - start
        assert result.record_count == n
        engine.dispose()
        return out
    finally:
        server.terminate()
        server.wait(timeout=30)


def run(args: argparse.Namespace) -> dict[str, Any]:
    n = int(args.records or 100_000)
    with ExitStack() as stack:
        url = os.environ.get("CIVIS_DATABASE_URL")
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="civis-bench-")))
        if not url:
            from vault.embedded import embedded_postgres

            url = stack.enter_context(embedded_postgres(tmp / "pg", "bench", delete_on_exit=True))
            server = "embedded-postgres"
        else:
            server = "CIVIS_DATABASE_URL"
        db.upgrade(url)
        m = _measure(url, n, tmp)
    http_s = m["full"]["http_s"]
    mb = n * PAYLOAD_BYTES / 1e6
    return {
        "benchmark": "upload-http",
        "server": server,
        "records": n,
        "payload_bytes": PAYLOAD_BYTES,
        "http": {
            "seconds": round(http_s, 3),
            "records_per_s": round(n / http_s),
            "mb_per_s": round(mb / http_s, 1),
        },
        "library": {
            "seconds": round(m["library_s"], 3),
            "records_per_s": round(n / m["library_s"]),
        },
        "ratio_http_to_library": round(http_s / m["library_s"], 3),
        "bar_ratio_max": 2.0,
        "server_peak_rss_mb": {
            str(m["small"]["records"]): round(m["small"]["server_peak_rss_mb"], 1),
            str(n): round(m["full"]["server_peak_rss_mb"], 1),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--serve", nargs=3, metavar=("URL", "DIR", "PORT"), required=True)
    args = parser.parse_args()
    url, data_dir, port = args.serve
    _serve(url, Path(data_dir), int(port))


if __name__ == "__main__":
    main()
