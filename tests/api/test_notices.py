"""Consent notices over the API, against a real ledger: a consent binds the notice shown.

A notice is published by the consumer asking for consent (or a provider), stored under the
SHA-256 of its canonical JSON, and read back by any member. A consent.grant the subject
signed is relayed only if it names a notice the vault holds that speaks of the same consumer
and purpose: otherwise 422, and nothing reaches the ledger. A notice is a closed, bounded set
of fields: anything else is refused and nothing is stored.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import create_engine, func, select

from api.client.notices import matches, notice_body
from ledger_bridge.contracts.vocabulary import NOTICE_RIGHTS
from tests.api.ledger_env import DAY_MS, LedgerEnv, Wallet
from tests.api.test_consented_access import consent, register_subject, setup_addresses, signed
from vault.models import Notice


def _body(env: LedgerEnv, purpose: str = "proof-of-address", **over: Any) -> dict[str, Any]:
    body = notice_body(
        recipient=env.consumer.id,
        purpose=purpose,
        purpose_text="The bank checks that you live at the address you gave: yes or no.",
        retention="for the life of your account",
        controller="Civis Vault test cooperative",
        contact="dpo@example.invalid",
    )
    return {**body, **over}


def _publish(env: LedgerEnv, body: Any, who: str = "consumer", member: Any = None) -> Any:
    headers = env.headers(who, member if member is not None else env.consumer)
    return env.client.post("/v1/notices", headers=headers, json=body)


def _count(database_url: str) -> int:
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(Notice)).scalar_one())
    finally:
        engine.dispose()


def test_a_published_notice_is_read_back_by_its_hash(ledger_env: LedgerEnv) -> None:
    env = ledger_env
    body = _body(env)
    r = _publish(env, body)
    assert r.status_code == 201, r.text
    digest = r.json()["notice_hash"]
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert digest == hashlib.sha256(canonical.encode()).hexdigest()
    assert _publish(env, body).json()["notice_hash"] == digest  # same words, same notice
    for who, member in (("subject", Wallet()), ("provider", env.provider), ("dpo", env.dpo)):
        shown = env.client.get(f"/v1/notices/{digest}", headers=env.headers(who, member))
        assert shown.status_code == 200, shown.text
        assert shown.json()["body"] == body and matches(shown.json()["body"], digest)
    assert env.client.get(f"/v1/notices/{digest}").status_code == 401
    missing = env.client.get("/v1/notices/" + "0" * 64, headers=env.headers("dpo", env.dpo))
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"


def _without_right(body: dict[str, Any]) -> dict[str, Any]:
    rights = dict(body["rights"])
    del rights["complaint"]
    return {**body, "rights": rights}


HOSTILE: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "an undeclared field (a subject's data smuggled in)": lambda b: {**b, "subject": "ab" * 32},
    "an undeclared right": lambda b: {**b, "rights": {**b["rights"], "address": "12 rue X"}},
    "a missing right": _without_right,
    "a purpose text beyond its bound": lambda b: {**b, "purpose_text": "x" * 1001},
    "a control character": lambda b: {**b, "retention": "a year\nsubject: Alice"},
    "a version not known": lambda b: {**b, "version": 2},
    "a recipient that is no key": lambda b: {**b, "recipient": "the bank"},
    "a purpose that is no name": lambda b: {**b, "purpose": "Proof Of Address"},
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_a_notice_with_anything_but_its_declared_fields_is_refused(
    ledger_env: LedgerEnv, ledger_database_url: str, name: str
) -> None:
    env = ledger_env
    before = _count(ledger_database_url)
    r = _publish(env, HOSTILE[name](_body(env)))
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert _count(ledger_database_url) == before


def test_a_notice_bigger_than_its_bound_as_a_whole_is_refused(
    ledger_env: LedgerEnv, ledger_database_url: str
) -> None:
    """Each field within its bound, multi-byte characters make the whole too big."""
    env = ledger_env
    before = _count(ledger_database_url)
    rights = {right: "€" * 500 for right in NOTICE_RIGHTS}  # 3 bytes each in UTF-8
    r = env.client.post(
        "/v1/notices",
        headers={**env.headers("consumer", env.consumer), "Content-Type": "application/json"},
        content=json.dumps(_body(env, rights=rights), ensure_ascii=False).encode(),
    )
    assert r.status_code == 422 and "at most 8192" in r.json()["detail"], r.text
    assert _count(ledger_database_url) == before


def test_who_may_publish_a_notice_for_which_recipient(ledger_env: LedgerEnv) -> None:
    env = ledger_env
    other_consumer = Wallet()
    # a consumer speaks for itself only
    r = _publish(env, _body(env, recipient=other_consumer.id))
    assert r.status_code == 403, r.text
    # a provider informs on a registered consumer, not on any key
    assert _publish(env, _body(env), "provider", env.provider).status_code == 201
    r = _publish(env, _body(env, recipient=other_consumer.id), "provider", env.provider)
    assert r.status_code == 422 and "not a registered consumer" in r.json()["detail"]
    # a subject publishes none
    assert _publish(env, _body(env), "subject", Wallet()).status_code == 403


def _grant(env: LedgerEnv, citizen: Wallet, dataset: str, **extra: Any) -> Any:
    body = {
        **consent(env, citizen, dataset, "proof-of-address"),
        "valid_until": int(time.time() * 1000) + DAY_MS,
        **extra,
    }
    return env.client.post("/v1/consents", json=signed(env, citizen, "consent.grant", body))


def test_a_consent_without_a_known_notice_for_it_is_refused(ledger_env: LedgerEnv) -> None:
    env = ledger_env
    citizen = register_subject(env)
    dataset, _ = setup_addresses(env, [citizen])
    second = _publish(env, _body(env, "billing")).json()["notice_hash"]
    provider_notice = _publish(env, _body(env), "provider", env.provider).json()["notice_hash"]
    assert provider_notice == _publish(env, _body(env)).json()["notice_hash"]
    refused = {
        "no notice": {},
        "a notice nobody published": {"notice": "ab" * 32},
        "a notice for another purpose": {"notice": second},
    }
    for name, extra in refused.items():
        r = _grant(env, citizen, dataset, **extra)
        assert r.status_code == 422, (name, r.text)
        assert r.json()["detail"].startswith("body.notice"), (name, r.text)
    # ... and nothing reached the ledger
    own = env.headers("subject", citizen)
    assert env.client.get(f"/v1/subjects/{citizen.id}/consents", headers=own).json()["result"] == []
    # the notice of this consumer and purpose: relayed, and the ledger keeps its hash
    r = _grant(env, citizen, dataset, notice=provider_notice)
    assert r.status_code == 201, r.text
    [shown] = env.client.get(f"/v1/subjects/{citizen.id}/consents", headers=own).json()["result"]
    assert shown["notice"] == provider_notice and shown["granted"]


def test_a_notice_for_another_consumer_is_refused(ledger_env: LedgerEnv) -> None:
    """The bank's notice does not inform a consent to another consumer."""
    env = ledger_env
    citizen = register_subject(env)
    dataset, _ = setup_addresses(env, [citizen])
    banks = _publish(env, _body(env)).json()["notice_hash"]
    other = Wallet()
    body = {
        **consent(env, citizen, dataset, "proof-of-address"),
        "consumer": other.id,
        "valid_until": int(time.time() * 1000) + DAY_MS,
        "notice": banks,
    }
    r = env.client.post("/v1/consents", json=signed(env, citizen, "consent.grant", body))
    assert r.status_code == 422 and "another recipient" in r.json()["detail"], r.text
