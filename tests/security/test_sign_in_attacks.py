"""Attacks on the subjects' wallet sign-in (api/services/subject_sessions.py), against a real
ledger, PostgreSQL and HTTP.

Each attack succeeds against a naive version (a sign-in that admits the proofs that verify
and ignores the rest, a challenge not used up, an expiry not checked, a wallet that signs
whatever `signing_payload` the API hands it); here each gets a problem+json 4xx and changes
nothing: no session row, the challenge still usable by its owner.

- a forged signature, and a signature by another key, for a victim's pseudonym;
- a signed sign-in replayed, one after the other and five at once;
- a challenge signed after its expiry;
- a signature made for a ledger transaction offered as a sign-in proof, and the converse: an
  API handing the wallet a transaction's signing payload as its "challenge";
- more proofs than a sign-in takes, the same pseudonym twice, a body over the limit;
- a token used after sign-out or expiry (one 401 for every kind of dead token);
- a subject signed in as A reading B's export, consents, balance and erasure certificate;
- signing out with an API key.
"""

from __future__ import annotations

import datetime as dt
import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select, update
from sqlalchemy.orm import Session

from api.client import CivisClient, SignInRefused
from api.client.sign_in import SIGN_IN_DOMAIN
from api.client.wallet import Wallet as PairwiseWallet
from api.http.errors import ApiError
from api.http.settings import Settings
from api.http.signed import assemble
from api.services.subject_sessions import PROOFS_MAX
from ledger_bridge.contracts import tx
from ledger_bridge.crypto import SigningKey
from tests.api.ledger_env import (  # noqa: F401  (fixtures)
    DAY_MS,
    LedgerEnv,
    Wallet,
    ledger_cluster,
    ledger_database_url,
    ledger_env,
)
from tests.api.test_erasure_receipt import _serve
from tests.api.test_wallet import _joined
from vault import db
from vault.models import SubjectChallenge, SubjectSession

BODY_MAX = 128 * 1024


@pytest.fixture(scope="module")
def api_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """The tests' settings with a JSON body limit that holds a sign-in of PROOFS_MAX proofs
    (about 60 KB), so the proofs' own bound is what refuses one more."""
    return Settings(
        environment="test",
        data_dir=tmp_path_factory.mktemp("sign-in"),
        json_body_max_bytes=BODY_MAX,
    )


@pytest.fixture(scope="module")
def env(ledger_env: LedgerEnv) -> LedgerEnv:  # noqa: F811
    return ledger_env


@pytest.fixture(scope="module")
def engine(ledger_database_url: str) -> Iterator[Engine]:  # noqa: F811
    engine = db.make_engine(ledger_database_url, pool_size=1)
    yield engine
    engine.dispose()


def _challenge(client: TestClient) -> dict[str, Any]:
    r = client.post("/v1/subjects/challenges")
    assert r.status_code == 201, r.text
    challenge: dict[str, Any] = r.json()
    return challenge


def _proof(
    key: SigningKey, challenge: dict[str, Any], pseudonym: str | None = None
) -> dict[str, str]:
    signature = key.sign(bytes.fromhex(challenge["signing_payload"]))
    return {"pseudonym": pseudonym or key.public_key.hex(), "signature": signature.hex()}


def _post(
    client: TestClient, challenge: dict[str, Any], proofs: list[dict[str, str]]
) -> httpx.Response:
    body = {"challenge_id": challenge["challenge_id"], "proofs": proofs}
    r: httpx.Response = client.post("/v1/subjects/sessions", json=body)
    return r


def _sessions(engine: Engine) -> int:
    with Session(engine) as s:
        return int(s.scalar(select(func.count()).select_from(SubjectSession)) or 0)


def _refused(r: httpx.Response, status: int) -> str:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    detail: str = r.json()["detail"]
    return detail


def test_a_forged_signature_signs_nobody_in(env: LedgerEnv, engine: Engine) -> None:
    victim = Wallet()
    challenge = _challenge(env.client)
    before = _sessions(engine)
    forged = {"pseudonym": victim.id, "signature": os.urandom(64).hex()}
    detail = _refused(_post(env.client, challenge, [forged]), 403)
    assert detail.startswith("proofs[0]: the signature does not verify")
    assert victim.id not in detail  # the refusal names a position, never the key
    assert _sessions(engine) == before
    # Nothing changed: the challenge is still there for whoever holds the key.
    r = _post(env.client, challenge, [_proof(victim.key, challenge)])
    assert r.status_code == 201, r.text


def test_a_signature_by_another_key_signs_nobody_in(env: LedgerEnv, engine: Engine) -> None:
    """Alone, or beside a valid proof of the attacker's own key: all proofs or no session."""
    victim, attacker = Wallet(), Wallet()
    challenge = _challenge(env.client)
    before = _sessions(engine)
    posing = _proof(attacker.key, challenge, pseudonym=victim.id)
    _refused(_post(env.client, challenge, [posing]), 403)
    detail = _refused(_post(env.client, challenge, [_proof(attacker.key, challenge), posing]), 403)
    assert detail.startswith("proofs[1]:")
    assert _sessions(engine) == before


def test_a_replayed_sign_in_is_refused(env: LedgerEnv, engine: Engine) -> None:
    subject = Wallet()
    challenge = _challenge(env.client)
    proofs = [_proof(subject.key, challenge)]
    assert _post(env.client, challenge, proofs).status_code == 201
    before = _sessions(engine)
    detail = _refused(_post(env.client, challenge, proofs), 410)
    assert "used, expired or unknown" in detail
    assert _sessions(engine) == before


def test_a_sign_in_replayed_five_times_at_once_opens_one_session(
    env: LedgerEnv, engine: Engine
) -> None:
    """Over real HTTP, five threads racing with one signed challenge: the challenge row is
    locked, so exactly one finds it."""
    subject = Wallet()
    challenge = _challenge(env.client)
    body = {"challenge_id": challenge["challenge_id"], "proofs": [_proof(subject.key, challenge)]}
    statuses: list[int] = []
    start = threading.Barrier(5)

    def race(url: str) -> None:
        start.wait()
        statuses.append(
            httpx.post(f"{url}/v1/subjects/sessions", json=body, timeout=30).status_code
        )

    for url in _serve(env.client.app, "off"):  # type: ignore[arg-type]
        threads = [threading.Thread(target=race, args=(url,)) for _ in range(5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert sorted(statuses) == [201, 410, 410, 410, 410]
    with Session(engine) as s:
        held = SubjectSession.pseudonyms.contains([subject.id])
        assert len(list(s.scalars(select(SubjectSession.id).where(held)))) == 1


def test_an_expired_challenge_is_refused(env: LedgerEnv, engine: Engine) -> None:
    subject = Wallet()
    challenge = _challenge(env.client)
    assert dt.datetime.fromisoformat(challenge["expires_at"]) - dt.datetime.now(dt.UTC) <= (
        dt.timedelta(minutes=5)
    )
    with Session(engine) as s, s.begin():
        past = dt.datetime.now(dt.UTC) - dt.timedelta(milliseconds=1)
        s.execute(
            update(SubjectChallenge)
            .where(SubjectChallenge.id == challenge["challenge_id"])
            .values(expires_at=past)
        )
    before = _sessions(engine)
    _refused(_post(env.client, challenge, [_proof(subject.key, challenge)]), 410)
    assert _sessions(engine) == before


def _consent_draft(env: LedgerEnv, subject: SigningKey, consumer: str) -> dict[str, Any]:
    body = {
        "subject": subject.public_key.hex(),
        "consumer": consumer,
        "purpose": "proof-of-address",
        "dataset": str(uuid.uuid4()),
        "valid_until": int(dt.datetime.now(dt.UTC).timestamp() * 1000) + DAY_MS,
    }
    draft: dict[str, Any] = CivisClient(http=env.client).draft(
        subject.public_key.hex(), "consent.grant", body
    )  # type: ignore[assignment]
    return draft


def test_a_transaction_signature_is_no_sign_in_and_a_sign_in_signature_no_transaction(
    env: LedgerEnv, engine: Engine
) -> None:
    """Blocks carry subjects' transaction signatures: none of them signs anyone in. And a
    sign-in signature, which the API sees, never makes a transaction."""
    victim, attacker = Wallet(), Wallet()
    draft = _consent_draft(env, victim.key, attacker.id)
    tx_signature = victim.key.sign(bytes.fromhex(draft["signing_payload"]))
    assemble(env.chain_id, draft["transaction"], tx_signature.hex(), "consent.grant")
    challenge = _challenge(env.client)
    before = _sessions(engine)
    stolen = {"pseudonym": victim.id, "signature": tx_signature.hex()}
    _refused(_post(env.client, challenge, [stolen]), 403)
    assert _sessions(engine) == before

    sign_in_signature = _proof(victim.key, challenge)["signature"]
    with pytest.raises(ApiError, match="signature does not verify"):
        assemble(env.chain_id, draft["transaction"], sign_in_signature, "consent.grant")
    payload = bytes.fromhex(challenge["signing_payload"])
    assert payload.startswith(SIGN_IN_DOMAIN) and not payload.startswith(tx.DOMAIN[:13])


def test_a_wallet_will_not_sign_a_transaction_handed_out_as_a_challenge(
    env: LedgerEnv, tmp_path: Path
) -> None:
    """A hostile API answers the challenge with the signing payload of a consent for its own
    consumer. The naive wallet's "sign-in" signature IS that consent, which the real API
    takes; the client checks the bytes first, signs nothing and posts nothing."""
    wallet = PairwiseWallet.create(tmp_path / "phished.key")
    key = wallet.pseudonym(str(uuid.uuid4()))
    attacker = Wallet()
    draft = _consent_draft(env, key, attacker.id)
    asked: list[str] = []

    def hostile(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.path)
        if request.url.path == "/v1/subjects/challenges":
            return httpx.Response(
                201,
                json={
                    "challenge_id": "ab" * 16,
                    "challenge": "cd" * 32,
                    "signing_payload": draft["signing_payload"],
                    "expires_at": "2099-01-01T00:00:00Z",
                },
            )
        return httpx.Response(201, json={"token": "cvs_x", "expires_at": "", "pseudonyms": []})

    naive = key.sign(bytes.fromhex(draft["signing_payload"]))
    consent = assemble(env.chain_id, draft["transaction"], naive.hex(), "consent.grant")
    assert consent.author == bytes(key.public_key) and consent.body["consumer"] == bytes.fromhex(
        attacker.id
    )

    phishing = CivisClient(
        http=httpx.Client(base_url="http://hostile", transport=httpx.MockTransport(hostile))
    )
    with pytest.raises(SignInRefused, match="not one to sign"):
        phishing.sign_in(wallet)
    assert asked == ["/v1/subjects/challenges"]  # no signature left the wallet


def test_too_many_proofs_twice_the_same_pseudonym_and_too_large_a_body_are_refused(
    env: LedgerEnv, engine: Engine
) -> None:
    challenge = _challenge(env.client)
    keys = [SigningKey.generate() for _ in range(PROOFS_MAX + 1)]
    proofs = [_proof(k, challenge) for k in keys]
    before = _sessions(engine)
    _refused(_post(env.client, challenge, proofs), 422)
    _refused(_post(env.client, challenge, [proofs[0], proofs[0]]), 422)
    padded = {"challenge_id": challenge["challenge_id"], "proofs": proofs, "pad": "x" * BODY_MAX}
    _refused(env.client.post("/v1/subjects/sessions", json=padded), 413)
    assert _sessions(engine) == before
    # The bound itself signs in (the challenge untouched by the refusals above).
    r = _post(env.client, challenge, proofs[:PROOFS_MAX])
    assert r.status_code == 201, r.text
    assert len(r.json()["pseudonyms"]) == PROOFS_MAX


def _signed_in(client: TestClient, key: SigningKey) -> str:
    challenge = _challenge(client)
    r = _post(client, challenge, [_proof(key, challenge)])
    assert r.status_code == 201, r.text
    token: str = r.json()["token"]
    return token


def test_a_dead_token_gets_the_one_401(env: LedgerEnv, engine: Engine) -> None:
    """Signed out, expired, tampered, unknown: the same answer, so none can be told apart."""
    subject = Wallet()
    client = env.client
    path = f"/v1/subjects/{subject.id}/export"

    def read(token: str) -> httpx.Response:
        r: httpx.Response = client.get(path, headers={"Authorization": f"Bearer {token}"})
        return r

    signed_out = _signed_in(client, subject.key)
    assert read(signed_out).status_code == 200
    assert (
        client.delete(
            "/v1/subjects/sessions/current", headers={"Authorization": f"Bearer {signed_out}"}
        ).status_code
        == 204
    )
    expired = _signed_in(client, subject.key)
    live = _signed_in(client, subject.key)
    # Expired after the last sign-in, whose purge would otherwise have deleted the row: the
    # row is there, past its time, as between two purges.
    with Session(engine) as s, s.begin():
        s.execute(
            update(SubjectSession)
            .where(SubjectSession.id == expired.split("_")[1])
            .values(expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(milliseconds=1))
        )
    tampered = live[:-1] + ("A" if live[-1] != "A" else "B")
    unknown = f"cvs_{os.urandom(8).hex()}_{live.split('_', 2)[2]}"
    answers = {
        name: read(token)
        for name, token in (
            ("signed out", signed_out),
            ("expired", expired),
            ("tampered", tampered),
            ("unknown", unknown),
            ("malformed", "cvs_nope"),
        )
    }
    details = {name: _refused(r, 401) for name, r in answers.items()}
    assert len(set(details.values())) == 1, details
    assert all(r.headers["www-authenticate"] == "Bearer" for r in answers.values())
    assert read(live).status_code == 200


def test_a_subject_signed_in_as_a_reads_nothing_of_b(env: LedgerEnv, tmp_path: Path) -> None:
    a = PairwiseWallet.create(tmp_path / "a.key")
    b = PairwiseWallet.create(tmp_path / "b.key")
    _joined(env, a)
    dataset_b, pseudonym_b = _joined(env, b)
    dpo = CivisClient(http=env.client).with_key(
        env.headers("dpo", env.dpo)["Authorization"].removeprefix("Bearer ")
    )
    erasure = dpo.erase(subject_id=pseudonym_b, dataset_id=dataset_b)["erasure_id"]
    as_a = CivisClient(http=env.client).sign_in(a)
    as_b = CivisClient(http=env.client).sign_in(b)
    for path, refused in (
        (f"/v1/subjects/{pseudonym_b}/export", 403),
        (f"/v1/subjects/{pseudonym_b}/consents", 403),
        (f"/v1/accounts/{pseudonym_b}", 403),
        (f"/v1/accounts/{pseudonym_b}/statement", 403),
        (f"/v1/erasures/{erasure}", 404),
    ):
        r = env.client.get(path, headers=as_a._auth)
        assert r.status_code == refused, (path, r.text)
        assert "records" not in r.json() and "result" not in r.json()
        mine = env.client.get(path, headers=as_b._auth)
        assert mine.status_code == 200, (path, mine.text)


def test_signing_out_with_an_api_key_is_refused_and_leaves_the_key_working(
    env: LedgerEnv,
) -> None:
    subject = Wallet()
    key = env.headers("subject", subject)
    detail = _refused(env.client.delete("/v1/subjects/sessions/current", headers=key), 403)
    assert "civis-vault apikey revoke" in detail
    assert env.client.get(f"/v1/subjects/{subject.id}/export", headers=key).status_code == 200
