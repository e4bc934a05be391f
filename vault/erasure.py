"""Erasure and expiry: destroy a scope's secrets, drop its ciphertext, queue the ledger fact.

Scopes (DESIGN.md, "Keys"): a subject in one dataset, a subject everywhere, an upload, a
retention epoch (dataset, day). Each is one key-store operation, not a walk over records: the
secret is overwritten and deleted, the scope's ciphertext is dropped (whole uploads: the rows
are deleted; part of an upload: the envelope is set to NULL and the salted Merkle leaf stays so
the other records' proofs still verify), its key commitments are marked destroyed,
and one outbox fact names the commitments (or, for whole uploads, their anchored root) so the
ledger records what was destroyed. All of it happens in the caller's transaction, so a crash
leaves all or none of it (invariant 5). Calling again on an erased scope destroys nothing,
queues nothing, and returns the earlier fact's id: erasure is idempotent.

Forgetting the subject: the scope's rows also stop naming the subject. In each dataset the
subject id in records, key commitments and the records of reads of their data (decryptions)
becomes `forgotten_id(S_subject[s, d])`, computed just before that secret is destroyed, so the
value is unlinkable to s once the secret is gone, and every other subject's record proof, the
upload's key-commitments root and every other read's proof still verify (the leaves never held
the id in clear; the commitments' order is fixed first, see KeyCommitment.position; a read's
leaf loses its salt, vault/decryptions.py). The subject's requests in the register
(`SubjectRequest`, GDPR Art. 12(3)) get the same replacement (requests of no dataset:
`forgotten_everywhere_id`); the rows stay, so a request and its timing remain provable.
An expiry or a withdrawal destroys whole uploads: their key commitments get a random id in place
of the subject's (and their leaf index, as above), since nothing of those uploads is left to
read, and a subject secret left with no live record in the dataset is destroyed (its scope is
the subject's id; `KeyStore.destroy_orphaned_subjects`). An erasure everywhere also deletes
the subject's API keys, and any erasure of a subject ends the wallet sign-in sessions that hold
them (they name the subject's pseudonyms together). An erasure everywhere's fact carries
`forget`: once the relay recorded it, `settle_erasure` drops the subject from that fact and
from every earlier erasure fact naming them. After that the vault's database names the subject
nowhere. A dataset-scoped erasure forgets the subject in that dataset's rows only: the subject
stays a member elsewhere, and its fact (like the ledger's tombstone) keeps naming them.

Backups, dead tuples and the WAL still hold old wrapped secrets and ciphertexts until the KEK
they were wrapped under is retired: vault/final_erasure.py does that on a schedule, and marks
the erasure `final` (`certificate_status`) when it did. Dead row versions and the WAL also hold
the subject id until VACUUM and WAL recycling: forgetting here is about what the live database
serves and dumps; the final-erasure job's VACUUM (ANALYZE) clears the heap and the statistics.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, cast

from sqlalchemy import ColumnElement, CursorResult, and_, delete, select, text, update
from sqlalchemy.orm import Session

from ledger_bridge.facts import (
    ERASURE_RECORD,
    RETENTION_EXPIRE,
    EpochScope,
    ErasureCertificate,
    ErasureRecord,
    ErasureStatus,
    RetentionExpire,
    Scope,
    SubjectScope,
    UploadRef,
    UploadScope,
)
from vault.errors import UploadNotFound
from vault.keys import KeyStore, SecretRef, epoch_ref, upload_ref
from vault.locks import share_datasets
from vault.models import (
    ApiKey,
    Decryption,
    KeyCommitment,
    KeySecret,
    OutboxFact,
    Record,
    SubjectRequest,
    SubjectSession,
    Upload,
)
from vault.uploads import LEDGER_SUBJECT_ID

# Replacement subject ids start with a character no subject id may hold (uploads accept
# [A-Za-z0-9._:@+=/-] or 64 hex digits), so no upload can ever be filed under one.
FORGOTTEN_PREFIX = "~"
_FORGOTTEN_INFO = b"civis-vault/forgotten-subject/v1"
_FORGOTTEN_EVERYWHERE_INFO = b"civis-vault/forgotten-subject-everywhere/v1"

# For each upload of :dataset where :subject has a commitment not yet forgotten: how many of
# the upload's subject ids sort before it (the collation the upload's root was built in).
_SORTED_BEFORE = text(
    "SELECT c.upload_id, (SELECT count(*) FROM key_commitments k"
    "  WHERE k.upload_id = c.upload_id AND k.subject_id < :subject)"
    " FROM key_commitments c JOIN uploads u ON u.id = c.upload_id"
    " WHERE c.subject_id = :subject AND u.dataset_id = ANY(:datasets) AND c.position IS NULL"
)
# The leaf indexes already fixed in those uploads (subjects forgotten before), and whether the
# replacement id now sorts before :subject (it is then among the count above).
_FIXED = text(
    "SELECT upload_id, position, subject_id < :subject FROM key_commitments"
    " WHERE upload_id = ANY(:uploads) AND position IS NOT NULL ORDER BY position"
)
_SET_POSITIONS = text(
    "UPDATE key_commitments k SET position = x.pos"
    " FROM unnest(CAST(:uploads AS uuid[]), CAST(:positions AS int[])) AS x(upload_id, pos)"
    " WHERE k.upload_id = x.upload_id AND k.subject_id = :subject"
)
# The subject's records and commitments get their dataset's replacement id.
_REPLACE_IN_RECORDS = text(
    "UPDATE records r SET subject_id = x.new_id"
    " FROM unnest(CAST(:datasets AS uuid[]), CAST(:new_ids AS text[])) AS x(dataset_id, new_id)"
    " WHERE r.dataset_id = x.dataset_id AND r.subject_id = :subject"
)
# The subject's requests in the register (SubjectRequest) of each dataset.
_REPLACE_IN_REQUESTS = text(
    "UPDATE subject_requests r SET subject = x.new_id"
    " FROM unnest(CAST(:datasets AS uuid[]), CAST(:new_ids AS text[])) AS x(dataset_id, new_id)"
    " WHERE r.dataset_id = x.dataset_id AND r.subject = :subject"
)
_REPLACE_IN_COMMITMENTS = text(
    "UPDATE key_commitments k SET subject_id = x.new_id"
    " FROM uploads u,"
    " unnest(CAST(:datasets AS uuid[]), CAST(:new_ids AS text[])) AS x(dataset_id, new_id)"
    " WHERE k.subject_id = :subject AND u.id = k.upload_id AND u.dataset_id = x.dataset_id"
)
# The record of each read of the subject's data (vault/decryptions.py) gets the same id, and
# loses the salt that made its leaf recomputable; a reader that was the subject (their own
# export) is forgotten with them. The table's trigger allows exactly this rewrite.
_REPLACE_IN_DECRYPTIONS = text(
    "UPDATE decryptions d SET subject = x.new_id, salt = NULL,"
    " reader = CASE WHEN d.reader = d.subject THEN x.new_id ELSE d.reader END"
    " FROM unnest(CAST(:datasets AS uuid[]), CAST(:new_ids AS text[])) AS x(dataset_id, new_id)"
    " WHERE d.subject = :subject AND d.dataset_id = x.dataset_id"
)


# Whole uploads destroyed (an expiry, a withdrawal): every commitment still named gets the
# leaf index its subject id gave it (the k-th index no forgotten row holds, k its rank among the
# named rows in subject-id order, the order the root was built in) and a random replacement id.
_FORGET_WHOLE_UPLOADS = text(
    "WITH named AS ("
    "  SELECT upload_id, subject_id,"
    "   row_number() OVER (PARTITION BY upload_id ORDER BY subject_id) AS rank"
    "  FROM key_commitments WHERE upload_id = ANY(:uploads) AND position IS NULL"
    "), free AS ("
    "  SELECT u.id AS upload_id, g.i AS pos,"
    "   row_number() OVER (PARTITION BY u.id ORDER BY g.i) AS rank"
    "  FROM uploads u CROSS JOIN LATERAL generate_series(0, u.commitment_count - 1) AS g(i)"
    "  WHERE u.id = ANY(:uploads) AND NOT EXISTS (SELECT 1 FROM key_commitments f"
    "   WHERE f.upload_id = u.id AND f.position = g.i)"
    ")"
    " UPDATE key_commitments k SET position = free.pos,"
    "  subject_id = '~' || replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', '')"
    " FROM named JOIN free USING (upload_id, rank)"
    " WHERE k.upload_id = named.upload_id AND k.subject_id = named.subject_id"
)


_SUBJECTS_OF_UPLOADS = text(
    "SELECT DISTINCT u.dataset_id, k.subject_id FROM key_commitments k"
    " JOIN uploads u ON u.id = k.upload_id"
    " WHERE k.upload_id = ANY(:uploads) AND k.position IS NULL"
)


# The erasure facts naming :subject, written as ix_outbox_erasure_subject's expression and
# predicate so the planner uses that index (a bound JSON path would not match it).
_FACT_NAMES_SUBJECT = text(
    "outbox.kind = 'erasure.record' AND ((outbox.payload -> 'scope') ->> 'subject') = :subject"
)


def forgotten_id(subject_secret: bytes | None) -> str:
    """The id that replaces a forgotten subject's in one dataset's rows.

    HMAC of a fixed label under S_subject[s, d]: after the secret is destroyed nobody can
    compute it from s, so the rows of one dataset stay grouped (one value per subject) without
    naming anyone. Without a secret (destroyed by an erasure before rows were rewritten) it is
    random, which links to nothing either.
    """
    if subject_secret is None:
        return FORGOTTEN_PREFIX + os.urandom(32).hex()
    return FORGOTTEN_PREFIX + hmac.digest(subject_secret, _FORGOTTEN_INFO, "sha256").hex()


def forgotten_everywhere_id(subject_secrets: list[bytes]) -> str:
    """The id that replaces a subject erased everywhere in rows of no single dataset (their
    requests in the register that name no dataset): HMAC under all the subject's secrets, which
    the erasure destroys, so it groups those rows without naming anyone. Random without any
    secret (a subject who never had data)."""
    if not subject_secrets:
        return forgotten_id(None)
    key = hashlib.sha256(b"".join(sorted(subject_secrets))).digest()
    return FORGOTTEN_PREFIX + hmac.digest(key, _FORGOTTEN_EVERYWHERE_INFO, "sha256").hex()


@dataclass(frozen=True, slots=True)
class ErasureResult:
    kind: str  # erasure.record or retention.expire
    scope: Scope
    secrets_destroyed: int
    records_erased: int
    commitments: list[str] = field(default_factory=list)  # hex, destroyed (upload, subject) keys
    uploads: list[UploadRef] = field(default_factory=list)  # whole uploads: id + root
    # The fact queued for the ledger; on a repeated request, the earlier fact for the same
    # scope (None when this scope never held anything).
    outbox_id: int | None = None
    # Rows (records, key commitments, decryptions) whose subject was replaced by `forgotten_id`.
    rows_forgotten: int = 0


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _erase_rows(
    session: Session,
    record_cond: ColumnElement[bool],
    commitment_cond: ColumnElement[bool],
    *,
    whole: bool,
    now: dt.datetime,
) -> tuple[int, list[str]]:
    """Drop the scope's ciphertexts and mark its key commitments destroyed; returns how many
    records went and the commitments (hex) the fact must name (none for whole uploads)."""
    if whole:
        # Whole uploads go: no other record needs their leaves for a proof, and a DELETE
        # is far cheaper than rewriting every row (bench erasure: ~60x on the sweep).
        statement: Any = delete(Record).where(record_cond)
    else:
        # Part of an upload: drop the ciphertext, keep the salted leaf for the others' proofs.
        statement = (
            update(Record).where(record_cond, Record.envelope.is_not(None)).values(envelope=None)
        )
    erased = cast(
        "CursorResult[Any]",
        session.execute(statement.execution_options(synchronize_session=False)),
    ).rowcount
    mark = (
        update(KeyCommitment)
        .where(commitment_cond, KeyCommitment.destroyed_at.is_(None))
        .values(destroyed_at=now)
        .execution_options(synchronize_session=False)
    )
    if whole:
        # The fact names each whole upload's anchored commitments root, not every key.
        session.execute(mark)
        commitments = []
    else:
        rows = session.execute(mark.returning(KeyCommitment.commitment)).scalars()
        commitments = sorted(c.hex() for c in rows)
    return erased, commitments


class Eraser:
    def __init__(self, store: KeyStore, *, clock: Callable[[], dt.datetime] = _now) -> None:
        self._store = store
        self._clock = clock

    def erase_subject(
        self,
        session: Session,
        subject_id: str,
        *,
        dataset_id: uuid.UUID | None = None,
        reason: str,
        requester: str,
        request: int | None = None,
        receipt_to: bytes | None = None,
    ) -> ErasureResult:
        """Art. 17: destroy S_subject[s, d] for one dataset or every dataset of the subject,
        and replace the subject id in those datasets' rows (see the module docstring).

        `request` is the ledger id of the subject's own signed erasure request, when there is
        one: the fact that records the erasure fulfils it, even if nothing was left to destroy.
        `receipt_to` (an X25519 public key) is where the relay seals the erasure's ledger
        receipt: the fact keeps the receipt only in that form.
        """
        refs = _subject_refs(session, subject_id, dataset_id)
        # Not while a rectification replaces one of these secrets (vault/locks.py): once the
        # lock is held, the statements below see its new secret and its new versions.
        share_datasets(session, [r.dataset_id for r in refs])
        # Before the secrets go: the replacement ids are derived from them.
        secrets = self._store.load(session, refs)
        replacements = {ref.dataset_id: forgotten_id(secret) for ref, secret in secrets.items()}
        everywhere = forgotten_everywhere_id(list(secrets.values())) if dataset_id is None else None
        record_cond = Record.subject_id == subject_id
        upload_cond: ColumnElement[bool] = KeyCommitment.subject_id == subject_id
        if dataset_id is not None:
            record_cond = and_(record_cond, Record.dataset_id == dataset_id)
            in_dataset = select(Upload.id).where(Upload.dataset_id == dataset_id)
            upload_cond = and_(upload_cond, KeyCommitment.upload_id.in_(in_dataset))
        scope = SubjectScope(subject_id, None if dataset_id is None else str(dataset_id))
        # Everywhere: while anything still names the subject (rows an earlier dataset-scoped
        # erasure left in other datasets, an API key, an erasure fact), a fact is queued even
        # with no secret left to destroy: recording it is what lets the vault and the ledger
        # forget them.
        named = dataset_id is None and _still_named(session, subject_id)
        result = self._finish(
            session,
            kind=ERASURE_RECORD,
            scope=scope,
            refs=refs,
            record_cond=record_cond,
            commitment_cond=upload_cond,
            whole_uploads=[],
            reason=reason,
            requester=requester,
            request=request,
            forget=dataset_id is None,
            receipt_to=receipt_to,
            queue_anyway=named,
        )
        # Whatever was left to destroy: a sign-in session that proved this pseudonym links it
        # to the subject's others, in any scope of erasure.
        _end_sessions(session, subject_id)
        if not (result.secrets_destroyed or request is not None or named):
            return result  # nothing of this scope left: forgotten before, or never stored
        forgotten = _forget_rows(session, subject_id, replacements, dataset_id)
        forgotten += _forget_requests(session, subject_id, replacements, dataset_id, everywhere)
        if dataset_id is None:
            # The subject's own API keys name them and have nothing left to open.
            mine = and_(ApiKey.member_id == subject_id, ApiKey.role == "subject")
            session.execute(delete(ApiKey).where(mine), execution_options=_NO_SYNC)
        return replace(result, rows_forgotten=forgotten)

    def withdraw_upload(
        self, session: Session, upload_id: uuid.UUID, *, reason: str, requester: str
    ) -> ErasureResult:
        """A provider withdraws an upload: destroy S_upload[u]."""
        upload = session.get(Upload, upload_id)
        if upload is None:
            raise UploadNotFound(f"upload {upload_id} does not exist")
        share_datasets(session, [upload.dataset_id])  # a rectification would copy its records
        result = self._finish(
            session,
            kind=ERASURE_RECORD,
            scope=UploadScope(str(upload_id)),
            refs=[upload_ref(upload.dataset_id, upload_id)],
            record_cond=Record.upload_id == upload_id,
            commitment_cond=KeyCommitment.upload_id == upload_id,
            whole_uploads=[upload],
            reason=reason,
            requester=requester,
        )
        if result.outbox_id is not None:
            upload.state = "withdrawn"
            session.flush()
        return result

    def expire_epoch(self, session: Session, dataset_id: uuid.UUID, day: dt.date) -> ErasureResult:
        """Retention: destroy S_epoch[d, day], one secret for every record expiring that day."""
        share_datasets(session, [dataset_id])  # a rectification's new uploads keep their day
        uploads = list(
            session.scalars(
                select(Upload).where(Upload.dataset_id == dataset_id, Upload.retention_day == day)
            )
        )
        ids = [u.id for u in uploads]
        return self._finish(
            session,
            kind=RETENTION_EXPIRE,
            scope=EpochScope(str(dataset_id), day),
            refs=[epoch_ref(dataset_id, day.isoformat())],
            record_cond=Record.upload_id.in_(ids),
            commitment_cond=KeyCommitment.upload_id.in_(ids),
            whole_uploads=uploads,
            reason="retention period ended",
            requester="retention-sweeper",
        )

    def _finish(
        self,
        session: Session,
        *,
        kind: str,
        scope: Scope,
        refs: list[SecretRef],
        record_cond: ColumnElement[bool],
        commitment_cond: ColumnElement[bool],
        whole_uploads: list[Upload],
        reason: str,
        requester: str,
        request: int | None = None,
        forget: bool = False,
        receipt_to: bytes | None = None,
        queue_anyway: bool = False,
    ) -> ErasureResult:
        now = self._clock()
        destroyed = self._store.destroy(session, refs)
        if not destroyed and request is None and not queue_anyway:
            # Idempotent: nothing left to destroy. Point at the fact that erased this exact
            # scope before (if any), so a repeated request gets the same certificate.
            previous = session.scalar(
                select(OutboxFact.id)
                .where(
                    OutboxFact.kind == kind,
                    OutboxFact.payload.contains({"scope": scope.to_payload()}),
                )
                .order_by(OutboxFact.id)
                .limit(1)
            )
            return ErasureResult(kind, scope, 0, 0, outbox_id=previous)
        erased, commitments = _erase_rows(
            session, record_cond, commitment_cond, whole=bool(whole_uploads), now=now
        )
        forgotten = 0
        if whole_uploads:
            forgotten = self._forget_uploads(session, whole_uploads)
        uploads = [
            UploadRef(str(u.id), u.commitments_root, u.commitment_count)
            for u in sorted(whole_uploads, key=lambda u: str(u.id))
        ]
        certificate = ErasureCertificate(
            scope=scope,
            key_commitments=tuple(bytes.fromhex(c) for c in commitments),
            uploads=tuple(uploads),
            secrets_destroyed=len(destroyed),
            reason=reason,
            requester=requester,
            at=now,
            request=request,
        )
        typed: ErasureRecord | RetentionExpire = (
            ErasureRecord(certificate, forget=forget, receipt_to=receipt_to)
            if kind == ERASURE_RECORD
            else RetentionExpire(certificate)
        )
        fact = OutboxFact(kind=kind, payload=typed.to_payload())
        session.add(fact)
        session.flush()
        return ErasureResult(
            kind=kind,
            scope=scope,
            secrets_destroyed=len(destroyed),
            records_erased=erased,
            commitments=commitments,
            uploads=uploads,
            outbox_id=fact.id,
            rows_forgotten=forgotten,
        )

    def _forget_uploads(self, session: Session, uploads: list[Upload]) -> int:
        """Nothing of these uploads is left to read: their commitments stop naming anyone, and
        the subject secrets their subjects now hold no live record under go too (they would
        keep naming them). Returns the commitments rewritten."""
        ids = [u.id for u in uploads]
        named = session.execute(_SUBJECTS_OF_UPLOADS, {"uploads": ids}).all()
        done = session.execute(_FORGET_WHOLE_UPLOADS, {"uploads": ids})
        by_dataset: dict[uuid.UUID, list[str]] = {}
        for dataset_id, subject in named:
            by_dataset.setdefault(dataset_id, []).append(subject)
        for dataset_id, subjects in sorted(by_dataset.items(), key=lambda kv: str(kv[0])):
            # An upload under way in the dataset: left to the final-erasure cycle.
            self._store.destroy_orphaned_subjects(session, dataset_id, subjects)
        return cast("CursorResult[Any]", done).rowcount


_NO_SYNC = {"synchronize_session": False}


def _subject_refs(
    session: Session, subject_id: str, dataset_id: uuid.UUID | None
) -> list[SecretRef]:
    """The subject secrets that still exist for `subject_id` (in `dataset_id`, or anywhere)."""
    cond = and_(KeySecret.kind == "subject", KeySecret.scope == subject_id)
    if dataset_id is not None:
        cond = and_(cond, KeySecret.dataset_id == dataset_id)
    rows = session.execute(
        select(KeySecret.kind, KeySecret.dataset_id, KeySecret.scope).where(cond)
    )
    return [SecretRef(k, d, s) for k, d, s in rows]


def _end_sessions(session: Session, subject_id: str) -> None:
    """Delete the wallet sign-in sessions that hold `subject_id` (api/services/subject_sessions.py).

    Such a row names every pseudonym its wallet proved in one sign-in: left alone it would keep
    the erased pseudonym, linked to the subject's others, until it expires. Sessions hold
    ledger pseudonyms only (64 hex), so no other id can name one.
    """
    if LEDGER_SUBJECT_ID.fullmatch(subject_id):
        held = SubjectSession.pseudonyms.contains([subject_id])
        session.execute(delete(SubjectSession).where(held), execution_options=_NO_SYNC)


def _still_named(session: Session, subject_id: str) -> bool:
    """Whether any row still names `subject_id`: records, key commitments, the subject's API
    keys, their requests in the register, an erasure fact, or the record of a read of their
    data."""
    probes: list[Any] = [
        select(Record.id).where(Record.subject_id == subject_id),
        select(SubjectRequest.id).where(SubjectRequest.subject == subject_id),
        select(KeyCommitment.upload_id).where(KeyCommitment.subject_id == subject_id),
        select(ApiKey.id).where(ApiKey.member_id == subject_id, ApiKey.role == "subject"),
        select(OutboxFact.id).where(_FACT_NAMES_SUBJECT.bindparams(subject=subject_id)),
        select(Decryption.id).where(Decryption.subject == subject_id),
    ]
    return any(session.scalar(p.limit(1)) is not None for p in probes)


def _forget_rows(
    session: Session,
    subject_id: str,
    replacements: dict[uuid.UUID, str],
    dataset_id: uuid.UUID | None,
) -> int:
    """Replace `subject_id` in records, key commitments and decryptions by each dataset's
    `forgotten_id` (a few statements whatever the number of datasets); returns the rows
    rewritten.

    The subject's commitments get their leaf index first (`_fix_positions`), while their
    subject id still sorts where it did when the upload's root was built.
    """
    found = select(Record.dataset_id).where(Record.subject_id == subject_id)
    committed = (
        select(Upload.dataset_id)
        .join(KeyCommitment, KeyCommitment.upload_id == Upload.id)
        .where(KeyCommitment.subject_id == subject_id)
    )
    read = select(Decryption.dataset_id).where(Decryption.subject == subject_id)
    if dataset_id is not None:
        found = found.where(Record.dataset_id == dataset_id)
        committed = committed.where(Upload.dataset_id == dataset_id)
        read = read.where(Decryption.dataset_id == dataset_id)
    datasets = sorted(
        {
            *session.scalars(found.distinct()),
            *session.scalars(committed.distinct()),
            *session.scalars(read.distinct()),
        },
        key=str,
    )
    if not datasets:
        return 0
    _fix_positions(session, subject_id, datasets)
    params = {
        "subject": subject_id,
        "datasets": datasets,
        "new_ids": [replacements.get(d) or forgotten_id(None) for d in datasets],
    }
    rewritten = 0
    for statement in (_REPLACE_IN_RECORDS, _REPLACE_IN_COMMITMENTS, _REPLACE_IN_DECRYPTIONS):
        done = session.execute(statement, params)
        rewritten += cast("CursorResult[Any]", done).rowcount
    return rewritten


def _forget_requests(
    session: Session,
    subject_id: str,
    replacements: dict[uuid.UUID, str],
    dataset_id: uuid.UUID | None,
    everywhere: str | None,
) -> int:
    """Replace `subject_id` in the register's rows: a request of an erased dataset gets that
    dataset's `forgotten_id`; erased everywhere, a request of no dataset (or of one where no
    secret was left) gets `everywhere`. The rows stay: a request and its timing remain
    provable (Art. 5(2)) once they name nobody. Returns the rows rewritten."""
    datasets = [dataset_id] if dataset_id is not None else sorted(replacements, key=str)
    params = {
        "subject": subject_id,
        "datasets": datasets,
        "new_ids": [replacements.get(d) or forgotten_id(None) for d in datasets],
    }
    done = cast("CursorResult[Any]", session.execute(_REPLACE_IN_REQUESTS, params)).rowcount
    if everywhere is not None:
        rest = session.execute(
            update(SubjectRequest)
            .where(SubjectRequest.subject == subject_id)
            .values(subject=everywhere)
            .execution_options(synchronize_session=False)
        )
        done += cast("CursorResult[Any]", rest).rowcount
    return done


def _fix_positions(session: Session, subject_id: str, datasets: list[uuid.UUID]) -> None:
    """Record the leaf index of `subject_id`'s commitment in each upload of `datasets`.

    The leaves are the upload's commitments by subject id. Rows still holding their subject id
    keep their relative order; forgotten rows hold their index in `position`. So the index of
    this subject is the k-th index not held by a forgotten row, k being the number of rows
    still named that sort before it. Only the forgotten rows are written: rewriting every
    commitment of every upload the subject is in would cost an erasure a write per subject
    of those uploads.
    """
    params = {"subject": subject_id, "datasets": datasets}
    before = {u: int(n) for u, n in session.execute(_SORTED_BEFORE, params)}
    if not before:
        return
    uploads = sorted(before, key=str)
    fixed: dict[uuid.UUID, list[int]] = {u: [] for u in uploads}
    for upload, position, sorts_before in session.execute(
        _FIXED, {"subject": subject_id, "uploads": uploads}
    ):
        fixed[upload].append(position)
        if sorts_before:
            before[upload] -= 1  # counted above, but it no longer holds its original place
    positions = []
    for upload in uploads:
        index = before[upload]
        for taken in fixed[upload]:  # ascending
            if taken <= index:
                index += 1
        positions.append(index)
    session.execute(
        _SET_POSITIONS, {"subject": subject_id, "uploads": uploads, "positions": positions}
    )


def settle_erasure(session: Session, fact_id: int, *, sealed_receipt: bytes | None) -> None:
    """After the relay recorded erasure fact `fact_id`: keep its receipt sealed (if the caller
    asked for one) and, for an erasure everywhere, drop the subject from this fact and from
    every erasure fact that names them. Runs in the relay's marking transaction, so a fact is
    never recorded without being forgotten.

    Why only now: until the ledger has it, the fact must name the subject (it is what the
    relay submits). A forgotten fact cannot be sent again (`is_forgotten`).
    """
    fact = session.get(OutboxFact, fact_id, with_for_update=True)
    if fact is None or fact.kind != ERASURE_RECORD:
        return
    record = ErasureRecord.from_payload(fact.payload)
    if sealed_receipt is not None:
        record = replace(record, sealed_receipt=sealed_receipt)
    subject = record.subject if record.forget else None
    if subject is not None:
        naming = session.scalars(
            select(OutboxFact)
            .where(_FACT_NAMES_SUBJECT.bindparams(subject=subject), OutboxFact.id != fact_id)
            .with_for_update()
        )
        for other in naming:
            other.payload = ErasureRecord.from_payload(other.payload).forgetting().to_payload()
            other.last_error = None  # a ledger error message is no place to keep a name either
        record = record.forgetting()
        # A register row written after the erasure forgot the others (the sync, from a
        # ledger answer that still listed the subject's request): it names nobody either.
        session.execute(
            update(SubjectRequest)
            .where(SubjectRequest.subject == subject)
            .values(subject=forgotten_id(None))
            .execution_options(synchronize_session=False)
        )
    fact.payload = record.to_payload()
    session.flush()


def certificate_status(fact: OutboxFact) -> ErasureStatus:
    """An erasure fact's certificate state: recorded when the ledger has it, final when,
    besides, its final-erasure cycle retired every KEK that could open a copy of it."""
    return ErasureStatus.of(
        recorded_at=fact.sent_at, refused_at=fact.refused_at, final_at=fact.final_at
    )


def is_forgotten(payload: dict[str, Any]) -> bool:
    """True for an erasure fact whose subject was forgotten: it can no longer be submitted."""
    return bool(payload.get("forgotten"))
