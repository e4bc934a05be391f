"""`civis-vault bench NAME --json`: each benchmark registers itself in BENCHMARKS.

`civis-vault bench` (api/cli/bench.py) hands its arguments to `main` when it runs from a source
checkout; `python -m bench.cli NAME` is the same command without the product's entry point.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# name -> "module:function"; the function takes the parsed args, returns a JSON-able dict.
BENCHMARKS: dict[str, str] = {
    "upload": "bench.upload:run",
    "erasure": "bench.erasure:run",
    "ledger": "bench.ledger:run",
    "upload-http": "bench.upload_http:run",
    "keys": "bench.keys:run",
    "access": "bench.access:run",
    "crypto": "bench.crypto:run",
    "checkpoint": "bench.checkpoint:run",
    "contracts": "bench.contracts:run",
    "events": "bench.events:run",
    "final-erasure": "bench.final_erasure:run",
    "wan": "bench.wan:run",
    "instructions": "bench.instructions:run",
    "read-timeline": "bench.read_timeline:run",
}

# The repository holding this `bench/`.
CHECKOUT = Path(__file__).resolve().parent.parent


def build_parser() -> argparse.ArgumentParser:
    bench = argparse.ArgumentParser(
        prog="civis-vault bench", description="Run a benchmark and print JSON."
    )
    bench.add_argument("name", choices=sorted(BENCHMARKS))
    bench.add_argument("--json", action="store_true", help="print JSON only")
    bench.add_argument("--records", type=int, default=None, help="size of the run")
    bench.add_argument(
        "--seconds",
        type=float,
        default=None,
        help="access: measured seconds per point; read-timeline: seconds of reads",
    )
    bench.add_argument(
        "--database-url",
        default=None,
        help="access, upload-http: PostgreSQL to use (default CIVIS_DATABASE_URL, else embedded)",
    )
    bench.add_argument(
        "--workers",
        type=int,
        default=None,
        help="access: API worker processes (default: as `civis-vault up` chooses)",
    )
    bench.add_argument(
        "--subjects",
        type=int,
        default=None,
        help="upload: distinct data subjects among the records (default 1,000; as many as "
        "records: one record per subject)",
    )
    bench.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="upload: full-size pairs (vault upload, raw COPY); upload-http: full HTTP uploads, "
        "each between two library uploads; the median pair's ratio is the report's (default 3; "
        "upload-http with --gb: 1)",
    )
    bench.add_argument(
        "--answers",
        type=int,
        default=None,
        help="instructions: measured answers per count (default 20)",
    )
    bench.add_argument(
        "--gb",
        type=float,
        default=None,
        help="upload-http: stream a generated NDJSON body of this many GB (10^9 bytes)",
    )
    return bench


def _children_import_this_checkout() -> None:
    """Benchmarks spawn `python -m bench.…` children (servers, clients): the wheel installs no
    `bench`, so the children find it through PYTHONPATH, whatever their working directory."""
    inherited = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(CHECKOUT), *([inherited] if inherited else [])])


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _children_import_this_checkout()
    module, func = BENCHMARKS[args.name].split(":")
    fn: Callable[[argparse.Namespace], dict[str, Any]] = getattr(
        importlib.import_module(module), func
    )
    print(json.dumps(fn(args), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
