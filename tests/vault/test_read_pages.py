"""Reads come a bounded page at a time, each page continued after the last (upload, leaf)
position: read in pages of 3 or in one page, a dataset gives the same records in the same
order, an erased subject's records are skipped wherever they fall, and a limit fetches no
more than it needs."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from tests.vault.conftest import VaultServices, make_dataset
from vault.crypto.merkle import AuditPath
from vault.keys import epoch_ref, upload_ref
from vault.models import Upload
from vault.reads import Reader
from vault.uploads import RecordIn


def _positions(
    reader: Reader, session: Session, dataset_id: uuid.UUID, **how: Any
) -> list[tuple[str, int, str]]:
    return [
        (str(r.upload_id), r.leaf_index, r.subject_id)
        for r in reader.by_dataset(session, dataset_id, **how)
    ]


def test_pages_of_three_read_what_one_page_reads(session: Session, services: VaultServices) -> None:
    dataset = make_dataset(session)
    subjects = [f"s{i}" for i in range(5)]
    uploads = [
        services.uploader.upload(
            session,
            dataset.id,
            [
                RecordIn(s, json.dumps({"u": u, "s": s}).encode())
                for s in subjects
                for _ in range(2)
            ],
        )
        for u in range(2)
    ]
    services.eraser.erase_subject(
        session, "s2", dataset_id=dataset.id, reason="Art. 17", requester="dpo"
    )
    whole = _positions(services.reader, session, dataset.id)
    assert len(whole) == 2 * 4 * 2 and all(s != "s2" for _, _, s in whole)
    assert whole == sorted(whole, key=lambda p: (p[0], p[1]))
    paged = Reader(services.store, batch_rows=3)
    assert _positions(paged, session, dataset.id) == whole
    mine = _positions(paged, session, dataset.id, subjects=["s0", "s4"])
    assert mine == [p for p in whole if p[2] in ("s0", "s4")]
    one = [str(uploads[1].upload_id)]
    assert _positions(paged, session, dataset.id, uploads=[uploads[1].upload_id]) == [
        p for p in whole if p[0] in one
    ]
    assert _positions(paged, session, dataset.id, limit=2)[:2] == whole[:2]


def test_a_read_naming_its_uploads_opens_only_what_their_secrets_still_open(
    session: Session, services: VaultServices
) -> None:
    """A read that names its uploads looks each upload's and each retention day's secret up
    once per upload, not per record (vault/reads.py, `_query_in_uploads`). Whatever is
    destroyed, it reads exactly what the read of the whole dataset reads in those uploads: a
    destroyed upload or day secret leaves their records out, even with their ciphertext still
    in place; an upload of another dataset is never reached; `anchored_only` keeps to the
    anchored ones."""
    dataset, other = make_dataset(session), make_dataset(session)
    today = dt.date.today()
    days = [today + dt.timedelta(days=30), today + dt.timedelta(days=31)]

    def upload(on: uuid.UUID, day: dt.date) -> uuid.UUID:
        rows = [RecordIn(f"s{i}", json.dumps({"i": i}).encode()) for i in range(4)]
        return services.uploader.upload(session, on, rows, retention_day=day).upload_id

    mine = [upload(dataset.id, days[0]), upload(dataset.id, days[0]), upload(dataset.id, days[1])]
    theirs = upload(other.id, days[0])
    paged = Reader(services.store, batch_rows=3)

    def named(ids: list[uuid.UUID], **how: Any) -> list[tuple[str, int, str]]:
        return _positions(paged, session, dataset.id, uploads=ids, **how)

    def whole_in(ids: list[uuid.UUID]) -> list[tuple[str, int, str]]:
        return [p for p in _positions(paged, session, dataset.id) if p[0] in map(str, ids)]

    assert len(named(mine)) == 12 and named(mine) == whole_in(mine)
    assert named([theirs]) == [] and named([*mine, theirs]) == named(mine)
    services.store.destroy(session, [upload_ref(dataset.id, mine[0])])
    assert named(mine) == whole_in(mine) == whole_in(mine[1:])
    services.store.destroy(session, [epoch_ref(dataset.id, days[0].isoformat())])
    assert named(mine) == whole_in(mine) == whole_in(mine[2:])
    assert len(named(mine)) == 4
    session.execute(update(Upload).where(Upload.id == mine[2]).values(state="anchored"))
    assert named(mine, anchored_only=True) == named(mine[2:])
    session.execute(update(Upload).where(Upload.id == mine[2]).values(state="pending"))
    assert named(mine, anchored_only=True) == []


def test_a_read_naming_its_uploads_gives_each_record_what_a_whole_read_gives(
    session: Session, services: VaultServices
) -> None:
    """A read that names its uploads is sent each upload's own columns (dataset, root, size,
    shared secrets) on the upload's first row in a page alone: every record still carries
    its upload's, in pages that end inside an upload and across two, as the read of the
    whole dataset (every column on every row) gives them."""
    dataset = make_dataset(session)
    ids = [
        services.uploader.upload(
            session,
            dataset.id,
            [RecordIn(f"s{i % 3}", json.dumps({"u": u, "i": i}).encode()) for i in range(5)],
        ).upload_id
        for u in range(3)
    ]
    whole = list(services.reader.by_dataset(session, dataset.id))
    assert len(whole) == 15 and len({(r.merkle_root, r.upload_id) for r in whole}) == 3
    for rows in (2, 3, 1000):
        paged = Reader(services.store, batch_rows=rows)
        assert list(paged.by_dataset(session, dataset.id, uploads=ids)) == whole, rows
        some = list(paged.by_dataset(session, dataset.id, uploads=ids[1:], subjects=["s1"]))
        assert some == [r for r in whole if r.upload_id in ids[1:] and r.subject_id == "s1"]


def test_a_record_read_again_is_proved_by_the_path_its_first_read_made(
    session: Session, services: VaultServices
) -> None:
    """Two reads of a record share the audit path the first made (vault/reads.py,
    `_ProvedTree`): the second neither walks the tree nor encodes the path again."""
    dataset = make_dataset(session)
    services.uploader.upload(session, dataset.id, [RecordIn(f"s{i}", b"{}") for i in range(4)])
    first, again = (list(services.reader.by_dataset(session, dataset.id)) for _ in range(2))
    assert len(first) == 4 and [r.proof for r in first] == [r.proof for r in again]
    pairs = zip(first, again, strict=True)
    assert all(type(a.proof) is AuditPath and a.proof is b.proof for a, b in pairs)
