"""Every decryption recorded, on the real PostgreSQL: the rows are append-only, each is proven
under its batch's root, a row changed behind the trigger's back no longer proves, and an
erasure leaves no row naming the subject (pg_dump, with a control)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import Engine, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from ledger_bridge.facts import READ_RECORD, ReadRecord
from tests.vault.conftest import make_dataset
from tests.vault.test_forensic import _pg_dump
from tests.vault.test_forget_pg import _found, _pseudonym, _relay_records
from vault import decryptions
from vault.crypto.merkle import verify_inclusion
from vault.erasure import Eraser, forgotten_id
from vault.keys import KeyStore, LocalKeyProvider, subject_ref
from vault.models import Decryption, OutboxFact
from vault.uploads import LEDGER_SUBJECT_ID, RecordIn, Uploader


def _proves(session: Session, row_id: uuid.UUID, salt: bytes | None = None) -> bool:
    """Whether the row, as stored now, is the leaf its batch's root commits to."""
    row = session.get(Decryption, row_id, populate_existing=True)
    assert row is not None
    found = decryptions.inclusion(session, row)
    assert found is not None
    used = salt if salt is not None else row.salt
    assert used is not None
    leaf = decryptions.leaf_of(row, bytes(used))
    return verify_inclusion(
        leaf, found.leaf_index, found.tree_size, found.audit_path, found.reads_root
    )


def _read(session: Session, subject: str, dataset: uuid.UUID, n: int = 2) -> uuid.UUID:
    [row_id] = decryptions.record(
        session,
        reader="provider-1",
        reader_role="provider",
        kind="provider_read",
        reads=[decryptions.Read(subject, dataset, n)],
    )
    return row_id


def test_a_batch_commits_every_row_and_each_row_proves(session: Session) -> None:
    dataset = make_dataset(session).id
    ids = [_read(session, f"subject-{i}", dataset, i + 1) for i in range(5)]
    # the same subject twice in one read is one row, its counts summed
    [twice] = decryptions.record(
        session,
        reader="dpo-1",
        reader_role="dpo",
        kind="dpo_read",
        reads=[decryptions.Read("x", dataset, 2), decryptions.Read("x", dataset, 3)],
    )
    assert session.get(Decryption, twice).record_count == 5  # type: ignore[union-attr]
    assert decryptions.inclusion(session, session.get(Decryption, ids[0])) is None  # type: ignore[arg-type]

    queued = decryptions.batch(session)
    assert queued is not None and queued[1] >= 6
    fact = session.get(OutboxFact, queued[0])
    assert fact is not None and fact.kind == READ_RECORD
    assert ReadRecord.from_payload(fact.payload).count == queued[1]
    for row_id in [*ids, twice]:
        assert _proves(session, row_id)
    # another row's salt (or none of the right one) does not prove this row
    other = session.get(Decryption, ids[1])
    assert other is not None and other.salt is not None
    assert not _proves(session, ids[0], bytes(other.salt))
    assert decryptions.batch(session) is None  # nothing left to batch


def _refused(session: Session, statement: str, **params: object) -> None:
    with pytest.raises(DBAPIError, match="append-only"), session.begin_nested():
        session.execute(text(statement), params)


def test_the_rows_are_append_only(session: Session) -> None:
    dataset = make_dataset(session).id
    row_id = _read(session, "alice", dataset)
    row = {"id": row_id}
    _refused(session, "DELETE FROM decryptions WHERE id = :id", **row)
    _refused(session, "TRUNCATE decryptions")
    _refused(session, "UPDATE decryptions SET record_count = 1 WHERE id = :id", **row)
    _refused(session, "UPDATE decryptions SET reader = 'someone' WHERE id = :id", **row)
    _refused(session, "UPDATE decryptions SET at = now() WHERE id = :id", **row)
    # forgetting is to a forgotten id, with the salt gone, and only once
    _refused(session, "UPDATE decryptions SET subject = 'bob', salt = NULL WHERE id = :id", **row)
    _refused(session, "UPDATE decryptions SET subject = '~ab' WHERE id = :id", **row)
    _refused(session, "UPDATE decryptions SET salt = NULL WHERE id = :id", **row)
    session.execute(text("UPDATE decryptions SET subject = '~ab', salt = NULL WHERE id = :id"), row)
    _refused(session, "UPDATE decryptions SET subject = '~cd' WHERE id = :id", **row)
    # batching is once
    _refused(session, "UPDATE decryptions SET batch_id = 7 WHERE id = :id", **row)
    queued = decryptions.batch(session)
    assert queued is not None
    _refused(session, "UPDATE decryptions SET batch_id = 1, leaf_index = 0 WHERE id = :id", **row)
    _refused(session, "UPDATE decryptions SET leaf_index = 5 WHERE id = :id", **row)


def test_a_row_changed_behind_the_triggers_back_no_longer_proves(session: Session) -> None:
    """What a superuser (or anyone who disables the trigger) can still do: rewrite a row. The
    root is on the ledger, so the change shows: the row no longer proves, and neither does a
    forged leaf hash put in to match."""
    dataset = make_dataset(session).id
    victim, neighbour = _read(session, "alice", dataset, 4), _read(session, "bob", dataset)
    assert decryptions.batch(session) is not None
    assert _proves(session, victim)
    with session.begin_nested():
        session.execute(text("SET LOCAL session_replication_role = replica"))
        session.execute(
            text("UPDATE decryptions SET record_count = 1, reader = 'nobody' WHERE id = :id"),
            {"id": victim},
        )
    assert not _proves(session, victim)
    row = session.get(Decryption, victim)
    assert row is not None and row.salt is not None
    with session.begin_nested():
        session.execute(text("SET LOCAL session_replication_role = replica"))
        session.execute(
            text("UPDATE decryptions SET leaf_hash = :h WHERE id = :id"),
            {"h": decryptions.leaf_of(row, bytes(row.salt)), "id": victim},
        )
    # the forged leaf matches the row, but the tree rebuilt over it no longer has the root
    assert not _proves(session, victim)
    assert not _proves(session, neighbour)


@dataclass
class World:
    engine: Engine
    erase: Callable[[uuid.UUID | None], int]
    p: str
    q: str
    d1: uuid.UUID
    d2: uuid.UUID
    secrets: dict[uuid.UUID, bytes]


@pytest.fixture()
def world(committed_engine: Engine, tmp_path: Path) -> World:
    store = KeyStore(LocalKeyProvider(tmp_path / "master.key"))
    uploader = Uploader(store, subject_ids=LEDGER_SUBJECT_ID)
    p, q = _pseudonym("00"), _pseudonym("ff")
    with Session(committed_engine) as s, s.begin():
        d1, d2 = make_dataset(s).id, make_dataset(s).id
        for d in (d1, d2):
            uploader.upload(s, d, [RecordIn(x, {"i": i}) for x in (p, q) for i in range(2)])
        secrets = {d: store.load(s, [subject_ref(d, p)])[subject_ref(d, p)] for d in (d1, d2)}
        for d in (d1, d2):
            for who in (p, q):
                _read(s, who, d)
                decryptions.record(
                    s,
                    reader=who,
                    reader_role="subject",
                    kind="subject_export",
                    reads=[decryptions.Read(who, d, 2)],
                )

    def erase(dataset: uuid.UUID | None) -> int:
        with Session(committed_engine) as s, s.begin():
            result = Eraser(store).erase_subject(
                s, p, dataset_id=dataset, reason="subject_request", requester="subject"
            )
        assert result.outbox_id is not None
        return result.outbox_id

    return World(committed_engine, erase, p, q, d1, d2, secrets)


def test_an_erasure_leaves_no_read_naming_the_subject(
    world: World, fresh_database_url: str
) -> None:
    engine, erase, p, q, d1, d2 = world.engine, world.erase, world.p, world.q, world.d1, world.d2
    with Session(engine) as s, s.begin():
        assert decryptions.batch(s) is not None  # the reads were recorded on the ledger
    before = _pg_dump(fresh_database_url)
    assert "hex" in _found(before, p)

    first = erase(d1)  # in one dataset first: d2's reads still name P
    with Session(engine) as s, s.begin():
        _relay_records(s, first)
        in_d2 = s.scalars(select(Decryption.subject).where(Decryption.dataset_id == d2)).all()
        assert p in in_d2
    everywhere = erase(None)
    with Session(engine) as s, s.begin():
        _relay_records(s, everywhere, sealed=os.urandom(8))
    dump = _pg_dump(fresh_database_url)
    assert _found(dump, p) == []
    assert "hex" in _found(dump, q)  # control: the subject not erased is still found

    with Session(engine) as s:
        for d in (d1, d2):
            rows = s.scalars(select(Decryption).where(Decryption.dataset_id == d)).all()
            gone = [r for r in rows if r.subject == forgotten_id(world.secrets[d])]
            kept = [r for r in rows if r.subject == q]
            assert len(gone) == 2 and len(kept) == 2
            assert all(r.salt is None for r in gone) and all(r.salt for r in kept)
            # P's own export: the reader was P, forgotten with them; the provider stays
            assert {r.reader for r in gone} == {"provider-1", forgotten_id(world.secrets[d])}
            for r in kept:  # the others' reads still prove under the same root
                assert _proves(s, r.id)
