"""Subcommands of the ledger side: `node`, `ledger up`, `ledger simulate`."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ledger = sub.add_parser("ledger", help="the bundled PBFT ledger")
    ledger.add_subparsers(dest="ledger_command", metavar="LEDGER_COMMAND")
