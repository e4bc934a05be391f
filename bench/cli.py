"""`civis-vault bench NAME --json`: each benchmark registers itself in BENCHMARKS."""

from __future__ import annotations

import argparse
import importlib
import json
from collections.abc import Callable
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
}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    bench = sub.add_parser("bench", help="run a benchmark and print JSON")
    bench.add_argument("name", choices=sorted(BENCHMARKS) or ["none"])
    bench.add_argument("--json", action="store_true", help="print JSON only")
    bench.add_argument("--records", type=int, default=None, help="size of the run")
    bench.add_argument(
        "--seconds", type=float, default=None, help="access: measured seconds per point"
    )
    bench.add_argument(
        "--database-url",
        default=None,
        help="access, upload-http: PostgreSQL to use (default CIVIS_DATABASE_URL, else embedded)",
    )
    bench.add_argument(
        "--gb",
        type=float,
        default=None,
        help="upload-http: stream a generated NDJSON body of this many GB (10^9 bytes)",
    )
    bench.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    target = BENCHMARKS.get(args.name)
    if target is None:
        print(json.dumps({"error": f"unknown benchmark {args.name}"}))
        return 2
    module, func = target.split(":")
    fn: Callable[[argparse.Namespace], dict[str, Any]] = getattr(
        importlib.import_module(module), func
    )
    print(json.dumps(fn(args), indent=2))
    return 0
