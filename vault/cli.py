"""Subcommands of the data side: `civis-vault keys rotate`, `civis-vault retention sweep`."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
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
        help="rewrap every secret under a new KEK and retire the old one (makes past "
        "erasures final against backups and dead tuples)",
    )
    rotate.add_argument("--data-dir", type=Path, default=None)
    rotate.add_argument("--database-url", default=None)
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


class _CommandError(Exception):
    """An operator mistake (unsafe key file, ...): printed as one line, exit code 2."""


@contextlib.contextmanager
def _vault(args: argparse.Namespace) -> Iterator[tuple[KeyStore, Engine]]:
    """The key store and a migrated database engine, as configured by flags and environment.

    The master key must already exist: these commands maintain a vault, they never create one.
    """
    from vault import db
    from vault.keys import KeyProviderError, KeyStore, make_provider

    overrides = {"data_dir": args.data_dir, "database_url": args.database_url}
    settings = VaultSettings(**{k: v for k, v in overrides.items() if v is not None})
    try:
        provider = make_provider(settings, create=False)
    except KeyProviderError as exc:
        raise _CommandError(str(exc)) from None
    with db.open_database(settings.database_url, settings.data_dir) as url:
        engine = db.make_engine(url, pool_size=1)
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
    from sqlalchemy.orm import Session

    def run() -> dict[str, object]:
        with _vault(args) as (store, engine):
            with Session(engine) as session, session.begin():
                kek, count = store.rotate_kek(session)
            # Retire only after the rewrap committed: until then the old KEK is still needed.
            with Session(engine) as session:
                retired = store.retire_unused_keks(session)
        return {"current_kek": kek, "rewrapped": count, "retired": retired}

    return _reporting_errors("keys rotate", run)
