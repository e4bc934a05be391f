"""Subcommands of the API side: `up` (the whole system) and `serve` (the API alone)."""

from __future__ import annotations

import argparse
from pathlib import Path

from vault import db
from vault.config import Settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    up = sub.add_parser("up", help="start the whole system: database, ledger cluster, API")
    up.add_argument("--host", default=None, help="API bind address (default 127.0.0.1)")
    up.add_argument("--port", type=int, default=None, help="API port (default 8000)")
    up.add_argument("--data-dir", type=Path, default=None, help="data directory (./.civis)")
    up.add_argument("--database-url", default=None, help="external PostgreSQL instead of embedded")
    up.set_defaults(func=_up)


def _settings_from(args: argparse.Namespace) -> Settings:
    overrides: dict[str, object] = {}
    if args.data_dir is not None:
        overrides["data_dir"] = args.data_dir
    if args.database_url is not None:
        overrides["database_url"] = args.database_url
    if args.host is not None:
        overrides["api_host"] = args.host
    if args.port is not None:
        overrides["api_port"] = args.port
    return Settings(**overrides)  # type: ignore[arg-type]


def _up(args: argparse.Namespace) -> int:
    import uvicorn

    from api.app import create_app

    settings = _settings_from(args)
    settings.enforce_production_safety()
    with db.open_database(settings.database_url, settings.data_dir) as url:
        app = create_app(settings, database_url=url)
        print(f"Civis Vault API on http://{settings.api_host}:{settings.api_port}")
        uvicorn.run(app, host=settings.api_host, port=settings.api_port, log_level="info")
    return 0
