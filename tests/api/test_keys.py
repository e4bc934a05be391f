"""API keys: only a hash is stored; a token works until revoked or expired; the CLI shows it
once, lists keys without their secrets, and rotates them."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, select
from sqlalchemy.orm import Session

from api.http.app import create_app
from api.http.settings import Settings
from api.services.directory import names
from api.services.keys import (
    KeyExpired,
    VerifiedKeys,
    authenticate,
    create_key,
    list_keys,
    parse_expiry,
    revoke_key,
    rotate_key,
)
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
    ("member", "role"),
    [("ok", "admin"), ("Jane Doe", "subject"), ("", "dpo"), ("alice\n", "consumer")],
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


def test_cli_create_names_a_legal_entity_and_never_a_subject(api_database_url: str) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "api.cli",
                "apikey",
                "create",
                *args,
                "--database-url",
                api_database_url,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )

    bank, resident = secrets.token_hex(32), secrets.token_hex(32)
    made = cli(
        "--member",
        bank,
        "--role",
        "consumer",
        "--name",
        "Banque du Rhône",
        "--contact",
        "dpo@banque.example",
    )
    assert made.returncode == 0, made.stderr
    refused = [
        cli("--member", resident, "--role", "subject", "--name", "Alice Martin"),
        cli("--member", resident, "--role", "consumer", "--name", "two\nlines"),
        cli("--member", "not-a-key", "--role", "consumer", "--name", "Banque"),
    ]
    assert [r.returncode for r in refused] == [2, 2, 2]
    engine = db.make_engine(api_database_url, pool_size=1)
    with Session(engine) as session:
        assert names(session, [bank, resident, "not-a-key"]) == {bank: "Banque du Rhône"}
        # a refused name issues no key either: the command did nothing
        assert not list_keys(session, member_id=resident) + list_keys(
            session, member_id="not-a-key"
        )
    engine.dispose()


# -- expiry, listing, rotation -------------------------------------------------------------

NOW = dt.datetime(2027, 3, 1, 12, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90m", NOW + dt.timedelta(minutes=90)),
        ("12h", NOW + dt.timedelta(hours=12)),
        ("30d", NOW + dt.timedelta(days=30)),
        ("2w", NOW + dt.timedelta(weeks=2)),
        ("2027-06-30", dt.datetime(2027, 6, 30, tzinfo=dt.UTC)),
        ("2027-06-30T18:00:00+02:00", dt.datetime(2027, 6, 30, 16, 0, tzinfo=dt.UTC)),
    ],
)
def test_expiry_is_a_duration_or_an_iso_date(text: str, expected: dt.datetime) -> None:
    assert parse_expiry(text, NOW) == expected


@pytest.mark.parametrize("text", ["0d", "-3d", "30", "30 days", "2027-02-28", "9999d", "soon"])
def test_expiry_in_the_past_too_far_or_unreadable_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="--expires"):
        parse_expiry(text, NOW)


def test_an_expired_key_is_refused_and_told_why(session: Session) -> None:
    issued = create_key(
        session, member_id="bank-exp", role="consumer", expires_at=NOW + dt.timedelta(days=1)
    )
    member = authenticate(session, issued.token, now=NOW)
    assert member is not None and member.member_id == "bank-exp"
    with pytest.raises(KeyExpired, match="expired at 2027-03-02T12:00:00Z") as refused:
        authenticate(session, issued.token, now=NOW + dt.timedelta(days=1))
    assert refused.value.status == 401
    # Only the holder of the secret learns that the key expired: a wrong secret is just invalid.
    flipped = issued.token[:-1] + ("A" if issued.token[-1] != "A" else "B")
    assert authenticate(session, flipped, now=NOW + dt.timedelta(days=2)) is None


def test_an_expired_key_gets_401_problem_saying_it_expired(
    client: TestClient, api_database_url: str
) -> None:
    engine = db.make_engine(api_database_url, pool_size=1)
    with Session(engine) as session, session.begin():
        past = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
        expired = create_key(session, member_id="dpo-exp", role="dpo", expires_at=past)
        revoked = create_key(session, member_id="dpo-rev", role="dpo")
        revoke_key(session, revoked.key_id)
    engine.dispose()
    r = client.get("/v1/datasets", headers={"Authorization": f"Bearer {expired.token}"})
    assert r.status_code == 401
    assert r.headers["content-type"] == "application/problem+json"
    assert r.headers["www-authenticate"] == "Bearer"
    assert "expired at" in r.json()["detail"] and expired.key_id in r.json()["detail"]
    assert expired.token not in r.text
    r = client.get("/v1/datasets", headers={"Authorization": f"Bearer {revoked.token}"})
    assert r.status_code == 401 and "expired" not in r.json()["detail"]


def test_list_shows_working_keys_and_with_ended_every_state(session: Session) -> None:
    member = f"lister-{NOW.timestamp():.0f}-{id(session)}"
    live = create_key(session, member_id=member, role="provider")
    soon = create_key(
        session, member_id=member, role="provider", expires_at=NOW + dt.timedelta(hours=1)
    )
    gone = create_key(session, member_id=member, role="provider")
    revoke_key(session, gone.key_id, now=NOW)
    later = NOW + dt.timedelta(hours=2)
    working = list_keys(session, member_id=member, now=later)
    assert [k.key_id for k in working] == [live.key_id]
    every = {
        k.key_id: k for k in list_keys(session, member_id=member, include_ended=True, now=later)
    }
    assert {k: v.state for k, v in every.items()} == {
        live.key_id: "active",
        soon.key_id: "expired",
        gone.key_id: "revoked",
    }
    shown = every[soon.key_id].as_dict()
    assert shown["expires_at"] == "2027-03-01T13:00:00+00:00" and "token" not in shown
    assert all("secret" not in str(v.as_dict()) for v in every.values())


def test_rotation_issues_a_new_secret_for_the_same_member_and_revokes_the_old(
    session: Session,
) -> None:
    old = create_key(
        session, member_id="road-svc", role="consumer", expires_at=NOW + dt.timedelta(days=30)
    )
    # A rotation ten days into a 30-day key gives another 30 days from now.
    then = NOW - dt.timedelta(days=10)
    session.get(ApiKey, old.key_id).created_at = then  # type: ignore[union-attr]
    session.get(ApiKey, old.key_id).expires_at = then + dt.timedelta(days=30)  # type: ignore[union-attr]
    new = rotate_key(session, old.key_id, now=NOW)
    assert new.token != old.token and new.role == "consumer"
    assert new.expires_at == NOW + dt.timedelta(days=30)
    member = authenticate(session, new.token, now=NOW)
    assert member is not None and (member.member_id, member.role) == ("road-svc", "consumer")
    assert authenticate(session, old.token, now=NOW) is None
    with pytest.raises(ValueError, match="revoked"):
        rotate_key(session, old.key_id, now=NOW)  # not a way back in


def test_rotation_with_a_grace_period_keeps_the_old_key_until_it_ends(session: Session) -> None:
    old = create_key(session, member_id="fleet-1", role="provider")
    new = rotate_key(session, old.key_id, grace=dt.timedelta(hours=12), now=NOW)
    assert new.expires_at is None  # the old key had no expiry: neither has the new one
    assert authenticate(session, old.token, now=NOW + dt.timedelta(hours=11)) is not None
    with pytest.raises(KeyExpired):
        authenticate(session, old.token, now=NOW + dt.timedelta(hours=12))
    assert authenticate(session, new.token, now=NOW + dt.timedelta(days=400)) is not None
    with pytest.raises(ValueError, match="no key"):
        rotate_key(session, "0" * 16, now=NOW)


def test_cli_expires_lists_and_rotates(api_database_url: str) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "api.cli", "apikey", *args, "--database-url", api_database_url],
            capture_output=True,
            text=True,
            timeout=60,
        )

    member = f"cli-{dt.datetime.now(dt.UTC).timestamp():.0f}"
    made = cli("create", "--member", member, "--role", "provider", "--expires", "30d")
    assert made.returncode == 0, made.stderr
    first = json.loads(made.stdout)
    expires = dt.datetime.fromisoformat(first["expires_at"])
    assert dt.timedelta(days=29) < expires - dt.datetime.now(dt.UTC) <= dt.timedelta(days=30)
    bad = cli("create", "--member", member, "--role", "provider", "--expires", "yesterday")
    assert bad.returncode == 2 and "--expires" in bad.stderr
    rotated = cli("rotate", first["key_id"], "--grace", "1h")
    assert rotated.returncode == 0, rotated.stderr
    second = json.loads(rotated.stdout)
    assert second["replaces"] == first["key_id"] and second["role"] == "provider"
    assert second["token"] != first["token"] and second["expires_at"] is not None
    listed = cli("list", "--member", member)
    assert listed.returncode == 0, listed.stderr
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [r["key_id"] for r in rows] == [first["key_id"], second["key_id"]]  # grace: both
    assert all("token" not in r for r in rows)
    assert cli("rotate", second["key_id"], "--grace", "tomorrow").returncode == 2
    assert cli("revoke", first["key_id"]).returncode == 0
    listed = cli("list", "--member", member)
    assert [json.loads(line)["key_id"] for line in listed.stdout.splitlines()] == [second["key_id"]]
    everything = cli("list", "--member", member, "--all")
    states = {
        json.loads(line)["key_id"]: json.loads(line)["state"]
        for line in everything.stdout.splitlines()
    }
    assert states == {first["key_id"]: "revoked", second["key_id"]: "active"}


# -- verified keys remembered a few seconds ---------------------------------------------------


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@contextmanager
def counted_queries(session: Session) -> Iterator[list[str]]:
    """The SQL statements `session` sends while the block runs."""
    sent: list[str] = []
    bind = session.connection()

    def count(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        sent.append(statement)

    event.listen(bind, "before_cursor_execute", count)
    try:
        yield sent
    finally:
        event.remove(bind, "before_cursor_execute", count)


def _end(session: Session, key_id: str, how: str) -> None:
    if how == "revoke":
        assert revoke_key(session, key_id)
    else:
        rotate_key(session, key_id)  # no grace: the old key ends at once


@pytest.mark.parametrize("how", ["revoke", "rotate"])
def test_a_key_that_ends_is_refused_once_the_bound_has_passed(session: Session, how: str) -> None:
    """The attack: a key revoked (reported stolen) or rotated keeps working for whoever holds
    it. Remembered without a bound it would work for as long as the process lives; here it is
    refused as soon as `ttl_s` has passed since the process last asked the database."""
    clock = Clock()
    keys = VerifiedKeys(5.0, monotonic=clock)
    issued = create_key(session, member_id=f"stolen-{how}", role="consumer")
    with counted_queries(session) as sent:
        assert keys.authenticate(session, issued.token) is not None
        assert len(sent) == 1
        clock.t += 4.0
        assert keys.authenticate(session, issued.token) is not None
        assert len(sent) == 1  # from memory: no query
    _end(session, issued.key_id, how)
    clock.t += 0.999  # still inside the bound: the bound is what revocation costs
    assert keys.authenticate(session, issued.token) is not None
    clock.t += 0.001  # 5 s after the database said yes: asked again, and refused
    assert keys.authenticate(session, issued.token) is None
    clock.t += 60.0
    assert keys.authenticate(session, issued.token) is None


def test_a_wrong_secret_is_never_accepted_from_memory(session: Session) -> None:
    keys = VerifiedKeys(5.0, monotonic=Clock())
    issued = create_key(session, member_id="remembered-1", role="provider")
    assert keys.authenticate(session, issued.token) is not None
    prefix, secret = issued.token[:20], issued.token[21:]
    flipped = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    with counted_queries(session) as sent:
        assert keys.authenticate(session, f"{prefix}_{flipped}") is None
        assert len(sent) == 1  # the database answers, as for any wrong secret
        assert keys.authenticate(session, issued.token + "x") is None
        assert keys.authenticate(session, "cvk_" + "0" * 16 + "_" + secret) is None
    # The wrong secret did not evict the right one, nor poison it.
    with counted_queries(session) as sent:
        member = keys.authenticate(session, issued.token)
        assert sent == []
    assert member is not None and member.member_id == "remembered-1"


def test_an_expiry_is_exact_even_for_a_remembered_key(session: Session) -> None:
    keys = VerifiedKeys(60.0, monotonic=Clock())
    ends = NOW + dt.timedelta(minutes=10)
    issued = create_key(session, member_id="expiring-1", role="consumer", expires_at=ends)
    assert keys.authenticate(session, issued.token, now=NOW) is not None
    before = ends - dt.timedelta(microseconds=1)
    with counted_queries(session) as sent:
        assert keys.authenticate(session, issued.token, now=before) is not None
        with pytest.raises(KeyExpired):
            keys.authenticate(session, issued.token, now=ends)
        assert sent == []


def test_a_subjects_key_is_never_remembered(session: Session) -> None:
    """A subject's key names a pseudonym, and an erasure everywhere deletes the key: it must
    stop working at once in every process, with no copy of the pseudonym left in memory."""
    keys = VerifiedKeys(60.0, monotonic=Clock())
    issued = create_key(session, member_id="pseudonym-1", role="subject")
    with counted_queries(session) as sent:
        for _ in range(3):
            assert keys.authenticate(session, issued.token) is not None
            assert keys.remembered(issued.token) is None
        assert len(sent) == 3
    assert len(keys) == 0
    assert revoke_key(session, issued.key_id)
    assert keys.authenticate(session, issued.token) is None


def test_memory_is_bounded_and_a_zero_bound_asks_every_time(session: Session) -> None:
    keys = VerifiedKeys(5.0, max_keys=3, monotonic=Clock())
    tokens = [create_key(session, member_id=f"lru-{i}", role="provider").token for i in range(5)]
    for token in tokens:
        assert keys.authenticate(session, token) is not None
    assert len(keys) == 3
    with counted_queries(session) as sent:
        keys.authenticate(session, tokens[-1])  # recent: remembered
        assert sent == []
        keys.authenticate(session, tokens[0])  # the least recently used went first
        assert len(sent) == 1
    never = VerifiedKeys(0.0)
    with counted_queries(session) as sent:
        for _ in range(3):
            assert never.authenticate(session, tokens[0]) is not None
        assert len(sent) == 3
    assert len(never) == 0
    # Refusals are not remembered: a key issued just now works at once.
    unknown = "cvk_" + "1" * 16 + "_" + "A" * 43
    assert keys.authenticate(session, unknown) is None


def test_a_revocation_reaches_every_api_process_within_the_bound(
    api_settings: Settings, api_database_url: str
) -> None:
    """Two apps on one database, as two worker processes of `civis-vault up` are, each with
    the key in its memory: once `api_key_cache_s` has passed after the revocation, both
    refuse it with the one answer of an unknown key."""
    settings = api_settings.model_copy(update={"api_key_cache_s": 0.5})
    engine = db.make_engine(api_database_url, pool_size=1)
    with Session(engine) as session, session.begin():
        issued = create_key(session, member_id="two-workers", role="provider")
    headers = {"Authorization": f"Bearer {issued.token}"}
    apps = [create_app(settings, database_url=api_database_url) for _ in range(2)]
    with TestClient(apps[0]) as first, TestClient(apps[1]) as second:
        for worker in (first, second):
            assert worker.get("/v1/datasets", headers=headers).status_code == 200
        with Session(engine) as session, session.begin():
            assert revoke_key(session, issued.key_id)
        time.sleep(settings.api_key_cache_s)
        for worker in (first, second):
            r = worker.get("/v1/datasets", headers=headers)
            assert r.status_code == 401
            assert r.json()["detail"] == "the API key is not valid"
    engine.dispose()
