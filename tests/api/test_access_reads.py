"""The consented access reads on its event loop's own connection (`db.AsyncPool`), not in the
thread pool: the answers are the ones the thread pool's read gives (whole records with proofs,
a projection, a yes/no), and a database that is gone under that read is a 503 problem like
any other route's."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.http import app as app_module
from api.http.app import create_app
from api.http.errors import PROBLEM_JSON
from api.http.settings import Settings
from tests.api.ledger_env import LedgerEnv
from tests.api.test_consented_access import (
    ADDRESS,
    grant_body,
    register_subject,
    setup_addresses,
    signed,
)
from tests.conftest import free_port
from vault import db
from vault.keys import LocalKeyProvider


@contextmanager
def _pool(env: LedgerEnv, pool: db.AsyncPool | None) -> Iterator[None]:
    state = env.client.app.state  # type: ignore[attr-defined]
    saved, state.reads_pool = state.reads_pool, pool
    try:
        yield
    finally:
        state.reads_pool = saved


def _consenting(env: LedgerEnv, n: int) -> tuple[str, list[str]]:
    citizens = [register_subject(env) for _ in range(n)]
    dataset, _ = setup_addresses(env, citizens, ("proof-of-address", "billing"))
    for citizen in citizens:
        for purpose in ("billing", "proof-of-address"):
            grant = grant_body(env, citizen, dataset, purpose)
            r = env.client.post("/v1/consents", json=signed(env, citizen, "consent.grant", grant))
            assert r.status_code == 201, r.text
    return dataset, [c.id for c in citizens]


def test_the_loop_s_read_answers_what_the_thread_pool_s_read_answers(
    ledger_env: LedgerEnv,
) -> None:
    env = ledger_env
    assert env.client.app.state.reads_pool is not None  # type: ignore[attr-defined]
    dataset, subjects = _consenting(env, 3)
    bank = env.headers("consumer", env.consumer)
    asks: list[dict[str, Any]] = [
        {"dataset_id": dataset, "purpose": "billing"},
        {"dataset_id": dataset, "purpose": "billing", "subjects": subjects[1:]},
        {"dataset_id": dataset, "purpose": "billing", "fields": ["city"]},
        {
            "dataset_id": dataset,
            "purpose": "proof-of-address",
            "subjects": subjects[:1],
            "predicate": {"field": "address", "op": "eq", "value": ADDRESS},
        },
    ]

    nobody = register_subject(env)  # no consent: granted no one, records []
    asks.append({"dataset_id": dataset, "purpose": "billing", "subjects": [nobody.id]})

    def answers() -> list[bytes]:
        out = []
        for ask in asks:
            r = env.client.post("/v1/access-requests", headers=bank, json=ask)
            assert r.status_code == 200, r.text
            if "predicate" in ask:
                out.append(json.dumps(r.json()["result"]).encode())
            else:
                # Each access is a transaction of its own: only what was read can be the
                # same, and it is, byte for byte.
                out.append(r.content.split(b'"records":', 1)[1])
        return out

    on_loop = answers()
    with _pool(env, None):
        in_threads = answers()
    assert on_loop == in_threads
    whole, named, cities = (json.loads(a[:-1]) for a in on_loop[:3])  # without the final }
    assert len(whole) == 3 and whole[0]["proof"] is not None and len(named) == 2
    assert cities[0]["payload"] == {"city": whole[0]["payload"]["city"]}
    assert on_loop[3] == b"true" and on_loop[4] == b"[]}"


def test_a_burst_past_the_loop_s_connections_reads_in_the_thread_pool(
    ledger_env: LedgerEnv,
) -> None:
    """Every connection of the loop's pool busy: the read goes to the thread pool rather than
    wait (a saturated pool on a database that is gone would answer 503 if it were used)."""
    env = ledger_env
    dataset, _ = _consenting(env, 1)
    bank = env.headers("consumer", env.consumer)
    gone = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/civis?connect_timeout=2"

    class Saturated(db.AsyncPool):
        @property
        def saturated(self) -> bool:
            return True

    with _pool(env, Saturated(gone)):
        r = env.client.post(
            "/v1/access-requests", headers=bank, json={"dataset_id": dataset, "purpose": "billing"}
        )
    assert r.status_code == 200, r.text
    assert len(r.json()["records"]) == 1


def test_a_database_gone_under_the_loop_s_read_is_a_503_problem(ledger_env: LedgerEnv) -> None:
    env = ledger_env
    dataset, subjects = _consenting(env, 1)
    bank = env.headers("consumer", env.consumer)
    gone = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/civis?connect_timeout=2"
    records = {"dataset_id": dataset, "purpose": "billing"}
    yes_no = {
        "dataset_id": dataset,
        "purpose": "proof-of-address",
        "subjects": subjects,
        "predicate": {"field": "address", "op": "eq", "value": ADDRESS},
    }
    with _pool(env, db.AsyncPool(gone)):
        answers = [
            env.client.post("/v1/access-requests", headers=bank, json=ask)
            for ask in (records, yes_no)
        ]
    for r in answers:  # both read on the pool: neither went to the thread pool's engine
        assert r.status_code == 503, r.text
        assert r.headers["content-type"] == PROBLEM_JSON
        assert r.json()["title"] == "Database unavailable" and r.headers["Retry-After"] == "2"
        assert "127.0.0.1" not in r.text and ADDRESS not in r.text


def test_a_key_provider_whose_unwrap_waits_keeps_the_read_in_the_thread_pool(
    tmp_path: Path, api_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Waiting(LocalKeyProvider):
        unwrap_waits = True

    settings = Settings(data_dir=tmp_path)
    for provider, pooled in ((LocalKeyProvider, True), (Waiting, False)):
        monkeypatch.setattr(
            app_module, "make_provider", lambda s, p=provider: p(s.resolved_master_key_path)
        )
        app = create_app(settings, database_url=api_database_url, background_jobs=False)
        with TestClient(app):
            assert (app.state.reads_pool is not None) is pooled
        assert app.state.reads_pool is None  # closed with the lifespan, and let go
