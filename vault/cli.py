"""Subcommands of the data side: `civis-vault keys rotate`, `civis-vault retention sweep`."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, date, datetime
from pathlib import Path

from vault.config import Settings


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


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, object] = {}
    if args.data_dir is not None:
        overrides["data_dir"] = args.data_dir
    if args.database_url is not None:
        overrides["database_url"] = args.database_url
    return Settings(**overrides)  # type: ignore[arg-type]


def _utc_today() -> date:
    return datetime.now(UTC).date()


def _sweep(args: argparse.Namespace) -> int:
    from vault import db
    from vault.erasure import Eraser
    from vault.keys import KeyProviderError, KeyStore, LocalKeyProvider
    from vault.retention import RetentionSweeper

    settings = _settings(args)
    try:
        provider = LocalKeyProvider(settings.resolved_master_key_path, create=False)
    except KeyProviderError as exc:
        print(f"civis-vault retention sweep: {exc}", file=sys.stderr)
        return 2
    with db.open_database(settings.database_url, settings.data_dir) as url:
        engine = db.make_engine(url, pool_size=1)
        try:
            fixed: date | None = args.today
            sweeper = RetentionSweeper(
                db.make_session_factory(engine),
                Eraser(KeyStore(provider)),
                today=(lambda: fixed) if fixed is not None else _utc_today,
            )
            report = sweeper.sweep()
        finally:
            engine.dispose()
    print(
        json.dumps(
            {
                "today": report.today.isoformat(),
                "epochs_expired": len(report.expired),
                "secrets_destroyed": report.secrets_destroyed,
                "records_erased": report.records_erased,
                "skipped_locked": report.skipped_locked,
            }
        )
    )
    return 0


def _rotate(args: argparse.Namespace) -> int:
    from sqlalchemy.orm import Session

    from vault import db
    from vault.keys import KeyProviderError, KeyStore, LocalKeyProvider

    settings = _settings(args)
    try:
        provider = LocalKeyProvider(settings.resolved_master_key_path, create=False)
    except KeyProviderError as exc:
        print(f"civis-vault keys rotate: {exc}", file=sys.stderr)
        return 2
    store = KeyStore(provider)
    with db.open_database(settings.database_url, settings.data_dir) as url:
        engine = db.make_engine(url, pool_size=1)
        try:
            with Session(engine) as session, session.begin():
                kek, count = store.rotate_kek(session)
            # Retire only after the rewrap committed: until then the old KEK is still needed.
            with Session(engine) as session:
                retired = store.retire_unused_keks(session)
        finally:
            engine.dispose()
    print(json.dumps({"current_kek": kek, "rewrapped": count, "retired": retired}))
    return 0
