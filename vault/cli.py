"""Subcommands of the data side: `civis-vault keys rotate`, `civis-vault retention sweep`."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from vault.config import VaultSettings

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from vault.keys import KeyStore


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = sub.add_parser("keys", help="the key store and its key-encryption keys")
    keys_sub = keys.add_subparsers(dest="keys_command", metavar="KEYS_COMMAND", required=True)
    rotate = keys_sub.add_parser(
        "rotate",
        help="run a final-erasure cycle now: a new KEK, adopted by every running instance, "
        "every secret rewrapped, the old KEKs retired, VACUUM (makes past erasures final "
        "against dead tuples, the WAL and backups); safe while the service runs",
    )
    rotate.add_argument("--data-dir", type=Path, default=None)
    rotate.add_argument("--database-url", default=None)
    rotate.add_argument(
        "--wait",
        type=float,
        default=None,
        help="seconds to wait for running instances to adopt the new KEK and drop the old "
        "(default: 3 x instance_ttl_s); past it the service finishes the cycle, exit code 1",
    )
    rotate.set_defaults(func=_rotate)

    retention = sub.add_parser("retention", help="retention expiry")
    ret_sub = retention.add_subparsers(dest="retention_command", metavar="CMD", required=True)
    sweep = ret_sub.add_parser(
        "sweep",
        help="expire every retention epoch whose last day has passed (safe to run "
        "concurrently with the service's own sweeper)",
    )
    sweep.add_argument("--data-dir", type=Path, default=None)
    sweep.add_argument("--database-url", default=None)
    sweep.add_argument(
        "--today",
        type=date.fromisoformat,
        default=None,
        help="ISO date to sweep as of (default: today, UTC)",
    )
    sweep.set_defaults(func=_sweep)


_ROTATE_POLL_S = 0.2


class _CommandError(Exception):
    """An operator mistake (unsafe key file, ...): printed as one line, exit code 2."""


def _settings(args: argparse.Namespace) -> VaultSettings:
    overrides = {"data_dir": args.data_dir, "database_url": args.database_url}
    return VaultSettings(**{k: v for k, v in overrides.items() if v is not None})


@contextlib.contextmanager
def _vault(args: argparse.Namespace) -> Iterator[tuple[KeyStore, Engine]]:
    """The key store and a migrated database engine, as configured by flags and environment.

    The master key must already exist: these commands maintain a vault, they never create one.
    """
    from vault import db
    from vault.keys import KeyProviderError, KeyStore, make_provider

    settings = _settings(args)
    try:
        provider = make_provider(settings, create=False)
    except KeyProviderError as exc:
        raise _CommandError(str(exc)) from None
    with db.open_database(settings.database_url, settings.data_dir) as url:
        engine = db.make_engine(url, pool_size=2)
        try:
            yield KeyStore(provider), engine
        finally:
            engine.dispose()


def _reporting_errors(name: str, run: Callable[[], dict[str, object]]) -> int:
    try:
        result = run()
    except _CommandError as exc:
        print(f"civis-vault {name}: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


def _utc_today() -> date:
    return datetime.now(UTC).date()


def _sweep(args: argparse.Namespace) -> int:
    from vault import db
    from vault.erasure import Eraser
    from vault.retention import RetentionSweeper

    def run() -> dict[str, object]:
        with _vault(args) as (store, engine):
            fixed: date | None = args.today
            report = RetentionSweeper(
                db.make_session_factory(engine),
                Eraser(store),
                today=(lambda: fixed) if fixed is not None else _utc_today,
            ).sweep()
        return {
            "today": report.today.isoformat(),
            "epochs_expired": len(report.expired),
            "secrets_destroyed": report.secrets_destroyed,
            "records_erased": report.records_erased,
            "skipped_locked": report.skipped_locked,
        }

    return _reporting_errors("retention sweep", run)


def _rotate(args: argparse.Namespace) -> int:
    """A final-erasure cycle through the same protocol the service runs (vault/final_erasure.py):
    it waits for every running instance to adopt the new KEK before any old one is retired."""
    from vault import db
    from vault.final_erasure import CycleReport, FinalErasure

    settings = _settings(args)
    wait_s = 3 * settings.instance_ttl_s if args.wait is None else args.wait
    finished = False

    def run() -> dict[str, object]:
        nonlocal finished
        with _vault(args) as (store, engine):
            job = FinalErasure(
                db.make_session_factory(engine),
                store,
                interval=settings.final_erasure_interval,
                instance_ttl_s=settings.instance_ttl_s,
            )
            deadline = time.monotonic() + wait_s
            report: CycleReport | None = None
            while True:
                if report is None:
                    # Forced until this command has a cycle (another process may hold the job).
                    report = job.step(force=True)
                else:
                    # Whoever holds the job advances it; this command follows its own cycle.
                    job.step()
                    report = job.report(report.cycle)
                if (report is not None and report.finished) or time.monotonic() >= deadline:
                    break
                time.sleep(_ROTATE_POLL_S)
        if report is None:
            raise _CommandError("another process held the final-erasure job throughout --wait")
        finished = report.finished
        return {
            "cycle": report.cycle,
            "current_kek": report.new_kek,
            "rewrapped": report.secrets_rewrapped,
            "retired": report.retired_keks,
            "final": report.facts_final,
            "finished": report.finished,
            "blocked": report.blocked,
        }

    code = _reporting_errors("keys rotate", run)
    if code == 0 and not finished:
        print(
            "civis-vault keys rotate: the cycle is not finished; the running service finishes it",
            file=sys.stderr,
        )
        return 1
    return code
