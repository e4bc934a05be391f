"""Datasets, uploads and provider reads over HTTP: roles, streaming formats, errors, limits."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.http.settings import Settings
from api.services.keys import revoke_key
from tests.api.conftest import MakeKey
from vault import db
from vault.crypto import record_leaf
from vault.crypto.merkle import leaf_hash, verify_inclusion
from vault.models import Record, Upload

NDJSON = {"content-type": "application/x-ndjson"}
CSV = {"content-type": "text/csv; header=present; charset=UTF-8"}


def _dataset(client: TestClient, headers: dict[str, str], name: str = "meters") -> str:
    body = {
        "name": name,
        "category": "energy",
        "purposes": ["billing", "proof-of-address"],
        "retention_days": 30,
        "legal_basis": "contract",
    }
    r = client.post("/v1/datasets", json=body, headers=headers)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def _ndjson(n: int, start: int = 0) -> bytes:
    rows = (
        json.dumps({"subject_id": f"s{i % 7}", "payload": {"i": i, "addr": f"{i} rue"}})
        for i in range(start, start + n)
    )
    return ("\n".join(rows) + "\n").encode()


@pytest.fixture(scope="module")
def counts(api_database_url: str) -> Iterator[Any]:
    engine = db.make_engine(api_database_url, pool_size=1)

    def count(dataset_id: str) -> tuple[int, int]:
        ds = uuid.UUID(dataset_id)
        with Session(engine) as s:
            uploads = s.scalar(select(func.count()).where(Upload.dataset_id == ds))
            records = s.scalar(select(func.count()).where(Record.dataset_id == ds))
        return int(uploads or 0), int(records or 0)

    yield count
    engine.dispose()


def test_provider_registers_lists_and_shows_its_datasets(
    client: TestClient, make_key: MakeKey
) -> None:
    p = make_key("provider")
    ds = _dataset(client, p)
    assert [d["id"] for d in client.get("/v1/datasets", headers=p).json()] == [ds]
    shown = client.get(f"/v1/datasets/{ds}", headers=p).json()
    assert shown["purposes"] == ["billing", "proof-of-address"]
    assert shown["owner_id"] == p["X-Test-Member"]
    again = client.post(
        "/v1/datasets",
        json={**shown, "id": None} | {"name": "meters"},
        headers=p,
    )
    assert again.status_code == 422  # unknown fields (id, owner_id, created_at) are refused
    body = {k: shown[k] for k in ("name", "category", "purposes", "retention_days", "legal_basis")}
    dup = client.post("/v1/datasets", json=body, headers=p)
    assert dup.status_code == 409
    assert dup.headers["content-type"] == "application/problem+json"


def test_strict_models_do_not_coerce(client: TestClient, make_key: MakeKey) -> None:
    p = make_key("provider")
    body = {
        "name": "x",
        "category": "energy",
        "purposes": ["billing"],
        "retention_days": "30",
        "legal_basis": "contract",
    }
    r = client.post("/v1/datasets", json=body, headers=p)
    assert r.status_code == 422
    problem = r.json()
    assert problem["errors"][0]["loc"] == "body.retention_days"
    assert "30" not in json.dumps(problem)  # the submitted value is never echoed
    r = client.post("/v1/datasets", json={**body, "retention_days": True}, headers=p)
    assert r.status_code == 422


def test_role_matrix(
    client: TestClient, make_key: MakeKey, api_database_url: str, api_settings: Settings
) -> None:
    owner = make_key("provider")
    ds = _dataset(client, owner)
    up = client.post(f"/v1/datasets/{ds}/uploads", content=_ndjson(3), headers={**owner, **NDJSON})
    assert up.status_code == 201, up.text
    record_id = client.get(f"/v1/datasets/{ds}/records", headers=owner).json()[0]["record_id"]

    other = make_key("provider")
    consumer = make_key("consumer")
    subject = make_key("subject")
    dpo = make_key("dpo")
    cases: list[tuple[dict[str, str], str, str, int]] = [
        # a consumer cannot upload, nor register datasets
        (consumer, "POST", f"/v1/datasets/{ds}/uploads", 403),
        (consumer, "POST", "/v1/datasets", 403),
        (subject, "POST", f"/v1/datasets/{ds}/uploads", 403),
        # another provider cannot see, upload into, or read this provider's data
        (other, "GET", f"/v1/datasets/{ds}", 404),
        (other, "POST", f"/v1/datasets/{ds}/uploads", 404),
        (other, "GET", f"/v1/datasets/{ds}/records", 404),
        (other, "GET", f"/v1/records/{record_id}", 404),
        # the DPO sees the registry, not the records
        (dpo, "GET", f"/v1/datasets/{ds}", 200),
        (dpo, "GET", f"/v1/datasets/{ds}/records", 403),
        (consumer, "GET", f"/v1/records/{record_id}", 403),
        # the owner
        (owner, "GET", f"/v1/records/{record_id}", 200),
        # no key, a malformed key, an unknown key
        ({}, "GET", "/v1/datasets", 401),
        ({"Authorization": "Bearer nope"}, "GET", "/v1/datasets", 401),
        ({"Authorization": "Bearer cvk_0123456789abcdef_" + "A" * 43}, "GET", "/v1/datasets", 401),
    ]
    for headers, method, path, status in cases:
        r = client.request(method, path, headers={**headers, **NDJSON}, content=_ndjson(1))
        assert r.status_code == status, (headers.get("X-Test-Member"), method, path, r.text)
        if status >= 400:
            assert r.headers["content-type"] == "application/problem+json"
    assert ds not in [d["id"] for d in client.get("/v1/datasets", headers=other).json()]
    assert ds in [d["id"] for d in client.get("/v1/datasets", headers=dpo).json()]

    # a revoked key is refused once the API's memory of verified keys has lapsed
    key_id = owner["Authorization"].split("_")[1]
    engine = db.make_engine(api_database_url, pool_size=1)
    with Session(engine) as s:
        assert revoke_key(s, key_id)
        s.commit()
    engine.dispose()
    time.sleep(api_settings.api_key_cache_s)
    r = client.get("/v1/datasets", headers=owner)
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"


def test_ndjson_upload_then_read_with_verifiable_proofs(
    client: TestClient, make_key: MakeKey, counts: Any
) -> None:
    p = make_key("provider")
    ds = _dataset(client, p)
    # 120 records with batch_rows=50: three COPY batches, one savepoint.
    r = client.post(f"/v1/datasets/{ds}/uploads", content=_ndjson(120), headers={**p, **NDJSON})
    assert r.status_code == 201, r.text
    out = r.json()
    assert out["record_count"] == 120
    assert out["state"] == "pending"
    assert counts(ds) == (1, 120)
    recs = client.get(f"/v1/datasets/{ds}/records?subject_id=s3&limit=5", headers=p).json()
    assert len(recs) == 5
    for rec in recs:
        assert rec["subject_id"] == "s3"
        assert rec["payload"]["i"] % 7 == 3
        proof = rec["proof"]
        assert proof["merkle_root"] == out["merkle_root"]
        assert verify_inclusion(
            rec_leaf(rec),
            proof["leaf_index"],
            proof["tree_size"],
            [bytes.fromhex(h) for h in proof["audit_path"]],
            bytes.fromhex(proof["merkle_root"]),
        )


def rec_leaf(rec: dict[str, Any]) -> bytes:
    """The leaf a consumer recomputes from what it received (vault.crypto.record_leaf)."""
    # The vault stores NDJSON/CSV payloads in compact JSON, so re-encoding gives its bytes.
    payload = json.dumps(rec["payload"], separators=(",", ":"), ensure_ascii=False).encode()
    data = record_leaf(
        uuid.UUID(rec["record_id"]).bytes, bytes.fromhex(rec["proof"]["leaf_salt"]), payload
    )
    return leaf_hash(data)


def test_csv_upload(client: TestClient, make_key: MakeKey, counts: Any) -> None:
    p = make_key("provider")
    ds = _dataset(client, p)
    body = b'subject_id,address,city\r\ns1,"1 rue A, 2e",Lyon\r\ns2,3 rue B,Paris\r\n'
    r = client.post(f"/v1/datasets/{ds}/uploads", content=body, headers={**p, **CSV})
    assert r.status_code == 201, r.text
    assert r.json()["record_count"] == 2
    recs = client.get(f"/v1/datasets/{ds}/records", headers=p).json()
    assert sorted(x["payload"]["address"] for x in recs) == ["1 rue A, 2e", "3 rue B"]


@pytest.mark.parametrize(
    ("headers", "body", "line", "status"),
    [
        (NDJSON, _ndjson(60) + b"{oops\n" + _ndjson(5), 61, 422),
        (
            NDJSON,
            _ndjson(2) + b'{"subject_id": "s", "payload": {"a": "' + b"x" * 5000 + b'"}}\n',
            3,
            413,
        ),
        (CSV, b"subject_id,a\n" + b"s1,1\n" * 70 + b"s2\n", 72, 422),
        (
            NDJSON,
            _ndjson(3) + json.dumps({"subject_id": "has space", "payload": {}}).encode(),
            4,
            422,
        ),
    ],
)
def test_a_bad_line_stores_nothing_and_is_named(
    client: TestClient,
    make_key: MakeKey,
    counts: Any,
    headers: dict[str, str],
    body: bytes,
    line: int,
    status: int,
) -> None:
    p = make_key("provider")
    ds = _dataset(client, p)
    r = client.post(f"/v1/datasets/{ds}/uploads", content=body, headers={**p, **headers})
    assert r.status_code == status, r.text
    problem = r.json()
    assert r.headers["content-type"] == "application/problem+json"
    assert problem["line"] == line
    assert f"line {line}" in problem["detail"] or problem.get("record") == line
    assert "rue" not in r.text and "xxxx" not in r.text  # no payload echoed
    assert counts(ds) == (0, 0)  # the batches already written were rolled back


def test_record_limit_from_the_vault_is_a_413_with_its_line(
    client: TestClient, make_key: MakeKey, counts: Any
) -> None:
    # A line under the line limit whose payload is over record_size_max_bytes (4096).
    p = make_key("provider")
    ds = _dataset(client, p)
    big = json.dumps({"subject_id": "s1", "payload": {"a": "y" * 4200}}).encode()
    r = client.post(
        f"/v1/datasets/{ds}/uploads", content=_ndjson(4) + big + b"\n", headers={**p, **NDJSON}
    )
    assert r.status_code == 413, r.text
    assert r.json()["line"] == 5
    assert counts(ds) == (0, 0)


def test_body_limit_413_declared_and_streamed(
    client: TestClient, make_key: MakeKey, counts: Any
) -> None:
    p = make_key("provider")
    ds = _dataset(client, p)
    body = _ndjson(4000)  # ~250 kB of lines against a 256 KiB limit
    while len(body) <= 256 * 1024:
        body += _ndjson(500)
    r = client.post(f"/v1/datasets/{ds}/uploads", content=body, headers={**p, **NDJSON})
    assert r.status_code == 413
    assert r.headers["content-type"] == "application/problem+json"

    def chunked() -> Iterator[bytes]:  # no Content-Length: caught while streaming
        for i in range(0, len(body), 8192):
            yield body[i : i + 8192]

    r = client.post(f"/v1/datasets/{ds}/uploads", content=chunked(), headers={**p, **NDJSON})
    assert r.status_code == 413, r.text
    assert counts(ds) == (0, 0)
    r = client.post("/v1/datasets", content=b"{" + b" " * 20000 + b"}", headers=p)
    assert r.status_code == 413


def test_unsupported_media_type_and_empty_upload(client: TestClient, make_key: MakeKey) -> None:
    p = make_key("provider")
    ds = _dataset(client, p)
    r = client.post(
        f"/v1/datasets/{ds}/uploads",
        content=b"{}",
        headers={**p, "content-type": "application/json"},
    )
    assert r.status_code == 415
    latin1 = {"content-type": "text/csv; charset=iso-8859-1"}
    r = client.post(
        f"/v1/datasets/{ds}/uploads", content=b"subject_id\ns1\n", headers={**p, **latin1}
    )
    assert r.status_code == 415
    r = client.post(f"/v1/datasets/{ds}/uploads", content=b"", headers={**p, **NDJSON})
    assert r.status_code == 422
    r = client.post(
        f"/v1/datasets/{uuid.uuid4()}/uploads", content=_ndjson(1), headers={**p, **NDJSON}
    )
    assert r.status_code == 404


def test_a_duplicate_record_id_is_a_409_and_stores_nothing(
    client: TestClient, make_key: MakeKey, counts: Any
) -> None:
    p = make_key("provider")
    ds = _dataset(client, p)
    rid = str(uuid.uuid4())
    line = json.dumps({"subject_id": "s1", "payload": {"a": 1}, "record_id": rid}).encode()
    first = client.post(f"/v1/datasets/{ds}/uploads", content=line, headers={**p, **NDJSON})
    assert first.status_code == 201, first.text
    again = client.post(
        f"/v1/datasets/{ds}/uploads", content=_ndjson(3) + line, headers={**p, **NDJSON}
    )
    assert again.status_code == 409, again.text
    assert again.headers["content-type"] == "application/problem+json"
    assert counts(ds) == (1, 1)


def test_a_repeated_query_parameter_is_refused(client: TestClient, make_key: MakeKey) -> None:
    p = make_key("provider")
    ds = _dataset(client, p)
    r = client.get(f"/v1/datasets/{ds}/records?subject_id=a&subject_id=b", headers=p)
    assert r.status_code == 422
    assert r.json()["errors"][0]["loc"] == "query.subject_id"


def test_upload_status_pending_then_anchored_with_its_receipt(
    client: TestClient, make_key: MakeKey, api_database_url: str
) -> None:
    p = make_key("provider")
    ds = _dataset(client, p)
    other_ds = _dataset(client, p, name="other")
    made = client.post(f"/v1/datasets/{ds}/uploads", content=_ndjson(3), headers={**p, **NDJSON})
    upload_id = made.json()["upload_id"]
    listed = client.get(f"/v1/datasets/{ds}/uploads", headers=p).json()
    assert [(u["upload_id"], u["state"], u["receipt"]) for u in listed] == [
        (upload_id, "pending", None)
    ]
    # What the outbox relay does once upload.anchor commits.
    engine = db.make_engine(api_database_url, pool_size=1)
    with Session(engine) as s, s.begin():
        row = s.get(Upload, uuid.UUID(upload_id))
        assert row is not None
        row.state, row.anchor_tx_id, row.anchor_height = "anchored", "ab" * 16, 42
    engine.dispose()
    shown = client.get(f"/v1/datasets/{ds}/uploads/{upload_id}", headers=p).json()
    assert shown["state"] == "anchored"
    assert shown["receipt"] == {"tx_id": "ab" * 16, "block_height": 42}
    assert shown["merkle_root"] == made.json()["merkle_root"]
    assert client.get(f"/v1/datasets/{other_ds}/uploads/{upload_id}", headers=p).status_code == 404
    intruder = make_key("provider")
    assert client.get(f"/v1/datasets/{ds}/uploads", headers=intruder).status_code == 404


def test_ndjson_read_streams_every_record(client: TestClient, make_key: MakeKey) -> None:
    p = make_key("provider")
    ds = _dataset(client, p)
    r = client.post(f"/v1/datasets/{ds}/uploads", content=_ndjson(130), headers={**p, **NDJSON})
    assert r.status_code == 201
    seen = []
    with client.stream(
        "GET", f"/v1/datasets/{ds}/records?limit=1", headers={**p, "Accept": "application/x-ndjson"}
    ) as streamed:
        assert streamed.headers["content-type"].startswith("application/x-ndjson")
        for line in streamed.iter_lines():
            seen.append(json.loads(line))
    # limit pages the JSON answer; the stream carries everything.
    assert sorted(rec["payload"]["i"] for rec in seen) == list(range(130))
    assert {rec["proof"]["merkle_root"] for rec in seen} == {r.json()["merkle_root"]}


def test_an_unknown_query_parameter_is_refused(client: TestClient, make_key: MakeKey) -> None:
    p = make_key("provider")
    ds = _dataset(client, p)
    r = client.get(f"/v1/datasets/{ds}/records?subjectid=a", headers=p)
    assert r.status_code == 422
    assert r.json()["errors"][0]["loc"] == "query.subjectid"
    assert (
        client.get(f"/v1/datasets/{ds}/records?subject_id=a&limit=5", headers=p).status_code == 200
    )
