"""Property: on the real database, destroying any scope kills exactly that scope.

Random uploads (datasets x days x subjects) then one random destruction; the set of records
that still decrypt must equal the model's prediction, record by record.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.orm import Session

from tests.vault.conftest import VaultServices, make_dataset
from vault.uploads import RecordIn, Uploader

SUBJECTS = ["alice", "bob", "carol"]
DAYS = [dt.datetime(2026, 3, d, 9, tzinfo=dt.UTC) for d in (1, 2)]

uploads_st = st.lists(
    st.tuples(
        st.integers(0, 1),  # dataset
        st.integers(0, 1),  # day
        st.lists(st.sampled_from(SUBJECTS), min_size=1, max_size=4),
    ),
    min_size=1,
    max_size=4,
)
scope_st = st.one_of(
    st.tuples(st.just("subject_in"), st.sampled_from(SUBJECTS), st.integers(0, 1)),
    st.tuples(st.just("subject_all"), st.sampled_from(SUBJECTS), st.just(0)),
    st.tuples(st.just("upload"), st.just(""), st.integers(0, 3)),
    st.tuples(st.just("epoch"), st.just(""), st.integers(0, 3)),
)


def _clock(when: dt.datetime) -> Callable[[], dt.datetime]:
    return lambda: when


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(plan=uploads_st, scope=scope_st)
def test_destroying_a_scope_kills_exactly_it(
    session: Session,
    services: VaultServices,
    plan: list[tuple[int, int, list[str]]],
    scope: tuple[str, str, int],
) -> None:
    savepoint = session.begin_nested()  # each example rolls back its own writes
    try:
        datasets = [make_dataset(session, retention_days=30) for _ in range(2)]
        # record id -> (dataset index, upload id, day index, subject)
        expected: dict[uuid.UUID, tuple[int, uuid.UUID, int, str]] = {}
        upload_ids = []
        for ds, day, subjects in plan:
            records = [RecordIn(s, b"{}", record_id=uuid.uuid4()) for s in subjects]
            result = Uploader(services.store, clock=_clock(DAYS[day])).upload(
                session, datasets[ds].id, records
            )
            upload_ids.append((result.upload_id, ds, day, result.retention_day))
            for r in records:
                assert r.record_id is not None
                expected[r.record_id] = (ds, result.upload_id, day, r.subject_id)

        kind, subject, index = scope
        if kind == "subject_in":
            services.eraser.erase_subject(
                session, subject, dataset_id=datasets[index].id, reason="t", requester="t"
            )
            killed = {k for k, (ds, _, _, s) in expected.items() if s == subject and ds == index}
        elif kind == "subject_all":
            services.eraser.erase_subject(session, subject, reason="t", requester="t")
            killed = {k for k, (_, _, _, s) in expected.items() if s == subject}
        elif kind == "upload":
            upload_id = upload_ids[index % len(upload_ids)][0]
            services.eraser.withdraw_upload(session, upload_id, reason="t", requester="t")
            killed = {k for k, (_, u, _, _) in expected.items() if u == upload_id}
        else:
            _, ds, day, retention_day = upload_ids[index % len(upload_ids)]
            services.eraser.expire_epoch(session, datasets[ds].id, retention_day)
            killed = {k for k, (d, _, dy, _) in expected.items() if d == ds and dy == day}

        readable = {
            r.record_id for d in datasets for r in services.reader.by_dataset(session, d.id)
        }
        assert readable == set(expected) - killed
    finally:
        savepoint.rollback()
