"""Reading records back: decrypt, and prove each record's place in its anchored upload.

Every record comes with what a consumer needs to check it without trusting the vault: its
leaf salt, its index, the RFC 6962 audit path and the upload's Merkle root (which the consumer
compares with the root anchored on the ledger). A record whose key was destroyed raises
`RecordErased`; a ciphertext that fails authentication raises `DecryptionFailed`'s HTTP twin,
also `RecordErased`, because the caller cannot tell the two apart and must not be told.

Erasure deletes ciphertext but keeps each record's salted leaf hash (useless without the
destroyed key), so the inclusion proofs of the upload's other records still verify. A
rectification does the same to the versions it replaces (vault/rectification.py): reads serve
current versions only, and a read of a replaced one by id names the current one.

Reads stream: a dataset of any size is served in batches with bounded memory; inclusion trees
are built only for the uploads actually read, and kept (bounded) for the next read.
"""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, func, select, tuple_
from sqlalchemy.orm import Session

from vault.crypto import DecryptionFailed, unseal
from vault.crypto.merkle import MerkleTree
from vault.errors import RecordErased, RecordNotFound, RecordSuperseded
from vault.keyring import KeyRing
from vault.keys import KeyStore
from vault.models import KeyCommitment, Record, Upload

# Inclusion trees, kept across calls: an upload's leaf hashes never change once its rows are
# visible (an upload is written in one transaction; erasure keeps leaf hashes, see above), and
# they are salted hashes, neither personal data nor key material. Rebuilding the tree of the
# upload being read cost a query and O(n) hashing on every read. Bounded in leaves in all
# (about 130 bytes each), so memory stays flat; a tree larger than the bound is built per call.
TREE_CACHE_LEAVES = 1 << 18
# A chain of versions is followed this far at most (each rectification adds one link; the
# vault never writes a loop, this bounds a read if a row were ever tampered into one).
VERSIONS_MAX = 10_000


class _TreeCache:
    def __init__(self, max_leaves: int) -> None:
        self._max = max_leaves
        self._trees: OrderedDict[uuid.UUID, MerkleTree] = OrderedDict()
        self._leaves = 0
        self._lock = threading.Lock()

    def get(self, upload_id: uuid.UUID, size: int) -> MerkleTree | None:
        with self._lock:
            tree = self._trees.get(upload_id)
            if tree is None or tree.size != size:
                return None
            self._trees.move_to_end(upload_id)
            return tree

    def put(self, upload_id: uuid.UUID, tree: MerkleTree) -> None:
        if tree.size > self._max:
            return
        with self._lock:
            old = self._trees.pop(upload_id, None)
            if old is not None:
                self._leaves -= old.size
            self._trees[upload_id] = tree
            self._leaves += tree.size
            while self._leaves > self._max:
                _, evicted = self._trees.popitem(last=False)
                self._leaves -= evicted.size


_trees = _TreeCache(TREE_CACHE_LEAVES)


@dataclass(frozen=True, slots=True)
class RecordOut:
    record_id: uuid.UUID
    dataset_id: uuid.UUID
    upload_id: uuid.UUID
    subject_id: str
    payload: bytes
    leaf_index: int
    leaf_salt: bytes
    proof: list[bytes]
    merkle_root: bytes
    record_count: int

    def __repr__(self) -> str:
        return f"RecordOut(record_id={self.record_id}, upload_id={self.upload_id}, payload=***)"


_COLUMNS = (
    Record.id,
    Record.dataset_id,
    Record.upload_id,
    Record.subject_id,
    Record.leaf_index,
    Record.envelope,
    Upload.retention_day,
    Upload.merkle_root,
    Upload.record_count,
)


class Reader:
    """Decrypts records for callers that already decided the access is allowed."""

    def __init__(self, store: KeyStore, *, batch_rows: int = 1000) -> None:
        self._store = store
        self._batch_rows = batch_rows

    def record(
        self, session: Session, record_id: uuid.UUID, *, anchored_only: bool = False
    ) -> RecordOut:
        """One record; a version a rectification replaced raises `RecordSuperseded`, naming
        the record that holds the current version."""
        current = current_version(session, record_id)
        if current != record_id:
            raise RecordSuperseded(
                f"record {record_id} was rectified: its current version is record {current}",
                current=str(current),
            )
        query = self._query(anchored_only).where(Record.id == record_id)
        out = list(self._decrypt(session, query, skip_erased=False))
        if not out:
            raise RecordNotFound(f"record {record_id} does not exist")
        return out[0]

    def by_subject(
        self,
        session: Session,
        subject_id: str,
        *,
        dataset_id: uuid.UUID | None = None,
        anchored_only: bool = False,
    ) -> Iterator[RecordOut]:
        query = self._query(anchored_only).where(Record.subject_id == subject_id)
        if dataset_id is not None:
            query = query.where(Record.dataset_id == dataset_id)
        return self._decrypt(session, query, skip_erased=True)

    def subject_page(
        self,
        session: Session,
        subject_id: str,
        *,
        after: RecordPosition | None,
        limit: int,
    ) -> tuple[list[RecordOut], RecordPosition | None]:
        """One page of the subject's readable records, in (upload, leaf) order, after `after`,
        and the position to continue from (None: this page ends the list).

        Why positions and not offsets: the export pages while uploads may land, and a position
        never skips or repeats a record. The page is cut on rows that hold ciphertext, so an
        erased or superseded row never takes a place in it; a row whose key is gone all the
        same (a concurrent erasure) is left out like any erased record.
        """
        live = (Record.subject_id == subject_id) & Record.envelope.is_not(None)
        keys = select(Record.upload_id, Record.leaf_index).where(live)
        if after is not None:
            keys = keys.where(tuple_(Record.upload_id, Record.leaf_index) > tuple_(*after))
        rows = session.execute(
            keys.order_by(Record.upload_id, Record.leaf_index).limit(limit + 1)
        ).all()
        if not rows:
            return [], None
        last = rows[min(limit, len(rows)) - 1]
        query = self._query(False).where(live)
        if after is not None:
            query = query.where(tuple_(Record.upload_id, Record.leaf_index) > tuple_(*after))
        query = query.where(tuple_(Record.upload_id, Record.leaf_index) <= tuple_(*last))
        page = list(self._decrypt(session, query, skip_erased=True))
        return page, ((last[0], int(last[1])) if len(rows) > limit else None)

    def by_dataset(
        self,
        session: Session,
        dataset_id: uuid.UUID,
        *,
        subjects: Iterable[str] | None = None,
        leave_out: Collection[str] = (),
        anchored_only: bool = False,
    ) -> Iterator[RecordOut]:
        """The dataset's records (of `subjects` only, when named), without those of the
        subjects in `leave_out` (whose processing is restricted): they are not decrypted."""
        query = self._query(anchored_only).where(Record.dataset_id == dataset_id)
        if subjects is not None:
            query = query.where(Record.subject_id.in_(list(subjects)))
        if leave_out:
            query = query.where(Record.subject_id.not_in(list(leave_out)))
        return self._decrypt(session, query, skip_erased=True)

    def _query(self, anchored_only: bool) -> Select[*tuple[Any, ...]]:
        # Only current versions: a row a rectification replaced has no ciphertext either, and
        # its key is gone, but a read never even looks at it.
        query: Select[*tuple[Any, ...]] = (
            select(*_COLUMNS)
            .join(Upload, Upload.id == Record.upload_id)
            .where(Record.superseded_by.is_(None))
            .order_by(Record.upload_id, Record.leaf_index)
        )
        if anchored_only:
            query = query.where(Upload.state == "anchored")
        return query

    def _decrypt(
        self, session: Session, query: Select[*tuple[Any, ...]], *, skip_erased: bool
    ) -> Iterator[RecordOut]:
        """Decrypt rows in order, a batch at a time: the key secrets a batch needs (its
        subjects' in each of its uploads) are fetched in one query per upload, not one per
        subject (an access to 100 subjects' records made 100 key-store round trips)."""
        rings: dict[uuid.UUID, KeyRing] = {}
        trees: dict[uuid.UUID, MerkleTree] = {}
        batches = session.execute(query).yield_per(self._batch_rows).partitions()
        for batch in batches:
            needs: dict[tuple[uuid.UUID, uuid.UUID, str], set[str]] = {}
            for row in batch:
                if row[5] is None:
                    continue  # erased (see _open_batch)
                needs.setdefault((row[1], row[2], row[6].isoformat()), set()).add(row[3])
            for (dataset_id, upload_id, day_iso), subjects in needs.items():
                ring = rings.get(dataset_id)
                if ring is None:
                    ring = KeyRing(self._store, session, dataset_id, create=False)
                    rings[dataset_id] = ring
                ring.prefetch_subjects(upload_id, day_iso, sorted(subjects))
            yield from self._open_batch(session, batch, rings, trees, skip_erased)

    def _open_batch(
        self,
        session: Session,
        batch: Sequence[Any],
        rings: dict[uuid.UUID, KeyRing],
        trees: dict[uuid.UUID, MerkleTree],
        skip_erased: bool,
    ) -> Iterator[RecordOut]:
        for row in batch:
            rid, dataset_id, upload_id, subject_id, index, envelope, day, root, count = row
            # An erased row has no ciphertext, and its subject id may be a forgotten one that
            # no key was ever filed under: no key lookup for it.
            dek = (
                None
                if envelope is None
                else rings[dataset_id].dek(upload_id, day.isoformat(), subject_id)
            )
            try:
                if dek is None or envelope is None:
                    raise DecryptionFailed
                payload = unseal(
                    dek,
                    envelope,
                    record_id=rid.bytes,
                    dataset_id=dataset_id.bytes,
                    upload_id=upload_id.bytes,
                )
            except DecryptionFailed:
                if skip_erased:
                    continue
                raise RecordErased(f"record {rid} can no longer be decrypted") from None
            tree = trees.get(upload_id)
            if tree is None:
                tree = _trees.get(upload_id, count)
                if tree is None:
                    tree = self._tree(session, upload_id)
                    _trees.put(upload_id, tree)
                trees.clear()  # rows come in upload order: the call needs one at a time
                trees[upload_id] = tree
            yield RecordOut(
                record_id=rid,
                dataset_id=dataset_id,
                upload_id=upload_id,
                subject_id=subject_id,
                payload=payload,
                leaf_index=index,
                leaf_salt=dek.leaf_salt(rid.bytes),
                proof=tree.proof(index),
                merkle_root=root,
                record_count=count,
            )

    def _tree(self, session: Session, upload_id: uuid.UUID) -> MerkleTree:
        leaves = session.scalars(
            select(Record.leaf_hash)
            .where(Record.upload_id == upload_id)
            .order_by(Record.leaf_index)
        ).all()
        return MerkleTree(leaves)


def current_version(session: Session, record_id: uuid.UUID) -> uuid.UUID:
    """The record holding the current version of `record_id` (itself if it is current): the
    chain of `superseded_by` that rectifications wrote, followed to its end."""
    current = record_id
    for _ in range(VERSIONS_MAX):
        following = session.scalar(select(Record.superseded_by).where(Record.id == current))
        if following is None:
            return current
        current = following
    return current


# A record's place in the (upload, leaf index) order the export pages by.
RecordPosition = tuple[uuid.UUID, int]


@dataclass(frozen=True, slots=True)
class SupersededRecord:
    """A record a rectification replaced: its ciphertext is gone with the subject's old key,
    its salted leaf stays, so its inclusion in the anchored upload is still provable."""

    record_id: uuid.UUID
    dataset_id: uuid.UUID
    upload_id: uuid.UUID
    subject_id: str
    superseded_by: uuid.UUID
    leaf_index: int
    leaf_hash: bytes
    proof: list[bytes]
    merkle_root: bytes
    record_count: int


def history(
    session: Session, subject_id: str, *, after: RecordPosition | None, limit: int
) -> tuple[list[SupersededRecord], RecordPosition | None]:
    """One page of the subject's superseded records (rectified: `records.superseded_by` set),
    in (upload, leaf) order, and the position to continue from (None: the list ends here)."""
    superseded_by = Record.superseded_by
    query = (
        select(
            Record.id,
            Record.dataset_id,
            Record.upload_id,
            Record.leaf_index,
            Record.leaf_hash,
            superseded_by,
            Upload.merkle_root,
            Upload.record_count,
        )
        .join(Upload, Upload.id == Record.upload_id)
        .where((Record.subject_id == subject_id) & superseded_by.is_not(None))
    )
    if after is not None:
        query = query.where(tuple_(Record.upload_id, Record.leaf_index) > tuple_(*after))
    rows = session.execute(
        query.order_by(Record.upload_id, Record.leaf_index).limit(limit + 1)
    ).all()
    out = [
        SupersededRecord(
            record_id=rid,
            dataset_id=dataset_id,
            upload_id=upload_id,
            subject_id=subject_id,
            superseded_by=successor,  # type: ignore[arg-type]  # the query keeps non-null ones
            leaf_index=index,
            leaf_hash=bytes(leaf),
            proof=upload_tree(session, upload_id, count).proof(index),
            merkle_root=bytes(root),
            record_count=count,
        )
        for rid, dataset_id, upload_id, index, leaf, successor, root, count in rows[:limit]
    ]
    following = (out[-1].upload_id, out[-1].leaf_index) if len(rows) > limit else None
    return out, following


def upload_tree(session: Session, upload_id: uuid.UUID, record_count: int) -> MerkleTree:
    """The upload's inclusion tree over its leaf hashes, from the cache when it holds it."""
    tree = _trees.get(upload_id, record_count)
    if tree is None:
        leaves = session.scalars(
            select(Record.leaf_hash)
            .where(Record.upload_id == upload_id)
            .order_by(Record.leaf_index)
        ).all()
        tree = MerkleTree(leaves)
        _trees.put(upload_id, tree)
    return tree


def count_readable(
    session: Session,
    dataset_id: uuid.UUID,
    subjects: Collection[str],
    *,
    within: Iterable[str] | None = None,
) -> int:
    """How many records of `subjects` in the dataset still hold their ciphertext (erased ones
    do not): what a read that leaves these subjects out withholds. `within`: only among these
    subjects (the read asked for them alone)."""
    if not subjects:
        return 0
    query = select(func.count()).where(
        Record.dataset_id == dataset_id,
        Record.subject_id.in_(list(subjects)),
        Record.envelope.is_not(None),
    )
    if within is not None:
        query = query.where(Record.subject_id.in_(list(within)))
    return int(session.scalar(query) or 0)


def key_commitments_in_order(session: Session, upload_id: uuid.UUID) -> list[bytes]:
    """The upload's key commitments in leaf order, to recompute its key-commitments root.

    Leaves are ordered by subject id. A forgotten subject's row holds its leaf index in
    `position` (its replacement id sorts elsewhere); the other rows, in subject-id order,
    fill the remaining indexes.
    """
    rows = session.execute(
        select(KeyCommitment.commitment, KeyCommitment.position)
        .where(KeyCommitment.upload_id == upload_id)
        .order_by(KeyCommitment.subject_id)
    ).all()
    fixed = {int(p): bytes(c) for c, p in rows if p is not None}
    named = iter(bytes(c) for c, p in rows if p is None)
    return [fixed[i] if i in fixed else next(named) for i in range(len(rows))]
