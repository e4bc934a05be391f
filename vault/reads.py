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

import asyncio
import threading
import uuid
from collections import OrderedDict
from collections.abc import AsyncGenerator, Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from sqlalchemy import (
    ARRAY,
    Integer,
    Select,
    String,
    all_,
    any_,
    bindparam,
    case,
    cast,
    func,
    select,
    true,
    tuple_,
)
from sqlalchemy.dialects.postgresql import UUID as PgUUID
from sqlalchemy.dialects.postgresql.psycopg import dialect as psycopg_dialect
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Session, aliased

from vault.crypto import DataKey, DecryptionFailed
from vault.crypto.batch import UploadOpener
from vault.crypto.merkle import AuditPath, MerkleTree
from vault.db import driver_connection
from vault.errors import RecordErased, RecordNotFound, RecordSuperseded
from vault.keys import KeyStore, SecretRef, epoch_ref, upload_ref
from vault.models import KeyCommitment, KeySecret, Record, Upload

if TYPE_CHECKING:
    from psycopg import AsyncConnection

_T = TypeVar("_T")

# Inclusion trees, kept across calls: an upload's leaf hashes never change once its rows are
# visible (an upload is written in one transaction; erasure keeps leaf hashes, see above), and
# they are salted hashes, neither personal data nor key material. Rebuilding the tree of the
# upload being read cost a query and O(n) hashing on every read. Bounded in leaves in all
# (about 130 bytes each), so memory stays flat; a tree larger than the bound is built per call.
TREE_CACHE_LEAVES = 1 << 18
# The audit paths the cached trees keep for the leaves their reads proved (`_ProvedTree`), in
# all: each holds references to its tree's hashes and its encoding, at most ~1.4 KB for a tree
# of 2^18 leaves, so about 23 MB at most. The first leaves proved keep their places for as
# long as their trees stay cached; a leaf proved once the bound is reached is walked and
# encoded on each read.
TREE_CACHE_PATHS = 1 << 14
# A chain of versions is followed this far at most (each rectification adds one link; the
# vault never writes a loop, this bounds a read if a row were ever tampered into one).
VERSIONS_MAX = 10_000
# A page of an asynchronous read: opening 256 records (decrypting, proving) holds the event
# loop about as long as the interpreter's switch interval (5 ms) lets a worker thread hold it.
ASYNC_PAGE_ROWS = 256


class _ProvedTree:
    """An upload's inclusion tree, and the audit path of each leaf a read proved while the
    tree stayed cached, made once and shared by the reads after it (`AuditPath`): a leaf read
    again is neither walked up the tree nor encoded again. A tree out of the cache (too large
    for it, or evicted) keeps no path."""

    __slots__ = ("_cache", "_paths", "tree")

    def __init__(self, tree: MerkleTree, cache: _TreeCache | None) -> None:
        self.tree = tree
        self._paths: dict[int, AuditPath] = {}
        self._cache = cache

    def path(self, index: int) -> AuditPath:
        path = self._paths.get(index)
        if path is None:
            path = AuditPath(self.tree.proof(index))
            if self._cache is not None:
                self._cache.keep_path(self, index, path)
        return path


class _TreeCache:
    def __init__(self, max_leaves: int, max_paths: int = TREE_CACHE_PATHS) -> None:
        self._max = max_leaves
        self._max_paths = max_paths
        self._trees: OrderedDict[uuid.UUID, _ProvedTree] = OrderedDict()
        self._leaves = 0
        self._paths = 0
        self._lock = threading.Lock()

    def get(self, upload_id: uuid.UUID, size: int) -> _ProvedTree | None:
        with self._lock:
            proved = self._trees.get(upload_id)
            if proved is None or proved.tree.size != size:
                return None
            self._trees.move_to_end(upload_id)
            return proved

    def put(self, upload_id: uuid.UUID, tree: MerkleTree) -> _ProvedTree:
        """`tree`, kept when it fits the bound, as the reads prove leaves with it."""
        if tree.size > self._max:
            return _ProvedTree(tree, None)
        proved = _ProvedTree(tree, self)
        with self._lock:
            old = self._trees.pop(upload_id, None)
            if old is not None:
                self._forget(old)
            self._trees[upload_id] = proved
            self._leaves += tree.size
            while self._leaves > self._max:
                _, evicted = self._trees.popitem(last=False)
                self._forget(evicted)
        return proved

    def keep_path(self, proved: _ProvedTree, index: int, path: AuditPath) -> None:
        """Keep `path` in `proved` while `proved` is cached and the paths' bound allows."""
        with self._lock:
            if (
                proved._cache is self
                and self._paths < self._max_paths
                and proved._paths.setdefault(index, path) is path
            ):
                self._paths += 1

    def clear(self) -> None:
        """Every tree leaves the cache, with its paths."""
        with self._lock:
            for proved in self._trees.values():
                self._forget(proved)
            self._trees.clear()

    def _forget(self, proved: _ProvedTree) -> None:
        """Under the lock: `proved` leaves the cache with its paths, and keeps none after."""
        self._leaves -= proved.tree.size
        self._paths -= len(proved._paths)
        proved._cache = None
        proved._paths = {}


_trees = _TreeCache(TREE_CACHE_LEAVES)


class RecordOut(NamedTuple):
    """One decrypted record, with what proves it was anchored.

    A named tuple, not a frozen dataclass: a read makes one per record it answers, and a
    frozen dataclass's constructor sets each of its ten fields through `object.__setattr__`,
    two to three times the cost of a tuple's."""

    record_id: uuid.UUID
    dataset_id: uuid.UUID
    upload_id: uuid.UUID
    subject_id: str
    payload: bytes
    leaf_index: int
    leaf_salt: bytes
    proof: Sequence[bytes]
    merkle_root: bytes
    record_count: int

    def __repr__(self) -> str:
        return f"RecordOut(record_id={self.record_id}, upload_id={self.upload_id}, payload=***)"


# What a read makes of each record it opens, given the record's fields positionally in
# `RecordOut`'s order: `RecordOut` itself, or whatever its caller sends on. The consented
# access makes each record's JSON text straight from them (api/http/records_json.py), with no
# tuple built per record only to be read back once. A maker only encodes: it runs in the
# opener's frame, so a traceback raised through it would reach the DEK and the plaintext.
RecordMaker = Callable[
    [uuid.UUID, uuid.UUID, uuid.UUID, str, bytes, int, bytes, Sequence[bytes], bytes, int], _T
]


# The three secrets a record's DEK derives from, joined to the record itself (outer joins: a
# destroyed secret is an absent one, and the record then reads as erased). One query brings a
# batch of records with their key material, instead of one for the records and one per upload
# for the secrets, and the shared upload and epoch secrets are unwrapped once per call.
# Each is a LATERAL lookup of one row by the key store's unique (kind, dataset, scope): a plain
# join, on a table not yet analysed, is planned as a scan of every subject secret per record.
# The planner may still scan a small table once per record rather than probe its index, which
# PostgreSQL's default costs for spinning disks make look cheaper; the embedded server's
# costs are set for local disks (vault/embedded.py, `PLANNER_SETTINGS`).


def _secret(kind: str, dataset: Any, scope: Any) -> Any:
    key = aliased(KeySecret)
    return (
        select(key.kek_id, key.wrapped)
        .where(key.kind == kind, key.dataset_id == dataset, key.scope == scope)
        .limit(1)  # the unique key has one row; the limit keeps the lookup from being merged
        .lateral(f"{kind}_key")
    )


_SUBJECT_KEY = _secret("subject", Record.dataset_id, Record.subject_id)
_UPLOAD_KEY = _secret("upload", Record.dataset_id, cast(Record.upload_id, String))
_DAY_TEXT = func.to_char(Upload.retention_day, "YYYY-MM-DD")
_EPOCH_KEY = _secret("epoch", Record.dataset_id, _DAY_TEXT)

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
    _SUBJECT_KEY.c.kek_id,
    _SUBJECT_KEY.c.wrapped,
    _UPLOAD_KEY.c.kek_id,
    _UPLOAD_KEY.c.wrapped,
    _EPOCH_KEY.c.kek_id,
    _EPOCH_KEY.c.wrapped,
)


def _position() -> Any:
    """A record's place in the order reads and pages follow: (upload, leaf index)."""
    return tuple_(Record.upload_id, Record.leaf_index)


# Array parameters: one cached statement whatever the number of subjects or uploads (an
# expanding IN list is compiled anew for every length).
_SUBJECTS = bindparam("subjects", type_=ARRAY(String))
_LEAVE_OUT = bindparam("leave_out", type_=ARRAY(String))
_UPLOADS = bindparam("uploads", type_=ARRAY(PgUUID(as_uuid=True)))
_AFTER_UPLOAD = bindparam("after_upload", type_=PgUUID(as_uuid=True))
_AFTER_LEAF = bindparam("after_leaf", type_=Integer)
_PAGE = bindparam("page", type_=Integer)
_DATASET = bindparam("dataset", type_=PgUUID(as_uuid=True))


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
        query = _query(anchored_only).where(Record.id == record_id)
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
        query = _query(anchored_only).where(Record.subject_id == subject_id)
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
            keys = keys.where(_position() > tuple_(*after))
        rows = session.execute(keys.order_by(*_position()).limit(limit + 1)).all()
        if not rows:
            return [], None
        last = rows[min(limit, len(rows)) - 1]
        query = _query(False).where(live)
        if after is not None:
            query = query.where(_position() > tuple_(*after))
        query = query.where(_position() <= tuple_(*last))
        page = list(self._decrypt(session, query, skip_erased=True))
        return page, ((last[0], int(last[1])) if len(rows) > limit else None)

    def by_dataset(
        self,
        session: Session,
        dataset_id: uuid.UUID,
        *,
        subjects: Iterable[str] | None = None,
        leave_out: Collection[str] = (),
        uploads: Iterable[uuid.UUID] | None = None,
        anchored_only: bool = False,
        limit: int | None = None,
    ) -> Iterator[RecordOut]:
        """The dataset's records (of `subjects` only, when named; in `uploads` only, when
        named), without those of the subjects in `leave_out` (whose processing is
        restricted): they are not even fetched. `limit`: the caller reads at most this many,
        so no batch fetches more."""
        return self.made_by_dataset(
            session,
            dataset_id,
            RecordOut,
            subjects=subjects,
            leave_out=leave_out,
            uploads=uploads,
            anchored_only=anchored_only,
            limit=limit,
        )

    def made_by_dataset(
        self,
        session: Session,
        dataset_id: uuid.UUID,
        make: RecordMaker[_T],
        *,
        subjects: Iterable[str] | None = None,
        leave_out: Collection[str] = (),
        uploads: Iterable[uuid.UUID] | None = None,
        anchored_only: bool = False,
        limit: int | None = None,
    ) -> Iterator[_T]:
        """`by_dataset` with each record made by `make` (a `RecordMaker`)."""
        params, shape = _dataset_params(dataset_id, subjects, leave_out, uploads, anchored_only)
        pages = _dataset_pages(session, shape, params, self._page(limit))
        return self._open(session, pages, skip_erased=True, make=make)

    def by_dataset_async(
        self,
        connection: AsyncConnection[Any],
        dataset_id: uuid.UUID,
        *,
        subjects: Iterable[str] | None = None,
        uploads: Iterable[uuid.UUID] | None = None,
        anchored_only: bool = False,
        page_rows: int = ASYNC_PAGE_ROWS,
    ) -> AsyncGenerator[list[RecordOut], None]:
        """`by_dataset` on an event loop's own connection, a page of records at a time: the
        same statement, rows and records, with no thread to hand the read to and back."""
        return self.made_by_dataset_async(
            connection,
            dataset_id,
            RecordOut,
            subjects=subjects,
            uploads=uploads,
            anchored_only=anchored_only,
            page_rows=page_rows,
        )

    async def made_by_dataset_async(
        self,
        connection: AsyncConnection[Any],
        dataset_id: uuid.UUID,
        make: RecordMaker[_T],
        *,
        subjects: Iterable[str] | None = None,
        uploads: Iterable[uuid.UUID] | None = None,
        anchored_only: bool = False,
        page_rows: int = ASYNC_PAGE_ROWS,
    ) -> AsyncGenerator[list[_T], None]:
        """`by_dataset_async` with each record made by `make` (a `RecordMaker`).

        Opening a page is CPU work done on the loop, so pages are short (`ASYNC_PAGE_ROWS`):
        the loop serves its other requests between two of them. The key store's provider must
        unwrap in memory (`KeyProvider.unwrap_waits` false): an unwrap that waited on a token
        would hold the loop for as long."""
        params, shape = _dataset_params(dataset_id, subjects, (), uploads, anchored_only)
        page = max(1, min(page_rows, self._batch_rows))
        trees: dict[uuid.UUID, _ProvedTree] = {}
        opener = _Opener(self._store, lambda upload, _count: trees[upload], skip_erased=True)
        first = _dataset_statement(_PSYCOPG, shape, False)
        following = _dataset_statement(_PSYCOPG, shape, True)
        async with connection.cursor(binary=True) as cursor:
            await cursor.execute(first.sql, {**first.constants, **params, "page": page})
            going_on: uuid.UUID | None = None  # the upload the last page ended in
            while True:
                rows = await cursor.fetchall()
                # The opener holds the tree of the upload it is in; the others begin here.
                trees = await _upload_trees_async(connection, rows, going_on)
                yield list(opener.open(rows, make))
                going_on = rows[-1][2] if rows else None
                if len(rows) < page:
                    return
                after = _after(page, rows[-1])
                await cursor.execute(following.sql, {**following.constants, **params, **after})

    def _page(self, limit: int | None) -> int:
        return self._batch_rows if limit is None else max(1, min(limit, self._batch_rows))

    def _decrypt(
        self, session: Session, query: Select[*tuple[Any, ...]], *, skip_erased: bool
    ) -> Iterator[RecordOut]:
        pages = _pages(session, query, self._page(None))
        return self._open(session, pages, skip_erased=skip_erased, make=RecordOut)

    def _open(
        self,
        session: Session,
        pages: Iterator[Sequence[Any]],
        *,
        skip_erased: bool,
        make: RecordMaker[_T],
    ) -> Iterator[_T]:
        opener = _Opener(
            self._store, lambda upload, count: _proved_tree(session, upload, count), skip_erased
        )
        for rows in pages:
            yield from opener.open(rows, make)


def _pages(session: Session, query: Select[*tuple[Any, ...]], page: int) -> Iterator[Sequence[Any]]:
    """The query's rows in (upload, leaf) order (see `_keyset_pages`)."""
    first = query.order_by(*_position()).limit(page)

    def fetch(last: Any | None) -> Sequence[Any]:
        following = first if last is None else first.where(tuple_(last[2], last[4]) < _position())
        return session.execute(following).all()

    return _keyset_pages(fetch, page)


def _keyset_pages(
    fetch: Callable[[Any | None], Sequence[Any]], page: int
) -> Iterator[Sequence[Any]]:
    """Rows a bounded page at a time, each page fetched after the last row of the one before
    (None: the first page), until a page comes back short: memory stays flat on a dataset of
    any size, and a position never skips or repeats a row."""
    rows = fetch(None)
    while True:
        yield rows
        if len(rows) < page:
            return
        rows = fetch(rows[-1])


def array_literal(values: Iterable[str]) -> str:
    """A PostgreSQL array literal of text values, every element quoted, for a parameter the
    statement casts to an array.

    Why text: the driver adapts a Python list element by element in Python, which cost a
    quarter of a 100-record read's fetch (a list of 100 subject ids); the server parses one
    literal in C. Quoting each element (backslash and double quote escaped) keeps any
    string a single element, whatever it holds."""
    quoted = ('"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values)
    return "{" + ",".join(quoted) + "}"


class _Raw(NamedTuple):
    """A statement compiled once to the driver's SQL, and the values of its constants."""

    sql: str
    constants: dict[str, Any]


# The dataset read is the hot path of every access: its statements (one per combination of the
# filters it takes, first page and following pages) are compiled once per process and run on
# the driver's cursor, which hands back plain tuples. The ORM's per-call compilation lookup and
# row objects cost more than the database's work for a 100-record answer. psycopg prepares a
# statement on the server once it has run a few times on a connection.
_raw_statements: dict[tuple[str, tuple[bool, ...], bool], _Raw] = {}
_raw_lock = threading.Lock()
# The dialect the asynchronous reads' statements are compiled for: the same as the engine's.
_PSYCOPG: Dialect = psycopg_dialect()  # type: ignore[no-untyped-call]


def _dataset_params(
    dataset_id: uuid.UUID,
    subjects: Iterable[str] | None,
    leave_out: Collection[str],
    uploads: Iterable[uuid.UUID] | None,
    anchored_only: bool,
) -> tuple[dict[str, Any], tuple[bool, bool, bool, bool]]:
    """A dataset read's parameters, and the shape that picks its statement."""
    params: dict[str, Any] = {"dataset": dataset_id}
    if subjects is not None:
        params["subjects"] = array_literal(subjects)
    if leave_out:
        params["leave_out"] = array_literal(leave_out)
    if uploads is not None:
        params["uploads"] = array_literal(str(u) for u in uploads)
    return params, (anchored_only, subjects is not None, bool(leave_out), uploads is not None)


def _dataset_statement(
    dialect: Dialect, shape: tuple[bool, bool, bool, bool], following: bool
) -> _Raw:
    key = (dialect.name + "+" + dialect.driver, shape, following)
    raw = _raw_statements.get(key)
    if raw is not None:
        return raw
    anchored_only, subjects, leave_out, uploads = shape
    # Without named uploads, a CTE would look up the secrets of every upload of the dataset,
    # however few of them the page reaches.
    base = _query_in_uploads(anchored_only) if uploads else _query(anchored_only)
    query = base.where(Record.dataset_id == _DATASET)
    if subjects:
        query = query.where(Record.subject_id == any_(_SUBJECTS))
    if leave_out:
        query = query.where(Record.subject_id != all_(_LEAVE_OUT))
    if uploads:
        query = query.where(Record.upload_id == any_(_UPLOADS))
    if following:
        query = query.where(tuple_(_AFTER_UPLOAD, _AFTER_LEAF) < _position())
    page = query.order_by(*_position()).limit(_PAGE)
    compiled = (_once_per_upload(page) if uploads else page).compile(dialect=dialect)
    constants = {k: v for k, v in compiled.params.items() if v is not None}
    raw = _Raw(str(compiled), constants)
    with _raw_lock:
        _raw_statements[key] = raw
    return raw


# The columns of a row (in `_COLUMNS`' order) that belong to its upload, not to the record.
_UPLOAD_COLUMNS = frozenset({1, 6, 7, 8, 11, 12, 13, 14})


def _once_per_upload(page: Select[*tuple[Any, ...]]) -> Select[*tuple[Any, ...]]:
    """`page`'s rows, in its order, with what belongs to the upload (its dataset, retention
    day, root, size and shared secrets) on the first row of each upload in the page alone,
    NULL on the others: the opener reads it when an upload begins (`_Opener._begin_upload`).
    Sent on every row, eight columns would be decoded into objects no one looks at, a quarter
    of the driver's work for the rows. The window runs over the page, after its LIMIT, so the
    page is still the sort's bound (a window under the LIMIT would sort every row read)."""
    rows = page.subquery("page")
    columns = list(rows.c)
    upload, leaf = columns[2], columns[4]
    begins = func.lag(upload).over(order_by=(upload, leaf)).is_distinct_from(upload)
    return select(
        *(
            case((begins, column)).label(column.name) if i in _UPLOAD_COLUMNS else column
            for i, column in enumerate(columns)
        )
    ).order_by(upload, leaf)


def _after(page: int, last: Any) -> dict[str, Any]:
    """The parameters of the page that follows the row `last` (its upload and leaf index)."""
    return {"page": page, "after_upload": last[2], "after_leaf": last[4]}


def _dataset_pages(
    session: Session, shape: tuple[bool, bool, bool, bool], params: dict[str, Any], page: int
) -> Iterator[Sequence[Any]]:
    """`_pages` for a dataset read, on the driver's cursor (see `_raw_statements`).

    The rows come in PostgreSQL's binary format: an envelope, the bulk of each row, travels
    as its bytes rather than as hex text twice its size that the driver must decode (6 % of a
    100-record answer's CPU, measured against the in-process limit of `bench access`)."""
    cursor = driver_connection(session).cursor(binary=True)
    dialect = session.get_bind().dialect
    first = _dataset_statement(dialect, shape, False)
    following = _dataset_statement(dialect, shape, True)

    def fetch(last: Any | None) -> Sequence[Any]:
        if last is None:
            cursor.execute(first.sql, {**first.constants, **params, "page": page})
        else:
            cursor.execute(following.sql, {**following.constants, **params, **_after(page, last)})
        rows: Sequence[Any] = cursor.fetchall()
        return rows

    try:
        yield from _keyset_pages(fetch, page)
    finally:
        cursor.close()


def _query_in_uploads(anchored_only: bool) -> Select[*tuple[Any, ...]]:
    """`_query` for a read that names its uploads (`_UPLOADS`, in the dataset `_DATASET`), the
    same columns in the same order: the named uploads' own secrets are looked up once per
    upload (a materialised CTE), not once per record. Only the subject's secret varies by
    record: for a 100-record answer from one upload, per-record lookups of the two shared
    secrets would be a third of PostgreSQL's CPU for the query (docs/BENCHMARKS.md, "Access")."""
    upload_key = _secret("upload", Upload.dataset_id, cast(Upload.id, String))
    epoch_key = _secret("epoch", Upload.dataset_id, _DAY_TEXT)
    named = (
        select(
            Upload.id,
            Upload.retention_day,
            Upload.merkle_root,
            Upload.record_count,
            upload_key.c.kek_id.label("upload_kek_id"),
            upload_key.c.wrapped.label("upload_wrapped"),
            epoch_key.c.kek_id.label("epoch_kek_id"),
            epoch_key.c.wrapped.label("epoch_wrapped"),
        )
        .select_from(Upload)
        .outerjoin(upload_key, true())
        .outerjoin(epoch_key, true())
        .where(Upload.id == any_(_UPLOADS), Upload.dataset_id == _DATASET)
    )
    if anchored_only:
        named = named.where(Upload.state == "anchored")
    uploads = named.cte("named_uploads").prefix_with("MATERIALIZED")
    query: Select[*tuple[Any, ...]] = (
        select(
            *_COLUMNS[:6],
            uploads.c.retention_day,
            uploads.c.merkle_root,
            uploads.c.record_count,
            _SUBJECT_KEY.c.kek_id,
            _SUBJECT_KEY.c.wrapped,
            uploads.c.upload_kek_id,
            uploads.c.upload_wrapped,
            uploads.c.epoch_kek_id,
            uploads.c.epoch_wrapped,
        )
        .select_from(Record)
        .join(uploads, uploads.c.id == Record.upload_id)
        .outerjoin(_SUBJECT_KEY, true())
        .where(Record.superseded_by.is_(None))
    )
    return query


def _query(anchored_only: bool) -> Select[*tuple[Any, ...]]:
    # Only current versions: a row a rectification replaced has no ciphertext either, and its
    # key is gone, but a read never even looks at it.
    query: Select[*tuple[Any, ...]] = (
        select(*_COLUMNS)
        .join(Upload, Upload.id == Record.upload_id)
        .outerjoin(_SUBJECT_KEY, true())
        .outerjoin(_UPLOAD_KEY, true())
        .outerjoin(_EPOCH_KEY, true())
        .where(Record.superseded_by.is_(None))
    )
    if anchored_only:
        query = query.where(Upload.state == "anchored")
    return query


def _no_dataset(subject_id: str, kek_id: str, wrapped: bytes) -> bytes:
    raise DecryptionFailed  # never called: the first row sets the dataset's unwrapper


class _Opener:
    """Opens the rows of one read: unwraps each secret once, derives each (upload, subject)
    DEK once, and keeps the inclusion tree of the upload being read.

    Memory stays bounded: rows come in upload order, so the DEKs and shared secrets of an
    upload are dropped when the next upload begins (and the DEKs at DEKS_MAX within one)."""

    DEKS_MAX = 10_000

    def __init__(
        self,
        store: KeyStore,
        tree: Callable[[uuid.UUID, int], _ProvedTree],
        skip_erased: bool,
    ) -> None:
        self._store = store
        self._proved_tree = tree  # (upload id, record count) -> its inclusion tree
        self._skip_erased = skip_erased
        self._upload_int = -1  # the upload being read, as its UUID's integer
        self._upload: tuple[Any, bytes, int] = (None, b"", 0)  # its dataset, root and size
        self._dataset: uuid.UUID | None = None
        self._unwrap_subject: Callable[[str, str, bytes], bytes] = _no_dataset
        # The upload's opener, made from its upload's and epoch's secrets; None when either is
        # destroyed or does not unwrap (`_unwrap`), and none of its records opens.
        self._keys: UploadOpener | None = None
        self._deks: dict[str, DataKey] = {}
        self._tree: _ProvedTree | None = None

    def open(self, rows: Sequence[Any], make: RecordMaker[_T]) -> Iterator[_T]:
        """The records of `rows` (those that can be opened, with `skip_erased`), each made by
        `make` from its fields."""
        for row in rows:
            rid, _, upload_id, subject_id, index, envelope = row[:6]
            if upload_id.int != self._upload_int:  # not UUID.__eq__: a Python call a row
                self._begin_upload(row)
            dataset_id, root, count = self._upload
            rid_bytes = rid.bytes
            dek = None if envelope is None else self._dek(row)
            keys = self._keys
            opened = None if dek is None or keys is None else keys.open(dek, rid_bytes, envelope)
            if opened is None:
                if self._skip_erased:
                    continue
                raise RecordErased(f"record {rid} can no longer be decrypted")
            assert self._tree is not None
            yield make(
                rid,
                dataset_id,
                upload_id,
                subject_id,
                opened[0],
                index,
                opened[1],
                self._tree.path(index),
                root,
                count,
            )

    def _begin_upload(self, row: Any) -> None:
        """The upload of `row` begins: its columns, which its first row carries (a read that
        names its uploads sends them on that row alone), are kept for its other rows."""
        dataset_id, upload_id, day, root, count = row[1], row[2], row[6], row[7], row[8]
        self._upload_int = upload_id.int
        self._upload = (dataset_id, root, count)
        if dataset_id != self._dataset:
            self._dataset = dataset_id
            self._unwrap_subject = self._store.subject_unwrapper(dataset_id)
        self._deks.clear()
        self._tree = self._proved_tree(upload_id, count)
        upload_secret = self._unwrap(upload_ref(dataset_id, upload_id), row[11], row[12])
        epoch_secret = self._unwrap(epoch_ref(dataset_id, day.isoformat()), row[13], row[14])
        self._keys = None
        if upload_secret is not None and epoch_secret is not None:
            self._keys = UploadOpener(
                dataset_id=dataset_id.bytes,
                upload_id=upload_id.bytes,
                upload_secret=upload_secret,
                epoch_secret=epoch_secret,
            )

    def _dek(self, row: Any) -> DataKey | None:
        """The row's DEK, or None when any of its three secrets is destroyed (erased)."""
        subject_id = row[3]
        dek = self._deks.get(subject_id)
        if dek is not None or self._keys is None:
            return dek
        kek_id, wrapped = row[9], row[10]
        if kek_id is None or wrapped is None:
            return None  # destroyed: the subject is erased here
        try:
            subject_secret = self._unwrap_subject(subject_id, kek_id, bytes(wrapped))
        except DecryptionFailed:
            return None  # see `_unwrap`
        dek = self._keys.dek(subject_id.encode(), subject_secret)
        if len(self._deks) >= self.DEKS_MAX:
            self._deks.clear()
        self._deks[subject_id] = dek
        return dek

    def _unwrap(self, ref: SecretRef, kek_id: str | None, wrapped: bytes | None) -> bytes | None:
        if kek_id is None or wrapped is None:
            return None  # destroyed: the scope is erased
        try:
            return self._store.unwrap(ref, kek_id, bytes(wrapped))
        except DecryptionFailed:
            return None  # a retired KEK's copy, or a tampered row: unreadable either way


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
    proof: Sequence[bytes]
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


# An upload's leaf hashes in leaf order: what its inclusion tree is built from.
_LEAVES = (
    select(Record.leaf_hash)
    .where(Record.upload_id == bindparam("upload", type_=PgUUID(as_uuid=True)))
    .order_by(Record.leaf_index)
)


def upload_tree(session: Session, upload_id: uuid.UUID, record_count: int) -> MerkleTree:
    """The upload's inclusion tree over its leaf hashes, from the cache when it holds it."""
    return _proved_tree(session, upload_id, record_count).tree


def _proved_tree(session: Session, upload_id: uuid.UUID, record_count: int) -> _ProvedTree:
    proved = _trees.get(upload_id, record_count)
    if proved is None:
        leaves = session.scalars(_LEAVES, {"upload": upload_id}).all()
        proved = _trees.put(upload_id, MerkleTree(leaves))
    return proved


async def _upload_trees_async(
    connection: AsyncConnection[Any], rows: Sequence[Any], going_on: uuid.UUID | None
) -> dict[uuid.UUID, _ProvedTree]:
    """The inclusion trees of the uploads that begin in `rows` (all but `going_on`, which the
    read is already in): `_proved_tree` on an asynchronous connection. A tree not cached is
    built in a thread: an upload of a million records takes a million hashes, which the
    event loop must not wait for."""
    trees: dict[uuid.UUID, _ProvedTree] = {}
    for row in rows:
        upload_id, count = row[2], row[8]
        if upload_id == going_on or upload_id in trees:
            continue
        proved = _trees.get(upload_id, count)
        if proved is None:
            async with connection.cursor(binary=True) as cursor:
                await cursor.execute(_LEAVES_SQL, {"upload": upload_id})
                leaves = await cursor.fetchall()
            proved = _trees.put(upload_id, await asyncio.to_thread(_tree_of_rows, leaves))
        trees[upload_id] = proved
    return trees


def _tree_of_rows(rows: list[tuple[bytes]]) -> MerkleTree:
    return MerkleTree([leaf for (leaf,) in rows])


_LEAVES_SQL = str(_LEAVES.compile(dialect=_PSYCOPG))


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
