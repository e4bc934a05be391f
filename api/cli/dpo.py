"""The DPO's documents from the command line: `civis-vault controller set|show` (the Art. 30
record's controller, DPO and transfers) and `civis-vault dpia` (the impact assessment draft).

Why a command as well as the routes: the DPIA is often written before the service opens to
anyone, and the controller's details are given at founding, when no API key exists yet. The
commands read the vault's database (embedded or `--database-url`) and the chain's genesis;
`dpia` reads the recipients and the purposes' declarations from the replicas if they answer.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from api.http.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from api.services.gateway import LedgerGateway
    from api.services.records_of_processing import ControllerIn
    from ledger_bridge.genesis import Genesis

LEDGER_TIMEOUT_MS = 3000  # replicas that do not answer by then: the draft goes without them

_FIELDS = {
    "name": "the controller's name (the cooperative)",
    "address": "the controller's postal address",
    "email": "the controller's contact email",
    "phone": "the controller's phone",
    "representative": "the Art. 27 representative, if the controller is outside the EU",
    "dpo_name": "the DPO's name (or function)",
    "dpo_email": "the DPO's contact email",
    "dpo_phone": "the DPO's phone",
    "timezone": "where the controller is (IANA, e.g. Europe/Paris): requests are due by its days",
}


def add_controller_arguments(parser: argparse.ArgumentParser, *, prefix: str = "") -> None:
    """The controller's record as flags (`--name`, ... or, on `up`, `--controller-name`, ...)."""
    for field, help_text in _FIELDS.items():
        flag = field.replace("_", "-")
        if prefix and not field.startswith("dpo_"):
            flag = f"{prefix}-{flag}"
        parser.add_argument(f"--{flag}", dest=f"controller_{field}", default=None, help=help_text)
    parser.add_argument(
        "--transfers",
        dest="controller_transfers",
        default=None,
        help='transfers outside the EU/EEA as JSON: [{"recipient", "country", "safeguard"}]; '
        "none by default",
    )


def controller_from(args: argparse.Namespace) -> ControllerIn | None:
    """The record the flags give, or None when no flag was given. ValueError if malformed."""
    from api.services.records_of_processing import ControllerIn

    given = {f: getattr(args, f"controller_{f}") for f in _FIELDS}
    transfers = args.controller_transfers
    if all(v is None for v in given.values()) and transfers is None:
        return None
    values = {k: v for k, v in given.items() if v is not None}
    try:
        if transfers is not None:
            values["transfers"] = json.loads(transfers)
        return ControllerIn.model_validate(values)
    except (ValueError, ValidationError) as exc:
        raise ValueError(f"the controller's record is malformed: {_first_error(exc)}") from None


def _first_error(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        e = exc.errors()[0]
        return f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
    return str(exc).splitlines()[0]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    controller = sub.add_parser(
        "controller", help="the records of processing's controller, DPO and transfers (Art. 30)"
    )
    actions = controller.add_subparsers(dest="controller_command", metavar="ACTION", required=True)
    setting = actions.add_parser("set", help="set the controller's record (name required)")
    add_controller_arguments(setting)
    setting.set_defaults(func=_controller_set)
    showing = actions.add_parser("show", help="print the controller's record as JSON")
    showing.set_defaults(func=_controller_show)

    dpia = sub.add_parser(
        "dpia", help="draft the data protection impact assessment (Art. 35) for the DPO"
    )
    dpia.add_argument("--format", choices=("md", "pdf"), default="md")
    dpia.add_argument("--output", type=Path, default=None, help="file (default: stdout)")
    dpia.add_argument(
        "--ledger-dir", type=Path, default=None, help="the chain's genesis (default DATA/ledger)"
    )
    dpia.set_defaults(func=_dpia)
    for p in (setting, showing, dpia):
        p.add_argument("--data-dir", type=Path, default=None, help="data directory (./.civis)")
        p.add_argument("--database-url", default=None, help="external PostgreSQL")


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {"data_dir": args.data_dir, "database_url": args.database_url}
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


@contextlib.contextmanager
def _session(settings: Settings) -> Iterator[Session]:
    from sqlalchemy.orm import Session

    from vault import db

    with db.open_database(settings.database_url, settings.data_dir) as url:
        engine = db.make_engine(url, pool_size=1)
        try:
            with Session(engine) as session, session.begin():
                yield session
        finally:
            engine.dispose()


def _controller_set(args: argparse.Namespace) -> int:
    from api.services.records_of_processing import set_controller

    try:
        details = controller_from(args)
        if details is None:
            raise ValueError("give at least --name")
    except ValueError as exc:
        print(f"civis-vault controller set: {exc}", file=sys.stderr)
        return 2
    with _session(_settings(args)) as session:
        set_controller(session, details)
    print(details.model_dump_json())
    return 0


def _controller_show(args: argparse.Namespace) -> int:
    from api.services.records_of_processing import controller_record

    with _session(_settings(args)) as session:
        row = controller_record(session)
        if row is None:
            print(
                "civis-vault controller show: not set (civis-vault controller set)", file=sys.stderr
            )
            return 1
        out = {f: getattr(row, f) for f in _FIELDS} | {"transfers": row.transfers}
        out |= {"set_at": row.set_at.isoformat(), "updated_at": row.updated_at.isoformat()}
    print(json.dumps(out))
    return 0


def _genesis(settings: Settings, ledger_dir: Path | None) -> tuple[Path, Genesis | None]:
    from api.cli import layout
    from ledger_bridge.genesis import GENESIS_FILE, load_genesis

    directory = ledger_dir or layout.ledger_dir(settings.data_dir)
    path = directory / GENESIS_FILE
    return directory, (load_genesis(path) if path.exists() else None)


def _gateway(settings: Settings, directory: Path, genesis: Genesis) -> LedgerGateway | None:
    """The replicas, read with the vault's own ledger key; None if that key is not here (it
    is never created by this command: a new key would be no member of the chain)."""
    from api.cli import layout
    from api.services.gateway import RELAY_KEY_FILE, VAULT_KEY_FILE, LedgerGateway
    from ledger_bridge.genesis import load_signing_key

    keys = layout.keys_dir(settings.data_dir)
    if not (keys / VAULT_KEY_FILE).exists() or not (keys / RELAY_KEY_FILE).exists():
        return None
    return LedgerGateway(
        genesis,
        load_signing_key(keys / VAULT_KEY_FILE),
        relay_key=load_signing_key(keys / RELAY_KEY_FILE),
        clients=1,
        timeout_ms=LEDGER_TIMEOUT_MS,
    )


def _dpia(args: argparse.Namespace) -> int:
    from api.services.documents import to_markdown
    from api.services.dpia import build_dpia
    from api.services.pdf import render_pdf

    settings = _settings(args)
    directory, genesis = _genesis(settings, args.ledger_dir)
    gateway = None if genesis is None else _gateway(settings, directory, genesis)
    try:
        with _session(settings) as session:
            doc = build_dpia(session, settings, gateway, genesis=genesis)
    finally:
        if gateway is not None:
            gateway.close()
    data = render_pdf(doc) if args.format == "pdf" else to_markdown(doc).encode()
    if args.output is None:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    else:
        args.output.write_bytes(data)
    return 0
