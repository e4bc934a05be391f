"""Retention: records expire on the right day, per epoch, safely with concurrent sweepers."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from tests.vault.conftest import VaultServices, make_dataset
from vault.erasure import Eraser
from vault.models import KeySecret, OutboxFact, Record
from vault.retention import RetentionSweeper
from vault.uploads import RecordIn, Uploader


def _at(day: dt.date) -> Callable[[], dt.datetime]:
    return lambda: dt.datetime.combine(day, dt.time(10), tzinfo=dt.UTC)


def _readable(services: VaultServices, session: Session) -> int:
    return sum(
        1
        for ds in session.scalars(select(Record.dataset_id).distinct())
        for _ in services.reader.by_dataset(session, ds)
    )


def test_expires_on_the_right_day_and_not_a_day_before(
    committed_engine: Engine, services: VaultServices
) -> None:
    sessions = sessionmaker(committed_engine)
    start = dt.date(2026, 5, 1)
    with sessions() as session, session.begin():
        dataset = make_dataset(session, retention_days=10)
        for offset in range(3):  # uploads on May 1, 2, 3 -> last days May 11, 12, 13
            Uploader(services.store, clock=_at(start + dt.timedelta(days=offset))).upload(
                session, dataset.id, [RecordIn(f"s{i}", b"{}") for i in range(50)]
            )
    today = [start]
    sweeper = RetentionSweeper(sessions, Eraser(services.store), today=lambda: today[0])

    expected_readable = {
        dt.date(2026, 5, 11): 150,  # the last day of the first upload: still kept
        dt.date(2026, 5, 12): 100,
        dt.date(2026, 5, 13): 50,
        dt.date(2026, 5, 14): 0,
    }
    for day, readable in expected_readable.items():
        today[0] = day
        report = sweeper.sweep()
        with sessions() as session:
            assert _readable(services, session) == readable, day
        assert report.secrets_destroyed == (0 if day == dt.date(2026, 5, 11) else 1)
    with sessions() as session:
        facts = session.scalars(select(OutboxFact).where(OutboxFact.kind == "retention.expire"))
        assert sorted(f.payload["scope"]["day"] for f in facts) == [
            "2026-05-11",
            "2026-05-12",
            "2026-05-13",
        ]


def test_a_large_sweep_destroys_a_handful_of_secrets(
    committed_engine: Engine, services: VaultServices
) -> None:
    """20,000 records in 2 datasets over 3 days: 6 epoch secrets, not 20,000 keys (and the
    subject secrets that no live record needs any more)."""
    sessions = sessionmaker(committed_engine)
    with sessions() as session, session.begin():
        datasets = [make_dataset(session, retention_days=1) for _ in range(2)]
        for ds in datasets:
            for day in (1, 2, 3):
                Uploader(services.store, clock=_at(dt.date(2026, 6, day))).upload(
                    session,
                    ds.id,
                    (RecordIn(f"subject-{i % 500}", b'{"v":1}') for i in range(3334)),
                )
        keys_before = session.scalar(select(func.count()).select_from(KeySecret)) or 0
    sweeper = RetentionSweeper(sessions, Eraser(services.store), today=lambda: dt.date(2026, 7, 1))
    report = sweeper.sweep()
    assert report.secrets_destroyed == 6 and report.records_erased == 6 * 3334
    with sessions() as session:
        # The 6 epoch secrets, and the 2 x 500 subject secrets left without a live record (each
        # named its subject); the 6 upload secrets name no one.
        assert session.scalar(select(func.count()).select_from(KeySecret)) == keys_before - 1006
        assert set(session.scalars(select(KeySecret.kind))) == {"upload"}
        assert session.scalar(select(func.count()).where(Record.envelope.is_not(None))) == 0


def test_concurrent_sweepers_and_an_erasure_record_each_fact_once(
    committed_engine: Engine, services: VaultServices
) -> None:
    sessions = sessionmaker(committed_engine)
    with sessions() as session, session.begin():
        dataset = make_dataset(session, retention_days=1)
        uploads = []
        for day in range(1, 9):
            result = Uploader(services.store, clock=_at(dt.date(2026, 8, day))).upload(
                session, dataset.id, [RecordIn(f"s{i}", b"{}") for i in range(20)]
            )
            uploads.append(result.upload_id)
    errors: list[BaseException] = []
    barrier = threading.Barrier(3)

    def sweep() -> None:
        try:
            barrier.wait()
            RetentionSweeper(
                sessions, Eraser(services.store), today=lambda: dt.date(2026, 9, 1)
            ).sweep()
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    def erase() -> None:
        try:
            barrier.wait()
            for upload_id in uploads[:4]:
                with sessions() as session, session.begin():
                    Eraser(services.store).withdraw_upload(
                        session, upload_id, reason="withdrawn", requester="provider-1"
                    )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=f) for f in (sweep, sweep, erase)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    with sessions() as session:
        days = [
            f.payload["scope"]["day"]
            for f in session.scalars(
                select(OutboxFact).where(OutboxFact.kind == "retention.expire")
            )
        ]
        assert sorted(days) == [f"2026-08-{d:02d}" for d in range(2, 10)]  # each epoch once
        withdrawals = session.scalars(
            select(OutboxFact).where(OutboxFact.kind == "erasure.record")
        ).all()
        assert len(withdrawals) == 4  # each withdrawal once
        assert session.scalar(select(func.count()).where(Record.envelope.is_not(None))) == 0
