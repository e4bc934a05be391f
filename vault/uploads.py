"""Uploading records: validate, encrypt, store in batches with COPY, anchor a Merkle root.

The whole upload is one savepoint in the caller's transaction: any failure (a bad record on
line 90,000, a duplicate id, a lost connection) rolls back every row, key secret and outbox
fact of the upload, and the typed error says which record was at fault. Memory is bounded by
the records read ahead of the COPY (`_AHEAD_RECORDS`, `_AHEAD_BYTES`) plus the LRU of DEKs,
whatever the size of the stream.

Per record: one JSON validation, one AES-256-GCM seal, one HMAC (leaf salt), one SHA-256
(leaf), all in column-wise loops over a chunk (vault/crypto/batch.py). Rows go to PostgreSQL
as binary COPY data encoded here, a chunk at a time as it is sealed, in one COPY for as long
as no new subject needs its DEK derived.
"""

from __future__ import annotations

import datetime as dt
import json
import json.encoder
import os
import re
import struct
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from itertools import islice
from operator import attrgetter
from typing import Any

import psycopg
from sqlalchemy import update
from sqlalchemy.orm import Session

from ledger_bridge.facts import UploadAnchor
from vault.crypto import DataKey
from vault.crypto.batch import UploadSealer
from vault.crypto.merkle import MerkleBuilder, leaf_hash
from vault.datasets import get_dataset
from vault.db import driver_connection, widen_send_buffer
from vault.errors import DuplicateRecord, InvalidRecord, RecordTooLarge
from vault.jsontext import Loads
from vault.keyring import CACHE_MAX, KeyRing
from vault.keys import KeyStore
from vault.locks import share_datasets
from vault.models import OutboxFact, Upload

# A subject's pseudonym: what `SUBJECT_ID` matches, for patterns that match it in context.
SUBJECT_ID_CHARS = r"[A-Za-z0-9._:@+=/-]{1,128}"
# Check ids with `fullmatch`: in Python, `$` also matches before a final newline, and "s1\n"
# must not pass for a pseudonym apart from "s1". The patterns keep `^…$` for the request
# schemas, whose regular expression engine ends `$` at the end of the text only.
SUBJECT_ID = re.compile(rf"^{SUBJECT_ID_CHARS}$")
# With a ledger, a subject id is the subject's pseudonym on it: the hex of their wallet's
# public key, so their signed consents name the same id the records carry.
LEDGER_SUBJECT_ID = re.compile(r"^[0-9a-f]{64}$")
_COPY_SQL = (
    "COPY records (id, dataset_id, upload_id, subject_id, leaf_index, leaf_hash, envelope) "
    "FROM STDIN (FORMAT BINARY)"
)
# Binary COPY framing (PostgreSQL docs, "COPY", binary format): signature, flags, header
# extension length; each row: field count (int16), then per field its length (int32) and bytes.
_COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + bytes(8)
_COPY_TRAILER = b"\xff\xff"
_COPY_FIELD = struct.Struct(">i")
_ROW_START = struct.pack(">hi", 7, 16)  # 7 fields, then the record id's length
_ROW_INDEX = struct.Struct(">iii")  # leaf index: length 4, value; leaf hash: length 32
# Records per chunk (read, checked, sealed, sent as one COPY message): small enough that the
# server stores one while the next is prepared; `batch_rows`, when smaller, bounds it.
_COPY_CHUNK_ROWS = 256
# A version 4 UUID (RFC 9562): random bits but the version nibble (4, the high half of byte
# 6) and the variant bits (10, the top of byte 8), set by these byte translations.
_VERSION_4 = bytes((b & 0x0F) | 0x40 for b in range(256))
_VARIANT_RFC = bytes((b & 0x3F) | 0x80 for b in range(256))
# Chunks read ahead of the COPY, so that the subjects they name are derived together: the
# key store's statements need the connection, so every derivation ends a COPY (`_Copier`).
# Bounded in records (and so in distinct subjects, below the DEK cache's size, so that all of
# them stay derived while their chunks are sent) and in payload bytes.
_AHEAD_RECORDS = 4096
_AHEAD_BYTES = 8 * 1024 * 1024
# Binary parameters: a list in text format costs 1-5 µs an element to adapt.
_INSERT_COMMITMENTS = (
    "INSERT INTO key_commitments (upload_id, subject_id, commitment) "
    "SELECT %(upload)b, s, c "
    "FROM unnest(CAST(%(subjects)b AS text[]), CAST(%(commitments)b AS bytea[])) AS x(s, c) "
    "ON CONFLICT (upload_id, subject_id) DO NOTHING"
)
_COMMITMENTS = (
    "SELECT commitment FROM key_commitments WHERE upload_id = %(upload)b ORDER BY subject_id"
)
_COMMITMENTS_PAGE = 10_000
_COPY_LINE = re.compile(r"^COPY records, line (\d+)")
_DUPLICATE_KEY = re.compile(r"Key \(id\)=\(([0-9a-f-]{36})\) already exists")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


_loads = Loads(parse_constant=_reject_constant)
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _compact_encoder() -> Callable[[Any], str]:
    """`json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)`.

    Why built once: `json.dumps` builds a new encoder, and C encoder under it, on every call
    given options. The C encoder keeps no state between calls when built without the
    circular-reference markers; a circular value then ends in `RecursionError` rather than
    `ValueError`, and both are refused as "not JSON-serialisable" alike."""
    make = getattr(json.encoder, "c_make_encoder", None)  # None without the C accelerator
    if make is None:
        return _ENCODER.encode
    encode = make(
        None, _ENCODER.default, json.encoder.encode_basestring, None, ":", ",", False, False, False
    )
    return lambda value: "".join(encode(value, 0))


_dumps = _compact_encoder()


class CompactJson:
    """A JSON object's text exactly as the compact encoder (`_dumps`) writes its value, UTF-8:
    what the uploader stores for a dict payload, already made.

    Why: the API parses each upload line to check it, and when the client sent its payload
    in this form the bytes to store are the client's own; encoding the parsed dict again
    would cost as much as the parse. Only code that has parsed the text and checked that it
    is this form (`api/http/streams.py`: with `vault.jsontext.shape`, or for a block of
    plain lines with a regular expression and a count of the parsed pairs) makes one; the
    uploader trusts it and checks only its size."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __repr__(self) -> str:
        return f"CompactJson(<{len(self.data)} bytes>)"


@dataclass(frozen=True, slots=True)
class RecordIn:
    """One record of an upload stream.

    subject_id: the data subject's pseudonym (wallet public key or cooperative id), never a name.
    payload: a JSON object, given as its encoded bytes (kept byte for byte), as a dict, or as
    the compact encoding of a dict (`CompactJson`).
    record_id: chosen by the provider for idempotent re-uploads, or assigned by the vault.
    """

    subject_id: str
    payload: bytes | Mapping[str, Any] | CompactJson
    record_id: uuid.UUID | None = None


_SUBJECT_OF, _PAYLOAD_OF = attrgetter("subject_id"), attrgetter("payload")
_RECORD_ID_OF, _DATA_OF = attrgetter("record_id"), attrgetter("data")


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


def _payload_bytes(
    payload: bytes | Mapping[str, Any] | CompactJson, position: int, size_max: int
) -> bytes:
    if type(payload) is CompactJson:
        data = payload.data
    elif isinstance(payload, Mapping):
        try:
            raw = _dumps(payload)
            data = raw.encode()  # a lone surrogate cannot be UTF-8: UnicodeEncodeError
        except (TypeError, ValueError, RecursionError):
            raise InvalidRecord("payload is not JSON-serialisable", position=position) from None
    elif isinstance(payload, bytes | bytearray | memoryview):
        data = bytes(payload)
        if len(data) > size_max:
            raise RecordTooLarge(f"payload exceeds {size_max} bytes", position=position)
        try:
            value = _loads(data)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise InvalidRecord("payload is not valid JSON", position=position) from None
        if not isinstance(value, dict):
            raise InvalidRecord("payload must be a JSON object", position=position)
    else:
        raise InvalidRecord("payload must be a JSON object", position=position)
    if len(data) > size_max:
        raise RecordTooLarge(f"payload exceeds {size_max} bytes", position=position)
    return data


def _chunk_payloads(
    first: int, chunk: list[RecordIn], size_max: int, whole: bool
) -> tuple[list[bytes], bool]:
    """The bytes to store of each record of a chunk (`_payload_bytes` of each), and whether
    to check the next chunk whole: a chunk whose payloads are all `CompactJson` has only
    their sizes checked, and with `whole`, one whose payloads are all bytes is checked at
    once (`Loads.all_objects`).

    Why: an upload's payloads nearly always all come in one form, and checking them with one
    call per record costs as much as the parse. A chunk that does not pass goes through
    `_payload_bytes` record by record, which refuses the first bad one by its position. If
    they all pass there, the upload's payloads come in a form the chunk check does not take
    (with whitespace around them, say): its later chunks go record by record at once, rather
    than being parsed twice."""
    payloads = list(map(_PAYLOAD_OF, chunk))
    kinds = set(map(type, payloads))
    if kinds == {CompactJson}:
        data = list(map(_DATA_OF, payloads))
        if max(map(len, data), default=0) <= size_max:
            return data, whole
    elif whole and kinds == {bytes}:
        data = [p for p in payloads if type(p) is bytes]
        if max(map(len, data), default=0) <= size_max and _loads.all_objects(data):
            return data, True
        whole = False
    return [_payload_bytes(r.payload, first + i, size_max) for i, r in enumerate(chunk)], whole


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
    if not isinstance(record.subject_id, str) or not subject_ids.fullmatch(record.subject_id):
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
        if batch_rows < 1:
            raise ValueError("batch_rows must be at least 1")
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
        from today. A rectification keeps the day of the versions it replaces.

        `records` is read while a COPY is open on the session's connection (so that the
        server stores one chunk while the next is read): it must not use that session."""
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
        copier = _Copier(session, upload, _Subjects(ring, upload_id, day_iso), builder)
        rows = min(self._batch_rows, _COPY_CHUNK_ROWS)
        copier.run(_chunks(records, rows, self._subject_ids), self._size_max)

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


def _chunks(
    records: Iterable[RecordIn | Mapping[str, Any]], rows: int, subject_ids: re.Pattern[str]
) -> Iterator[tuple[int, list[RecordIn]]]:
    """(the position of its first record, the records) of each run of `rows` records.

    A run is taken and checked whole when it is all `RecordIn`s with valid subject ids, as
    nearly every run is (the API's streams make them so): one C-level pass for each check,
    rather than a call of `_coerce` per record. Any other run goes record by record, which
    refuses the first bad one by its position, as does a stream that fails within a run: a
    record refused before the stream's error is refused first."""
    source = iter(records)
    first = 1
    while True:
        chunk: list[Any] = []
        try:
            chunk.extend(islice(source, rows))  # keeps what came before an error
        except Exception:
            _coerced(chunk, first, subject_ids)
            raise
        if not chunk:
            return
        try:
            whole = set(map(type, chunk)) == {RecordIn} and all(
                map(subject_ids.fullmatch, map(_SUBJECT_OF, chunk))
            )
        except TypeError:  # a subject id that is not a string
            whole = False
        yield first, chunk if whole else _coerced(chunk, first, subject_ids)
        first += len(chunk)


def _coerced(items: list[Any], first: int, subject_ids: re.Pattern[str]) -> list[RecordIn]:
    """`_coerce` of each item, the first at position `first`."""
    return [_coerce(item, first + i, subject_ids) for i, item in enumerate(items)]


_Chunk = tuple[int, list[RecordIn]]


class _Copier:
    """Validates, seals and COPYs an upload's records chunk by chunk, in as few COPYs as its
    subjects allow.

    Why one COPY across chunks: PostgreSQL stores a chunk while this process reads, checks
    and seals the next, and the two run on two cores only while the COPY stays open; each
    COPY ended waits for the server to store everything sent, then leaves it idle until the
    next chunk is sealed. A COPY ends only when a chunk names a subject whose DEK is not yet
    derived (the key store's statements need the connection), and at the end. Before each
    COPY the chunks after it are read ahead (`_AHEAD_RECORDS`, `_AHEAD_BYTES`) and all
    their subjects derived at once: an upload of one record per subject ends a COPY every
    `_AHEAD_RECORDS` records, and its key store's statements each take that many subjects."""

    def __init__(
        self, session: Session, upload: Upload, known: _Subjects, builder: MerkleBuilder
    ) -> None:
        self._session, self._upload, self._known, self._builder = session, upload, known, builder
        self._sealer = UploadSealer(dataset_id=upload.dataset_id.bytes, upload_id=upload.id.bytes)
        self._whole = True  # check the next chunk's payloads at once (`_chunk_payloads`)
        self._conn = driver_connection(session)
        widen_send_buffer(self._conn.pgconn.socket)
        self._ahead: deque[_Chunk] = deque()
        self._source: Iterator[_Chunk] = iter(())
        self._failed: Exception | None = None  # the stream's error, met while reading ahead
        self._sealed: dict[int, bytes] = {}  # queued chunks' rows, by their first position

    def run(self, chunks: Iterator[_Chunk], size_max: int) -> None:
        self._source = chunks
        pending = next(chunks, None)
        while pending is not None:
            commitments = self._known.derive(self._read_ahead(pending, size_max))
            if commitments:
                self._commit_keys(commitments, size_max)
            pending = self._copy(pending, size_max)

    def _commit_keys(self, commitments: dict[str, bytes], size_max: int) -> None:
        """Insert the key commitments of the DEKs just derived, and meanwhile seal queued
        chunks, about as many records as commitments: the insert is sent in a pipeline and
        runs on the server while this process seals, as the COPY would have it do."""
        # ON CONFLICT: a subject evicted from the DEK cache and seen again re-derives.
        params = {
            "upload": self._upload.id,
            "subjects": list(commitments),
            "commitments": list(commitments.values()),
        }
        with self._conn.pipeline() as pipeline, self._conn.cursor() as cursor:
            cursor.execute(_INSERT_COMMITMENTS, params)
            budget = len(commitments)
            for first, chunk in self._ahead:
                if budget <= 0:
                    break
                keyed = self._known.cached(list(map(_SUBJECT_OF, chunk)))
                if keyed is None:
                    break
                self._sealed[first] = self._rows(first, chunk, *keyed, size_max)
                budget -= len(chunk)
            pipeline.sync()

    def _read_ahead(self, pending: _Chunk, size_max: int) -> list[str]:
        """Queue `pending` and the chunks after it, up to the bounds: the subjects they name.
        An error of the stream stops the reading and is raised only where the COPY reaches
        it, so a refusal is the one the upload would meet without reading ahead."""
        self._ahead.appendleft(pending)
        records = size = 0
        subjects: dict[str, None] = {}

        def count(chunk: list[RecordIn]) -> None:
            nonlocal records, size
            records += len(chunk)
            size += _size_bound(chunk, size_max)
            subjects.update(dict.fromkeys(map(_SUBJECT_OF, chunk)))

        for _, chunk in self._ahead:
            count(chunk)
        while self._failed is None and records < _AHEAD_RECORDS and size < _AHEAD_BYTES:
            try:
                following = next(self._source, None)
            except Exception as exc:
                self._failed = exc
                break
            if following is None:
                break
            self._ahead.append(following)
            count(following[1])
        return list(subjects)

    def _next(self) -> _Chunk | None:
        if self._ahead:
            return self._ahead.popleft()
        if self._failed is not None:
            raise self._failed
        return next(self._source, None)

    def _copy(self, pending: _Chunk, size_max: int) -> _Chunk | None:
        """COPY the queued chunks (`pending` first) and the ones after them until one names
        a subject not derived yet: that chunk, or None at the end. A refused record, or any
        error of the stream, ends the COPY with a fixed text (nothing of the records reaches
        the server) and is raised after it."""
        refused: Exception | None = None
        first_position = last_position = pending[0]
        try:
            with self._conn.cursor() as cur, cur.copy(_COPY_SQL) as copy:
                copy.write(_COPY_SIGNATURE)
                next_chunk: _Chunk | None = self._next()
                while next_chunk is not None:
                    first, chunk = next_chunk
                    try:
                        rows = self._chunk_rows(first, chunk, size_max)
                    except Exception as exc:
                        refused = exc
                        raise _Refused from None
                    if rows is None:
                        break
                    last_position = first + len(chunk) - 1
                    copy.write(rows)  # stored by the server while the next chunk is read
                    try:
                        next_chunk = self._next()
                    except Exception as exc:
                        refused = exc
                        raise _Refused from None
                copy.write(_COPY_TRAILER)
        except _Refused:
            assert refused is not None
            raise refused from None
        except psycopg.errors.UniqueViolation as exc:
            match = _DUPLICATE_KEY.search(str(exc.diag.message_detail or ""))
            which = match.group(1) if match else "a record id"
            # The COPY's rows are the stream's records from `first_position` on, in order.
            line = _COPY_LINE.search(str(exc.diag.context or ""))
            where = (
                f"record {first_position + int(line.group(1)) - 1}"
                if line
                else f"records {first_position}..{last_position}"
            )
            raise DuplicateRecord(f"record {which} already exists ({where})") from None
        return next_chunk

    def _chunk_rows(self, first: int, chunk: list[RecordIn], size_max: int) -> bytes | None:
        """The chunk's rows (sealed now, or while the key commitments were inserted), or None
        when it names a subject not derived yet."""
        rows = self._sealed.pop(first, None)
        if rows is None:
            keyed = self._known.cached(list(map(_SUBJECT_OF, chunk)))
            if keyed is not None:
                rows = self._rows(first, chunk, *keyed, size_max)
        return rows

    def _rows(
        self,
        first: int,
        chunk: list[RecordIn],
        keys: list[DataKey],
        fields: list[bytes],
        size_max: int,
    ) -> bytes:
        """The chunk's rows as binary COPY data: payloads checked, records sealed, leaves
        pushed to the Merkle builder."""
        payloads, self._whole = _chunk_payloads(first, chunk, size_max, self._whole)
        record_ids = _record_ids(chunk)
        envelopes, leaves = self._sealer.seal_batch(keys, record_ids, payloads)
        first_index = self._builder.count
        self._builder.extend(leaves)
        return _copy_rows(record_ids, self._upload, fields, first_index, leaves, envelopes)


class _Refused(Exception):
    """Ends a COPY whose batch holds a refused record (the refusal is raised after it)."""

    def __init__(self) -> None:
        super().__init__("a record of the batch was refused")


class _Subjects:
    """Each subject's DEK and COPY field within one upload, derived once and kept for it.

    Why here as well as in the key ring: a batch names each of its subjects, and going to
    the ring for every one of them in every batch costs as much as sealing a record. Bounded
    as the ring is (emptied when `CACHE_MAX` subjects are held), so memory stays flat; a
    subject derived again after that is served by the ring, or derived afresh, and its
    commitment inserted again does nothing."""

    def __init__(self, ring: KeyRing, upload_id: uuid.UUID, day_iso: str) -> None:
        self._ring, self._upload_id, self._day_iso = ring, upload_id, day_iso
        self._deks: dict[str, DataKey] = {}
        self._fields: dict[str, bytes] = {}

    def cached(self, subjects: list[str]) -> tuple[list[DataKey], list[bytes]] | None:
        """(the DEK, the COPY field) of each record's subject, or None when one of them is
        not derived yet (`derive` it first)."""
        deks, fields = self._deks, self._fields
        try:
            return [deks[s] for s in subjects], [fields[s] for s in subjects]
        except KeyError:
            return None

    def derive(self, subjects: list[str]) -> dict[str, bytes]:
        """Derive the DEKs of these subjects not derived yet (the key store's statements):
        the key commitments of those just created, by subject. After it, `cached` answers
        for `subjects` (fewer than `CACHE_MAX`)."""
        deks, fields = self._deks, self._fields
        new = [s for s in dict.fromkeys(subjects) if s not in deks]
        commitments: dict[str, bytes] = {}
        if new:
            if len(deks) + len(new) > CACHE_MAX:
                deks.clear()
                fields.clear()
                new = list(dict.fromkeys(subjects))

            def derive_new() -> None:
                for subject in new:
                    dek, fresh = self._ring.dek_fresh(self._upload_id, self._day_iso, subject)
                    assert dek is not None, "upload secrets were just ensured"
                    deks[subject] = dek
                    fields[subject] = _text_field(subject)
                    if fresh:
                        commitments[subject] = dek.commitment()

            # Derived while the key store's server stores the new secrets.
            self._ring.prefetch_subjects(self._upload_id, self._day_iso, new, derive_new)
        return commitments


def _size_bound(chunk: list[RecordIn], size_max: int) -> int:
    """At least the bytes the chunk's payloads will take (a payload not yet encoded counts
    as the largest allowed)."""
    payloads = list(map(_PAYLOAD_OF, chunk))
    kinds = set(map(type, payloads))
    if kinds == {CompactJson}:  # the API's chunks: summed without a Python step per record
        return sum(map(len, map(_DATA_OF, payloads)))
    if kinds == {bytes}:
        return sum(map(len, payloads))
    return sum(
        len(p) if type(p) is bytes else len(p.data) if type(p) is CompactJson else size_max
        for p in payloads
    )


def _record_ids(batch: list[RecordIn]) -> list[bytes]:
    """Each record's id as 16 bytes: the provider's, or a fresh random (version 4) UUID, the
    randomness of a whole batch read at once and its version and variant bits set for all
    of it in two C calls."""
    rnd = bytearray(os.urandom(16 * len(batch)))
    rnd[6::16] = rnd[6::16].translate(_VERSION_4)
    rnd[8::16] = rnd[8::16].translate(_VARIANT_RFC)
    ids = bytes(rnd)
    chosen = list(map(_RECORD_ID_OF, batch))
    if not any(chosen):  # none chosen by the provider: the usual upload
        return [ids[i : i + 16] for i in range(0, len(ids), 16)]
    return [ids[16 * i : 16 * i + 16] if r is None else r.bytes for i, r in enumerate(chosen)]


def _text_field(value: str) -> bytes:
    data = value.encode()
    return _COPY_FIELD.pack(len(data)) + data


def _copy_rows(
    record_ids: list[bytes],
    upload: Upload,
    subjects: list[bytes],
    first_index: int,
    leaves: list[bytes],
    envelopes: list[bytes],
) -> bytes:
    """Rows in PostgreSQL's binary COPY format, in `_COPY_SQL`'s column order: the field
    count, then each field as its length and bytes (uuid: 16 bytes; text: UTF-8; int4:
    big-endian; bytea: as is). `subjects` are the subject id fields, length included."""
    columns = (
        _COPY_FIELD.pack(16) + upload.dataset_id.bytes + _COPY_FIELD.pack(16) + upload.id.bytes
    )
    parts: list[bytes] = []
    for i, envelope in enumerate(envelopes):
        parts += (
            _ROW_START,
            record_ids[i],
            columns,
            subjects[i],
            _ROW_INDEX.pack(4, first_index + i, 32),
            leaves[i],
            _COPY_FIELD.pack(len(envelope)),
            envelope,
        )
    return b"".join(parts)


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
    # Streamed from a server-side cursor (memory flat in the number of subjects), rows in
    # binary: the commitments come as their bytes, not as hex text to decode.
    with driver_connection(session).cursor("upload-commitments", binary=True) as cursor:
        cursor.execute(_COMMITMENTS, {"upload": upload_id})
        while rows := cursor.fetchmany(_COMMITMENTS_PAGE):
            commitments.extend([leaf_hash(commitment) for (commitment,) in rows])
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
