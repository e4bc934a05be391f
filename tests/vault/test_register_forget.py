"""An erasure forgets the subject in the request register too, and keeps the rows.

Invariant 7 and "nothing personal outlives its erasure": a register row naming the pseudonym
would link the subject to their requests (and to the dataset they were in) after the keys that
held their data were destroyed. Accountability (Art. 5(2)) wants the rows kept: the request and
its timing stay provable. So the erasure replaces the subject by a value derived from the
secrets it destroys (vault/erasure.py), as it does in records and key commitments.
"""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.services.requests import close_request, open_request
from ledger_bridge.facts import ErasureRecord
from tests.vault.conftest import VaultServices, make_dataset
from vault.erasure import FORGOTTEN_PREFIX, settle_erasure
from vault.models import OutboxFact, SubjectRequest
from vault.uploads import RecordIn

NOW = dt.datetime(2027, 3, 1, 9, 0, tzinfo=dt.UTC)


def _subjects(session: Session, ids: list[uuid.UUID]) -> dict[uuid.UUID, str]:
    rows = session.execute(
        select(SubjectRequest.id, SubjectRequest.subject).where(SubjectRequest.id.in_(ids))
    )
    return {request_id: subject for request_id, subject in rows}


def _naming(session: Session, subject: str) -> int:
    counted = session.scalar(
        select(func.count()).select_from(SubjectRequest).where(SubjectRequest.subject == subject)
    )
    return int(counted or 0)


def test_an_erasure_everywhere_forgets_the_subject_in_every_request_and_keeps_them(
    session: Session, services: VaultServices
) -> None:
    a, b = make_dataset(session), make_dataset(session)
    subject, other = f"s-{uuid.uuid4().hex[:8]}", f"o-{uuid.uuid4().hex[:8]}"
    for ds in (a, b):
        services.uploader.upload(session, ds.id, [RecordIn(subject, b"{}"), RecordIn(other, b"{}")])
    mine = [
        open_request(session, "access", subject, None, NOW),
        open_request(session, "rectification", subject, a.id, NOW),
        open_request(session, "erasure", subject, b.id, NOW),
        open_request(session, "portability", subject, None, NOW),
    ]
    close_request(session, mine[0], "done", at=NOW)
    theirs = open_request(session, "access", other, None, NOW)
    assert _naming(session, subject) == 4  # the control: the rows name them until the erasure

    services.eraser.erase_subject(session, subject, reason="subject_request", requester="subject")

    assert _naming(session, subject) == 0
    after = _subjects(session, mine)
    assert set(after) == set(mine)  # every row kept
    assert all(v.startswith(FORGOTTEN_PREFIX) for v in after.values())
    # one value per dataset, one for the requests of no dataset: grouped, naming nobody
    assert after[mine[0]] == after[mine[3]]
    assert len({after[mine[0]], after[mine[1]], after[mine[2]]}) == 3
    row = session.get(SubjectRequest, mine[0])
    assert row is not None and row.state == "done" and row.done_at == NOW  # its timing kept
    assert _subjects(session, [theirs]) == {theirs: other}  # nobody else is touched


def test_an_erasure_in_one_dataset_forgets_that_datasets_requests_only(
    session: Session, services: VaultServices
) -> None:
    a, b = make_dataset(session), make_dataset(session)
    subject = f"s-{uuid.uuid4().hex[:8]}"
    for ds in (a, b):
        services.uploader.upload(session, ds.id, [RecordIn(subject, b"{}")])
    in_a = open_request(session, "erasure", subject, a.id, NOW)
    in_b = open_request(session, "restriction", subject, b.id, NOW)
    anywhere = open_request(session, "access", subject, None, NOW)

    services.eraser.erase_subject(
        session, subject, dataset_id=a.id, reason="subject_request", requester="subject"
    )

    after = _subjects(session, [in_a, in_b, anywhere])
    assert after[in_a].startswith(FORGOTTEN_PREFIX)
    assert after[in_b] == after[anywhere] == subject  # still a member of b: still named there


def test_a_subject_with_only_a_request_left_is_still_erased_and_forgotten(
    session: Session, services: VaultServices
) -> None:
    """No data, no key: only the register names them (an export of nothing). Their erasure
    everywhere still queues a fact (so the ledger forgets them too) and forgets the row."""
    subject = f"s-{uuid.uuid4().hex[:8]}"
    opened = open_request(session, "access", subject, None, NOW)
    result = services.eraser.erase_subject(session, subject, reason="dpo_decision", requester="dpo")
    assert result.outbox_id is not None
    assert _subjects(session, [opened])[opened].startswith(FORGOTTEN_PREFIX)


def test_recording_the_erasure_forgets_a_request_registered_after_it(
    session: Session, services: VaultServices
) -> None:
    """The register's sync may write a row from a ledger answer that still listed the
    subject's request; when the relay records the erasure, that row is forgotten too."""
    ds = make_dataset(session)
    subject = f"s-{uuid.uuid4().hex[:8]}"
    services.uploader.upload(session, ds.id, [RecordIn(subject, b"{}")])
    result = services.eraser.erase_subject(session, subject, reason="dpo_decision", requester="dpo")
    assert result.outbox_id is not None
    late = open_request(session, "erasure", subject, ds.id, NOW, request=10**9)
    assert _naming(session, subject) == 1

    settle_erasure(session, result.outbox_id, sealed_receipt=None)

    assert _naming(session, subject) == 0
    assert _subjects(session, [late])[late].startswith(FORGOTTEN_PREFIX)
    fact = session.get(OutboxFact, result.outbox_id)
    assert fact is not None and ErasureRecord.from_payload(fact.payload).subject is None
