"""Subcommands of the data side: `civis-vault keys rotate` (and, later, retention sweeps)."""

from __future__ import annotations

import argparse
import json
import sys
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


def _rotate(args: argparse.Namespace) -> int:
    from sqlalchemy.orm import Session

    from vault import db
    from vault.keys import KeyProviderError, KeyStore, LocalKeyProvider

    overrides: dict[str, object] = {}
    if args.data_dir is not None:
        overrides["data_dir"] = args.data_dir
    if args.database_url is not None:
        overrides["database_url"] = args.database_url
    settings = Settings(**overrides)  # type: ignore[arg-type]
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
