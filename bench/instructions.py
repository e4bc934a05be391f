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

Each process starts with instrumentation off (`--instr-atstart=no`), so starting it costs
little, and serves `WARM_ANSWERS` so; then `callgrind_control` turns instrumentation on, zeroes
the counters, the process serves the measured answers, and the counters are dumped and read.
The same is done over a window as long in which it serves nothing, and that count subtracted:
what the process does whatever it serves (timers; the API worker runs no background jobs,
which the benchmark's own API runs).
"""

from __future__ import annotations

import argparse
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
from typing import Any

from bench import access

ANSWERS = 20  # measured answers per count
# Served before counting: an API worker's first answers pay for what it does once (the ledger
# client pool's sessions with each replica, eight clients per event loop, caches filled).
WARM_ANSWERS = 24
CTL_TIMEOUT_S = 120
_TOTAL = re.compile(r"^(?:summary|totals): (\d+)$", re.M)


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
    serve(WARM_ANSWERS)  # before instrumentation: it runs at a fraction of the cost
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
    dumps.mkdir()
    command = [sys.executable, "-m", "bench.instructions", "--limit-child", str(config)]
    child = subprocess.Popen(
        [*_valgrind(dumps), *command], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert child.stdin is not None and child.stdout is not None
    stdin, stdout = child.stdin, child.stdout
    try:
        if stdout.readline().strip() != "ready":
            raise RuntimeError("the in-process limit's child did not start")

        def serve(n: int) -> None:
            stdin.write(f"{n}\n")
            stdin.flush()
            if stdout.readline().strip() != "done":
                raise RuntimeError("the in-process limit's child stopped")

        return _count(child.pid, dumps, serve, answers)
    finally:
        stdin.close()
        child.wait(timeout=CTL_TIMEOUT_S)


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


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The benchmark; `args`: records, database_url, answers (each optional)."""
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("bench instructions needs valgrind (its callgrind tool)")
    n = int(getattr(args, "records", None) or access.RECORDS)
    answers = int(getattr(args, "answers", None) or ANSWERS)
    database_url = getattr(args, "database_url", None)
    with (
        access.access_fixture(n, database_url) as (fx, meta),
        tempfile.TemporaryDirectory(prefix="civis-bench-") as tmp,
    ):
        limit = _limit_count(fx, Path(tmp), answers) // answers
        api = _api_counts(fx, Path(tmp), answers)
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
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--limit-child", type=Path, required=True)
    _limit_child(parser.parse_args().limit_child)


if __name__ == "__main__":
    main()
