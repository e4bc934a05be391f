"""Exactly-once ledger facts across crashes (DESIGN.md invariant 5), and refusals.

A real relay process ships the outbox of a real PostgreSQL to a real 4-replica cluster running
the consent contracts, and is SIGKILLed at each step (before the submission, after the ledger
committed but before the database knows, after marking); a restarted relay finishes the job.
Afterwards every fact is on the ledger exactly once, as the contract transaction the database
recorded (tx id and height), and the contracts' state agrees: the upload is anchored and then
expired, the subject's erasure recorded with the destroyed commitments.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from api.services.gateway import (
    VAULT_KEY_FILE,
    LedgerGateway,
    _carries,
    fact_nonce,
    load_or_create_key,
)
from api.services.outbox import FactReceipt, OutboxRelay, outbox_counts, requeue
from ledger_bridge.cluster import Cluster
from ledger_bridge.contracts import tx
from ledger_bridge.crypto import SigningKey
from ledger_bridge.facts import ErasureRecord
from ledger_bridge.pbft import messages as m
from tests.ledger_bridge.test_processes import _base_port
from tests.vault.conftest import VaultServices, make_dataset
from tests.vault.conftest import committed_engine as committed_engine  # fixture
from tests.vault.conftest import services as services  # fixture
from vault.models import OutboxFact, Upload
from vault.uploads import RecordIn, Uploader

pytestmark = pytest.mark.e2e


PROVIDER = SigningKey(bytes(range(1, 33)))
SUBJECT = bytes(range(32, 64)).hex()  # a subject's pseudonym: their wallet key, in hex


@pytest.fixture()
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    keys = tmp_path / "keys"
    vault = load_or_create_key(keys / VAULT_KEY_FILE)
    app_genesis = {
        "members": [
            {"public_key": bytes(vault.public_key).hex(), "role": "vault", "college": "providers"},
            {
                "public_key": bytes(PROVIDER.public_key).hex(),
                "role": "provider",
                "college": "providers",
            },
        ]
    }
    params = {"app": "contracts", "batch_size_max": 10, "batch_wait_ms": 2}
    with Cluster(
        tmp_path / "ledger", 4, base_port=_base_port(), params=params, app_genesis=app_genesis
    ) as c:
        c.start()
        c.wait_ready()
        yield c


def _register(gateway: LedgerGateway, dataset_id: uuid.UUID, *, retention_days: int) -> None:
    """The provider's dataset on the ledger, as the API registers it."""
    gateway.act(
        "dataset.register",
        {
            "dataset": str(dataset_id),
            "owner": bytes(PROVIDER.public_key),
            "category": "energy",
            "purposes": ["billing"],
            "retention_days": retention_days,
            "legal_basis": "consent",
        },
    )


def _relay(cluster: Cluster, url: str, crash_at: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CIVIS_CRASH_AT"}
    if crash_at:
        env["CIVIS_CRASH_AT"] = crash_at
    keys = cluster.directory.parent / "keys"
    args = [sys.executable, "-m", "tests.api.relay_child", url, str(cluster.directory), str(keys)]
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("crash_at", ["before-submit", "after-submit", "after-mark"])
def test_a_crash_at_any_step_records_each_fact_once(
    cluster: Cluster,
    committed_engine: Engine,
    services: VaultServices,
    crash_at: str,
) -> None:
    url = committed_engine.url.render_as_string(hide_password=False)
    keys = cluster.directory.parent / "keys"
    gateway = LedgerGateway.from_directory(cluster.directory, keys, clients=1)
    try:
        # Uploaded ten days ago with a one-day retention: its epoch has ended by contract time.
        past = dt.datetime.now(dt.UTC) - dt.timedelta(days=10)
        uploader = Uploader(services.store, clock=lambda: past)
        with Session(committed_engine) as session, session.begin():
            dataset = make_dataset(session, retention_days=1)
            _register(gateway, dataset.id, retention_days=1)
            up = uploader.upload(session, dataset.id, [RecordIn(SUBJECT, b"{}")] * 3)
            # In the dataset: an erasure everywhere would have the replicas redact its own
            # request's body, and this test finds each fact's transaction by its body.
            services.eraser.erase_subject(
                session, SUBJECT, dataset_id=dataset.id, reason="dpo_decision", requester="dpo"
            )
            services.eraser.expire_epoch(session, dataset.id, up.retention_day)
        crashed = _relay(cluster, url, crash_at)
        assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
        done = _relay(cluster, url, None)
        assert done.returncode == 0, done.stderr[-2000:]
        again = _relay(cluster, url, None)
        assert json.loads(again.stdout) == {"shipped": 0}

        with Session(committed_engine) as session:
            facts = session.scalars(select(OutboxFact).order_by(OutboxFact.id)).all()
        assert [f.kind for f in facts] == ["upload.anchor", "erasure.record", "retention.expire"]
        assert all(f.sent_at is not None and f.block_height for f in facts)
        # Each fact's transaction (found by the vault's nonce for it) is on the chain once,
        # committed with the result the contracts gave, at the recorded height and tx id.
        nonces: dict[bytes, OutboxFact] = {}
        for f in facts:
            assert f.request_id is not None
            nonces[fact_nonce(f.id, f.request_id)] = f
        on_chain: dict[int, list[tuple[int, str]]] = {}
        top = max((gateway.status(i) or {}).get("height", 0) for i in range(4))
        for height in range(1, top + 1):
            for req in gateway.block(height).requests:  # refused ones leave no body
                signed = tx.decode(req.tx)
                if signed.author == gateway.vault_id and signed.nonce in nonces:
                    fact = nonces[signed.nonce]
                    on_chain.setdefault(fact.id, []).append((height, signed.tx_id.hex()))
        assert on_chain == {f.id: [(f.block_height, f.tx_id)] for f in facts}, "each fact once"
        upload = gateway.query("upload", upload=str(up.upload_id))["result"]
        assert upload["status"] == "expired"
        [erasure] = gateway.query("erasures", subject=SUBJECT)["result"]
        assert erasure["reason"] == "dpo_decision" and len(erasure["key_commitments"]) == 1
    finally:
        gateway.close()


def test_a_refused_fact_is_set_aside_and_holds_up_nothing(
    cluster: Cluster, committed_engine: Engine, services: VaultServices
) -> None:
    """The contracts refuse an anchor (its dataset is not registered on the chain); the relay
    sets it aside and the upload behind it is anchored all the same. The DPO's retry, once the
    dataset is registered, ships the refused fact in its place."""
    keys = cluster.directory.parent / "keys"
    gateway = LedgerGateway.from_directory(cluster.directory, keys, clients=1)
    sessions = sessionmaker(committed_engine)
    relay = OutboxRelay(sessions, gateway)
    registration = {
        "owner": bytes(PROVIDER.public_key),
        "category": "energy",
        "purposes": ["billing"],
        "retention_days": 30,
        "legal_basis": "consent",
    }
    try:
        with sessions() as session, session.begin():
            unknown = make_dataset(session).id  # in the vault, not on the chain
            known = make_dataset(session).id
            gateway.act("dataset.register", {"dataset": str(known), **registration})
            first = services.uploader.upload(session, unknown, [RecordIn(SUBJECT, b"{}")])
            second = services.uploader.upload(session, known, [RecordIn(SUBJECT, b"{}")])

        assert relay.run_once() == 2  # both settled: one refused, one recorded
        with sessions() as session:
            refused = session.get(OutboxFact, first.outbox_id)
            recorded = session.get(OutboxFact, second.outbox_id)
            assert refused is not None and recorded is not None
            assert refused.refused_at is not None and refused.sent_at is None
            assert refused.last_error is not None and refused.last_error.split(":")[0] in {
                "not_found",
                "invalid",
            }, refused.last_error
            assert recorded.sent_at is not None and recorded.refused_at is None
            states = {u.id: u.state for u in session.scalars(select(Upload)).all()}
            assert states == {first.upload_id: "refused", second.upload_id: "anchored"}
            assert outbox_counts(session) == (0, 1)
        assert relay.run_once() == 0, "a refused fact is not retried by itself"

        gateway.act("dataset.register", {"dataset": str(unknown), **registration})
        with sessions() as session, session.begin():
            assert requeue(session, second.outbox_id) is None  # recorded: nothing to retry
            back = requeue(session, first.outbox_id)
            assert back is not None and back.refused_at is None
        with sessions() as session:
            assert session.get(Upload, first.upload_id).state == "pending"  # type: ignore[union-attr]
        assert relay.run_once() == 1
        with sessions() as session:
            fact = session.get(OutboxFact, first.outbox_id)
            upload = session.get(Upload, first.upload_id)
            assert fact is not None and fact.sent_at is not None and fact.block_height
            assert upload is not None and upload.state == "anchored"
            assert upload.anchor_tx_id == fact.tx_id
            assert outbox_counts(session) == (0, 0)
        anchored = gateway.query("upload", upload=str(first.upload_id))["result"]
        assert anchored is not None and anchored["status"] == "anchored"
    finally:
        gateway.close()


def test_two_relay_processes_at_once_ship_each_fact_once(
    cluster: Cluster, committed_engine: Engine, services: VaultServices
) -> None:
    """As the API's worker processes do: two relays, each a process with its own gateway and
    the same fixed relay key, started together on one outbox. The relay's lock lets one ship
    while the other ships nothing; every fact is on the chain once."""
    url = committed_engine.url.render_as_string(hide_password=False)
    keys = cluster.directory.parent / "keys"
    gateway = LedgerGateway.from_directory(cluster.directory, keys, clients=1)
    try:
        with Session(committed_engine) as session, session.begin():
            dataset = make_dataset(session)
            _register(gateway, dataset.id, retention_days=30)
            uploads = [
                services.uploader.upload(session, dataset.id, [RecordIn(SUBJECT, b"{}")])
                for _ in range(6)
            ]
        args = [sys.executable, "-m", "tests.api.relay_child", url, str(cluster.directory)]
        relays = [
            subprocess.Popen([*args, str(keys)], stdout=subprocess.PIPE, text=True)
            for _ in range(2)
        ]
        shipped = [json.loads(r.communicate(timeout=120)[0])["shipped"] for r in relays]
        assert all(r.returncode == 0 for r in relays)
        assert sorted(shipped) == [0, len(uploads)]
        with Session(committed_engine) as session:
            facts = session.scalars(select(OutboxFact).order_by(OutboxFact.id)).all()
        assert len(facts) == len(uploads) and all(f.sent_at is not None for f in facts)
        seen: dict[str, int] = {}
        top = max((gateway.status(i) or {}).get("height", 0) for i in range(4))
        for height in range(1, top + 1):
            for req in gateway.block(height).requests:
                signed = tx.decode(req.tx)
                if signed.author == gateway.vault_id and signed.type == "upload.anchor":
                    seen[signed.tx_id.hex()] = seen.get(signed.tx_id.hex(), 0) + 1
        assert seen == {f.tx_id: 1 for f in facts}, "each fact once"
    finally:
        gateway.close()


class _RecordedWithoutRequest:
    """A sink whose ledger recorded every fact, but which could not find the request that
    carried an erasure (its block redacted it before the sink read it back)."""

    def valid_until(self, stored: int | None) -> int:
        return stored or 1

    def record(
        self,
        fact_id: int,
        kind: str,
        payload: dict[str, Any],
        *,
        request_id: int,
        valid_until: int,
    ) -> FactReceipt:
        return FactReceipt("ab" * 32, 7)


def test_an_erasure_recorded_without_its_request_is_settled_and_reported(
    committed_engine: Engine, services: VaultServices, caplog: pytest.LogCaptureFixture
) -> None:
    """No receipt can be sealed then: the erasure is still recorded and its subject forgotten
    (no retry would bring the request back), and the operator is told which fact, by its id
    and height, never by whom it erased."""
    with Session(committed_engine) as session, session.begin():
        dataset = make_dataset(session)
        services.uploader.upload(session, dataset.id, [RecordIn(SUBJECT, b"{}")])
        erased = services.eraser.erase_subject(
            session,
            SUBJECT,
            dataset_id=None,
            reason="subject_request",
            requester="subject",
            receipt_to=os.urandom(32),
        )
    assert erased.outbox_id is not None
    relay = OutboxRelay(sessionmaker(committed_engine), _RecordedWithoutRequest())
    with caplog.at_level(logging.ERROR, logger="api.services.outbox"):
        assert relay.run_once() == 2  # the upload's anchor, then the erasure
    with Session(committed_engine) as session:
        fact = session.get(OutboxFact, erased.outbox_id)
        assert fact is not None and fact.sent_at is not None
        record = ErasureRecord.from_payload(fact.payload)
    assert record.forgotten and record.sealed_receipt is None
    [reported] = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert (
        f"outbox fact {erased.outbox_id} " in reported and "without an erasure receipt" in reported
    )
    assert SUBJECT not in caplog.text


class _Unanswered:
    """A sink whose ledger never answers in time, on a clock the test moves: it notes what it
    was asked to send, and what the fact's row held at that moment. Its transactions live five
    minutes and need 40 s left to be ordered."""

    TTL_MS, MARGIN_MS = 300_000, 40_000

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions
        self.now_ms = 1_900_000_000_000
        self.sent: list[tuple[int, int]] = []
        self.rows: list[tuple[int | None, int | None]] = []

    def valid_until(self, stored: int | None) -> int:
        if stored is not None and stored - self.now_ms > self.MARGIN_MS:
            return stored
        return self.now_ms + self.TTL_MS

    def record(
        self,
        fact_id: int,
        kind: str,
        payload: dict[str, Any],
        *,
        request_id: int,
        valid_until: int,
    ) -> FactReceipt:
        self.sent.append((request_id, valid_until))
        with self._sessions() as session:
            fact = session.get(OutboxFact, fact_id)
            assert fact is not None
            self.rows.append((fact.request_id, fact.valid_until))
        raise TimeoutError("no f+1 matching replies")


def test_every_resubmission_signs_with_the_stored_valid_until_until_it_runs_short(
    committed_engine: Engine, services: VaultServices
) -> None:
    """The request id and `valid_until` of a fact's submission are stored before it is sent,
    so a retry by another worker's relay (or after a crash) sends the same request; a
    `valid_until` too close to be ordered is replaced, under the same request id; a fact the
    DPO sends again after a refusal gets both anew."""
    sessions = sessionmaker(committed_engine, expire_on_commit=False)
    with sessions() as session, session.begin():
        upload = services.uploader.upload(
            session, make_dataset(session).id, [RecordIn(SUBJECT, b"{}")]
        )
    sink = _Unanswered(sessions)
    assert OutboxRelay(sessions, sink).run_once() == 0
    [(request_id, first)] = sink.sent
    assert first == sink.now_ms + sink.TTL_MS
    assert sink.rows == [(request_id, first)]  # stored before it was sent

    sink.now_ms += sink.TTL_MS - sink.MARGIN_MS - 1
    assert OutboxRelay(sessions, sink).run_once() == 0  # another worker's relay
    assert sink.sent[-1] == (request_id, first)
    sink.now_ms += 1
    assert OutboxRelay(sessions, sink).run_once() == 0
    renewed = sink.now_ms + sink.TTL_MS
    assert sink.sent[-1] == sink.rows[-1] == (request_id, renewed)

    with sessions() as session, session.begin():
        fact = session.get(OutboxFact, upload.outbox_id)
        assert fact is not None
        fact.refused_at = dt.datetime.now(dt.UTC)  # as the relay sets a refused fact aside
    with sessions() as session, session.begin():
        again = requeue(session, upload.outbox_id)
        assert again is not None and (again.request_id, again.valid_until) == (None, None)
    assert OutboxRelay(sessions, sink).run_once() == 0
    new_id, new_until = sink.sent[-1]
    assert new_id > request_id and new_until == renewed


def test_a_request_carries_a_transaction_only_when_it_decodes_to_one_holding_it() -> None:
    """What lets the relay hand a subject the request it just sent as their erasure receipt:
    it must be a PBFT request, and carry the committed transaction; anything else is not."""
    key = SigningKey.generate()
    signed = tx.sign(key, "civis-test", "erasure.record", {"n": 1}, valid_until=2**40)
    other = tx.sign(key, "civis-test", "erasure.record", {"n": 2}, valid_until=2**40)
    request = m.encode(m.Request(bytes(key.public_key), 7, signed.encode()))
    assert _carries(request, signed.tx_id)
    assert not _carries(request, other.tx_id)
    assert not _carries(b"\xc1 not msgpack", signed.tx_id)
    assert not _carries(m.encode(m.Request(bytes(key.public_key), 7, b"junk")), signed.tx_id)
    assert not _carries(m.encode(m.Reply(0, 7, bytes(32), 1, b"ok", 3)), signed.tx_id)
