"""Art. 16 rectification over HTTP, against four real replicas and PostgreSQL.

A provider rectifies one of a subject's records: from then on, the consumer's whole-record
reads, projections and yes/no questions see the corrected value and never the old one, the
provider's own reads show only the current version (the old id answers 410 naming the new),
the subject's other records stay readable under new ids, other subjects are untouched, the
ledger links the old and new keys, and the DPO's audit finds nothing to report. The subject's
own signed request is relayed, carried out and closed. Attacks first: another provider's
dataset, a corrected record of another subject, an erased or superseded record, a request
forged, replayed, about someone else's record, of another dataset or already carried out;
each refused with nothing changed. Last, an erasure after a rectification forgets the
subject: the ledger's requests no longer name them, and pg_dump of the vault holds nothing
naming them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.client import CivisClient
from api.client.accountability import records_concerned, verify_notice
from tests.api.ledger_env import LedgerEnv, Wallet
from tests.api.test_consented_access import api, register_subject, signed
from tests.api.test_roles import grant, make_dataset, upload_anchored
from tests.vault.test_forensic import _pg_dump
from vault.models import Decryption

STATEMENT = "my address is wrong: I moved to 9 rue Neuve"


@dataclass
class Scene:
    env: LedgerEnv
    dataset: str
    subject: Wallet
    other: Wallet
    owner: dict[str, str]
    ids: dict[str, str]  # address -> record id

    def records(self, subject: Wallet | None = None) -> list[dict[str, Any]]:
        params = {"subject_id": (subject or self.subject).id}
        r = self.env.client.get(
            f"/v1/datasets/{self.dataset}/records", params=params, headers=self.owner
        )
        assert r.status_code == 200, r.text
        records: list[dict[str, Any]] = r.json()
        return records

    def rectify(self, record: str, body: dict[str, Any], who: dict[str, str] | None = None) -> Any:
        return self.env.client.post(
            f"/v1/datasets/{self.dataset}/records/{record}/rectification",
            headers=who or self.owner,
            json=body,
        )


def _scene(env: LedgerEnv) -> Scene:
    owner = env.headers("provider", env.provider)
    subject, other = register_subject(env), register_subject(env)
    purposes = ["billing", "proof-of-address", "road-maintenance"]
    dataset = make_dataset(env, owner, "address", purposes)
    upload_anchored(
        env,
        owner,
        dataset,
        [
            (subject, {"address": "3 rue Vieille", "vibration": 3}),
            (other, {"address": "1 place Autre", "vibration": 1}),
            (subject, {"address": "4 rue Gardée", "vibration": 4}),
        ],
    )
    for purpose in purposes:
        for who in (subject, other):
            body = {"subject": who.id, "consumer": env.consumer.id, "purpose": purpose}
            grant(env, who, {**body, "dataset": dataset})
    sc = Scene(env, dataset, subject, other, owner, {})
    found = [*sc.records(), *sc.records(other)]
    sc.ids = {r["payload"]["address"]: r["record_id"] for r in found}
    return sc


@pytest.fixture()
def scene(ledger_env: LedgerEnv) -> Scene:
    return _scene(ledger_env)


def _fix(sc: Scene, address: str = "9 rue Neuve", **extra: Any) -> dict[str, Any]:
    return {"subject_id": sc.subject.id, "payload": {"address": address, "vibration": 9}, **extra}


def _consumer(env: LedgerEnv) -> CivisClient:
    key = env.headers("consumer", env.consumer)["Authorization"].removeprefix("Bearer ")
    return api(env).with_key(key)


def _seen(env: LedgerEnv, sc: Scene) -> list[dict[str, Any]]:
    answer = _consumer(env).access(sc.dataset, "billing", subjects=[sc.subject.id])
    return sorted((r["payload"] for r in answer["records"]), key=lambda p: p["address"])


def _asked(env: LedgerEnv, sc: Scene, address: str) -> bool:
    answer = _consumer(env).predicate(
        sc.dataset,
        "proof-of-address",
        subject=sc.subject.id,
        field="address",
        op="eq",
        value=address,
    )
    return bool(answer["result"])


def test_a_provider_rectifies_and_every_reader_sees_only_the_new_version(scene: Scene) -> None:
    env, sc = scene.env, scene
    assert _asked(env, sc, "3 rue Vieille")  # the control: the old value is there before
    r = sc.rectify(sc.ids["3 rue Vieille"], _fix(sc))
    assert r.status_code == 201, r.text
    done = r.json()
    assert done["state"] == "anchored" and done["receipt"] is not None
    assert done["replaced"] == sc.ids["3 rue Vieille"] and done["record_id"] != done["replaced"]
    assert {v["replaced"] for v in done["versions"]} == {
        sc.ids["3 rue Vieille"],
        sc.ids["4 rue Gardée"],
    }
    # the consumer: whole records, a projection and a yes/no see the current version only
    assert _seen(env, sc) == [
        {"address": "4 rue Gardée", "vibration": 4},
        {"address": "9 rue Neuve", "vibration": 9},
    ]
    projected = _consumer(env).access(
        sc.dataset, "road-maintenance", subjects=[sc.subject.id], fields=["vibration"]
    )
    assert sorted(rec["payload"]["vibration"] for rec in projected["records"]) == [4, 9]
    assert not _asked(env, sc, "3 rue Vieille") and _asked(env, sc, "9 rue Neuve")
    # the provider: only current versions in its reads, and the old id names the new one
    current = {rec["record_id"]: rec["payload"]["address"] for rec in sc.records()}
    assert current == {v["record_id"]: a for v in done["versions"] for a in [_addr(done, v)]}
    old = env.client.get(f"/v1/records/{sc.ids['3 rue Vieille']}", headers=sc.owner)
    assert old.status_code == 410 and done["record_id"] in old.json()["detail"], old.text
    new = env.client.get(f"/v1/records/{done['record_id']}", headers=sc.owner)
    assert new.status_code == 200 and new.json()["payload"]["address"] == "9 rue Neuve"
    # the other subject is untouched
    assert [rec["record_id"] for rec in sc.records(sc.other)] == [sc.ids["1 place Autre"]]
    # the subject's export shows the current version
    export = env.client.get(
        f"/v1/subjects/{sc.subject.id}/export", headers=env.headers("subject", sc.subject)
    )
    addresses = sorted(rec["payload"]["address"] for rec in export.json()["records"])
    assert addresses == ["4 rue Gardée", "9 rue Neuve"]
    # the ledger links the old keys to the new ones; the DPO's audit matches it all
    [linked] = env.gateway.query("rectifications", dataset=sc.dataset)["result"]
    assert [k["upload"] for k in linked["replacement"]] == [
        str(k["upload"]) for k in done["replacement"]
    ]
    assert [k["key_commitment"].hex() for k in linked["superseded"]] == [
        k["key_commitment"] for k in done["superseded"]
    ]
    dpo = env.headers("dpo", env.dpo)
    audit = env.client.get(
        "/v1/dpo/retention-audit", params={"dataset_id": sc.dataset}, headers=dpo
    )
    assert audit.status_code == 200 and audit.json()["findings"] == [], audit.text
    assert audit.json()["ledger"]["commitments_matched"] == len(done["superseded"])
    # not an erasure: new records of the subject are still accepted and served
    upload_anchored(env, sc.owner, sc.dataset, [(sc.subject, {"address": "later", "n": 0})])
    assert len(sc.records()) == 3


def _addr(done: dict[str, Any], version: dict[str, Any]) -> str:
    """The address a new version holds, known from which old record it replaced."""
    return "9 rue Neuve" if version["replaced"] == done["replaced"] else "4 rue Gardée"


def test_the_subjects_request_is_relayed_carried_out_and_closed(scene: Scene) -> None:
    env, sc = scene.env, scene
    client = api(env)
    asked = client.request_rectification(
        sc.subject.key, dataset=sc.dataset, record=sc.ids["3 rue Vieille"], statement=STATEMENT
    )
    n = asked["request"]
    found = env.gateway.query("rectification_request", request=n)["result"]
    assert found["status"] == "open" and found["subject"] == sc.subject.id
    # the vault holds nothing of the statement: only its hash is on the ledger
    assert found["statement_hash"] == hashlib.sha256(STATEMENT.encode()).digest()
    r = sc.rectify(sc.ids["3 rue Vieille"], _fix(sc, request=n))
    assert r.status_code == 201 and r.json()["request"] == n, r.text
    found = env.gateway.query("rectification_request", request=n)["result"]
    assert found["status"] == "done" and found["rectification"] is not None
    # carried out once: the request is done, and a second use changes nothing
    again = sc.rectify(r.json()["record_id"], _fix(sc, "10 rue Autre", request=n))
    assert again.status_code == 409 and "done" in again.json()["detail"], again.text
    assert "9 rue Neuve" in {rec["payload"]["address"] for rec in sc.records()}


def _unchanged(sc: Scene, before: list[dict[str, Any]]) -> None:
    assert sc.records() == before, "a refused rectification changed the subject's records"


def test_refused_rectifications_change_nothing(scene: Scene) -> None:
    env, sc = scene.env, scene
    target = sc.ids["3 rue Vieille"]
    before = sc.records()
    # another provider: the dataset does not exist for it
    stranger = env.headers("provider", Wallet())
    assert sc.rectify(target, _fix(sc), stranger).status_code == 404
    # a consumer or the subject: not their right to write
    for role, wallet in (("consumer", env.consumer), ("subject", sc.subject)):
        assert sc.rectify(target, _fix(sc), env.headers(role, wallet)).status_code == 403
    # a corrected record of another subject
    r = sc.rectify(target, {**_fix(sc), "subject_id": sc.other.id})
    assert r.status_code == 422 and "another subject" in r.json()["detail"], r.text
    # a record of another dataset, or none
    other_dataset = make_dataset(env, sc.owner, "address", ["billing"])
    r = env.client.post(
        f"/v1/datasets/{other_dataset}/records/{target}/rectification",
        headers=sc.owner,
        json=_fix(sc),
    )
    assert r.status_code == 404, r.text
    assert sc.rectify(str(uuid.uuid4()), _fix(sc)).status_code == 404
    # a request that does not exist
    r = sc.rectify(target, _fix(sc, request=999_999))
    assert r.status_code == 404, r.text
    _unchanged(sc, before)
    # a superseded record: 409 naming the current version
    done = sc.rectify(target, _fix(sc)).json()
    before = sc.records()
    r = sc.rectify(target, _fix(sc, "7 rue Autre"))
    assert r.status_code == 409 and done["record_id"] in r.json()["detail"], r.text
    _unchanged(sc, before)
    # an erased record
    dpo = env.headers("dpo", env.dpo)
    erased = env.client.post(
        "/v1/erasures",
        headers=dpo,
        json={"subject_id": sc.subject.id, "dataset_id": sc.dataset},
    )
    assert erased.status_code in (201, 202), erased.text
    r = sc.rectify(done["record_id"], _fix(sc, "8 rue Autre"))
    assert r.status_code == 409 and "erased" in r.json()["detail"], r.text
    assert sc.records() == []


def test_forged_replayed_and_misdirected_requests_are_refused(scene: Scene) -> None:
    env, sc = scene.env, scene
    mine = {"dataset": sc.dataset, "record": sc.ids["3 rue Vieille"], "statement_hash": "ab" * 32}
    path = f"/v1/subjects/{sc.subject.id}/rectification-requests"
    # signed by another key than the subject's
    r = env.client.post(path, json=signed(env, sc.other, "rectification.request", mine))
    assert r.status_code == 403, r.text
    # a forged author: the signature is another key's
    forged = signed(env, sc.other, "rectification.request", mine)
    tampered = CivisClient(http=env.client).draft(sc.subject.id, "rectification.request", mine)
    r = env.client.post(
        path, json={"transaction": tampered["transaction"], "signature": forged["signature"]}
    )
    assert r.status_code == 403, r.text
    # the other subject asking about the subject's record, under their own name: 404
    theirs = f"/v1/subjects/{sc.other.id}/rectification-requests"
    r = env.client.post(theirs, json=signed(env, sc.other, "rectification.request", mine))
    assert r.status_code == 404, r.text
    assert env.gateway.query("rectification_requests", dataset=sc.dataset)["result"] == []
    # replayed: the same signed request twice
    once = signed(env, sc.subject, "rectification.request", mine)
    assert env.client.post(path, json=once).status_code == 201
    r = env.client.post(path, json=once)
    assert r.status_code == 409 and "replayed" in r.json()["detail"], r.text
    [n] = [
        q["request"]
        for q in env.gateway.query("rectification_requests", dataset=sc.dataset)["result"]
    ]
    before = sc.records()
    # the subject's request used on the other subject's record
    r = env.client.post(
        f"/v1/datasets/{sc.dataset}/records/{sc.ids['1 place Autre']}/rectification",
        headers=sc.owner,
        json={"subject_id": sc.other.id, "payload": {"address": "x"}, "request": n},
    )
    assert r.status_code == 409 and "another subject" in r.json()["detail"], r.text
    # on another record of the subject
    r = sc.rectify(sc.ids["4 rue Gardée"], _fix(sc, request=n))
    assert r.status_code == 409 and "another record" in r.json()["detail"], r.text
    _unchanged(sc, before)
    assert sc.records(sc.other)[0]["payload"]["address"] == "1 place Autre"
    # of another dataset
    elsewhere = make_dataset(env, sc.owner, "address", ["billing"])
    upload_anchored(env, sc.owner, elsewhere, [(sc.subject, {"address": "ailleurs"})])
    r = env.client.get(f"/v1/datasets/{elsewhere}/records", headers=sc.owner)
    record = r.json()[0]["record_id"]
    r = env.client.post(
        f"/v1/datasets/{elsewhere}/records/{record}/rectification",
        headers=sc.owner,
        json={**_fix(sc), "request": n},
    )
    assert r.status_code == 409 and "another dataset" in r.json()["detail"], r.text
    assert env.gateway.query("rectification_request", request=n)["result"]["status"] == "open"


def test_an_erasure_after_a_rectification_forgets_the_subject(
    ledger_env: LedgerEnv, ledger_database_url: str
) -> None:
    env = ledger_env
    sc = _scene(env)
    asked = api(env).request_rectification(
        sc.subject.key, dataset=sc.dataset, record=sc.ids["3 rue Vieille"], statement=STATEMENT
    )
    n = asked["request"]
    r = sc.rectify(sc.ids["3 rue Vieille"], _fix(sc, request=n))
    assert r.status_code == 201, r.text
    assert sc.subject.id.encode() in _pg_dump(ledger_database_url)  # the control
    dpo = env.headers("dpo", env.dpo)
    erased = env.client.post("/v1/erasures", headers=dpo, json={"subject_id": sc.subject.id})
    assert erased.status_code == 201, erased.text
    # the ledger: the request keeps its dataset and status, not the subject or the record
    found = env.gateway.query("rectification_request", request=n)["result"]
    assert "subject" not in found and "record" not in found and "statement_hash" not in found
    assert env.gateway.query("rectifications", subject=sc.subject.id)["result"] == []
    [linked] = env.gateway.query("rectifications", dataset=sc.dataset)["result"]
    assert linked["request"] == n  # the record of the rectification stays, naming nobody
    # the vault: nothing names the subject in a dump, while the other subject is found
    dump = _pg_dump(ledger_database_url)
    assert sc.subject.id.encode() not in dump and sc.subject.id.upper().encode() not in dump
    assert sc.other.id.encode() in dump


def _reads_of(env: LedgerEnv, subject: Wallet) -> list[tuple[str, str, str, int]]:
    with Session(env.client.app.state.engine) as s:  # type: ignore[attr-defined]
        columns = (Decryption.kind, Decryption.reader, Decryption.dataset_id)
        rows = s.execute(
            select(*columns, Decryption.record_count)
            .where(Decryption.subject == subject.id)
            .order_by(Decryption.at)
        ).all()
    return [(str(k), str(r), str(d), int(n)) for k, r, d, n in rows]


def test_a_rectification_decrypts_and_is_recorded_as_a_read_by_whoever_ordered_it(
    scene: Scene,
) -> None:
    """Re-keying decrypts every current record of the subject in the dataset (invariant 10:
    every decryption, whoever does it, is recorded where the subject and the DPO see it)."""
    env, sc = scene.env, scene
    before = _reads_of(env, sc.subject)
    assert sc.rectify(sc.ids["3 rue Vieille"], _fix(sc)).status_code == 201
    assert _reads_of(env, sc.subject)[len(before) :] == [
        ("provider_read", env.provider.id, sc.dataset, 2)
    ]
    dpo = env.headers("dpo", env.dpo)
    [current] = [r for r in sc.records() if r["payload"]["address"] == "9 rue Neuve"]
    before = _reads_of(env, sc.subject)
    assert sc.rectify(current["record_id"], _fix(sc, "11 rue Juste"), who=dpo).status_code == 201
    assert _reads_of(env, sc.subject)[len(before) :] == [("dpo_read", env.dpo.id, sc.dataset, 2)]


def _notices(env: LedgerEnv, dataset: str) -> list[dict[str, Any]]:
    consumer = env.headers("consumer", env.consumer)
    r = env.client.get("/v1/recipient-notices", headers=consumer, params={"limit": 1000})
    assert r.status_code == 200, r.text
    return [n for n in r.json()["notices"] if n["dataset_id"] == dataset]


def test_the_consumers_that_received_the_record_are_told_of_its_rectification(
    scene: Scene,
) -> None:
    """GDPR Art. 19: a recipient of the data is told of its rectification, as of an erasure,
    by a notice signed by the vault's ledger key naming the records it holds, never the
    subject."""
    env, sc = scene.env, scene
    held = {r["record_id"] for r in _consumer(env).access(sc.dataset, "billing")["records"]}
    assert sc.ids["3 rue Vieille"] in held
    r = sc.rectify(sc.ids["3 rue Vieille"], _fix(sc))
    assert r.status_code == 201, r.text
    [told] = _notices(env, sc.dataset)
    body = told["body"]
    assert told["kind"] == "rectification" and body["kind"] == "rectification"
    assert records_concerned(told, held) == {sc.ids["3 rue Vieille"]}
    assert body["fact"]["type"] == "record.rectify"
    assert body["fact"]["tx_id"] == r.json()["receipt"]["tx_id"]
    assert verify_notice(told, bytes(env.gateway.vault_key.public_key))
    assert sc.subject.id not in json.dumps(told)


def _signed_in(env: LedgerEnv, who: Wallet) -> dict[str, str]:
    """A wallet sign-in of `who`'s pseudonym: its session's bearer."""
    challenge = env.client.post("/v1/subjects/challenges").json()
    proof = who.key.sign(bytes.fromhex(challenge["signing_payload"])).hex()
    r = env.client.post(
        "/v1/subjects/sessions",
        json={
            "challenge_id": challenge["challenge_id"],
            "proofs": [{"pseudonym": who.id, "signature": proof}],
        },
    )
    assert r.status_code == 201, r.text
    return {"Authorization": f"Bearer {r.json()['token']}"}


def test_an_erasure_after_every_new_feature_leaves_nothing_naming_the_subject(
    ledger_env: LedgerEnv, ledger_database_url: str
) -> None:
    """The subject's data read by a consumer, a signed-in session and its package, a
    rectification (superseded rows, a recorded read, a recipient notice), an incident asking
    who a consumer's breach affects; then the DPO erases them everywhere: pg_dump names them
    nowhere, in any table, while the other subject, who went through the same, is found."""
    env = ledger_env
    sc = _scene(env)
    dpo = env.headers("dpo", env.dpo)
    for who in (sc.subject, sc.other):
        assert _consumer(env).access(sc.dataset, "billing", subjects=[who.id])["granted"]
        session = _signed_in(env, who)
        assert env.client.get("/v1/subjects/export-package", headers=session).status_code == 200
        [record] = [r for r in sc.records(who) if r["payload"]["vibration"] in (1, 3)]
        fix = {"subject_id": who.id, "payload": {"address": "rectified", "vibration": 0}}
        assert sc.rectify(record["record_id"], fix).status_code == 201
    incident = env.client.post(
        "/v1/dpo/incidents",
        headers=dpo,
        json={
            "title": "a consumer key leaked",
            "discovered_at": dt.datetime.now(dt.UTC).isoformat(),
            "member": env.consumer.id,
        },
    )
    assert incident.status_code == 201, incident.text
    path = f"/v1/dpo/incidents/{incident.json()['id']}/affected-subjects"
    affected = env.client.get(path, headers=dpo, params={"limit": 1000}).json()
    assert sc.subject.id in affected["subjects"]
    assert sc.subject.id.encode() in _pg_dump(ledger_database_url)  # the control
    erased = env.client.post("/v1/erasures", headers=dpo, json={"subject_id": sc.subject.id})
    assert erased.status_code == 201, erased.text
    dump = _pg_dump(ledger_database_url)
    assert sc.subject.id.encode() not in dump and sc.subject.id.upper().encode() not in dump
    assert sc.other.id.encode() in dump
