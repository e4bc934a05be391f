"""A subject signs in with the wallet it already holds, with no operator, against a real ledger.

One sign-in proves every pseudonym the wallet derived (one per dataset) and opens each one's
export; a citizen nobody uploaded anything about yet signs in too and sees an empty export; an
erasure of a pseudonym ends the sessions that hold it; expired challenges and sessions are
purged, by each challenge and by the background jobs; and the command line signs in and out
over real HTTP. The attacks are in tests/security/test_sign_in_attacks.py.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os
import secrets
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from api.cli import main
from api.client import CivisClient, SubjectSession, Unauthorized, public_hex
from api.client.wallet import Wallet
from api.services.jobs import BackgroundJobs, Periodic
from api.services.subject_sessions import purge_expired_sessions
from tests.api.ledger_env import LedgerEnv
from tests.api.test_erasure_receipt import _serve
from tests.api.test_wallet import _joined
from vault import db
from vault.models import Decryption, SubjectChallenge
from vault.models import SubjectSession as SessionRow


@pytest.fixture(scope="module")
def engine(ledger_database_url: str) -> Iterator[Engine]:
    engine = db.make_engine(ledger_database_url, pool_size=1)
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def base_url(ledger_env: LedgerEnv) -> Iterator[str]:
    """The module's app (its lifespan already run by the TestClient) behind real HTTP."""
    yield from _serve(ledger_env.client.app, "off")  # type: ignore[arg-type]


def _api(env: LedgerEnv) -> CivisClient:
    return CivisClient(http=env.client)


def _dpo(env: LedgerEnv) -> CivisClient:
    return _api(env).with_key(env.headers("dpo", env.dpo)["Authorization"].removeprefix("Bearer "))


def _session(signed_in: CivisClient) -> SubjectSession:
    assert signed_in.session is not None
    return signed_in.session


def _rows_naming(engine: Engine, pseudonym: str) -> list[str]:
    with Session(engine) as s:
        held = SessionRow.pseudonyms.contains([pseudonym])
        return list(s.scalars(select(SessionRow.id).where(held)))


def test_one_sign_in_proves_every_pseudonym_of_the_wallet(
    ledger_env: LedgerEnv, tmp_path: Path
) -> None:
    wallet = Wallet.create(tmp_path / "alice.key")
    first, p1 = _joined(ledger_env, wallet)
    second, p2 = _joined(ledger_env, wallet)
    me = _api(ledger_env).sign_in(wallet)
    session = _session(me)
    assert session["token"].startswith("cvs_") and session["pseudonyms"] == sorted([p1, p2])
    expires = dt.datetime.fromisoformat(session["expires_at"])
    lifetime = expires - dt.datetime.now(dt.UTC)
    assert dt.timedelta(minutes=14) < lifetime <= dt.timedelta(minutes=15)
    for dataset, pseudonym in ((first, p1), (second, p2)):
        export = me.export(pseudonym)
        assert [r["dataset_id"] for r in export["records"]] == [dataset]
        assert export["records"][0]["payload"] == {"address": "1 rue du Reçu"}
        assert me.consents(pseudonym)["result"] == []
    # The row holds the proven pseudonyms and the secret's SHA-256, never the secret.
    _, session_id, secret = session["token"].split("_", 2)
    with Session(ledger_env.client.app.state.engine) as s:  # type: ignore[attr-defined]
        row = s.get(SessionRow, session_id)
        assert row is not None and sorted(row.pseudonyms) == sorted([p1, p2])
        assert bytes(row.secret_hash) == hashlib.sha256(secret.encode()).digest()
    me.sign_out()
    with pytest.raises(Unauthorized):
        _api(ledger_env).with_key(session["token"]).export(p1)


def test_a_citizen_nobody_knows_yet_signs_in_and_sees_an_empty_export(
    ledger_env: LedgerEnv, tmp_path: Path
) -> None:
    """No member.register, no record: the key proves itself, and nothing is filed under it."""
    wallet = Wallet.create(tmp_path / "newcomer.key")
    pseudonym = public_hex(wallet.pseudonym(str(uuid.uuid4())))
    me = _api(ledger_env).sign_in(wallet)
    assert _session(me)["pseudonyms"] == [pseudonym]
    export = me.export(pseudonym)
    assert export["records"] == [] and export["consents"] == [] and export["erasures"] == []
    me.sign_out()


def test_a_wallet_may_prove_only_some_of_its_pseudonyms(
    ledger_env: LedgerEnv, tmp_path: Path
) -> None:
    wallet = Wallet.create(tmp_path / "careful.key")
    first, p1 = _joined(ledger_env, wallet)
    _, p2 = _joined(ledger_env, wallet)
    me = _api(ledger_env).sign_in(wallet, datasets=[first])
    assert _session(me)["pseudonyms"] == [p1]
    assert me.export(p1)["records"]
    r = ledger_env.client.get(f"/v1/subjects/{p2}/export", headers=me._auth)
    assert r.status_code == 403, r.text


def test_an_erasure_ends_every_session_holding_the_pseudonym(
    ledger_env: LedgerEnv, engine: Engine, tmp_path: Path
) -> None:
    """The DPO erases p1 everywhere: the session that proved p1 with p2 goes (it linked them),
    the one that proved p2 alone stays; no row names p1 after."""
    wallet = Wallet.create(tmp_path / "erased.key")
    first, p1 = _joined(ledger_env, wallet)
    second, p2 = _joined(ledger_env, wallet)
    both = _api(ledger_env).sign_in(wallet)
    only_p2 = _api(ledger_env).sign_in(wallet, datasets=[second])
    assert len(_rows_naming(engine, p1)) == 1 and len(_rows_naming(engine, p2)) == 2
    certificate = _dpo(ledger_env).erase(subject_id=p1, reason="subject_request")
    assert certificate["state"] in ("recorded", "pending")
    assert _rows_naming(engine, p1) == []
    with pytest.raises(Unauthorized):
        both.export(p2)
    assert only_p2.export(p2)["records"]
    # The wallet moves on to the next pseudonym in the erased dataset and signs in with it.
    wallet.record_erasure(first, certificate, _dpo(ledger_env).erasure_receipt(certificate))
    again = _api(ledger_env).sign_in(wallet)
    assert p1 not in _session(again)["pseudonyms"] and p2 in _session(again)["pseudonyms"]
    assert again.export(public_hex(wallet.pseudonym(first)))["records"] == []


def _readers_of(engine: Engine, pseudonym: str) -> set[str]:
    with Session(engine) as s:
        return set(s.scalars(select(Decryption.reader).where(Decryption.subject == pseudonym)))


def test_a_sign_in_leaves_no_lasting_link_in_the_record_of_reads(
    ledger_env: LedgerEnv, engine: Engine, tmp_path: Path
) -> None:
    """The package over both pseudonyms is recorded as read (invariant 10), once per pseudonym:
    each row names its pseudonym as the reader, never the session, which would be an id the
    two rows share for ever, after the sign-out, after an erasure of one of them."""
    wallet = Wallet.create(tmp_path / "linked.key")
    _, p1 = _joined(ledger_env, wallet)
    _, p2 = _joined(ledger_env, wallet)
    me = _api(ledger_env).sign_in(wallet)
    package = ledger_env.client.get("/v1/subjects/export-package", headers=me._auth)
    assert package.status_code == 200 and package.json()["subjects"] == sorted([p1, p2])
    me.export(p1)
    me.sign_out()
    assert _readers_of(engine, p1) == {p1} and _readers_of(engine, p2) == {p2}
    _dpo(ledger_env).erase(subject_id=p1, reason="subject_request")
    assert _readers_of(engine, p1) == set() and _readers_of(engine, p2) == {p2}
    with Session(engine) as s:
        by_session = s.scalars(select(Decryption.id).where(Decryption.reader.like("session:%")))
        assert list(by_session) == []


def _expired_rows(engine: Engine) -> tuple[str, str]:
    """An expired challenge and an expired session, straight into the database."""
    past = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    challenge, session = secrets.token_hex(16), secrets.token_hex(8)
    with Session(engine) as s, s.begin():
        s.add(SubjectChallenge(id=challenge, challenge=os.urandom(32), expires_at=past))
        s.add(
            SessionRow(
                id=session,
                secret_hash=os.urandom(32),
                pseudonyms=[os.urandom(32).hex()],
                expires_at=past,
            )
        )
    return challenge, session


def _exist(engine: Engine, rows: tuple[str, str]) -> tuple[bool, bool]:
    with Session(engine) as s:
        return s.get(SubjectChallenge, rows[0]) is not None, s.get(SessionRow, rows[1]) is not None


def test_expired_challenges_and_sessions_are_purged(
    ledger_env: LedgerEnv, engine: Engine, tmp_path: Path
) -> None:
    """By each new challenge (and sign-in), and by the background jobs when nobody signs in."""
    wallet = Wallet.create(tmp_path / "purge.key")
    wallet.pseudonym(str(uuid.uuid4()))
    live = _session(_api(ledger_env).sign_in(wallet))
    rows = _expired_rows(engine)
    assert _exist(engine, rows) == (True, True)
    r = ledger_env.client.post("/v1/subjects/challenges")
    assert r.status_code == 201, r.text
    assert _exist(engine, rows) == (False, False)
    assert _rows_naming(engine, live["pseudonyms"][0])  # what has not expired stays

    app: FastAPI = ledger_env.client.app  # type: ignore[assignment]
    rows = _expired_rows(engine)
    assert purge_expired_sessions(app.state.sessions) >= 2
    assert _exist(engine, rows) == (False, False)

    rows = _expired_rows(engine)
    jobs = BackgroundJobs(
        None,
        None,
        periodic=(
            Periodic("sign-in purge", 0.05, lambda: purge_expired_sessions(app.state.sessions)),
        ),
    )
    jobs.start()
    try:
        deadline = time.monotonic() + 10
        while _exist(engine, rows) != (False, False):
            assert time.monotonic() < deadline, "the jobs did not purge"
            time.sleep(0.05)
    finally:
        jobs.stop()


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    code = main(["wallet", *argv])
    out = capsys.readouterr().out
    return code, json.loads(out) if code == 0 else {}


def test_the_command_line_signs_in_and_out(
    ledger_env: LedgerEnv,
    base_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key = tmp_path / "cli.key"
    wallet = Wallet.create(key)
    dataset, pseudonym = _joined(ledger_env, wallet)
    wrong_chain = ["sign-in", "--key", str(key), "--api", base_url, "--chain-id", "another"]
    assert main(["wallet", *wrong_chain]) == 2
    code, out = _cli(capsys, "sign-in", "--key", str(key), "--api", base_url)
    assert code == 0 and out["pseudonyms"] == {dataset: pseudonym}
    token = out["token"]
    bearer = {"Authorization": f"Bearer {token}"}
    assert httpx.get(f"{base_url}/v1/subjects/{pseudonym}/export", headers=bearer).is_success
    assert not list(tmp_path.glob("*token*")) and not list(tmp_path.glob("*session*"))
    monkeypatch.setattr("sys.stdin", io.StringIO(token + "\n"))
    code, out = _cli(capsys, "sign-out", "--api", base_url)
    assert code == 0 and out == {"signed_out": True}
    r = httpx.get(f"{base_url}/v1/subjects/{pseudonym}/export", headers=bearer)
    assert r.status_code == 401
    monkeypatch.setattr("sys.stdin", io.StringIO("cvk_not-a-session\n"))
    assert main(["wallet", "sign-out", "--api", base_url]) == 2
