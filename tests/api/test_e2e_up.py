"""The white paper's stories end to end over real HTTP against one `civis-vault up`.

What a user would see, on the real thing: PostgreSQL, four replica processes running the consent
contracts, the API under uvicorn, all started by `civis-vault up` as a subprocess. First the
`civis-vault demo` command plays the three use cases against it (twice: it must be repeatable
on one system), then this module plays them itself as assertions over HTTP: a legal entity
acts only once the colleges voted it in; the bank learns one bit with the citizen's consent and
is refused after the revocation; the road service reads only the consenting drivers' chosen
fields; after an erasure (by the DPO, or asked by the subject) nothing is readable and the
ledger holds the certificate. Last, every block of the chain, read from the replicas, holds
none of the payload values used, and Ctrl-C stops everything.

Keys the tests make for members are kept where the demo keeps its own (`<data-dir>/demo/
members/<college>/`): both add members to the same colleges, and each later admission needs a
majority of them, so each must be able to cast the other's votes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from api.keys import create_key
from api.ledger import LedgerGateway
from api.wallet import new_wallet
from ledger_bridge.crypto import SigningKey
from ledger_bridge.genesis import load_genesis, load_signing_key
from ledger_bridge.pbft import messages as m
from tests.api.test_up import Up, _clean_env, _free_port, _replica_pids
from tests.conftest import PgServer
from vault import db

pytestmark = pytest.mark.e2e

DEMO_TIMEOUT_S = 300
START_ATTEMPTS = 3
# What `up` says when a port it chose was taken before it bound it (see _start_up).
PORT_RACES = ("the ledger did not start", "already answers on", "address already in use")
ANCHOR_WAIT_S = 60.0
DAY_MS = 86_400_000
# Refusals of a vote that only mean "not this voter": admitted after the proposal, not (yet)
# admitted, or the proposal already passed.
NOT_A_VOTE = ("not_eligible", "not_admitted", "not_member", "closed")

# Payload values the stories below upload; none may ever reach a block.
ADDRESS = "7 impasse des Glycines, 69003 Lyon"
WRONG_ADDRESS = "8 impasse des Glycines, 69003 Lyon"
EMPLOYEE = "EMP-E2E-0042"
VIBRATION = "0.7731"
# What the demo uploads (api/demo.py): every address it makes up starts so.
DEMO_ADDRESS = "12 rue des Lilas"


@dataclass
class System:
    """One running `up`, the means to issue API keys in its database, and its members' keys."""

    up: Up
    data_dir: Path
    database_url: str
    engine: Engine
    http: httpx.Client
    dpo: SigningKey
    voters: dict[str, list[SigningKey]] = field(default_factory=dict)

    def headers(self, key: SigningKey, role: str) -> dict[str, str]:
        with Session(self.engine) as session, session.begin():
            issued = create_key(session, member_id=key.public_key.hex(), role=role)
        return {"Authorization": f"Bearer {issued.token}"}

    def signed(self, key: SigningKey, tx_type: str, body: dict[str, Any]) -> dict[str, str]:
        author = key.public_key.hex()
        r = self.http.post("/v1/drafts", json={"type": tx_type, "author": author, "body": body})
        assert r.status_code == 201, r.text
        d = r.json()
        return {
            "transaction": d["transaction"],
            "signature": key.sign(bytes.fromhex(d["signing_payload"])).hex(),
        }

    def submit(self, path: str, key: SigningKey, tx_type: str, body: dict[str, Any]) -> Any:
        return self.http.post(path, json=self.signed(key, tx_type, body))

    def member(self, role: str, college: str) -> SigningKey:
        """A new member's key, kept beside the demo's (it votes on later admissions)."""
        key = new_wallet(
            self.data_dir / "demo" / "members" / college / f"e2e-{secrets.token_hex(6)}.key"
        )
        r = self.submit("/v1/members", key, "member.register", {"role": role, "college": college})
        assert r.status_code == 201, r.text
        expected = "active" if role == "subject" else "pending"
        assert r.json()["result"]["status"] == expected
        self.voters.setdefault(college, []).append(key)
        return key

    def load_voters(self) -> None:
        """The founders' keys on this host and every member key kept so far (demo runs too)."""
        genesis = load_genesis(self.data_dir / "ledger" / "genesis.toml")
        voters: dict[str, list[SigningKey]] = {"services": [self.dpo]}
        for i, v in enumerate(genesis.validators):
            key = load_signing_key(self.data_dir / "ledger" / "keys" / f"node-{i}.key")
            voters.setdefault(v.college, []).append(key)
        for path in sorted((self.data_dir / "demo" / "members").glob("*/*.key")):
            voters.setdefault(path.parent.name, []).append(load_signing_key(path))
        self.voters = voters

    def admit(self, key: SigningKey) -> int:
        """The DPO proposes the admission; members vote yes until it passes."""
        self.load_voters()
        body = {
            "action": {"kind": "admit_member", "member": key.public_key.hex()},
            "voting_ends": int(time.time() * 1000) + 3_600_000,
        }
        r = self.submit("/v1/governance/proposals", self.dpo, "governance.propose", body)
        assert r.status_code == 201, r.text
        pid = int(r.json()["result"]["proposal"])
        for voters in self.voters.values():
            for voter in voters:
                vote = {"proposal": pid, "approve": True}
                r = self.submit(
                    f"/v1/governance/proposals/{pid}/votes", voter, "governance.vote", vote
                )
                if r.status_code != 201:
                    assert r.json()["detail"].split(":")[0] in NOT_A_VOTE, r.text
                    continue
                if r.json()["result"]["status"] == "passed":
                    return pid
        raise AssertionError(f"proposal {pid} never passed")

    def wait_anchored(self, dataset: str, upload: str, headers: dict[str, str]) -> dict[str, Any]:
        deadline = time.monotonic() + ANCHOR_WAIT_S
        while time.monotonic() < deadline:
            r = self.http.get(f"/v1/datasets/{dataset}/uploads/{upload}", headers=headers)
            assert r.status_code == 200, r.text
            if r.json()["state"] == "anchored":
                out: dict[str, Any] = r.json()
                return out
            time.sleep(0.1)
        raise AssertionError(f"upload {upload} was not anchored")


def _stop_and_reap(up: Up, data_dir: Path) -> int:
    code = up.stop()
    for pid in _replica_pids(data_dir / "ledger"):
        os.kill(pid, signal.SIGKILL)  # only if `up` failed to stop its own replicas
    return code


def _start_up(tmp_path_factory: pytest.TempPathFactory, database_url: str) -> tuple[Up, Path]:
    """`up` on a new data directory, started again (elsewhere) if it lost a port to a race.

    `up` picks free ports and binds them a moment later; on a machine where other test runs
    start clusters too, one may take a port in between, and `up` then exits saying so. That is
    the machine, not the system under test: any other early exit fails at once.
    """
    for attempt in range(1, START_ATTEMPTS + 1):
        data_dir = tmp_path_factory.mktemp("e2e-up") / "civis"
        up = Up("--data-dir", str(data_dir), "--database-url", database_url)
        try:
            up.wait_until("/readyz", 200)
            return up, data_dir
        except AssertionError:
            _stop_and_reap(up, data_dir)
            if attempt == START_ATTEMPTS or not any(s in up.output for s in PORT_RACES):
                raise
    raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory, pg_server: PgServer) -> Iterator[System]:
    database_url = pg_server.create_database("civis_e2e")
    engine = db.make_engine(database_url, pool_size=1)
    try:
        up, data_dir = _start_up(tmp_path_factory, database_url)
        try:
            with httpx.Client(base_url=up.url, timeout=60) as http:
                dpo = load_signing_key(data_dir / "keys" / "dpo.key")
                yield System(up, data_dir, database_url, engine, http, dpo)
        finally:
            _stop_and_reap(up, data_dir)
    finally:
        engine.dispose()
        pg_server.drop_database(database_url)


@dataclass
class Entities:
    """A provider and a consumer, admitted by vote, with their API keys."""

    provider: SigningKey
    consumer: SigningKey
    provider_headers: dict[str, str]
    consumer_headers: dict[str, str]


@pytest.fixture(scope="module")
def entities(system: System) -> Entities:
    provider = system.member("provider", "providers")
    consumer = system.member("consumer", "services")
    system.admit(provider)
    system.admit(consumer)
    return Entities(
        provider,
        consumer,
        system.headers(provider, "provider"),
        system.headers(consumer, "consumer"),
    )


def _demo(system: System, url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "api.cli",
            "demo",
            "--url",
            url,
            "--data-dir",
            str(system.data_dir),
            "--database-url",
            system.database_url,
        ],
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT_S,
    )


def _live_keys(system: System) -> int:
    with system.engine.connect() as conn:
        return int(conn.scalar(text("SELECT count(*) FROM api_keys WHERE revoked_at IS NULL")))


# -- the demo command ------------------------------------------------------------------------


def test_the_demo_plays_the_three_stories_twice_on_one_system(system: System) -> None:
    live_before = _live_keys(system)
    outputs = []
    for _ in range(2):
        done = _demo(system, system.up.url)
        assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
        out = done.stdout
        outputs.append(out)
        for line in (
            "== 1. Proof of address",
            "admitted [ledger tx ",
            "and learns: yes, and nothing else",
            "it learns: no",
            "is refused after the revocation",
            "reads 4 readings of the 2 consenting drivers",
            "no driver_id",
            ": no_consent",
            "holds the erasure.record transaction",
            "denied, erased",
            "0 readable records and 1 erasure(s)",
            "demo: every expected outcome happened.",
        ):
            assert line in out, out
        # Every ledger step prints its receipt.
        assert len(re.findall(r"\[ledger tx [0-9a-f]{16}…, block \d+\]", out)) >= 25
        assert "FAILED" not in out and "Traceback" not in done.stderr
    run_ids = [re.findall(r"demo, run ([0-9a-f]+)", o) for o in outputs]
    assert len(run_ids[0]) == len(run_ids[1]) == 1 and run_ids[0] != run_ids[1]
    # The demo's API keys were revoked when it ended; its members' keys stay to vote later.
    assert _live_keys(system) == live_before
    kept = list((system.data_dir / "demo" / "members").glob("*/*.key"))
    assert len(kept) == 2 * 8
    assert all(p.stat().st_mode & 0o077 == 0 for p in kept)


def test_the_demo_says_plainly_when_there_is_no_system(system: System) -> None:
    done = _demo(system, f"http://127.0.0.1:{_free_port()}")
    assert done.returncode == 2
    assert "cannot reach the API" in done.stdout and "is `civis-vault up` running" in done.stdout
    assert "Traceback" not in done.stderr


# -- the stories as assertions ---------------------------------------------------------------


def test_a_legal_entity_acts_only_once_the_colleges_voted_it_in(system: System) -> None:
    utility = system.member("provider", "providers")
    headers = system.headers(utility, "provider")
    dataset = {
        "name": f"addresses-{secrets.token_hex(4)}",
        "category": "address",
        "purposes": ["proof-of-address"],
        "retention_days": 365,
        "legal_basis": "contract",
    }
    r = system.http.post("/v1/datasets", headers=headers, json=dataset)
    assert r.status_code == 403 and "not_admitted" in r.json()["detail"], r.text
    pid = system.admit(utility)
    dpo = system.headers(system.dpo, "dpo")
    proposal = system.http.get(f"/v1/governance/proposals/{pid}", headers=dpo).json()["result"]
    assert proposal["status"] == "passed"
    # Every college approved by a strict majority of the members it had at the proposal.
    assert all(2 * proposal["yes"][c] > n for c, n in proposal["members"].items())
    member = system.http.get(f"/v1/members/{utility.public_key.hex()}", headers=dpo).json()
    assert member["result"]["status"] == "active" and member["result"]["role"] == "provider"
    r = system.http.post("/v1/datasets", headers=headers, json=dataset)
    assert r.status_code == 201, r.text
    assert r.json()["receipt"]["block_height"] >= 1


def _addresses(system: System, entities: Entities, subjects: list[SigningKey]) -> str:
    """A dataset of the utility holding each subject's address, anchored."""
    headers = entities.provider_headers
    r = system.http.post(
        "/v1/datasets",
        headers=headers,
        json={
            "name": f"addresses-{secrets.token_hex(4)}",
            "category": "address",
            "purposes": ["proof-of-address"],
            "retention_days": 365,
            "legal_basis": "contract",
        },
    )
    assert r.status_code == 201, r.text
    dataset = str(r.json()["id"])
    lines = "".join(
        json.dumps({"subject_id": s.public_key.hex(), "payload": {"address": ADDRESS}}) + "\n"
        for s in subjects
    )
    r = system.http.post(
        f"/v1/datasets/{dataset}/uploads",
        headers={**headers, "Content-Type": "application/x-ndjson"},
        content=lines.encode(),
    )
    assert r.status_code == 201, r.text
    anchored = system.wait_anchored(dataset, r.json()["upload_id"], headers)
    assert anchored["receipt"]["block_height"] >= 1
    return dataset


def _grant(
    system: System, subject: SigningKey, consumer: SigningKey, dataset: str, purpose: str
) -> dict[str, Any]:
    body = {
        "subject": subject.public_key.hex(),
        "consumer": consumer.public_key.hex(),
        "purpose": purpose,
        "dataset": dataset,
        "valid_until": int(time.time() * 1000) + DAY_MS,
    }
    r = system.submit("/v1/consents", subject, "consent.grant", body)
    assert r.status_code == 201, r.text
    out: dict[str, Any] = r.json()
    return out


def test_proof_of_address_the_bank_learns_one_bit_then_is_refused(
    system: System, entities: Entities
) -> None:
    citizen = system.member("subject", "citizens")
    dataset = _addresses(system, entities, [citizen])

    def ask(value: str) -> httpx.Response:
        return system.http.post(
            "/v1/access-requests",
            headers=entities.consumer_headers,
            json={
                "dataset_id": dataset,
                "purpose": "proof-of-address",
                "subjects": [citizen.public_key.hex()],
                "predicate": {"field": "address", "op": "eq", "value": value},
            },
        )

    r = ask(ADDRESS)
    assert r.status_code == 403 and r.headers["content-type"] == "application/problem+json"
    granted = _grant(system, citizen, entities.consumer, dataset, "proof-of-address")
    r = ask(ADDRESS)
    assert r.status_code == 200, r.text
    assert set(r.json()) == {"result", "receipt"} and r.json()["result"] is True
    assert r.json()["receipt"]["block_height"] > granted["receipt"]["block_height"]
    assert ask(WRONG_ADDRESS).json()["result"] is False

    revoke = {
        "subject": citizen.public_key.hex(),
        "consumer": entities.consumer.public_key.hex(),
        "purpose": "proof-of-address",
        "dataset": dataset,
    }
    r = system.submit("/v1/consents/revocations", citizen, "consent.revoke", revoke)
    assert r.status_code == 201, r.text
    r = ask(ADDRESS)
    assert r.status_code == 403, r.text
    assert r.json()["detail"].startswith("no_consent: no consent in force")
    assert ADDRESS not in r.text

    # The citizen's own export: the revoked consent, and the two accesses that reached them.
    own = system.headers(citizen, "subject")
    export = system.http.get(f"/v1/subjects/{citizen.public_key.hex()}/export", headers=own)
    assert export.status_code == 200, export.text
    assert [c["granted"] for c in export.json()["consents"]] == [False]
    assert len(export.json()["accesses"]) == 2


def test_road_maintenance_reads_only_what_consenting_drivers_allow(
    system: System, entities: Entities
) -> None:
    drivers = [system.member("subject", "citizens") for _ in range(3)]
    headers = entities.provider_headers
    r = system.http.post(
        "/v1/datasets",
        headers=headers,
        json={
            "name": f"vehicle-sensors-{secrets.token_hex(4)}",
            "category": "vehicle-telemetry",
            "purposes": ["road-maintenance"],
            "retention_days": 90,
            "legal_basis": "contract",
        },
    )
    assert r.status_code == 201, r.text
    dataset = str(r.json()["id"])
    rows = ["subject_id,driver_id,lat,lon,vibration"]
    rows += [
        f"{d.public_key.hex()},{EMPLOYEE}-{i},45.75{i}{k},4.84{i}{k},{VIBRATION}"
        for i, d in enumerate(drivers)
        for k in range(2)
    ]
    r = system.http.post(
        f"/v1/datasets/{dataset}/uploads",
        headers={**headers, "Content-Type": "text/csv"},
        content=("\n".join(rows) + "\n").encode(),
    )
    assert r.status_code == 201 and r.json()["record_count"] == 6, r.text
    system.wait_anchored(dataset, r.json()["upload_id"], headers)
    for d in drivers[:2]:
        _grant(system, d, entities.consumer, dataset, "road-maintenance")

    fields = ["lat", "lon", "vibration"]
    ask: dict[str, Any] = {"dataset_id": dataset, "purpose": "road-maintenance", "fields": fields}
    r = system.http.post("/v1/access-requests", headers=entities.consumer_headers, json=ask)
    assert r.status_code == 200, r.text
    records = r.json()["records"]
    assert sorted(rec["subject_id"] for rec in records) == sorted(
        d.public_key.hex() for d in drivers[:2] for _ in range(2)
    )
    assert all(sorted(rec["payload"]) == fields for rec in records)
    assert all(rec["payload"]["vibration"] == VIBRATION for rec in records)
    assert EMPLOYEE not in r.text

    named = {**ask, "subjects": [d.public_key.hex() for d in drivers]}
    r = system.http.post("/v1/access-requests", headers=entities.consumer_headers, json=named)
    assert r.json()["denied"] == [[drivers[2].public_key.hex(), "no_consent"]]
    # A purpose the dataset was not registered for: refused by the contracts.
    other = {**ask, "purpose": "billing"}
    r = system.http.post("/v1/access-requests", headers=entities.consumer_headers, json=other)
    assert r.status_code == 403 and "purpose_not_allowed" in r.json()["detail"], r.text
    # The provider cannot read through the consumer's door, nor can a subject.
    for role, key in (("provider", entities.provider), ("subject", drivers[0])):
        r = system.http.post("/v1/access-requests", headers=system.headers(key, role), json=ask)
        assert r.status_code == 403, r.text


def test_erasure_by_the_dpo_and_by_the_subject_leaves_nothing_readable(
    system: System, entities: Entities
) -> None:
    erased, requester = (system.member("subject", "citizens") for _ in range(2))
    dataset = _addresses(system, entities, [erased, requester])
    for s in (erased, requester):
        _grant(system, s, entities.consumer, dataset, "proof-of-address")
    ids = [erased.public_key.hex(), requester.public_key.hex()]
    ask = {"dataset_id": dataset, "purpose": "proof-of-address", "subjects": ids}
    r = system.http.post("/v1/access-requests", headers=entities.consumer_headers, json=ask)
    assert sorted(r.json()["granted"]) == sorted(ids) and len(r.json()["records"]) == 2

    # Only the DPO erases on the vault's side.
    for role, key in (("provider", entities.provider), ("consumer", entities.consumer)):
        r = system.http.post(
            "/v1/erasures", headers=system.headers(key, role), json={"subject_id": ids[0]}
        )
        assert r.status_code == 403, r.text
    dpo = system.headers(system.dpo, "dpo")
    r = system.http.post("/v1/erasures", headers=dpo, json={"subject_id": ids[0]})
    assert r.status_code == 201, r.text
    cert = r.json()
    assert cert["state"] == "recorded" and cert["secrets_destroyed"] >= 1
    assert cert["key_commitments"] and cert["receipt"]["block_height"] >= 1
    assert system.http.get(f"/v1/erasures/{cert['erasure_id']}", headers=dpo).json() == cert
    block = system.http.get(f"/v1/ledger/blocks/{cert['receipt']['block_height']}", headers=dpo)
    assert block.json()["verified"] is True
    txs = block.json()["transactions"]
    assert [t["type"] for t in txs if t["tx_id"] == cert["receipt"]["tx_id"]] == ["erasure.record"]

    # The subject's own Art. 17 request, signed with their wallet.
    scope = {"kind": "subject", "subject": ids[1]}
    r = system.submit("/v1/erasure-requests", requester, "erasure.request", {"scope": scope})
    assert r.status_code == 201, r.text
    assert r.json()["requester"] == "subject" and r.json()["request"] >= 1

    r = system.http.post("/v1/access-requests", headers=entities.consumer_headers, json=ask)
    assert r.status_code == 200, r.text
    assert r.json()["records"] == [] and r.json()["granted"] == []
    assert sorted(r.json()["denied"]) == sorted([i, "erased"] for i in ids)
    predicate = {
        "dataset_id": dataset,
        "purpose": "proof-of-address",
        "subjects": [ids[0]],
        "predicate": {"field": "address", "op": "eq", "value": ADDRESS},
    }
    r = system.http.post("/v1/access-requests", headers=entities.consumer_headers, json=predicate)
    assert r.status_code == 403, r.text
    assert r.json()["detail"].startswith("erased: the subject's data is erased")
    # The export shows the erasure from the ledger and no readable record.
    export = system.http.get(f"/v1/subjects/{ids[0]}/export", headers=dpo).json()
    assert export["records"] == [] and len(export["erasures"]) == 1


def test_no_payload_value_is_in_any_block(system: System) -> None:
    """Run after the stories: every committed block, as encoded, read from the replicas."""
    gateway = LedgerGateway.from_directory(
        system.data_dir / "ledger", system.data_dir / "keys", clients=1
    )
    try:
        height = max((gateway.status(i) or {}).get("height", 0) for i in range(4))
        assert height > 100  # the demo's two runs and the stories above
        values = [ADDRESS, WRONG_ADDRESS, EMPLOYEE, VIBRATION, DEMO_ADDRESS]
        needles = [v.encode() for v in values] + [
            hashlib.sha256(v.encode()).digest() for v in (ADDRESS, WRONG_ADDRESS)
        ]
        # The scan sees what blocks do hold: the DPO signed proposals, so its key is there.
        dpo_key = bytes(system.dpo.public_key)
        dpo_seen = 0
        for h in range(1, height + 1):
            raw = m.encode(gateway.block(h))
            found = [n for n in needles if n in raw]
            assert not found, f"block {h} holds a payload value"
            dpo_seen += dpo_key in raw
        assert dpo_seen >= 4
    finally:
        gateway.close()


def test_ctrl_c_stops_the_whole_system(system: System) -> None:
    ledger = system.data_dir / "ledger"
    assert len(_replica_pids(ledger)) == 4
    assert system.up.stop(signal.SIGINT) == 0, system.up.output[-3000:]
    assert "civis-vault up: stopped" in system.up.output
    assert not _replica_pids(ledger)
