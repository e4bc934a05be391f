"""`civis-vault bench instructions`: instructions per consented answer, counted by valgrind.

Why: CPU time per answer moves with the phase of this shared machine (the same code's
in-process limit took 1.84 ms of CPU per answer in one run and 3.54 ms an hour later), so a
change of a few percent cannot be judged by timing it. The instructions a process executes do
not move: valgrind's callgrind counts them, and the same work counts the same within 1–2 %
whatever else the cores are doing. The counts are those of the Python processes named below,
not PostgreSQL's or the replicas'. Under valgrind, OpenSSL computes SHA-256 without the CPU's
SHA extensions, so hashing weighs more in these counts than in native runs.

What is counted, on the access benchmark's system (bench/access.py: embedded PostgreSQL, four
replicas, the API, `--records` subjects who consented, one record each):
- `in_process_limit`: one answer of `bench.access.limit_answers` (fetch, decrypt, prove and
  encode the records the access delivers, no HTTP, no ledger), in a child process;
- `api`: one more API worker, beside the benchmark's own, serving the consented answer
  (`POST /v1/access-requests`), then the single-record read, over HTTP from this process: the
  whole request, the ledger client and the read included.

- `upload`: an NDJSON upload over HTTP (`bench upload-http`'s body and API process) against
  the vault library's upload of the same records (`bench upload-http`'s library run, in a
  child process), per record: the difference between the counts of an upload of
  `UPLOAD_SIZES[1]` records and one of `UPLOAD_SIZES[0]`, over the records between them, so
  what every upload pays once (its dataset, its commit, its tree's root) drops out. The
  bar of `bench upload-http` is a time ratio, which on this machine moves by a third between
  runs minutes apart; this one does not.

Each process starts with instrumentation off (`--instr-atstart=no`), so starting it costs
little, and serves `WARM_ANSWERS` so; then `callgrind_control` turns instrumentation on, zeroes
the counters, the process serves the measured answers, and the counters are dumped and read.
The same is done over a window as long in which it serves nothing, and that count subtracted:
what the process does whatever it serves (timers; the API worker runs no background jobs,
which the benchmark's own API runs).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx

from bench import access, upload_http
from bench.upload import SUBJECTS

ANSWERS = 20  # measured answers per count
# Served before counting: an API worker's first answers pay for what it does once (the ledger
# client pool's sessions with each replica, eight clients per event loop, caches filled).
WARM_ANSWERS = 24
CTL_TIMEOUT_S = 120
# Records in the two uploads whose counts are compared. Each names every one of `bench upload`'s
# subjects (records cycle through them), so their difference holds records only, not the keys
# of subjects the smaller one did not name.
UPLOAD_SIZES = (SUBJECTS, 3 * SUBJECTS)
START_TIMEOUT_S = 300  # an API process under valgrind, until it answers /readyz
_TOTAL = re.compile(r"^(?:summary|totals): (\d+)$", re.M)
_T = TypeVar("_T")


def _valgrind(dumps: Path) -> list[str]:
    return [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        f"--callgrind-out-file={dumps}/callgrind.out.%p",
        f"--log-file={dumps}/valgrind.%p.log",
    ]


def _ctl(pid: int, *args: str) -> None:
    subprocess.run(
        ["callgrind_control", *args, str(pid)],
        check=True,
        capture_output=True,
        timeout=CTL_TIMEOUT_S,
    )


def _window(pid: int, dumps: Path, run: Callable[[], None]) -> int:
    """Instructions `pid` executed from zeroed counters while `run` ran, to their dump."""
    _ctl(pid, "-z")
    before = set(dumps.glob("callgrind.out.*"))
    run()
    _ctl(pid, "-d")
    (dump,) = set(dumps.glob("callgrind.out.*")) - before
    found = _TOTAL.search(dump.read_text())
    if found is None:
        raise RuntimeError(f"no instruction total in {dump.name}")
    return int(found.group(1))


def _count(pid: int, dumps: Path, serve: Callable[[int], None], answers: int) -> int:
    """Instructions `pid` executed for `answers` answers, warmed before: those of the window
    in which it served them, less those of a window as long in which it served none (what the
    process does on its own, such as uvicorn's timer, runs in both)."""
    serve(WARM_ANSWERS)  # before instrumentation, the first time: a fraction of the cost
    _ctl(pid, "-i", "on")
    began = time.monotonic()
    served = _window(pid, dumps, lambda: serve(answers))
    took = time.monotonic() - began
    began = time.monotonic()
    idle = _window(pid, dumps, lambda: time.sleep(max(0.0, took - (time.monotonic() - began))))
    return max(0, served - idle)


# -- the in-process limit, in a child process ----------------------------------------------------


def _limit_child(config: Path) -> None:
    """The child: `limit_answers` on the fixture `config` names; answers as many as each line
    of standard input asks, then says "done". It waits for a line blocked in its read, which
    costs no instruction: `callgrind_control` reaches a blocked process all the same (through
    vgdb), and a child polling its input would add its polls to the count."""
    cfg = json.loads(config.read_text())
    uploads = [uuid.UUID(u) for u in cfg["uploads"]]
    with access.limit_answers(
        cfg["database_url"], Path(cfg["data_dir"]), cfg["dataset_id"], cfg["granted"], uploads
    ) as answer:
        print("ready", flush=True)
        for line in sys.stdin:
            for _ in range(int(line)):
                answer()
            print("done", flush=True)


def _limit_count(fx: access.Fixture, tmp: Path, answers: int) -> int:
    granted, uploads, _ = access.granted_answer(fx)
    config = tmp / "limit.json"
    config.write_text(
        json.dumps(
            {
                "database_url": fx.database_url,
                "data_dir": str(fx.data_dir),
                "dataset_id": fx.dataset_id,
                "granted": granted,
                "uploads": [str(u) for u in uploads],
            }
        )
    )
    dumps = tmp / "limit"
    return _child(
        dumps,
        ["--limit-child", str(config)],
        lambda pid, serve: _count(pid, dumps, serve, answers),
    )


def _child(dumps: Path, mode: list[str], measure: Callable[[int, Callable[[int], None]], _T]) -> _T:
    """`measure(pid, serve)` of a child of this module (`main`) under valgrind, its counts
    dumped to `dumps`: `serve(n)` has it do n of what it does (an answer, a record
    uploaded), and returns once it has."""
    dumps.mkdir()
    command = [sys.executable, "-m", "bench.instructions", *mode]
    with subprocess.Popen(
        [*_valgrind(dumps), *command], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as child:
        assert child.stdin is not None and child.stdout is not None
        stdin, stdout = child.stdin, child.stdout
        try:
            if stdout.readline().strip() != "ready":
                raise RuntimeError(f"the child {mode[0]} did not start")

            def serve(n: int) -> None:
                stdin.write(f"{n}\n")
                stdin.flush()
                if stdout.readline().strip() != "done":
                    raise RuntimeError(f"the child {mode[0]} stopped")

            return measure(child.pid, serve)
        finally:
            with contextlib.suppress(OSError):  # a child that died: its pipe is broken
                stdin.close()
            access.stop_process(child, CTL_TIMEOUT_S, terminate=False)


# -- one API worker ----------------------------------------------------------------------------


def _api_counts(fx: access.Fixture, tmp: Path, answers: int) -> dict[str, int]:
    """The worker's instructions per consented answer, and per single-record read."""
    dumps = tmp / "api"
    dumps.mkdir()
    headers = {**fx.headers(fx.consumer_key), "Content-Type": "application/json"}
    asks = {
        "answer": {"dataset_id": fx.dataset_id, "purpose": access.PURPOSE},
        "single_record": {
            "dataset_id": fx.dataset_id,
            "purpose": access.PURPOSE,
            "subjects": [fx.subject_id],
        },
    }
    counts: dict[str, int] = {}
    # One more API worker, under valgrind, on the fixture's database, ledger and keys.
    worker = access._api_server(
        fx.database_url,
        fx.data_dir,
        launcher=_valgrind(dumps),
        workers=1,
        background_jobs=False,  # the benchmark's own API runs them
    )
    with worker as (base, process):
        for name, ask in asks.items():
            body = json.dumps(ask).encode()

            def serve(n: int, body: bytes = body) -> None:
                # A connection of its own: one kept across the counts would sit idle longer
                # than uvicorn keeps a connection alive, in the windows that serve nothing.
                connection = access.ConsumerConnection(base)
                try:
                    for _ in range(n):
                        status, _ = connection.send("POST", "/v1/access-requests", headers, body)
                        if status != 200:
                            raise RuntimeError(f"the access was answered {status}")
                finally:
                    connection.close()

            counts[name] = _count(process.pid, dumps, serve, answers) // answers
    return counts


# -- an upload, over HTTP and through the library ---------------------------------------------


def _per_record(pid: int, dumps: Path, serve: Callable[[int], None], sizes: tuple[int, int]) -> int:
    """Instructions per record of `serve(n)`, an upload of n records: the counts of an upload
    of each of `sizes`, their difference over the records between them."""
    small, large = (_count(pid, dumps, serve, n) for n in sizes)
    return round((large - small) / (sizes[1] - sizes[0]))


def _api_upload(url: str, tmp: Path, sizes: tuple[int, int]) -> int:
    """The API process's instructions per record of an NDJSON upload (`bench upload-http`'s
    server, body and client), each upload into a new dataset."""
    from bench.upload import _payloads

    dumps = tmp / "upload-api"
    dumps.mkdir()
    port = access._free_port()
    command = [sys.executable, "-m", "bench.upload_http", "--serve", url, str(tmp), str(port)]
    server = subprocess.Popen([*_valgrind(dumps), *command, "--no-background-jobs"])
    base = f"http://127.0.0.1:{port}"
    try:
        upload_http._wait_ready(base, server, START_TIMEOUT_S)
        headers = upload_http.provider_headers(url)
        pool = _payloads()

        def serve(n: int) -> None:
            dataset_id = upload_http._dataset(url, "bench-provider")
            body = iter(upload_http.Body(n, pool))
            # A client per upload: a connection kept would outlive uvicorn's keep-alive in
            # the windows that serve nothing.
            with httpx.Client(base_url=base, headers=headers, timeout=CTL_TIMEOUT_S) as client:
                answer = client.post(f"/v1/datasets/{dataset_id}/uploads", content=body)
            if answer.status_code != 201:
                raise RuntimeError(f"the upload was answered {answer.status_code}")

        return _per_record(server.pid, dumps, serve, sizes)
    finally:
        access.stop_process(server, CTL_TIMEOUT_S)


def _library_upload_child(config: Path) -> None:
    """The child: the vault library's upload as `bench upload-http` runs it, of as many
    records as each line of standard input asks, each into the next of the datasets `config`
    names (made beforehand, as the API's are, outside the counts); then "done". Blocked in
    its read between uploads (see `_limit_child`)."""
    from sqlalchemy.orm import Session

    from bench.upload import _payloads, _records
    from vault import db

    cfg = json.loads(config.read_text())
    url = cfg["database_url"]
    engine = db.make_engine(url, pool_size=1)
    uploader = upload_http.library_uploader(Path(cfg["data_dir"]))
    pool = _payloads()
    datasets = iter(cfg["datasets"])
    print("ready", flush=True)
    for line in sys.stdin:
        dataset_id = uuid.UUID(next(datasets))
        with Session(engine) as session, session.begin():
            uploader.upload(session, dataset_id, _records(int(line), pool))
        print("done", flush=True)


def _upload_counts(database_url: str | None, tmp: Path, sizes: tuple[int, int]) -> dict[str, Any]:
    """Per record, the API's upload over HTTP and the library's of the same records, on a
    database of their own. The API runs first: its start makes the key store's master key,
    which the library's uploader then opens. Each size is uploaded twice, once to warm up."""
    if not 0 < sizes[0] < sizes[1]:
        raise ValueError(f"upload sizes {sizes}: two, the first smaller")
    tmp.mkdir()
    with access.bench_database(database_url, tmp) as (url, _):
        api = _api_upload(url, tmp, sizes)
        # A warm-up upload and a counted one per size (`_count`), each into a dataset of its own.
        datasets = [str(upload_http._dataset(url, "bench-provider")) for _ in range(2 * len(sizes))]
        config = tmp / "library-upload.json"
        config.write_text(
            json.dumps({"database_url": url, "data_dir": str(tmp), "datasets": datasets})
        )
        library = _child(
            tmp / "upload-library",
            ["--library-upload-child", str(config)],
            lambda pid, serve: _per_record(pid, tmp / "upload-library", serve, sizes),
        )
    return {
        "records": list(sizes),
        "api_instructions_per_record": api,
        "library_instructions_per_record": library,
        "api_ratio_to_library": round(api / library, 3) if library > 0 else None,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The benchmark; `args`: records, database_url, answers, upload_sizes (each optional)."""
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("bench instructions needs valgrind (its callgrind tool)")
    n = int(getattr(args, "records", None) or access.RECORDS)
    answers = int(getattr(args, "answers", None) or ANSWERS)
    sizes = tuple(getattr(args, "upload_sizes", None) or UPLOAD_SIZES)
    database_url = getattr(args, "database_url", None)
    with tempfile.TemporaryDirectory(prefix="civis-bench-") as tmp:
        with access.access_fixture(n, database_url) as (fx, meta):
            limit = _limit_count(fx, Path(tmp), answers) // answers
            api = _api_counts(fx, Path(tmp), answers)
        upload = _upload_counts(database_url, Path(tmp) / "upload", (sizes[0], sizes[1]))
    return {
        "benchmark": "instructions",
        "server": meta["server"],
        "records": n,
        "answers": answers,
        "counter": "valgrind --tool=callgrind: instructions executed (Ir)",
        "in_process_limit": {"instructions_per_answer": limit},
        "api": {
            "instructions_per_answer": api["answer"],
            "instructions_per_single_record": api["single_record"],
        },
        "api_ratio_to_limit": round(api["answer"] / limit, 3) if limit else None,
        "upload": upload,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    child = parser.add_mutually_exclusive_group(required=True)
    child.add_argument("--limit-child", type=Path)
    child.add_argument("--library-upload-child", type=Path)
    args = parser.parse_args()
    if args.limit_child:
        _limit_child(args.limit_child)
    else:
        _library_upload_child(args.library_upload_child)


if __name__ == "__main__":
    main()
