"""Art. 16 rectification: replace a record by a corrected version, and destroy the old one's key.

A record's DEK is derived from S_upload[u], S_subject[s, d] and S_epoch[d, day] (docs/KEYS.md),
none of them specific to one record: the narrowest secret that holds the old version is the
subject's secret in the dataset. So a rectification RE-KEYS the subject in the dataset, in one
transaction of the caller's:

1. the subject's current records in the dataset are decrypted (all of them: every one is
   under the secret about to go);
2. S_subject[s, d] is destroyed (overwritten, deleted) and a fresh one created in its place;
3. each source upload's records of the subject are written again, under the new secret, into
   a new replacement upload of the dataset with the same retention day (one per source
   upload, `Uploader.upload`), the corrected payload in place of the rectified record's; each
   replacement queues its `upload.anchor`;
4. the old rows keep their salted leaf (the other records' proofs of their upload still
   verify) but lose their ciphertext, and `superseded_by` names their next version; the old
   (upload, subject) commitments are marked destroyed;
5. a `record.rectify` fact links the destroyed keys to the replacement keys by their
   commitments (after the anchors in the outbox, so the ledger knows the new uploads first).

The old version is then unreadable wherever its ciphertext survives (a copy of the row, a dead
tuple, the WAL, a backup): no secret the vault holds derives its key. The wrapped bytes of the
old secret itself survive in dead tuples and the WAL until the KEK they were wrapped under is
retired, as for an erasure (docs/KEYS.md, "Making erasure final against copies").

Rectification is not erasure: the subject stays in the dataset under the same pseudonym, new
uploads for them are accepted, no erasure certificate is made. Refused, with nothing changed
(`RectificationRefused`, 409): a record erased or superseded, a subject with records in an
upload the ledger has not anchored (pending, or refused: their records must not reach an
anchored upload this way), a request already carried out; a corrected record of another
subject is an `InvalidRecord` (422). The whole of it is one savepoint: any failure, a crash
included, leaves all of it or none (invariant 5).

Concurrency: the dataset's lock is held alone (vault/locks.py), so no upload, erasure,
withdrawal or expiry of the dataset runs between the reads and the writes.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, text, update
from sqlalchemy.orm import Session

from ledger_bridge.facts import RECORD_RECTIFY, KeyRef, RecordRectify
from vault.crypto import DecryptionFailed, unseal
from vault.errors import InvalidRecord, RecordNotFound, RectificationRefused
from vault.keyring import KeyRing
from vault.keys import KeyStore, subject_ref
from vault.locks import own_dataset
from vault.models import KeyCommitment, KeySecret, OutboxFact, Record, Upload
from vault.reads import current_version
from vault.uploads import RecordIn, Uploader, UploadResult

LOCK_TIMEOUT_MS = 5_000

_SUPERSEDE = text(
    "UPDATE records r SET envelope = NULL, superseded_by = x.new_id"
    " FROM unnest(CAST(:old AS uuid[]), CAST(:new AS uuid[])) AS x(old_id, new_id)"
    " WHERE r.id = x.old_id"
)


@dataclass(frozen=True, slots=True)
class Version:
    """One record written again: its old id, its new id, the replacement upload holding it."""

    replaced: uuid.UUID
    record_id: uuid.UUID
    upload_id: uuid.UUID


@dataclass(frozen=True, slots=True)
class Rectification:
    dataset_id: uuid.UUID
    subject_id: str
    record_id: uuid.UUID  # the rectified record's new version
    replaced: uuid.UUID  # the version it replaced
    versions: tuple[Version, ...]  # every record of the subject re-keyed, the rectified one too
    superseded: tuple[KeyRef, ...]  # the keys destroyed
    replacement: tuple[KeyRef, ...]  # the replacement uploads' keys
    uploads: tuple[UploadResult, ...]  # the replacement uploads
    request: int | None
    outbox_id: int  # the record.rectify fact


@dataclass(frozen=True, slots=True)
class _Row:
    record_id: uuid.UUID
    upload_id: uuid.UUID
    retention_day: dt.date
    envelope: bytes


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def rectify(
    session: Session,
    store: KeyStore,
    dataset_id: uuid.UUID,
    record_id: uuid.UUID,
    payload: RecordIn | Mapping[str, Any],
    *,
    request: int | None = None,
    requester: str = "provider",
    uploader: Uploader | None = None,
    clock: Callable[[], dt.datetime] = _now,
    lock_timeout_ms: int = LOCK_TIMEOUT_MS,
    anchored_only: bool = True,
) -> Rectification:
    """Replace record `record_id` of `dataset_id` by `payload` (the corrected record: its
    `subject_id` and `payload`, as an upload line), re-keying its subject in the dataset (see
    the module docstring). `request` is the subject's rectification.request on the ledger when
    they asked; `requester` who ordered it (provider or dpo). `anchored_only` False: a vault
    without a ledger, whose uploads all stay pending. Commits nothing: the caller does.
    """
    uploader = uploader or Uploader(store, clock=clock)
    with session.begin_nested():
        own_dataset(session, dataset_id, lock_timeout_ms)
        target = _current(session, dataset_id, record_id)  # which record, before what into it
        corrected = _corrected(uploader, payload, target.subject_id)
        if request is not None:
            _not_carried_out(session, request)
        subject = target.subject_id
        rows = _rows(session, dataset_id, subject, anchored_only)
        payloads = _decrypt(session, store, dataset_id, subject, rows)
        payloads[record_id] = corrected
        ref = subject_ref(dataset_id, subject)
        store.destroy(session, [ref])
        store.ensure(session, [ref])  # the fresh secret, under the same scope
        now = clock()
        versions, uploads = _write_again(session, uploader, dataset_id, subject, rows, payloads)
        session.execute(
            _SUPERSEDE,
            {"old": [v.replaced for v in versions], "new": [v.record_id for v in versions]},
        )
        superseded = _destroy_commitments(session, dataset_id, subject, uploads, now)
        replacement = _replacement_keys(session, uploads, subject)
        fact = RecordRectify(
            dataset=str(dataset_id),
            superseded=superseded,
            replacement=replacement,
            requester=requester,
            at=now,
            request=request,
        )
        outbox = OutboxFact(kind=fact.kind, payload=fact.to_payload())
        session.add(outbox)
        new_id = next(v.record_id for v in versions if v.replaced == record_id)
        return Rectification(
            dataset_id=dataset_id,
            subject_id=subject,
            record_id=new_id,
            replaced=record_id,
            versions=tuple(versions),
            superseded=superseded,
            replacement=replacement,
            uploads=tuple(uploads),
            request=request,
            outbox_id=_flushed(session, outbox),
        )


def _corrected(uploader: Uploader, payload: RecordIn | Mapping[str, Any], subject: str) -> bytes:
    """The corrected record's payload, checked as an upload checks it, of the record's own
    subject."""
    corrected = uploader.checked(payload)
    if corrected.record_id is not None:
        raise InvalidRecord("a new version's record id is the vault's to choose")
    if corrected.subject_id != subject:
        raise InvalidRecord("the corrected record is of another subject than the record")
    assert isinstance(corrected.payload, bytes)
    return corrected.payload


def _flushed(session: Session, fact: OutboxFact) -> int:
    session.flush()  # after the replacement uploads' anchors: the relay ships them first
    return fact.id


def _current(session: Session, dataset_id: uuid.UUID, record_id: uuid.UUID) -> Record:
    """The record, if it is a current version of this dataset."""
    row = session.get(Record, record_id)
    if row is None or row.dataset_id != dataset_id:
        raise RecordNotFound(f"record {record_id} does not exist")
    if row.superseded_by is not None:
        current = current_version(session, record_id)
        raise RectificationRefused(
            f"record {record_id} was rectified before; its current version is {current}"
        )
    if row.envelope is None:
        raise RectificationRefused(f"record {record_id} is erased: there is nothing to rectify")
    return row


def _not_carried_out(session: Session, request: int) -> None:
    """A subject's request is carried out once: a fact naming it, unless the ledger refused
    it, means another rectification did (or is on its way to the ledger)."""
    done = session.scalar(
        select(OutboxFact.id).where(
            OutboxFact.kind == RECORD_RECTIFY,
            OutboxFact.payload["request"].as_integer() == request,
            OutboxFact.refused_at.is_(None),
        )
    )
    if done is not None:
        raise RectificationRefused(f"rectification request {request} is already carried out")


def _rows(session: Session, dataset_id: uuid.UUID, subject: str, anchored_only: bool) -> list[_Row]:
    """The subject's current records in the dataset, by upload and leaf, under a lock on
    their secret (an erasure of the subject waits, then finds the new one)."""
    held = session.scalar(
        select(KeySecret.id)
        .where(
            KeySecret.kind == "subject",
            KeySecret.dataset_id == dataset_id,
            KeySecret.scope == subject,
        )
        .with_for_update()
    )
    if held is None:
        raise RectificationRefused("the subject's records in this dataset are erased")
    found = session.execute(
        select(Record.id, Record.upload_id, Upload.retention_day, Upload.state, Record.envelope)
        .join(Upload, Upload.id == Record.upload_id)
        .where(
            Record.dataset_id == dataset_id,
            Record.subject_id == subject,
            Record.envelope.is_not(None),
            Record.superseded_by.is_(None),
        )
        .order_by(Upload.created_at, Record.upload_id, Record.leaf_index)
    ).all()
    for _, upload_id, _, state, _ in found:
        if state != "anchored" and (anchored_only or state != "pending"):
            raise RectificationRefused(
                f"upload {upload_id} holds records of this subject and is {state} on the "
                "ledger; rectify once it is anchored"
            )
    return [_Row(rid, upload, day, bytes(env or b"")) for rid, upload, day, _, env in found]


def _decrypt(
    session: Session, store: KeyStore, dataset_id: uuid.UUID, subject: str, rows: list[_Row]
) -> dict[uuid.UUID, bytes]:
    ring = KeyRing(store, session, dataset_id, create=False)
    out: dict[uuid.UUID, bytes] = {}
    for row in rows:
        dek = ring.dek(row.upload_id, row.retention_day.isoformat(), subject)
        try:
            if dek is None:
                raise DecryptionFailed
            out[row.record_id] = unseal(
                dek,
                row.envelope,
                record_id=row.record_id.bytes,
                dataset_id=dataset_id.bytes,
                upload_id=row.upload_id.bytes,
            )
        except DecryptionFailed:
            # Refused rather than carried over or left behind: either would lose data or
            # keep what a destroyed key was meant to end.
            raise RectificationRefused(
                f"record {row.record_id} can no longer be decrypted; nothing was changed"
            ) from None
    return out


def _write_again(
    session: Session,
    uploader: Uploader,
    dataset_id: uuid.UUID,
    subject: str,
    rows: list[_Row],
    payloads: dict[uuid.UUID, bytes],
) -> tuple[list[Version], list[UploadResult]]:
    """One replacement upload per source upload, same retention day, new record ids."""
    by_upload: dict[uuid.UUID, list[_Row]] = {}
    for row in rows:
        by_upload.setdefault(row.upload_id, []).append(row)
    versions: list[Version] = []
    uploads: list[UploadResult] = []
    for source in by_upload.values():
        new_ids = [uuid.uuid4() for _ in source]
        result = uploader.upload(
            session,
            dataset_id,
            [
                RecordIn(subject, payloads[row.record_id], new_id)
                for row, new_id in zip(source, new_ids, strict=True)
            ],
            retention_day=source[0].retention_day,
        )
        uploads.append(result)
        versions += [
            Version(row.record_id, new_id, result.upload_id)
            for row, new_id in zip(source, new_ids, strict=True)
        ]
    return versions, uploads


def _destroy_commitments(
    session: Session,
    dataset_id: uuid.UUID,
    subject: str,
    uploads: list[UploadResult],
    now: dt.datetime,
) -> tuple[KeyRef, ...]:
    """Mark destroyed every (upload, subject) key of the subject in the dataset but the new
    ones: the old secret derived them all."""
    in_dataset = select(Upload.id).where(Upload.dataset_id == dataset_id)
    marked = session.execute(
        update(KeyCommitment)
        .where(
            KeyCommitment.subject_id == subject,
            KeyCommitment.destroyed_at.is_(None),
            KeyCommitment.upload_id.in_(in_dataset),
            KeyCommitment.upload_id.not_in([u.upload_id for u in uploads]),
        )
        .values(destroyed_at=now)
        .returning(KeyCommitment.upload_id, KeyCommitment.commitment)
        .execution_options(synchronize_session=False)
    ).all()
    keys = (KeyRef(str(u), bytes(c)) for u, c in marked)
    return tuple(sorted(keys, key=lambda k: (k.upload, k.key_commitment)))


def _replacement_keys(
    session: Session, uploads: list[UploadResult], subject: str
) -> tuple[KeyRef, ...]:
    out = []
    for u in uploads:
        commitment = session.scalar(
            select(KeyCommitment.commitment).where(
                KeyCommitment.upload_id == u.upload_id, KeyCommitment.subject_id == subject
            )
        )
        assert commitment is not None, "a replacement upload holds its subject's key"
        out.append(KeyRef(str(u.upload_id), bytes(commitment)))
    return tuple(out)
