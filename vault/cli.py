"""Subcommands of the data side (retention sweeps, key rotation)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Nothing yet: retention and key rotation commands register here."""
