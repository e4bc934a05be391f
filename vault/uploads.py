"""Uploading records: validate, encrypt, store in batches with COPY, anchor a Merkle root.

The whole upload is one savepoint in the caller's transaction: any failure (a bad record on
line 90,000, a duplicate id, a lost connection) rolls back every row, key secret and outbox
fact of the upload, and the typed error says which record was at fault. Memory is bounded by
one batch plus the LRU of DEKs, whatever the size of the stream.

Per record: one JSON validation, one AES-256-GCM seal, one HMAC (leaf salt), one SHA-256
(leaf). Rows go to PostgreSQL with binary COPY, one COPY per batch.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import psycopg
from sqlalchemy import select, text, update
from sqlalchemy.orm import Session

from ledger_bridge.facts import UploadAnchor
from vault.crypto import record_leaf, seal
from vault.crypto.merkle import MerkleBuilder, leaf_hash
from vault.datasets import get_dataset
from vault.errors import DuplicateRecord, InvalidRecord, RecordTooLarge
from vault.keyring import KeyRing
from vault.keys import KeyStore
from vault.locks import share_datasets
from vault.models import KeyCommitment, OutboxFact, Upload

SUBJECT_ID = re.compile(r"^[A-Za-z0-9._:@+=/-]{1,128}$")
# With a ledger, a subject id is the subject's pseudonym on it: the hex of their wallet's
# public key, so their signed consents name the same id the records carry.
LEDGER_SUBJECT_ID = re.compile(r"^[0-9a-f]{64}$")
_COPY_SQL = (
    "COPY records (id, dataset_id, upload_id, subject_id, leaf_index, leaf_hash, envelope) "
    "FROM STDIN (FORMAT BINARY)"
)
_COPY_TYPES = ["uuid", "uuid", "uuid", "text", "int4", "bytea", "bytea"]
_INSERT_COMMITMENTS = text(
    "INSERT INTO key_commitments (upload_id, subject_id, commitment) "
    "SELECT CAST(:upload AS uuid), s, c "
    "FROM unnest(CAST(:subjects AS text[]), CAST(:commitments AS bytea[])) AS x(s, c) "
    "ON CONFLICT (upload_id, subject_id) DO NOTHING"
)
_DUPLICATE_KEY = re.compile(r"Key \(id\)=\(([0-9a-f-]{36})\) already exists")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


@dataclass(frozen=True, slots=True)
class RecordIn:
    """One record of an upload stream.

    subject_id: the data subject's pseudonym (wallet public key or cooperative id), never a name.
    payload: a JSON object, given as its encoded bytes (kept byte for byte) or as a dict.
    record_id: chosen by the provider for idempotent re-uploads, or assigned by the vault.
    """

    subject_id: str
    payload: bytes | Mapping[str, Any]
    record_id: uuid.UUID | None = None


@dataclass(frozen=True, slots=True)
class UploadResult:
    upload_id: uuid.UUID
    dataset_id: uuid.UUID
    record_count: int
    merkle_root: bytes
    commitments_root: bytes
    commitment_count: int
    retention_day: dt.date
    outbox_id: int


def _payload_bytes(payload: bytes | Mapping[str, Any], position: int, size_max: int) -> bytes:
    if isinstance(payload, Mapping):
        try:
            raw = json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
            data = raw.encode()  # a lone surrogate cannot be UTF-8: UnicodeEncodeError
        except (TypeError, ValueError, RecursionError):
            raise InvalidRecord("payload is not JSON-serialisable", position=position) from None
    elif isinstance(payload, bytes | bytearray | memoryview):
        data = bytes(payload)
        if len(data) > size_max:
            raise RecordTooLarge(f"payload exceeds {size_max} bytes", position=position)
        try:
            value = json.loads(data, parse_constant=_reject_constant)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise InvalidRecord("payload is not valid JSON", position=position) from None
        if not isinstance(value, dict):
            raise InvalidRecord("payload must be a JSON object", position=position)
    else:
        raise InvalidRecord("payload must be a JSON object", position=position)
    if len(data) > size_max:
        raise RecordTooLarge(f"payload exceeds {size_max} bytes", position=position)
    return data


def _coerce(
    item: RecordIn | Mapping[str, Any], position: int, subject_ids: re.Pattern[str] = SUBJECT_ID
) -> RecordIn:
    if isinstance(item, RecordIn):
        record = item
    elif isinstance(item, Mapping):
        if not item.keys() <= {"subject_id", "payload", "record_id"}:
            # Unnamed: a field name is the caller's input, of any length.
            raise InvalidRecord(
                "unknown fields; a record holds only subject_id, payload and record_id",
                position=position,
            )
        raw_id = item.get("record_id")
        try:
            record_id = uuid.UUID(raw_id) if isinstance(raw_id, str) else None
        except ValueError:
            raise InvalidRecord("record_id is not a UUID", position=position) from None
        if raw_id is not None and record_id is None:
            raise InvalidRecord("record_id is not a UUID", position=position)
        payload = item.get("payload")
        if not isinstance(payload, Mapping | bytes):
            raise InvalidRecord("payload must be a JSON object", position=position)
        record = RecordIn(subject_id=item.get("subject_id"), payload=payload, record_id=record_id)  # type: ignore[arg-type]
    else:
        raise InvalidRecord("a record must be an object", position=position)
    if not isinstance(record.subject_id, str) or not subject_ids.match(record.subject_id):
        if subject_ids is LEDGER_SUBJECT_ID:
            reason = "subject_id must be the subject's wallet public key (64 lowercase hex)"
        else:
            reason = "subject_id must be a pseudonym of 1..128 characters [A-Za-z0-9._:@+=/-]"
        raise InvalidRecord(reason, position=position)
    return record


class Uploader:
    """Encrypts and stores upload streams for one key store."""

    def __init__(
        self,
        store: KeyStore,
        *,
        record_size_max_bytes: int = 64 * 1024,
        batch_rows: int = 2000,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        subject_ids: re.Pattern[str] = SUBJECT_ID,
    ) -> None:
        self._store = store
        self._subject_ids = subject_ids
        self._size_max = record_size_max_bytes
        self._batch_rows = batch_rows
        self._clock = clock

    def upload(
        self,
        session: Session,
        dataset_id: uuid.UUID,
        records: Iterable[RecordIn | Mapping[str, Any]],
        *,
        upload_id: uuid.UUID | None = None,
        retention_day: dt.date | None = None,
    ) -> UploadResult:
        """Store a whole stream or nothing. Raises a `VaultError` subclass on bad input.

        `retention_day`: the day the records expire after; by default the dataset's retention
        from today. A rectification keeps the day of the versions it replaces."""
        with session.begin_nested():
            return self._upload(
                session, dataset_id, records, upload_id or uuid.uuid4(), retention_day
            )

    def checked(self, item: RecordIn | Mapping[str, Any]) -> RecordIn:
        """One record as an upload would take it (subject id, payload bounds), its payload as
        bytes; the typed error otherwise (record 1)."""
        record = _coerce(item, 1, self._subject_ids)
        payload = _payload_bytes(record.payload, 1, self._size_max)
        return RecordIn(record.subject_id, payload, record.record_id)

    def _upload(
        self,
        session: Session,
        dataset_id: uuid.UUID,
        records: Iterable[RecordIn | Mapping[str, Any]],
        upload_id: uuid.UUID,
        retention_day: dt.date | None,
    ) -> UploadResult:
        dataset = get_dataset(session, dataset_id)
        # Until commit: a rectification must not replace a subject secret this upload uses.
        share_datasets(session, [dataset_id])
        now = self._clock()
        if retention_day is None:
            retention_day = now.date() + dt.timedelta(days=dataset.retention_days)
        day_iso = retention_day.isoformat()
        upload = Upload(
            id=upload_id,
            dataset_id=dataset_id,
            record_count=0,
            merkle_root=b"",
            commitments_root=b"",
            commitment_count=0,
            retention_day=retention_day,
            state="pending",
            created_at=now,
        )
        session.add(upload)
        session.flush()

        ring = KeyRing(self._store, session, dataset_id, create=True)
        builder = MerkleBuilder()
        conn = session.connection().connection.driver_connection
        assert isinstance(conn, psycopg.Connection)
        batch: list[RecordIn] = []
        position = 0
        for item in records:
            position += 1
            batch.append(_coerce(item, position, self._subject_ids))
            if len(batch) >= self._batch_rows:
                self._write_batch(session, conn, ring, builder, upload, day_iso, batch, position)
                batch = []
        if batch:
            self._write_batch(session, conn, ring, builder, upload, day_iso, batch, position)

        anchor = _anchor(session, upload_id, dataset_id, builder, retention_day)
        fact = OutboxFact(kind=anchor.kind, payload=anchor.to_payload())
        session.add(fact)
        session.flush()
        session.expire(upload)
        return UploadResult(
            upload_id=upload_id,
            dataset_id=dataset_id,
            record_count=anchor.record_count,
            merkle_root=anchor.merkle_root,
            commitments_root=anchor.key_commitments_root,
            commitment_count=anchor.key_commitment_count,
            retention_day=retention_day,
            outbox_id=fact.id,
        )

    def _write_batch(
        self,
        session: Session,
        conn: psycopg.Connection[Any],
        ring: KeyRing,
        builder: MerkleBuilder,
        upload: Upload,
        day_iso: str,
        batch: list[RecordIn],
        last_position: int,
    ) -> None:
        first_position = last_position - len(batch) + 1
        upload_id, dataset_id = upload.id, upload.dataset_id
        ring.prefetch_subjects(upload_id, day_iso, {r.subject_id for r in batch})
        new_commitments: dict[str, bytes] = {}
        rows = []
        upload_bytes, dataset_bytes = upload_id.bytes, dataset_id.bytes
        for offset, record in enumerate(batch):
            position = first_position + offset
            payload = _payload_bytes(record.payload, position, self._size_max)
            dek, fresh = ring.dek_fresh(upload_id, day_iso, record.subject_id)
            assert dek is not None, "upload secrets were just ensured"
            if fresh:
                new_commitments[record.subject_id] = dek.commitment()
            record_id = record.record_id or uuid.uuid4()
            rid = record_id.bytes
            envelope = seal(
                dek, payload, record_id=rid, dataset_id=dataset_bytes, upload_id=upload_bytes
            )
            leaf = leaf_hash(record_leaf(rid, dek.leaf_salt(rid), payload))
            index = builder.count
            builder.push(leaf)
            rows.append(
                (record_id, dataset_id, upload_id, record.subject_id, index, leaf, envelope)
            )
        if new_commitments:
            # ON CONFLICT: a subject evicted from the DEK cache and seen again re-derives.
            session.execute(
                _INSERT_COMMITMENTS,
                {
                    "upload": upload_id,
                    "subjects": list(new_commitments),
                    "commitments": list(new_commitments.values()),
                },
            )
        try:
            with conn.cursor() as cur, cur.copy(_COPY_SQL) as copy:
                copy.set_types(_COPY_TYPES)
                for row in rows:
                    copy.write_row(row)
        except psycopg.errors.UniqueViolation as exc:
            match = _DUPLICATE_KEY.search(str(exc.diag.message_detail or ""))
            which = match.group(1) if match else "a record id"
            raise DuplicateRecord(
                f"record {which} already exists (records {first_position}..{last_position})"
            ) from None


def _anchor(
    session: Session,
    upload_id: uuid.UUID,
    dataset_id: uuid.UUID,
    records: MerkleBuilder,
    retention_day: dt.date,
) -> UploadAnchor:
    """Build the key-commitments root (commitments ordered by subject id, the order the
    ledger's root is checked in), store both roots on the upload, and return its anchor."""
    commitments = MerkleBuilder()
    for (commitment,) in session.execute(
        select(KeyCommitment.commitment)
        .where(KeyCommitment.upload_id == upload_id)
        .order_by(KeyCommitment.subject_id)
    ).yield_per(10_000):
        commitments.push(leaf_hash(commitment))
    anchor = UploadAnchor(
        upload=str(upload_id),
        dataset=str(dataset_id),
        record_count=records.count,
        merkle_root=records.root(),
        key_commitments_root=commitments.root(),
        key_commitment_count=commitments.count,
        retention_day=retention_day,
    )
    session.execute(
        update(Upload)
        .where(Upload.id == upload_id)
        .values(
            record_count=anchor.record_count,
            merkle_root=anchor.merkle_root,
            commitments_root=anchor.key_commitments_root,
            commitment_count=anchor.key_commitment_count,
        )
    )
    return anchor
