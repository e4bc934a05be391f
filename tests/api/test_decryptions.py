"""Every decryption recorded (GDPR Art. 5(2), invariant 10), over the API on four replicas.

A provider's read, a subject's export and the DPO's read each leave a `decryptions` row,
written before the data leaves (a read whose record cannot be written is not answered, page
or stream); the batcher commits the rows to the ledger (`read.record`), and each row's proof
verifies against the root the ledger holds, until someone rewrites the row behind the
table's trigger. The subject's export lists the reads of their data.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from sqlalchemy import make_url

from api.client import CivisClient
from api.client.accountability import verify_read
from api.http.settings import Settings
from tests.api.ledger_env import LedgerEnv
from tests.api.test_consented_access import register_subject, setup_addresses
from tests.api.test_erasure_receipt import _serve

RECORDED_WAIT_S = 30


@pytest.fixture(scope="module")
def api_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """The module's app batches reads every 0.2 s (60 s by default)."""
    data_dir: Path = tmp_path_factory.mktemp("civis-api")
    return Settings(
        environment="test",
        data_dir=data_dir,
        record_size_max_bytes=4096,
        upload_batch_rows=50,
        upload_body_max_bytes=256 * 1024,
        json_body_max_bytes=16 * 1024,
        read_batch_interval_s=0.2,
    )


@pytest.fixture(scope="module")
def base_url(ledger_env: LedgerEnv) -> Iterator[str]:
    """The module's app behind real HTTP, to read a stream one line at a time."""
    yield from _serve(ledger_env.client.app, "off")  # type: ignore[arg-type]


def _conninfo(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _sql(url: str, *statements: str, **params: Any) -> list[tuple[Any, ...]]:
    """Run `statements` in order on one connection; the last one's rows."""
    rows: list[tuple[Any, ...]] = []
    with psycopg.connect(_conninfo(url), autocommit=True) as conn:
        for statement in statements:
            cur = conn.execute(statement, params or None)
            rows = cur.fetchall() if cur.description else []
    return rows


def _reads(url: str, dataset: str) -> list[tuple[str, str, str, int]]:
    rows = _sql(
        url,
        "SELECT kind, reader, subject, record_count FROM decryptions"
        " WHERE dataset_id = %(d)s ORDER BY at, subject",
        d=dataset,
    )
    return [(str(k), str(r), str(s), int(n)) for k, r, s, n in rows]


def _recorded(env: LedgerEnv, read: str, headers: dict[str, str]) -> dict[str, Any]:
    """A read's proof once its batch is on the ledger."""
    deadline = time.monotonic() + RECORDED_WAIT_S
    while True:
        r = env.client.get(f"/v1/decryptions/{read}/proof", headers=headers)
        assert r.status_code == 200, r.text
        answer: dict[str, Any] = r.json()
        if answer["state"] == "recorded":
            return answer
        assert time.monotonic() < deadline, answer
        time.sleep(0.1)


def test_a_read_is_recorded_proven_on_the_ledger_and_a_rewrite_shows(
    ledger_env: LedgerEnv, ledger_database_url: str
) -> None:
    env = ledger_env
    alice, bob = register_subject(env), register_subject(env)
    dataset, utility = setup_addresses(env, [alice, bob])
    r = env.client.get(f"/v1/datasets/{dataset}/records", headers=utility)
    assert r.status_code == 200 and len(r.json()) == 2
    record = r.json()[0]["record_id"]
    assert env.client.get(f"/v1/records/{record}", headers=utility).status_code == 200
    mine = env.headers("subject", alice)
    export = env.client.get(f"/v1/subjects/{alice.id}/export", headers=mine).json()
    listed = [(d["kind"], d["reader"], d["record_count"]) for d in export["decryptions"]]
    # the page and the single record (whoever's it was), then this export, by its reader
    assert listed[-1] == ("subject_export", alice.id, 1)
    assert ("provider_read", env.provider.id, 1) in listed[:-1]
    dpo = env.headers("dpo", env.dpo)
    env.client.get(f"/v1/subjects/{bob.id}/export", headers=dpo)
    assert ("dpo_read", env.dpo.id, bob.id, 1) in _reads(ledger_database_url, dataset)

    first = export["decryptions"][0]["id"]
    answer = _recorded(env, first, utility)
    root = bytes.fromhex(answer["proof"]["reads_root"])
    on_ledger = env.gateway.query("read_record", reads_root=root)["result"]
    assert on_ledger is not None and on_ledger["tx"].hex() == answer["receipt"]["tx_id"]
    assert on_ledger["count"] == answer["proof"]["tree_size"]
    assert verify_read(answer, root)
    # the subject sees the same proof; another subject and a consumer do not
    as_subject = CivisClient(http=env.client, api_key=mine["Authorization"].removeprefix("Bearer "))
    assert as_subject.decryption_proof(first) == answer
    other = env.headers("subject", bob)
    assert env.client.get(f"/v1/decryptions/{first}/proof", headers=other).status_code == 404
    consumer = env.headers("consumer", env.consumer)
    assert env.client.get(f"/v1/decryptions/{first}/proof", headers=consumer).status_code == 403

    # Rewritten behind the trigger (a superuser can): the proof no longer holds.
    _sql(
        ledger_database_url,
        "SET session_replication_role = replica",
        "UPDATE decryptions SET record_count = 7 WHERE id = %(id)s",
        id=first,
    )
    tampered = env.client.get(f"/v1/decryptions/{first}/proof", headers=utility).json()
    assert tampered["decryption"]["record_count"] == 7
    assert not verify_read(tampered, root)


def test_a_stream_is_recorded_before_its_first_byte(
    ledger_env: LedgerEnv, ledger_database_url: str, base_url: str
) -> None:
    env = ledger_env
    citizens = [register_subject(env) for _ in range(3)]
    dataset, utility = setup_addresses(env, citizens)
    ndjson = {**utility, "Accept": "application/x-ndjson"}
    with (
        httpx.Client(base_url=base_url, timeout=30) as http,
        http.stream("GET", f"/v1/datasets/{dataset}/records", headers=ndjson) as r,
    ):
        assert r.status_code == 200
        lines = r.iter_lines()
        first = json.loads(next(lines))
        # one line out: every read of the stream is already recorded
        recorded = _reads(ledger_database_url, dataset)
        rest = [json.loads(line) for line in lines if line]
    assert sorted(recorded) == sorted(("provider_read", env.provider.id, c.id, 1) for c in citizens)
    assert {x["subject_id"] for x in [first, *rest]} == {c.id for c in citizens}


def test_a_read_whose_record_cannot_be_written_is_not_answered(
    ledger_env: LedgerEnv, ledger_database_url: str
) -> None:
    env = ledger_env
    dataset, utility = setup_addresses(env, [register_subject(env)])
    guard = f"refuse_reads_{uuid.uuid4().hex[:8]}"
    _sql(
        ledger_database_url,
        f"CREATE FUNCTION {guard}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        f" IF NEW.dataset_id = '{dataset}' THEN RAISE EXCEPTION 'no'; END IF;"
        f" RETURN NEW; END $$",
        f"CREATE TRIGGER {guard} BEFORE INSERT ON decryptions"
        f" FOR EACH ROW EXECUTE FUNCTION {guard}()",
    )
    try:
        page = env.client.get(f"/v1/datasets/{dataset}/records", headers=utility)
        stream = env.client.get(
            f"/v1/datasets/{dataset}/records",
            headers={**utility, "Accept": "application/x-ndjson"},
        )
    finally:
        _sql(
            ledger_database_url, f"DROP TRIGGER {guard} ON decryptions", f"DROP FUNCTION {guard}()"
        )
    for r in (page, stream):
        assert r.status_code == 500 and r.headers["content-type"] == "application/problem+json"
        assert "address" not in r.text  # no record left
    assert _reads(ledger_database_url, dataset) == []
    assert env.client.get(f"/v1/datasets/{dataset}/records", headers=utility).status_code == 200
