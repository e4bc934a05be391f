"""Erasure and expiry: destroying a scope kills exactly that scope, idempotently."""

from __future__ import annotations

import datetime as dt
import json
import os
import uuid
from collections.abc import Callable

from sqlalchemy import select
from sqlalchemy.orm import Session

from tests.vault.conftest import VaultServices, make_dataset
from vault.crypto import record_leaf
from vault.crypto.merkle import leaf_hash, verify_inclusion
from vault.errors import RecordErased
from vault.models import KeyCommitment, OutboxFact, Record, SubjectSession, Upload
from vault.uploads import RecordIn, Uploader, UploadResult


def _upload(
    services: VaultServices,
    session: Session,
    dataset_id: uuid.UUID,
    subjects: list[str],
    n: int = 3,
) -> UploadResult:
    records = [
        RecordIn(s, json.dumps({"s": s, "i": i}).encode()) for s in subjects for i in range(n)
    ]
    return services.uploader.upload(session, dataset_id, records)


def _readable(services: VaultServices, session: Session) -> set[tuple[str, str]]:
    """(dataset name, subject) pairs that still decrypt, read record by record."""
    out = set()
    for (rid,) in session.execute(select(Record.id)):
        try:
            rec = services.reader.record(session, rid)
        except RecordErased:
            continue
        out.add((str(rec.dataset_id), rec.subject_id))
    return out


def test_erase_subject_in_one_dataset_then_everywhere(
    session: Session, services: VaultServices
) -> None:
    d1, d2 = make_dataset(session), make_dataset(session)
    _upload(services, session, d1.id, ["alice", "bob"])
    _upload(services, session, d2.id, ["alice", "bob"])
    everything = {(str(d.id), s) for d in (d1, d2) for s in ("alice", "bob")}
    assert _readable(services, session) == everything

    first = services.eraser.erase_subject(
        session, "alice", dataset_id=d1.id, reason="Art. 17 request", requester="dpo"
    )
    assert first.secrets_destroyed == 1 and first.records_erased == 3
    assert len(first.commitments) == 1
    assert _readable(services, session) == everything - {(str(d1.id), "alice")}

    again = services.eraser.erase_subject(
        session, "alice", dataset_id=d1.id, reason="Art. 17 request", requester="dpo"
    )
    assert again.secrets_destroyed == 0  # idempotent: nothing more destroyed or queued,
    assert again.outbox_id == first.outbox_id  # and the same certificate comes back

    everywhere = services.eraser.erase_subject(session, "alice", reason="Art. 17", requester="dpo")
    assert everywhere.secrets_destroyed == 1  # the d2 secret; d1's was already gone
    assert _readable(services, session) == {(str(d1.id), "bob"), (str(d2.id), "bob")}
    facts = session.scalars(select(OutboxFact).where(OutboxFact.kind == "erasure.record")).all()
    assert len(facts) == 2
    for fact in facts:
        text = json.dumps(fact.payload)
        assert '"s": "alice"' not in text and "key_commitments" in fact.payload
    destroyed = session.scalars(
        select(KeyCommitment.commitment).where(KeyCommitment.destroyed_at.is_not(None))
    ).all()
    assert sorted(c.hex() for c in destroyed) == sorted(first.commitments + everywhere.commitments)


def test_proofs_of_remaining_records_still_verify_after_erasure(
    session: Session, services: VaultServices
) -> None:
    dataset = make_dataset(session)
    result = _upload(services, session, dataset.id, ["alice", "bob", "carol"], n=5)
    services.eraser.erase_subject(session, "bob", reason="Art. 17", requester="bob")
    remaining = list(services.reader.by_dataset(session, dataset.id))
    assert {r.subject_id for r in remaining} == {"alice", "carol"} and len(remaining) == 10
    for out in remaining:
        leaf = leaf_hash(record_leaf(out.record_id.bytes, out.leaf_salt, out.payload))
        assert verify_inclusion(leaf, out.leaf_index, 15, out.proof, result.merkle_root)


def test_withdraw_upload_kills_only_that_upload(session: Session, services: VaultServices) -> None:
    dataset = make_dataset(session)
    first = _upload(services, session, dataset.id, ["alice", "bob"])
    _upload(services, session, dataset.id, ["alice", "bob"])
    r = services.eraser.withdraw_upload(
        session,
        first.upload_id,
        reason="sent by mistake",
        requester="provider-1",
    )
    assert r.records_erased == 6 and r.uploads[0].upload == str(first.upload_id)
    left = list(services.reader.by_dataset(session, dataset.id))
    assert len(left) == 6 and all(x.upload_id != first.upload_id for x in left)
    upload = session.get(Upload, first.upload_id)
    assert upload is not None and upload.state == "withdrawn"


def _fixed(when: dt.datetime) -> Callable[[], dt.datetime]:
    return lambda: when


def test_expire_epoch_kills_only_that_day(session: Session, services: VaultServices) -> None:
    dataset = make_dataset(session, retention_days=10)
    days = [dt.datetime(2026, 1, d, 12, tzinfo=dt.UTC) for d in (1, 2)]
    uploads = []
    for day in days:
        uploader = Uploader(services.store, clock=_fixed(day))
        uploads.append(uploader.upload(session, dataset.id, [RecordIn("alice", b"{}")] * 4))
    assert uploads[0].retention_day == dt.date(2026, 1, 11)
    result = services.eraser.expire_epoch(session, dataset.id, dt.date(2026, 1, 11))
    assert result.kind == "retention.expire" and result.secrets_destroyed == 1
    assert result.records_erased == 4
    left = list(services.reader.by_dataset(session, dataset.id))
    assert len(left) == 4 and {x.upload_id for x in left} == {uploads[1].upload_id}


def _signed_in(session: Session, *pseudonyms: str) -> str:
    """A wallet sign-in session's row (api/services/subject_sessions.py makes them)."""
    row = SubjectSession(
        id=os.urandom(8).hex(),
        secret_hash=os.urandom(32),
        pseudonyms=list(pseudonyms),
        expires_at=dt.datetime.now(dt.UTC) + dt.timedelta(minutes=15),
    )
    session.add(row)
    session.flush()
    return row.id


def _live_sessions(session: Session) -> set[str]:
    return set(session.scalars(select(SubjectSession.id)))


def test_an_erasure_ends_the_sign_in_sessions_that_hold_the_pseudonym(
    session: Session, services: VaultServices
) -> None:
    """A session names every pseudonym its wallet proved: erasing one of them, everywhere or
    in one dataset, deletes the sessions holding it, and only those; so does an erasure that
    finds nothing left to destroy (a citizen signed in before any record of theirs)."""
    p, q, r, s, newcomer = (os.urandom(32).hex() for _ in range(5))
    d1, d2 = make_dataset(session), make_dataset(session)
    _upload(services, session, d1.id, [p, q])
    _upload(services, session, d2.id, [r, s])
    linked = _signed_in(session, p, r)  # one wallet: p in d1, r in d2
    only_r = _signed_in(session, r)
    others = _signed_in(session, q, s)
    alone = _signed_in(session, newcomer)
    assert _live_sessions(session) == {linked, only_r, others, alone}

    services.eraser.erase_subject(session, p, reason="Art. 17", requester="dpo")
    assert _live_sessions(session) == {only_r, others, alone}
    services.eraser.erase_subject(session, r, dataset_id=d2.id, reason="x", requester="dpo")
    assert _live_sessions(session) == {others, alone}
    nothing = services.eraser.erase_subject(session, newcomer, reason="x", requester="dpo")
    assert nothing.secrets_destroyed == 0 and nothing.outbox_id is None
    assert _live_sessions(session) == {others}
    services.eraser.erase_subject(session, "not-a-ledger-key", reason="x", requester="dpo")
    assert _live_sessions(session) == {others}
