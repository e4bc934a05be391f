"""Subcommands of the API side: `up` (the whole system), `apikey`, `openapi`."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from api.cli.dpo import add_controller_arguments, controller_from
from api.cli.serving import WORKERS_MAX
from api.http.settings import Settings
from vault import db
from vault.models import API_ROLES

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from api.cli.bootstrap import RunningLedger
    from api.services.directory import NameIn
    from api.services.keys import IssuedKey
    from api.services.records_of_processing import ControllerIn
    from vault.keys import KeyProvider


_EXPIRES_HELP = "when the key stops working: a duration (90m, 12h, 30d, 8w) or an ISO date/time"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    _register_up(sub)
    _register_apikey(sub)
    openapi = sub.add_parser("openapi", help="write the OpenAPI document generated from the app")
    openapi.add_argument("--output", type=Path, default=None, help="file (default: stdout)")
    openapi.set_defaults(func=_openapi)


def _register_up(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    up = sub.add_parser("up", help="start the whole system: database, ledger cluster, API")
    up.add_argument("--host", default=None, help="API bind address (default 127.0.0.1)")
    up.add_argument("--port", type=int, default=None, help="API port (default 8000)")
    up.add_argument("--data-dir", type=Path, default=None, help="data directory (./.civis)")
    up.add_argument("--database-url", default=None, help="external PostgreSQL instead of embedded")
    up.add_argument(
        "--replicas",
        type=_replica_count,
        default=None,
        help="3f+1 local replica processes for a new data directory (default 4)",
    )
    up.add_argument(
        "--ledger-dir",
        type=Path,
        default=None,
        help="genesis directory of external replicas: connect, start none",
    )
    up.add_argument(
        "--workers",
        type=_worker_count,
        default=None,
        help="API worker processes (default: one per core, at most 4; docs/LEDGER-OPERATIONS.md)",
    )
    # Art. 30(1)(a): who the controller and its DPO are, recorded at founding (the first run);
    # later: civis-vault controller set.
    add_controller_arguments(up, prefix="controller")
    up.set_defaults(func=_up)


def _register_apikey(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    apikey = sub.add_parser("apikey", help="issue, list, rotate and revoke members' API keys")
    keys = apikey.add_subparsers(dest="apikey_command", metavar="ACTION", required=True)
    create = keys.add_parser("create", help="issue a key; the token is printed once")
    create.add_argument(
        "--member",
        required=True,
        help="member id; with a ledger, the hex of the member's ledger public key",
    )
    create.add_argument("--role", required=True, choices=API_ROLES)
    create.add_argument("--expires", default=None, help=_EXPIRES_HELP)
    create.add_argument(
        "--name",
        default=None,
        help="the member's display name in the directory (a legal entity's, never a subject's)",
    )
    create.add_argument("--contact", default="", help="with --name: how to reach the member")
    listing = keys.add_parser("list", help="keys that work (with --all, ended ones too)")
    listing.add_argument("--member", default=None, help="only this member's keys")
    listing.add_argument("--all", action="store_true", help="revoked and expired keys too")
    rotate = keys.add_parser(
        "rotate", help="a new token for the same member and role; the old key ends"
    )
    rotate.add_argument("key_id")
    rotate.add_argument(
        "--expires",
        default=None,
        help=_EXPIRES_HELP + "; default: the old key's lifetime again, or none if it had none",
    )
    rotate.add_argument(
        "--grace",
        default=None,
        help="keep the old key working this long (90m, 12h, 7d); default: revoked at once",
    )
    revoke = keys.add_parser("revoke", help="revoke a key by its id")
    revoke.add_argument("key_id")
    for p in (create, listing, rotate, revoke):
        p.add_argument("--data-dir", type=Path, default=None, help="data directory (./.civis)")
        p.add_argument("--database-url", default=None, help="external PostgreSQL")
    create.set_defaults(func=_apikey_create)
    listing.set_defaults(func=_apikey_list)
    rotate.set_defaults(func=_apikey_rotate)
    revoke.set_defaults(func=_apikey_revoke)


def _replica_count(text: str) -> int:
    """Checked when parsing, before PostgreSQL starts or any key is written."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if n < 4 or (n - 1) % 3:
        raise argparse.ArgumentTypeError("replicas must be 3f+1 with f >= 1 (4, 7, 10, ...)")
    return n


def _worker_count(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 1 <= n <= WORKERS_MAX:
        raise argparse.ArgumentTypeError(f"workers must be between 1 and {WORKERS_MAX}")
    return n


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


def _stop(signum: int, frame: FrameType | None) -> None:
    """SIGINT and SIGTERM: unwind `up` through its context managers, so every child stops.

    Python's default SIGTERM kills the process on the spot, leaving the replicas (in their own
    sessions) and PostgreSQL behind. Further signals are ignored while the stack unwinds: a
    second Ctrl-C must not abandon a half-stopped cluster.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def _up(args: argparse.Namespace) -> int:
    """Database, then ledger, then API; unwound in reverse on Ctrl-C, SIGTERM or a failure.

    One API worker: uvicorn handles the signal first (graceful HTTP shutdown, the app's
    lifespan stops the relay), then raises it again, which lands in `_stop`. Several: uvicorn's
    supervisor takes the signals, stops every worker the same way, and returns.
    """
    from api.cli import bootstrap, layout, serving
    from ledger_bridge.genesis import GenesisError
    from vault.keys import KeyProviderError

    settings = _settings_from(args)
    settings.enforce_production_safety()
    workers = serving.default_workers() if args.workers is None else args.workers
    try:
        controller = controller_from(args)
    except ValueError as exc:
        print(f"civis-vault up: {exc}", file=sys.stderr)
        return 2
    # Everything `up` and its children write (PostgreSQL, keys, the ledger, logs) is for this
    # account only: other local users have no business reading any of the data directory.
    umask = os.umask(0o077)
    settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    settings.data_dir.chmod(0o700)
    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    started = True
    try:
        with contextlib.ExitStack() as stack:
            url = stack.enter_context(db.open_database(settings.database_url, settings.data_dir))
            ledger = stack.enter_context(
                bootstrap.open_ledger(
                    settings.data_dir,
                    replicas=args.replicas,
                    external_dir=args.ledger_dir,
                    avoid_ports=(settings.api_port,),
                )
            )
            issued = _found(url, settings, ledger, controller)
            _print_summary(args, settings, ledger, issued, workers)
            spec = serving.ApiSpec(
                settings, url, ledger.directory, layout.keys_dir(settings.data_dir)
            )
            started = serving.serve(
                spec,
                workers=workers,
                host=settings.api_host,
                port=settings.api_port,
                ledger=ledger.gateway,
            )
    except KeyboardInterrupt:
        pass
    except (bootstrap.BootstrapError, GenesisError, KeyProviderError) as exc:
        print(f"civis-vault up: {exc}", file=sys.stderr)
        return 2
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        os.umask(umask)
    if not started:
        print("civis-vault up: the API workers could not start (see above)", file=sys.stderr)
        return 2
    print("civis-vault up: stopped", flush=True)
    return 0


def _found(
    url: str, settings: Settings, ledger: RunningLedger, controller: ControllerIn | None
) -> IssuedKey | None:
    """What the database and the key store need before the API serves; the DPO's first API
    key if this run issued it."""
    from api.cli import bootstrap
    from vault.keys import make_provider

    # The DPO's API key belongs to the chain we founded, not to an external one.
    issued = (
        bootstrap.issue_pending_dpo_key(url, settings.data_dir)
        if ledger.cluster is not None
        else None
    )
    if controller is not None:
        bootstrap.record_controller(url, controller)
    bootstrap.name_founders(
        url, ledger.gateway.genesis, "" if controller is None else controller.dpo_name
    )
    # The master key file (or the token's first KEK) exists before the workers start, so they
    # find it rather than race to make it; an unsafe one stops `up` here.
    provider: KeyProvider = make_provider(settings)
    close = getattr(provider, "close", None)
    if close is not None:
        close()
    return issued


def _print_summary(
    args: argparse.Namespace,
    settings: Settings,
    ledger: RunningLedger,
    issued: IssuedKey | None,
    workers: int,
) -> None:
    api_url = f"http://{settings.api_host}:{settings.api_port}"
    where = (
        f"--database-url {args.database_url}"
        if args.database_url
        else f"--data-dir {settings.data_dir}"
    )
    database = (
        "external (--database-url / CIVIS_DATABASE_URL)"
        if settings.database_url
        else f"embedded PostgreSQL in {settings.data_dir / 'pg'}"
    )
    kind = "local replica processes" if ledger.cluster is not None else "external replicas"
    lines = [
        f"Civis Vault API on {api_url} ({workers} worker process{'es' if workers > 1 else ''})",
        f"ledger: chain {ledger.gateway.chain_id}, {ledger.gateway.genesis.n} {kind} "
        f"(clients dial {', '.join(ledger.addresses())}"
        f"{' over TLS' if ledger.gateway.genesis.tls_ca else ''})",
        f"data: {settings.data_dir.resolve()} (genesis and replica logs in {ledger.directory})",
        f"database: {database}",
    ]
    lines += [f"warning: {w}" for w in ledger.warnings]
    if ledger.founding is not None:
        f = ledger.founding
        lines += [
            "",
            f"First run: founded chain {f.chain_id} with the vault and the DPO as members.",
            f"  DPO public key (their member id): {f.dpo_public_key}",
            f"  DPO signing key: {f.dpo_key_file} (0600; move it to the DPO's machine)",
        ]
    if issued is not None:
        lines += [
            f"  DPO API key, shown this once and stored only hashed: {issued.token}",
            f"  use it:    curl -H 'Authorization: Bearer <key>' {api_url}/v1/datasets",
            f"  more keys: civis-vault apikey create --member WALLET_HEX --role ROLE {where}",
            "",
        ]
    else:
        lines.append(f"API keys: civis-vault apikey create --member WALLET_HEX --role ROLE {where}")
    lines.append("Ctrl-C stops everything.")
    print("\n".join(lines), flush=True)


@contextlib.contextmanager
def _key_session(args: argparse.Namespace) -> Iterator[Session]:
    """One transaction in the vault's database (started if embedded), committed on success."""
    from sqlalchemy.orm import Session

    settings = _settings_from(args)
    with db.open_database(settings.database_url, settings.data_dir) as url:
        engine = db.make_engine(url, pool_size=1)
        try:
            with Session(engine) as session, session.begin():
                yield session
        finally:
            engine.dispose()


def _issued(issued: IssuedKey, **extra: str) -> None:
    # The only time the token exists outside the caller's hands: it is not stored anywhere.
    expires = None if issued.expires_at is None else issued.expires_at.isoformat()
    out = {
        "key_id": issued.key_id,
        "token": issued.token,
        "role": issued.role,
        "expires_at": expires,
    }
    print(json.dumps({**out, **extra}))


def _directory_name(args: argparse.Namespace) -> NameIn | None:
    """`--name`/`--contact` as a directory entry; a subject's key is never named."""
    import pydantic

    from api.services.directory import NameIn

    if args.name is None:
        return None
    if args.role == "subject":
        raise ValueError("--name names a legal entity; a subject's pseudonym gets no name")
    try:
        return NameIn(display_name=args.name, contact=args.contact)
    except pydantic.ValidationError:
        raise ValueError(
            "--name is one printable line of 1 to 120 characters, --contact at most 200"
        ) from None


def _apikey_create(args: argparse.Namespace) -> int:
    from api.http.errors import ApiError
    from api.services.directory import set_name
    from api.services.keys import create_key, parse_expiry

    try:
        expires = None if args.expires is None else parse_expiry(args.expires)
        name = _directory_name(args)
        with _key_session(args) as session:
            issued = create_key(session, member_id=args.member, role=args.role, expires_at=expires)
            if name is not None:
                set_name(session, args.member, name)
    except (ValueError, ApiError) as exc:
        print(f"civis-vault apikey create: {exc}", file=sys.stderr)
        return 2
    _issued(issued)
    return 0


def _apikey_list(args: argparse.Namespace) -> int:
    from api.services.keys import list_keys

    with _key_session(args) as session:
        keys = list_keys(session, member_id=args.member, include_ended=args.all)
    for key in keys:
        print(json.dumps(key.as_dict()))
    return 0


def _apikey_rotate(args: argparse.Namespace) -> int:
    import datetime as dt

    from api.services.keys import parse_duration, parse_expiry, rotate_key

    now = dt.datetime.now(dt.UTC)
    try:
        expires = None if args.expires is None else parse_expiry(args.expires, now)
        grace = dt.timedelta(0) if args.grace is None else parse_duration(args.grace)
        if grace is None:
            raise ValueError("--grace is a duration: 90m, 12h, 7d or 2w")
        with _key_session(args) as session:
            issued = rotate_key(session, args.key_id, expires_at=expires, grace=grace, now=now)
    except ValueError as exc:
        print(f"civis-vault apikey rotate: {exc}", file=sys.stderr)
        return 2
    _issued(issued, replaces=args.key_id)
    return 0


def _apikey_revoke(args: argparse.Namespace) -> int:
    from api.services.keys import revoke_key

    with _key_session(args) as session:
        found = revoke_key(session, args.key_id)
    if not found:
        print(f"civis-vault apikey revoke: no key {args.key_id}", file=sys.stderr)
        return 1
    print(json.dumps({"key_id": args.key_id, "revoked": True}))
    return 0


def _openapi(args: argparse.Namespace) -> int:
    from api.http.openapi import openapi_yaml

    text = openapi_yaml()
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text)
    return 0
