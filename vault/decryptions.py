"""Every decryption recorded (GDPR Art. 5(2), invariant 10 of DESIGN.md): the `decryptions`
rows, their salted Merkle leaves, the batches the ledger records (`read.record`) and each
row's inclusion proof.

A row says who read (member id and role), why (`kind`), whose records (`subject`), in which
dataset and how many, and when. It is written in the transaction that answers the read (the
callers are api/services/decryptions.py and the routes), never after it: a read whose record
fails is not answered.

The leaf: SHA-256(0x00 || "civis-vault/decryption/v1" || each field length-prefixed:
`vault.crypto.read_leaf`), the fields being a random 32-byte salt, the id, the time in
microseconds, the reader, the role, the kind, the subject, the dataset and the count. Why
the salt: the ledger holds only the root, but an inclusion proof hands out sibling leaves, and
every other field is guessable (a subject's pseudonym from an old block, a dataset id, a time
to the second): without the salt, anyone holding a proof could test which subject a
neighbouring leaf names. An erasure
forgets the subject in these rows as in records (vault/erasure.py): the subject column gets
the dataset's `forgotten_id` and the salt goes, so the stored leaf, kept so that the batch's
other proofs still verify, can no longer be recomputed from anything, nor tested.

Batches: `batch` takes the rows no batch covers yet, oldest first (`FOR UPDATE SKIP LOCKED`,
so concurrent instances take disjoint rows), fixes their order (`leaf_index`) and queues one
`read.record` {reads_root, count} in the outbox in the same transaction; the relay ships it
like any other fact. A row's proof is its audit path under that root, which the ledger holds.
"""

from __future__ import annotations

import datetime as dt
import os
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import func, insert, select, text
from sqlalchemy.orm import Session

from ledger_bridge.facts import READ_RECORD, ReadRecord
from vault.crypto import read_leaf
from vault.crypto.merkle import MerkleTree, leaf_hash, merkle_root
from vault.models import DECRYPTION_KINDS, Decryption, OutboxFact, Record

SALT_BYTES = 32
BATCH_MAX = 10_000
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MICROSECOND = dt.timedelta(microseconds=1)

_ASSIGN = text(
    "UPDATE decryptions d SET batch_id = :batch, leaf_index = x.i"
    " FROM unnest(CAST(:ids AS uuid[]), CAST(:indexes AS int[])) AS x(id, i)"
    " WHERE d.id = x.id"
)


@dataclass(frozen=True, slots=True)
class Read:
    """What one read decrypted of one subject in one dataset."""

    subject: str
    dataset_id: uuid.UUID
    record_count: int


def microseconds(at: dt.datetime) -> int:
    """A time as integer microseconds since 1970 (UTC): exact, as PostgreSQL stores it."""
    return (at - _EPOCH) // _MICROSECOND


def leaf_data(row: Decryption, salt: bytes) -> bytes:
    """The bytes a row's leaf hashes (see the module docstring)."""
    return read_leaf(
        salt=salt,
        read_id=row.id.bytes,
        at_us=microseconds(row.at),
        reader=row.reader,
        reader_role=row.reader_role,
        kind=row.kind,
        subject=row.subject,
        dataset_id=row.dataset_id.bytes,
        record_count=row.record_count,
    )


def leaf_of(row: Decryption, salt: bytes) -> bytes:
    return leaf_hash(leaf_data(row, salt))


def record(
    session: Session,
    *,
    reader: str,
    reader_role: str,
    kind: str,
    reads: Iterable[Read],
    at: dt.datetime | None = None,
) -> list[uuid.UUID]:
    """Insert one row per (subject, dataset) of `reads` (counts of the same pair summed, empty
    reads dropped) in the caller's transaction; returns their ids."""
    if kind not in DECRYPTION_KINDS:
        raise ValueError(f"a decryption is one of {', '.join(DECRYPTION_KINDS)}")
    counts: Counter[tuple[str, uuid.UUID]] = Counter()
    for r in reads:
        counts[(r.subject, r.dataset_id)] += r.record_count
    # Microseconds: what PostgreSQL keeps, so the leaf recomputes from the stored row.
    when = (at or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
    rows, ids = [], []
    for (subject, dataset_id), count in sorted(counts.items(), key=lambda kv: str(kv[0])):
        if count <= 0:
            continue
        ids.append(uuid.uuid4())
        row = Decryption(
            id=ids[-1],
            at=when,
            reader=reader,
            reader_role=reader_role,
            kind=kind,
            subject=subject,
            dataset_id=dataset_id,
            record_count=count,
        )
        salt = os.urandom(SALT_BYTES)
        rows.append({**_columns(row), "salt": salt, "leaf_hash": leaf_of(row, salt)})
    if rows:
        session.execute(insert(Decryption), rows)
    return ids


def _columns(row: Decryption) -> dict[str, object]:
    return {
        "id": row.id,
        "at": row.at,
        "reader": row.reader,
        "reader_role": row.reader_role,
        "kind": row.kind,
        "subject": row.subject,
        "dataset_id": row.dataset_id,
        "record_count": row.record_count,
    }


def readable(
    session: Session,
    dataset_id: uuid.UUID,
    subjects: Iterable[str] | None = None,
    leave_out: Iterable[str] = (),
) -> list[Read]:
    """What a read of `dataset_id` (its `subjects` only, when given; never those it leaves
    out, restricted ones) will decrypt: each subject's records that still hold ciphertext,
    counted in the caller's snapshot.

    For a streamed read, recorded before its first byte: read in the snapshot the stream then
    reads from (REPEATABLE READ), the count is what the stream sends. A record with its
    ciphertext has its three secrets (an erasure or an expiry drops both in one transaction).
    """
    query = (
        select(Record.subject_id, func.count())
        .where(Record.dataset_id == dataset_id, Record.envelope.is_not(None))
        .group_by(Record.subject_id)
    )
    if subjects is not None:
        query = query.where(Record.subject_id.in_(list(subjects)))
    withheld = list(leave_out)
    if withheld:
        query = query.where(Record.subject_id.not_in(withheld))
    return [Read(str(s), dataset_id, int(n)) for s, n in session.execute(query)]


def batch(session: Session, *, max_rows: int = BATCH_MAX) -> tuple[int, int] | None:
    """Queue a `read.record` for up to `max_rows` rows no batch covers yet, in the caller's
    transaction; returns (its outbox id, its row count), or None when no row waits."""
    rows = session.execute(
        select(Decryption.id, Decryption.leaf_hash)
        .where(Decryption.batch_id.is_(None))
        .order_by(Decryption.at, Decryption.id)
        .limit(max_rows)
        .with_for_update(skip_locked=True)
    ).all()
    if not rows:
        return None
    fact = OutboxFact(
        kind=READ_RECORD,
        payload=ReadRecord(merkle_root([bytes(h) for _, h in rows]), len(rows)).to_payload(),
    )
    session.add(fact)
    session.flush()
    session.execute(
        _ASSIGN,
        {"batch": fact.id, "ids": [i for i, _ in rows], "indexes": list(range(len(rows)))},
    )
    return fact.id, len(rows)


@dataclass(frozen=True, slots=True)
class Inclusion:
    """A batched row's place under its batch's root, and the batch's outbox fact."""

    leaf_index: int
    tree_size: int
    audit_path: list[bytes]
    reads_root: bytes
    fact: OutboxFact


def inclusion(session: Session, row: Decryption) -> Inclusion | None:
    """The row's audit path under the root its batch queued for the ledger (None until
    batched). The tree is rebuilt from the batch's stored leaves, in their fixed order."""
    if row.batch_id is None or row.leaf_index is None:
        return None
    fact = session.get(OutboxFact, row.batch_id)
    if fact is None or fact.kind != READ_RECORD:
        return None
    leaves = session.scalars(
        select(Decryption.leaf_hash)
        .where(Decryption.batch_id == row.batch_id)
        .order_by(Decryption.leaf_index)
    ).all()
    tree = MerkleTree([bytes(h) for h in leaves])
    return Inclusion(
        leaf_index=row.leaf_index,
        tree_size=tree.size,
        audit_path=tree.proof(row.leaf_index),
        reads_root=ReadRecord.from_payload(fact.payload).reads_root,
        fact=fact,
    )
