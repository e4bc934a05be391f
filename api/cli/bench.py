"""`civis-vault bench NAME …`: the benchmarks of the source checkout this CLI runs from.

Why a launcher rather than the benchmarks: they are a developer tool, kept in the repository's
`bench/` and left out of the wheel (a top-level `bench` in site-packages would collide with any
other distribution's). The editable dev install (`make install`) imports `api` from the
checkout, beside which `bench/` lies; an installed wheel has no checkout and says so, exit 2.
The arguments are the benchmarks' own (`bench/cli.py`), so `civis-vault --help` never imports
them.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[2]


def source_checkout() -> Path | None:
    """The repository this `api` was imported from, or None when it is an installed copy.

    pyproject.toml marks the checkout: site-packages, beside an installed `api/`, has none,
    and a `bench/` found there would be another distribution's.
    """
    if (_ROOT / "pyproject.toml").is_file() and (_ROOT / "bench" / "cli.py").is_file():
        return _ROOT
    return None


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    bench = sub.add_parser(
        "bench",
        help="run a benchmark and print JSON (from a source checkout; `bench --help` lists them)",
        # No option syntax here (no argument can contain NUL): every word after `bench`,
        # `--help` and `--json` included, goes to the benchmarks' own parser, bench/cli.py.
        prefix_chars="\0",
        add_help=False,
    )
    bench.add_argument("argv", nargs="*")
    bench.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    checkout = source_checkout()
    if checkout is None:
        print(
            "civis-vault bench: the benchmarks run from a source checkout of civis-vault "
            "(`make install`, then `civis-vault bench NAME --json` or `make bench`); "
            "this installation has none.",
            file=sys.stderr,
        )
        return 2
    # First on the path: the checkout's `bench`, whatever else site-packages holds.
    if str(checkout) not in sys.path:
        sys.path.insert(0, str(checkout))
    return int(importlib.import_module("bench.cli").main(args.argv))
