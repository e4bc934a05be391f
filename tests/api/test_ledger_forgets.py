"""After an erasure commits, nothing on a replica, in the vault or in a log names the subject.

The whole system as `civis-vault up` runs it: PostgreSQL, four replica processes, the API under
uvicorn. Two subjects (pseudonyms) of one dataset consent, are read by a consumer and asked a
predicate; one is erased everywhere. Once every replica's stable checkpoint covers the erasure,
the test scans, for the erased subject's key (raw and hex) and the payload values uploaded for
them:

- every file under the data directory: each replica's SQLite store and its WAL, snapshots,
  keys, the API's files;
- every block each replica serves and the answers of every query;
- a `pg_dump` of the vault's database;
- everything `up` printed (its log and the replicas').

Zero hits. The control is the same scan finding the subject that was not erased, in the
replica stores, the blocks and the dump: a scan that finds nothing anywhere proves nothing.
The chain still verifies from genesis with the validator keys alone, the audit finds no
replica serving a redacted body, and the surviving subject's records still come with inclusion
proofs that verify against the anchored Merkle root.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Awaitable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from api.client import public_hex
from api.services.gateway import LedgerGateway
from ledger_bridge.audit import Position, verify_replicas
from ledger_bridge.client import AsyncLedgerClient
from ledger_bridge.contracts import codec
from ledger_bridge.crypto import SigningKey
from ledger_bridge.pbft import messages as m
from ledger_bridge.receipts import ErasureReceipt, verify
from tests.api.notice_helpers import publish
from tests.api.test_datasets import rec_leaf
from tests.api.test_e2e_up import Entities, System, entities, system
from tests.vault.test_forensic import _pg_dump
from vault.crypto.merkle import verify_inclusion

pytestmark = pytest.mark.e2e

__all__ = ["entities", "system"]  # the fixtures this module shares with the stories

REDACTION_TIMEOUT_S = 60
ERASED_ADDRESS = "3 chemin des Oubliés, 69007 Lyon"
ERASED_IBAN = "FR7630006000011234567890189"
KEPT_ADDRESS = "5 quai des Présents, 69002 Lyon"


def _needles(key: SigningKey, *values: str) -> dict[str, bytes]:
    raw = bytes(key.public_key)
    out = {"key raw": raw, "key hex": raw.hex().encode(), "key HEX": raw.hex().upper().encode()}
    out.update({f"value {v!r}": v.encode() for v in values})
    return out


def _found(needles: dict[str, bytes], sources: Iterable[tuple[str, bytes]]) -> list[str]:
    return [
        f"{what} in {where}" for where, blob in sources for what, n in needles.items() if n in blob
    ]


def _files(root: Path) -> Iterator[tuple[str, bytes]]:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            yield str(path.relative_to(root)), path.read_bytes()


@dataclass
class Served:
    """What the replicas serve: every block of each, and query answers."""

    blocks: dict[int, list[m.Block]]
    answers: list[tuple[str, bytes]]

    def sources(self) -> Iterator[tuple[str, bytes]]:
        for replica, blocks in self.blocks.items():
            for b in blocks:
                yield f"replica {replica} block {b.height}", m.encode(b)
        yield from self.answers


def _served(gateway: LedgerGateway, subjects: list[str], consumer: bytes) -> Served:
    height = min((gateway.status(i) or {}).get("height", 0) for i in range(4))
    blocks = {i: [gateway.block(h, replica=i) for h in range(1, height + 1)] for i in range(4)}
    queries: list[dict[str, object]] = [
        {"q": "status"},
        {"q": "members"},
        {"q": "accesses", "consumer": consumer},
        {"q": "accesses"},
        {"q": "erasures"},
        {"q": "redactions"},
    ]
    for s in subjects:
        queries += [{"q": "consents", "subject": s}, {"q": "accesses", "subject": s}]
    answers = []
    for i in range(4):
        for q in queries:
            answers.append((f"replica {i} {q['q']}", _ask(gateway, codec.encode(q), i)))
    return Served(blocks, answers)


def _ask(gateway: LedgerGateway, request: bytes, replica: int) -> bytes:
    """One replica's answer to a query, as it sent it (the gateway asks any replica)."""

    def ask(client: AsyncLedgerClient) -> Awaitable[bytes]:
        return client.query(request, replica)

    return gateway._borrow(ask)


def _wait_redacted(gateway: LedgerGateway) -> dict[int, int]:
    """Until every replica applied every redaction due; returns each one's stable checkpoint."""
    deadline = time.monotonic() + REDACTION_TIMEOUT_S
    while time.monotonic() < deadline:
        statuses = [gateway.status(i) or {} for i in range(4)]
        if all(
            s.get("redactions_applied", 0) >= 1 and s.get("redactions_pending") == 0
            for s in statuses
        ):
            return {i: int(s["stable_seq"]) for i, s in enumerate(statuses)}
        time.sleep(0.2)
    raise AssertionError(f"redaction never completed: {statuses}")


def _dataset(entities: Entities, erased: SigningKey, kept: SigningKey) -> str:
    """A utility's dataset holding both subjects' records, anchored."""
    dataset: str = entities.provider_api.create_dataset(
        f"forget-{secrets.token_hex(4)}",
        category="address",
        purposes=["proof-of-address", "billing"],
        retention_days=365,
        legal_basis="contract",
    )["id"]
    rows = [
        {
            "subject_id": public_hex(erased),
            "payload": {"address": ERASED_ADDRESS, "iban": ERASED_IBAN},
        },
        {"subject_id": public_hex(kept), "payload": {"address": KEPT_ADDRESS}},
    ]
    lines = "".join(json.dumps(r) + "\n" for r in rows).encode()
    anchored = entities.provider_api.upload(dataset, lines, media_type="application/x-ndjson")
    assert anchored["state"] == "anchored"
    return dataset


def _scan(system: System, served: Served, erased: SigningKey, kept: SigningKey) -> None:
    """Zero hits for the erased subject anywhere; the kept one found in each kind of place."""
    gone = _needles(erased, ERASED_ADDRESS, ERASED_IBAN)
    here = _needles(kept)
    dump = _pg_dump(system.database_url)
    stores = list(_files(system.data_dir))
    replica_files = [s for s in stores if s[0].startswith("ledger/")]
    assert any(name.endswith("replica.sqlite3") for name, _ in replica_files)
    logs = [("up output", system.up.output.encode())]
    assert _found(gone, [*stores, ("pg_dump", dump), *served.sources(), *logs]) == []
    # Control: the subject not erased is where the scan looks, in each kind of place.
    assert _found({"key hex": here["key hex"]}, [("pg_dump", dump)])
    assert _found({"key raw": here["key raw"]}, replica_files)
    assert _found(here, served.sources())


def test_nothing_on_the_replicas_the_vault_or_the_logs_names_an_erased_subject(
    system: System, entities: Entities
) -> None:
    erased, kept = SigningKey.generate(), SigningKey.generate()
    for s in (erased, kept):
        system.api.register(s, "subject", "citizens")
    dataset = _dataset(entities, erased, kept)
    bank = public_hex(entities.consumer)
    for s, purpose in ((erased, "proof-of-address"), (kept, "billing")):
        notice = publish(entities.consumer_api, bank, purpose)
        system.api.grant_consent(s, consumer=bank, purpose=purpose, notice=notice, dataset=dataset)
    ids = [public_hex(erased), public_hex(kept)]
    asked = entities.consumer_api.predicate(
        dataset, "proof-of-address", subject=ids[0], field="address", op="eq", value=ERASED_ADDRESS
    )
    assert asked["result"] is True
    read = entities.consumer_api.access(dataset, "billing", subjects=[ids[1]])
    assert read["granted"] == [ids[1]] and len(read["records"]) == 1

    dpo = system.client(system.dpo, "dpo")
    # Routes that carry the subject's key in their path reach `up`'s access log.
    assert len(dpo.export(ids[0])["records"]) == 1
    cert = dpo.erase(subject_id=ids[0])
    assert cert["state"] == "recorded"
    receipt = ErasureReceipt.from_json(dict(cert)["erasure_receipt"])

    gateway = LedgerGateway.from_directory(
        system.data_dir / "ledger", system.data_dir / "keys", clients=1
    )
    try:
        stables = _wait_redacted(gateway)
        served = _served(gateway, ids, bytes(entities.consumer.public_key))
        listed = gateway.query("redactions", limit=1000)["result"]
        redactions = [Position(r["height"], r["index"], r["since"]) for r in listed]
        validators = gateway.genesis.public_keys()
    finally:
        gateway.close()
    assert len(redactions) >= 4  # registration, consent, predicate access, erasure

    _scan(system, served, erased, kept)

    # The chain verifies from genesis with the validator keys alone, and no replica serves a
    # transaction the erasure ordered forgotten.
    audit = verify_replicas(served.blocks, validators, redactions=redactions, stables=stables)
    assert audit.ok, audit.findings
    assert len(set(audit.heights.values())) == 1
    # The erasure stays provable to the subject holding the receipt, and to nobody else.
    at = served.blocks[0][receipt.height - 1]
    assert verify(receipt, at, validators, ids[0])
    assert not verify(receipt, at, validators, ids[1])
    _survivor_proof_verifies(system, entities, dataset, ids[1])


def _survivor_proof_verifies(
    system: System, entities: Entities, dataset: str, subject: str
) -> None:
    """The surviving subject's record still comes with an inclusion proof that verifies
    against the Merkle root anchored on the ledger (the upload outlives the erasure)."""
    read = entities.consumer_api.access(dataset, "billing", subjects=[subject])
    assert read["granted"] == [subject]
    [record] = read["records"]
    proof = record["proof"]
    gateway = LedgerGateway.from_directory(
        system.data_dir / "ledger", system.data_dir / "keys", clients=1
    )
    try:
        root = gateway.query("upload", upload=record["upload_id"])["result"]["merkle_root"]
    finally:
        gateway.close()
    assert proof is not None and proof["merkle_root"] == root.hex()
    assert verify_inclusion(
        rec_leaf(record),
        proof["leaf_index"],
        proof["tree_size"],
        [bytes.fromhex(h) for h in proof["audit_path"]],
        root,
    )
