"""Subcommands of the API side: `up` (the whole system), `apikey`, `openapi`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vault import db
from vault.config import Settings
from vault.models import API_ROLES


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    up = sub.add_parser("up", help="start the whole system: database, ledger cluster, API")
    up.add_argument("--host", default=None, help="API bind address (default 127.0.0.1)")
    up.add_argument("--port", type=int, default=None, help="API port (default 8000)")
    up.add_argument("--data-dir", type=Path, default=None, help="data directory (./.civis)")
    up.add_argument("--database-url", default=None, help="external PostgreSQL instead of embedded")
    up.set_defaults(func=_up)

    apikey = sub.add_parser("apikey", help="issue and revoke members' API keys")
    keys = apikey.add_subparsers(dest="apikey_command", metavar="ACTION", required=True)
    create = keys.add_parser("create", help="issue a key; the token is printed once")
    create.add_argument("--member", required=True, help="member id (pseudonym or public key)")
    create.add_argument("--role", required=True, choices=API_ROLES)
    revoke = keys.add_parser("revoke", help="revoke a key by its id")
    revoke.add_argument("key_id")
    for p in (create, revoke):
        p.add_argument("--data-dir", type=Path, default=None, help="data directory (./.civis)")
        p.add_argument("--database-url", default=None, help="external PostgreSQL")
    create.set_defaults(func=_apikey_create)
    revoke.set_defaults(func=_apikey_revoke)

    openapi = sub.add_parser("openapi", help="write the OpenAPI document generated from the app")
    openapi.add_argument("--output", type=Path, default=None, help="file (default: stdout)")
    openapi.set_defaults(func=_openapi)


def _settings_from(args: argparse.Namespace) -> Settings:
    overrides: dict[str, object] = {}
    if args.data_dir is not None:
        overrides["data_dir"] = args.data_dir
    if args.database_url is not None:
        overrides["database_url"] = args.database_url
    if getattr(args, "host", None) is not None:
        overrides["api_host"] = args.host
    if getattr(args, "port", None) is not None:
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
        where = (
            f"--database-url {args.database_url}"
            if args.database_url
            else (f"--data-dir {settings.data_dir}")
        )
        print(f"API keys: civis-vault apikey create --member ID --role ROLE {where}")
        uvicorn.run(app, host=settings.api_host, port=settings.api_port, log_level="info")
    return 0


def _apikey_create(args: argparse.Namespace) -> int:
    from sqlalchemy.orm import Session

    from api.keys import create_key

    settings = _settings_from(args)
    with db.open_database(settings.database_url, settings.data_dir) as url:
        engine = db.make_engine(url, pool_size=1)
        try:
            with Session(engine) as session, session.begin():
                issued = create_key(session, member_id=args.member, role=args.role)
        except ValueError as exc:
            print(f"civis-vault apikey create: {exc}", file=sys.stderr)
            return 2
        finally:
            engine.dispose()
    # The only time the token exists outside the caller's hands: it is not stored anywhere.
    print(json.dumps({"key_id": issued.key_id, "token": issued.token, "role": args.role}))
    return 0


def _apikey_revoke(args: argparse.Namespace) -> int:
    from sqlalchemy.orm import Session

    from api.keys import revoke_key

    settings = _settings_from(args)
    with db.open_database(settings.database_url, settings.data_dir) as url:
        engine = db.make_engine(url, pool_size=1)
        try:
            with Session(engine) as session, session.begin():
                found = revoke_key(session, args.key_id)
        finally:
            engine.dispose()
    if not found:
        print(f"civis-vault apikey revoke: no key {args.key_id}", file=sys.stderr)
        return 1
    print(json.dumps({"key_id": args.key_id, "revoked": True}))
    return 0


def _openapi(args: argparse.Namespace) -> int:
    from api.openapi import openapi_yaml

    text = openapi_yaml()
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text)
    return 0
