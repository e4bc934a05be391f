"""API keys: only a hash is stored; a token works until revoked; the CLI shows it once."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.keys import authenticate, create_key, revoke_key
from vault import db
from vault.models import ApiKey


def test_token_round_trip_and_only_its_hash_is_stored(session: Session) -> None:
    issued = create_key(session, member_id="utility-1", role="provider")
    assert issued.token not in repr(issued)
    row = session.scalars(select(ApiKey).where(ApiKey.id == issued.key_id)).one()
    # cvk_ + 16 hex + _ : the secret itself may contain "_" (url-safe base64).
    secret = issued.token[21:]
    assert row.secret_hash == hashlib.sha256(secret.encode()).digest()
    assert secret.encode() not in row.secret_hash
    member = authenticate(session, issued.token)
    assert member is not None
    assert (member.member_id, member.role, member.key_id) == ("utility-1", "provider", row.id)


def test_wrong_unknown_malformed_and_revoked_tokens_fail(session: Session) -> None:
    issued = create_key(session, member_id="bank-1", role="consumer")
    prefix, secret = issued.token[:20], issued.token[21:]
    flipped = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    assert authenticate(session, f"{prefix}_{flipped}") is None
    assert authenticate(session, "cvk_" + "0" * 16 + "_" + secret) is None
    assert authenticate(session, issued.token + "x") is None
    assert authenticate(session, "") is None
    assert revoke_key(session, issued.key_id)
    assert authenticate(session, issued.token) is None
    assert not revoke_key(session, "f" * 16)


@pytest.mark.parametrize(
    ("member", "role"), [("ok", "admin"), ("Jane Doe", "subject"), ("", "dpo")]
)
def test_bad_roles_and_member_ids_are_refused(session: Session, member: str, role: str) -> None:
    with pytest.raises(ValueError):
        create_key(session, member_id=member, role=role)


def test_cli_create_prints_the_token_once_and_revoke_works(api_database_url: str) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "api.cli", "apikey", *args, "--database-url", api_database_url],
            capture_output=True,
            text=True,
            timeout=60,
        )

    made = cli("create", "--member", "dpo-1", "--role", "dpo")
    assert made.returncode == 0, made.stderr
    out = json.loads(made.stdout)
    assert out["role"] == "dpo"
    engine = db.make_engine(api_database_url, pool_size=1)
    with Session(engine) as session:
        member = authenticate(session, out["token"])
    assert member is not None and member.member_id == "dpo-1"
    gone = cli("revoke", out["key_id"])
    assert gone.returncode == 0, gone.stderr
    with Session(engine) as session:
        assert authenticate(session, out["token"]) is None
    engine.dispose()
    assert cli("revoke", "0" * 16).returncode == 1
    assert cli("create", "--member", "x", "--role", "admin").returncode == 2
