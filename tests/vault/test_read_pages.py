"""Reads come a bounded page at a time, each page continued after the last (upload, leaf)
position: read in pages of 3 or in one page, a dataset gives the same records in the same
order, an erased subject's records are skipped wherever they fall, and a limit fetches no
more than it needs."""

from __future__ import annotations

import json
import uuid
from typing import Any

from sqlalchemy.orm import Session

from tests.vault.conftest import VaultServices, make_dataset
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
