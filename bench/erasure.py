"""`civis-vault bench erasure`: erase one subject and sweep retention over 1,000,000 records.

Each vault operation is set beside a plain `DELETE` of as many rows, measured in the same run
on the same tables (the baseline an unencrypted database would pay to forget the same data):
  - erase one subject across 10 datasets (destroy 10 subject secrets, drop its ciphertext,
    mark its commitments, queue the fact) vs `DELETE FROM records WHERE subject_id = <another
    subject with the same number of rows>`;
  - a retention sweep expiring days 1-2 (40 % of the records) vs `DELETE` of days 3-4 (another
    40 %).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, select, text
from sqlalchemy.orm import Session

from vault import db
from vault.datasets import register_dataset
from vault.erasure import Eraser
from vault.keys import KeyStore, LocalKeyProvider
from vault.models import Record, Upload
from vault.retention import RetentionSweeper
from vault.uploads import RecordIn, Uploader

DATASETS = 10
DAYS = 5
SUBJECTS = 10_000
PAYLOAD = b'{"speed_kmh": 47, "vibration": [0.1, 0.4, 0.2], "road": "D1075"}'


def _at(day: int) -> Callable[[], dt.datetime]:
    return lambda: dt.datetime(2026, 1, day, 8, tzinfo=dt.UTC)


def _records(n: int, offset: int) -> Iterator[RecordIn]:
    for i in range(n):
        yield RecordIn(f"subject-{(i + offset) % SUBJECTS:05d}", PAYLOAD)


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def _load(engine: Engine, store: KeyStore, per_upload: int) -> float:
    """DATASETS fleets of DAYS daily uploads, then ANALYZE; the seconds it took."""
    load_start = time.perf_counter()
    for d in range(DATASETS):
        with Session(engine) as session, session.begin():
            dataset_id = register_dataset(
                session,
                owner_id="bench",
                name=f"fleet-{d}-{uuid.uuid4().hex[:6]}",
                category="mobility",
                purposes=["road-maintenance"],
                retention_days=1,
                legal_basis="consent",
            ).id
        for day in range(1, DAYS + 1):
            with Session(engine) as session, session.begin():
                Uploader(store, clock=_at(day)).upload(
                    session, dataset_id, _records(per_upload, day * 7 + d)
                )
    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("ANALYZE"))
    return time.perf_counter() - load_start


def _subject_erasure(engine: Engine, eraser: Eraser) -> dict[str, Any]:
    """Art. 17 of one subject everywhere, against a plain DELETE of another subject's rows."""
    with Session(engine) as session:
        subject_rows = session.scalar(
            select(func.count()).where(Record.subject_id == "subject-00042")
        )
        other_rows = session.scalar(
            select(func.count()).where(Record.subject_id == "subject-00043")
        )

    def erase() -> Any:
        with Session(engine) as session, session.begin():
            return eraser.erase_subject(
                session, "subject-00042", reason="Art. 17", requester="bench"
            )

    def delete_subject() -> Any:
        with engine.begin() as conn:
            return conn.execute(
                text("DELETE FROM records WHERE subject_id = 'subject-00043'")
            ).rowcount

    erase_s, erased = _timed(erase)
    delete_s, deleted = _timed(delete_subject)
    return {
        "erase_subject": {
            "seconds": round(erase_s, 4),
            "records": erased.records_erased,
            "secrets_destroyed": erased.secrets_destroyed,
            "rows_of_subject": subject_rows,
        },
        "plain_delete_subject": {
            "seconds": round(delete_s, 4),
            "records": deleted,
            "rows_of_subject": other_rows,
        },
        "ratio_erase_to_delete": round(erase_s / delete_s, 2),
    }


def _retention_sweep(engine: Engine, eraser: Eraser) -> dict[str, Any]:
    """The sweep of two expired days, against a plain DELETE of those days' rows."""
    sweeper = RetentionSweeper(
        db.make_session_factory(engine), eraser, today=lambda: dt.date(2026, 1, 4)
    )

    def delete_days() -> Any:
        days = [dt.date(2026, 1, 4), dt.date(2026, 1, 5)]
        with engine.begin() as conn:
            ids = [
                u for (u,) in conn.execute(select(Upload.id).where(Upload.retention_day.in_(days)))
            ]
            return conn.execute(
                text("DELETE FROM records WHERE upload_id = ANY(:ids)"), {"ids": ids}
            ).rowcount

    sweep_s, report = _timed(sweeper.sweep)
    delete_days_s, deleted_days = _timed(delete_days)
    return {
        "retention_sweep": {
            "seconds": round(sweep_s, 3),
            "records": report.records_erased,
            "secrets_destroyed": report.secrets_destroyed,
        },
        "plain_delete_days": {"seconds": round(delete_days_s, 3), "records": deleted_days},
        "ratio_sweep_to_delete": round(sweep_s / delete_days_s, 2),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    total = int(args.records or 1_000_000)
    per_upload = total // (DATASETS * DAYS)
    with ExitStack() as stack:
        url = os.environ.get("CIVIS_DATABASE_URL")
        if not url:
            from vault.embedded import embedded_postgres

            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="civis-bench-")))
            url = stack.enter_context(embedded_postgres(tmp, "bench", delete_on_exit=True))
        key_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="civis-keys-")))
        db.upgrade(url)
        engine = db.make_engine(url, pool_size=2)
        stack.callback(engine.dispose)
        store = KeyStore(LocalKeyProvider(key_dir / "master.key"))
        load_s = _load(engine, store, per_upload)
        with Session(engine) as session:
            n_records = session.scalar(select(func.count()).select_from(Record)) or 0
        eraser = Eraser(store)
        subject = _subject_erasure(engine, eraser)
        sweep = _retention_sweep(engine, eraser)
    return {
        "benchmark": "erasure",
        "records": n_records,
        "datasets": DATASETS,
        "subjects": SUBJECTS,
        "load_seconds": round(load_s, 1),
        **subject,
        **sweep,
    }
