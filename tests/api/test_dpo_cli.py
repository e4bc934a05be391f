"""`civis-vault controller set|show` and `civis-vault dpia`, run as the operator runs them (the
real parser and subcommands) against a PostgreSQL database, with no ledger: the founding's
controller record is written once by `up`'s flags, corrected by `controller set`, and the DPIA
drafts from the registry alone, saying what it could not read.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy.orm import Session

from api.cli import build_parser, main
from api.cli.bootstrap import record_controller
from api.cli.dpo import controller_from
from api.services.requests import extend_request, open_request
from tests.api.test_documents import parse_pdf
from tests.conftest import PgServer
from vault import db
from vault.datasets import register_dataset
from vault.models import SubjectRequest


@pytest.fixture()
def database(pg_server: PgServer) -> Iterator[str]:
    url = pg_server.create_database("civis_dpo_cli")
    db.upgrade(url)
    yield url
    pg_server.drop_database(url)


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_the_controller_is_set_shown_and_refused_when_malformed(
    database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    where = ("--database-url", database, "--data-dir", str(tmp_path))
    assert _run(capsys, "controller", "show", *where)[0] == 1  # not set yet
    code, _, err = _run(capsys, "controller", "set", *where, "--email", "a@b.example")
    assert code == 2 and "name" in err  # a record names its controller
    transfers = '[{"recipient": "Mail Co", "country": "US"}]'
    code, _, err = _run(capsys, "controller", "set", *where, "--name", "C", "--transfers", "[{")
    assert code == 2 and "malformed" in err
    code, out, _ = _run(
        capsys,
        "controller",
        "set",
        *where,
        "--name",
        "Coopérative Civis",
        "--dpo-email",
        "dpo@civis.example",
        "--transfers",
        transfers,
    )
    assert code == 0 and json.loads(out)["transfers"][0]["safeguard"] == ""
    code, out, _ = _run(capsys, "controller", "show", *where)
    shown = json.loads(out)
    assert code == 0 and shown["name"] == "Coopérative Civis" and shown["timezone"] == "UTC"
    assert shown["dpo_email"] == "dpo@civis.example" and shown["transfers"][0]["country"] == "US"


def test_requests_are_due_by_the_controllers_days(
    database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    where = ("--database-url", database, "--data-dir", str(tmp_path))
    code, _, err = _run(
        capsys, "controller", "set", *where, "--name", "C", "--timezone", "Mars/Base"
    )
    assert code == 2 and "IANA" in err
    assert (
        _run(capsys, "controller", "set", *where, "--name", "C", "--timezone", "Europe/Paris")[0]
        == 0
    )
    paris = ZoneInfo("Europe/Paris")
    received = dt.datetime(2027, 1, 31, 0, 30, tzinfo=paris)  # 30 January in UTC
    engine = db.make_engine(database, pool_size=1)
    try:
        with Session(engine) as session, session.begin():
            opened = open_request(session, "access", "subject-1", None, received)
            row = session.get(SubjectRequest, opened)
            assert row is not None
            assert row.due_at == dt.datetime(2027, 2, 28, 0, 30, tzinfo=paris)
            extended = extend_request(session, opened, "checking", at=received)
            assert extended.due_at == dt.datetime(2027, 4, 30, 0, 30, tzinfo=paris)
    finally:
        engine.dispose()


def test_up_records_the_founding_controller_once(database: str) -> None:
    args = build_parser().parse_args(
        [
            "up",
            "--controller-name",
            "Civis",
            "--controller-email",
            "c@civis.example",
            "--dpo-name",
            "DPO",
            "--dpo-email",
            "dpo@civis.example",
        ]
    )
    details = controller_from(args)
    assert details is not None and details.name == "Civis" and details.dpo_name == "DPO"
    assert controller_from(build_parser().parse_args(["up"])) is None  # no flag, no record
    assert record_controller(database, details) is True
    again = details.model_copy(update={"name": "Someone else"})
    assert record_controller(database, again) is False  # set once: a later run changes nothing


def test_the_dpia_drafts_from_the_registry_without_a_ledger(
    database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    engine = db.make_engine(database, pool_size=1)
    try:
        with Session(engine) as session, session.begin():
            register_dataset(
                session,
                owner_id="utility-1",
                name="water meters",
                category="energy",
                purposes=["billing"],
                retention_days=90,
                legal_basis="contract",
            )
    finally:
        engine.dispose()
    where = ("--database-url", database, "--data-dir", str(tmp_path))
    out_pdf = tmp_path / "dpia.pdf"
    assert _run(capsys, "dpia", *where, "--format", "pdf", "--output", str(out_pdf))[0] == 0
    text = " ".join(parse_pdf(out_pdf.read_bytes()).text().split())
    assert "Dataset water meters" in text and "90 days" in text
    assert "not set (civis-vault controller set)" in text  # the controller's record is due
    assert "no ledger configured" in text
    code, md, _ = _run(capsys, "dpia", *where)
    assert code == 0 and md.startswith("# Data protection impact assessment")
    assert "contract: the processing must be necessary for a contract" in md.replace("\\", "")
