"""Art. 16 rectification in the vault: a new version in, the old version's key out.

Attacks first: rectifying an erased record, a superseded one, one of another dataset, with a
corrected record of another subject, or while the subject has records the ledger has not
anchored; each is refused and changes nothing. Then what a rectification must leave: the
corrected value readable under a new id, the subject's other records readable (new ids, same
values), other subjects untouched with their proofs; the old version's ciphertext, copied
before, opened by no combination of the secrets the store holds afterwards (and by the
combination the store held before: the control); the old ciphertext and the old wrapped
secret absent from a pg_dump taken after (present in one taken before); a failure at any step
leaves all or nothing; a concurrent upload makes it wait, then fail cleanly; the audits stay
clean (a fresh secret under the old scope is not the destroyed one); the subject is not
erased and can get new records.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session

from ledger_bridge.facts import RECORD_RECTIFY, UPLOAD_ANCHOR, RecordRectify
from tests.vault.conftest import VaultServices, make_dataset
from tests.vault.test_forensic import _pg_dump, _wrapped_from_dump
from vault import rectification
from vault.audit import retention_audit
from vault.crypto import DecryptionFailed, derive_dek, record_leaf, unseal
from vault.crypto.merkle import leaf_hash, verify_inclusion
from vault.erasure import FORGOTTEN_PREFIX, Eraser
from vault.errors import (
    InvalidRecord,
    RecordNotFound,
    RecordSuperseded,
    RectificationBusy,
    RectificationRefused,
)
from vault.keys import KeyStore, LocalKeyProvider, SecretRef
from vault.models import KeyCommitment, KeySecret, OutboxFact, Record, Upload
from vault.reads import Reader
from vault.uploads import RecordIn, Uploader

DAY1 = dt.datetime(2026, 11, 1, 9, tzinfo=dt.UTC)
DAY2 = dt.datetime(2026, 11, 3, 9, tzinfo=dt.UTC)


def _anchor_all(session: Session) -> None:
    """What the relay does once the ledger committed the anchors."""
    session.execute(update(Upload).where(Upload.state == "pending").values(state="anchored"))


@dataclass
class Scene:
    dataset: uuid.UUID
    first: uuid.UUID  # upload of day 1: alice a0, a1 and bob b0
    second: uuid.UUID  # upload of day 2: alice a2
    ids: dict[str, uuid.UUID]  # payload "v" -> record id


def _scene(session: Session, store: KeyStore) -> Scene:
    dataset = make_dataset(session, retention_days=30).id
    up1 = Uploader(store, clock=lambda: DAY1).upload(
        session,
        dataset,
        [
            RecordIn("alice", {"v": "a0", "city": "Lyon"}),
            RecordIn("bob", {"v": "b0", "city": "Nantes"}),
            RecordIn("alice", {"v": "a1", "city": "Lyon"}),
        ],
    )
    up2 = Uploader(store, clock=lambda: DAY2).upload(
        session, dataset, [RecordIn("alice", {"v": "a2", "city": "Lyon"})]
    )
    _anchor_all(session)
    ids = {
        json.loads(r.payload)["v"]: r.record_id for r in Reader(store).by_dataset(session, dataset)
    }
    return Scene(dataset, up1.upload_id, up2.upload_id, ids)


def _values(session: Session, store: KeyStore, dataset: uuid.UUID, subject: str) -> list[Any]:
    found = Reader(store).by_subject(session, subject, dataset_id=dataset)
    return sorted((json.loads(r.payload) for r in found), key=lambda p: p["v"])


def _state(session: Session, dataset: uuid.UUID) -> tuple[Any, ...]:
    """Everything a refused rectification must leave as it was."""
    return (
        sorted(
            (str(r.id), r.envelope, r.superseded_by)
            for r in session.scalars(select(Record).where(Record.dataset_id == dataset))
        ),
        sorted(
            (k.kind, k.scope, k.wrapped)
            for k in session.scalars(select(KeySecret).where(KeySecret.dataset_id == dataset))
        ),
        session.scalar(select(OutboxFact.id).order_by(OutboxFact.id.desc()).limit(1)),
        sorted(
            (str(k.upload_id), k.subject_id, k.destroyed_at is None)
            for k in session.scalars(select(KeyCommitment))
        ),
    )


FIXED = {"subject_id": "alice", "payload": {"v": "a1-fixed", "city": "Grenoble"}}


def test_the_new_version_replaces_the_old_and_the_others_stay(
    session: Session, services: VaultServices
) -> None:
    store = services.store
    sc = _scene(session, store)
    bob_before = next(Reader(store).by_subject(session, "bob"))
    done = rectification.rectify(session, store, sc.dataset, sc.ids["a1"], FIXED)

    assert done.replaced == sc.ids["a1"] and done.record_id != sc.ids["a1"]
    assert [p["v"] for p in _values(session, store, sc.dataset, "alice")] == [
        "a0",
        "a1-fixed",
        "a2",
    ]
    # every record of alice was written again: new ids, one replacement upload per source
    # upload, each keeping its source's retention day
    assert {v.replaced for v in done.versions} == {sc.ids[k] for k in ("a0", "a1", "a2")}
    current = {r.record_id for r in Reader(store).by_subject(session, "alice")}
    assert current == {v.record_id for v in done.versions}
    sources = session.scalars(select(Upload).where(Upload.id.in_([sc.first, sc.second])))
    assert sorted(u.retention_day for u in done.uploads) == sorted(u.retention_day for u in sources)
    for v in done.versions:
        old = session.get(Record, v.replaced)
        assert old is not None and old.envelope is None and old.superseded_by == v.record_id
    with pytest.raises(RecordSuperseded) as superseded:
        Reader(store).record(session, sc.ids["a1"])
    assert str(done.record_id) in superseded.value.detail
    # bob is untouched, and his proof against the first upload's root still verifies
    bob = next(Reader(store).by_subject(session, "bob"))
    assert bob.record_id == bob_before.record_id and bob.payload == bob_before.payload
    assert bob.merkle_root == bob_before.merkle_root and bob.proof == bob_before.proof
    bob_leaf = leaf_hash(record_leaf(bob.record_id.bytes, bob.leaf_salt, bob.payload))
    assert verify_inclusion(bob_leaf, bob.leaf_index, bob.record_count, bob.proof, bob.merkle_root)
    # the keys: alice's old commitments destroyed, the new ones live; the fact links them
    alice_keys = session.execute(
        select(KeyCommitment.upload_id, KeyCommitment.destroyed_at).where(
            KeyCommitment.subject_id == "alice"
        )
    ).all()
    destroyed = {u for u, at in alice_keys if at is not None}
    assert destroyed == {sc.first, sc.second}
    assert {u for u, at in alice_keys if at is None} == {u.upload_id for u in done.uploads}
    facts = session.scalars(select(OutboxFact).order_by(OutboxFact.id)).all()[-3:]
    assert [f.kind for f in facts] == [UPLOAD_ANCHOR, UPLOAD_ANCHOR, RECORD_RECTIFY]
    fact = RecordRectify.from_payload(facts[-1].payload)
    assert fact == RecordRectify(
        dataset=str(sc.dataset),
        superseded=done.superseded,
        replacement=done.replacement,
        requester="provider",
        at=fact.at,
    )
    assert {k.upload for k in fact.superseded} == {str(sc.first), str(sc.second)}
    assert "alice" not in json.dumps(facts[-1].payload)  # the fact names no subject
    # not an erasure: no erasure fact, the subject keeps a secret and may get new records
    assert not session.scalar(select(OutboxFact.id).where(OutboxFact.kind == "erasure.record"))
    Uploader(store).upload(session, sc.dataset, [RecordIn("alice", {"v": "a3"})])
    assert [p["v"] for p in _values(session, store, sc.dataset, "alice")] == [
        "a0",
        "a1-fixed",
        "a2",
        "a3",
    ]


def test_the_replacement_uploads_prove_their_records(
    session: Session, services: VaultServices
) -> None:
    store = services.store
    sc = _scene(session, store)
    corrected = {**FIXED, "payload": {"v": "a0-fixed"}}
    done = rectification.rectify(session, store, sc.dataset, sc.ids["a0"], corrected)
    for r in Reader(store).by_subject(session, "alice"):
        assert r.upload_id in {u.upload_id for u in done.uploads}
        leaf = leaf_hash(record_leaf(r.record_id.bytes, r.leaf_salt, r.payload))
        assert verify_inclusion(leaf, r.leaf_index, r.record_count, r.proof, r.merkle_root)


def _every_key(session: Session, store: KeyStore, dataset: uuid.UUID) -> dict[str, list[bytes]]:
    """Every secret the store holds for the dataset, by kind."""
    refs = [
        SecretRef(kind, ds, scope)
        for kind, ds, scope in session.execute(
            select(KeySecret.kind, KeySecret.dataset_id, KeySecret.scope).where(
                KeySecret.dataset_id == dataset
            )
        )
    ]
    out: dict[str, list[bytes]] = {"upload": [], "subject": [], "epoch": []}
    for ref, secret in store.load(session, refs).items():
        out[ref.kind].append(secret)
    return out


def _opens(keys: dict[str, list[bytes]], envelope: bytes, row: Record) -> bool:
    """Whether any combination of the secrets opens the envelope of `row`."""
    for u, s, e in itertools.product(keys["upload"], keys["subject"], keys["epoch"]):
        dek = derive_dek(
            upload_secret=u,
            subject_secret=s,
            epoch_secret=e,
            upload_id=row.upload_id.bytes,
            subject_id=row.subject_id.encode(),
        )
        try:
            unseal(
                dek,
                envelope,
                record_id=row.id.bytes,
                dataset_id=row.dataset_id.bytes,
                upload_id=row.upload_id.bytes,
            )
        except DecryptionFailed:
            continue
        return True
    return False


def test_no_key_the_store_holds_opens_the_old_ciphertext(
    session: Session, services: VaultServices
) -> None:
    store = services.store
    sc = _scene(session, store)
    row = session.get(Record, sc.ids["a1"])
    assert row is not None and row.envelope is not None
    copied = bytes(row.envelope)  # what a backup, a dead tuple or the WAL keeps
    assert _opens(_every_key(session, store, sc.dataset), copied, row)  # the control
    rectification.rectify(session, store, sc.dataset, sc.ids["a1"], FIXED)
    session.expire_all()
    row = session.get(Record, sc.ids["a1"])
    assert row is not None and row.envelope is None
    keys = _every_key(session, store, sc.dataset)
    assert keys["subject"] and keys["upload"] and keys["epoch"]
    assert not _opens(keys, copied, row), "a secret the store holds still opens the old version"
    # the other records' old ciphertexts neither: all of alice's old versions are gone
    for other in ("a0", "a2"):
        old = session.get(Record, sc.ids[other])
        assert old is not None and old.envelope is None


@pytest.mark.parametrize("attack", ["erased", "superseded", "other dataset", "other subject"])
def test_refused_rectifications_change_nothing(
    session: Session, services: VaultServices, attack: str
) -> None:
    store = services.store
    sc = _scene(session, store)
    target, dataset, corrected = sc.ids["a1"], sc.dataset, dict(FIXED)
    expected: type[Exception] = RectificationRefused
    if attack == "erased":
        Eraser(store).erase_subject(
            session, "alice", dataset_id=sc.dataset, reason="dpo_decision", requester="dpo"
        )
    elif attack == "superseded":
        rectification.rectify(session, store, sc.dataset, target, FIXED)
    elif attack == "other dataset":
        dataset = make_dataset(session).id
        expected = RecordNotFound
    else:
        corrected = {"subject_id": "bob", "payload": {"v": "mine now"}}
        expected = InvalidRecord
    before = _state(session, sc.dataset)
    with pytest.raises(expected):
        rectification.rectify(session, store, dataset, target, corrected)
    assert _state(session, sc.dataset) == before


def test_a_record_id_in_the_corrected_record_is_refused(
    session: Session, services: VaultServices
) -> None:
    sc = _scene(session, services.store)
    body = {**FIXED, "record_id": str(uuid.uuid4())}
    with pytest.raises(InvalidRecord):
        rectification.rectify(session, services.store, sc.dataset, sc.ids["a1"], body)


def test_records_the_ledger_has_not_anchored_hold_it_back(
    session: Session, services: VaultServices
) -> None:
    """Pending or refused records would be lost (their key destroyed) or slipped into an
    anchored upload: the rectification waits until they are settled."""
    store = services.store
    sc = _scene(session, store)
    pending = Uploader(store).upload(session, sc.dataset, [RecordIn("alice", {"v": "a9"})])
    for state in ("pending", "refused"):
        session.execute(update(Upload).where(Upload.id == pending.upload_id).values(state=state))
        before = _state(session, sc.dataset)
        with pytest.raises(RectificationRefused, match=state):
            rectification.rectify(session, store, sc.dataset, sc.ids["a1"], FIXED)
        assert _state(session, sc.dataset) == before


def test_a_request_is_carried_out_once(session: Session, services: VaultServices) -> None:
    store = services.store
    sc = _scene(session, store)
    done = rectification.rectify(session, store, sc.dataset, sc.ids["a1"], FIXED, request=7)
    before = _state(session, sc.dataset)
    with pytest.raises(RectificationRefused, match="already carried out"):
        rectification.rectify(session, store, sc.dataset, done.record_id, FIXED, request=7)
    assert _state(session, sc.dataset) == before
    # refused by the ledger: the request may be carried out again
    session.execute(
        update(OutboxFact).where(OutboxFact.id == done.outbox_id).values(refused_at=DAY2)
    )
    _anchor_all(session)
    rectification.rectify(session, store, sc.dataset, done.record_id, FIXED, request=7)


STEPS = ["_write_again", "_destroy_commitments", "_replacement_keys"]


@pytest.mark.parametrize("step", STEPS)
def test_a_failure_at_any_step_leaves_nothing(
    session: Session, services: VaultServices, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    """Invariant 5: the rectification is one savepoint; a crash inside it (here, an exception
    at each step after the old secret is gone) rolls back every row, secret and fact."""
    store = services.store
    sc = _scene(session, store)
    before = _state(session, sc.dataset)
    real: Callable[..., Any] = getattr(rectification, step)

    def crash(*args: Any, **kwargs: Any) -> Any:
        real(*args, **kwargs)
        raise RuntimeError(f"crash after {step}")

    monkeypatch.setattr(rectification, step, crash)
    with pytest.raises(RuntimeError):
        rectification.rectify(session, store, sc.dataset, sc.ids["a1"], FIXED)
    assert _state(session, sc.dataset) == before
    assert [p["v"] for p in _values(session, store, sc.dataset, "alice")] == ["a0", "a1", "a2"]
    monkeypatch.setattr(rectification, step, real)
    rectification.rectify(session, store, sc.dataset, sc.ids["a1"], FIXED)  # and it still can


def test_the_audit_tells_a_fresh_secret_from_a_destroyed_one(
    session: Session, services: VaultServices
) -> None:
    """The retention audit flags a commitment marked destroyed whose key can still be
    derived. After a rectification a secret of the same scope exists again, but it is a new
    one: with the key store the audit re-derives and finds nothing; a commitment marked
    destroyed whose key really lives is still found."""
    store = services.store
    sc = _scene(session, store)
    rectification.rectify(session, store, sc.dataset, sc.ids["a1"], FIXED)
    today = dt.date(2026, 11, 10)
    assert not retention_audit(session, today, dataset_id=sc.dataset, store=store).findings
    session.execute(
        update(KeyCommitment).where(KeyCommitment.subject_id == "bob").values(destroyed_at=DAY2)
    )
    findings = retention_audit(session, today, dataset_id=sc.dataset, store=store).findings
    assert [(f.code, f.refs["subject_id"]) for f in findings] == [
        ("destroyed-commitment-key-alive", "bob")
    ]


def test_an_erasure_after_a_rectification_forgets_every_version(
    session: Session, services: VaultServices
) -> None:
    store = services.store
    sc = _scene(session, store)
    rectification.rectify(session, store, sc.dataset, sc.ids["a1"], FIXED)
    Eraser(store).erase_subject(session, "alice", reason="subject_request", requester="subject")
    named = session.scalar(
        select(Record.id).where(Record.subject_id == "alice").limit(1)
    ) or session.scalar(select(KeyCommitment.upload_id).where(KeyCommitment.subject_id == "alice"))
    assert named is None
    rows = session.scalars(select(Record).where(Record.dataset_id == sc.dataset)).all()
    assert sum(r.subject_id.startswith(FORGOTTEN_PREFIX) for r in rows) == 6  # 3 old, 3 new
    assert list(Reader(store).by_subject(session, "alice")) == []
    assert [json.loads(r.payload)["v"] for r in Reader(store).by_dataset(session, sc.dataset)] == [
        "b0"
    ]


def test_a_concurrent_upload_holds_the_rectification_back(
    committed_engine: Engine, services: VaultServices
) -> None:
    """An upload reads the subject's secret and writes under it until it commits: the
    rectification waits for it, and gives up cleanly (409, nothing changed) past its wait."""
    store = services.store
    with Session(committed_engine) as session, session.begin():
        sc = _scene(session, store)
    with Session(committed_engine) as uploading, uploading.begin():
        Uploader(store).upload(uploading, sc.dataset, [RecordIn("alice", {"v": "late"})])
        with Session(committed_engine) as session, session.begin():
            with pytest.raises(RectificationBusy):
                rectification.rectify(
                    session, store, sc.dataset, sc.ids["a1"], FIXED, lock_timeout_ms=200
                )
            # the transaction is still usable, nothing was changed
            assert session.get(Record, sc.ids["a1"]).superseded_by is None  # type: ignore[union-attr]
        _anchor_all(uploading)
    with Session(committed_engine) as session, session.begin():
        rectification.rectify(session, store, sc.dataset, sc.ids["a1"], FIXED)
    with Session(committed_engine) as session:
        values = [p["v"] for p in _values(session, store, sc.dataset, "alice")]
    assert values == ["a0", "a1-fixed", "a2", "late"]  # the late record was re-keyed too


def test_pg_dump_holds_neither_the_old_ciphertext_nor_the_old_secret(
    committed_engine: Engine, fresh_database_url: str, tmp_path: Path
) -> None:
    """A dump taken after holds the new version and none of the old one's ciphertext or its
    wrapped subject secret; the old ciphertext, taken from a dump made before, opens with no
    combination of the secrets in the dump made after (the control: it opens with the ones
    of the dump made before)."""
    provider = LocalKeyProvider(tmp_path / "master.key")
    store = KeyStore(provider)
    with Session(committed_engine) as session, session.begin():
        sc = _scene(session, store)
        old = session.get(Record, sc.ids["a1"])
        assert old is not None and old.envelope is not None
        envelope, row_fields = bytes(old.envelope), (old.id, old.dataset_id, old.upload_id)
        old_secret = session.scalars(
            select(KeySecret.wrapped).where(KeySecret.kind == "subject", KeySecret.scope == "alice")
        ).one()
    before = _pg_dump(fresh_database_url)
    assert envelope.hex().encode() in before and old_secret.hex().encode() in before
    with Session(committed_engine) as session, session.begin():
        done = rectification.rectify(session, store, sc.dataset, sc.ids["a1"], FIXED)
    after = _pg_dump(fresh_database_url)
    assert envelope.hex().encode() not in after, "the old ciphertext is still in the dump"
    assert old_secret.hex().encode() not in after, "the old subject secret is still in the dump"
    with Session(committed_engine) as session:
        new = session.get(Record, done.record_id)
        assert new is not None and new.envelope is not None
        assert bytes(new.envelope).hex().encode() in after  # the control: the scan sees rows
        row = session.get(Record, sc.ids["a1"])
        assert row is not None

    def keys_of(dump: bytes) -> dict[str, list[bytes]]:
        out: dict[str, list[bytes]] = {"upload": [], "subject": [], "epoch": []}
        for kind, ds, scope, kek, wrapped in _wrapped_from_dump(dump):
            if ds == str(sc.dataset):
                ref = SecretRef(kind, uuid.UUID(ds), scope)
                out[kind].append(provider.unwrap(kek, wrapped, aad=ref.aad()))
        return out

    assert row_fields == (row.id, row.dataset_id, row.upload_id)
    assert _opens(keys_of(before), envelope, row)
    assert not _opens(keys_of(after), envelope, row)


def test_an_erasure_during_a_rectification_erases_the_new_versions(
    committed_engine: Engine, services: VaultServices
) -> None:
    """The erasure waits for the rectification's lock, then finds the fresh secret and the
    new versions: nothing of the subject survives it."""
    store = services.store
    with Session(committed_engine) as session, session.begin():
        sc = _scene(session, store)
    erased: list[int] = []

    def erase() -> None:
        with Session(committed_engine) as session, session.begin():
            result = Eraser(store).erase_subject(
                session, "alice", dataset_id=sc.dataset, reason="dpo_decision", requester="dpo"
            )
            erased.append(result.records_erased)

    with Session(committed_engine) as session, session.begin():
        rectification.rectify(session, store, sc.dataset, sc.ids["a1"], FIXED)
        eraser = threading.Thread(target=erase)
        eraser.start()
        eraser.join(1.0)
        assert eraser.is_alive(), "the erasure did not wait for the rectification"
    eraser.join(30)
    assert erased == [3]  # the three new versions
    with Session(committed_engine) as session:
        assert _values(session, store, sc.dataset, "alice") == []
        secret = select(KeySecret.id).where(KeySecret.kind == "subject", KeySecret.scope == "alice")
        assert session.scalar(secret) is None
