"""The background jobs when several API processes run them: the relay ships alone, and a
route's kick is not lost to another process's relay holding the lock."""

from __future__ import annotations

import hashlib
import time
from typing import Any

from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session, sessionmaker

from api.services.jobs import BackgroundJobs
from api.services.outbox import _RELAY_LOCK_KEY, FactReceipt, OutboxRelay
from tests.vault.conftest import VaultServices, make_dataset
from tests.vault.conftest import committed_engine as committed_engine  # fixture
from tests.vault.conftest import services as services  # fixture
from vault.models import OutboxFact
from vault.uploads import RecordIn

SUBJECT = bytes(range(32, 64)).hex()


class RecordingSink:
    """The ledger's side of the relay (`FactSink`), keeping what it was given."""

    def __init__(self) -> None:
        self.recorded: list[int] = []

    def valid_until(self, stored: int | None) -> int:
        return stored or 1

    def record(
        self,
        fact_id: int,
        kind: str,
        payload: dict[str, Any],
        *,
        request_id: int,
        valid_until: int,
    ) -> FactReceipt:
        self.recorded.append(fact_id)
        return FactReceipt(hashlib.sha256(b"%d" % fact_id).hexdigest(), 1)


def test_a_kick_while_another_process_ships_is_not_left_for_the_next_tick(
    committed_engine: Engine, services: VaultServices
) -> None:
    """Another API process's relay holds the lock when a route kicks this one (it may have
    looked for facts before the route's fact committed): this relay tries again until it
    ships the fact, long before its next tick (a minute here)."""
    sessions = sessionmaker(committed_engine, expire_on_commit=False)
    with sessions() as session, session.begin():
        dataset = make_dataset(session)
        upload = services.uploader.upload(session, dataset.id, [RecordIn(SUBJECT, b"{}")])
    sink = RecordingSink()
    relay = OutboxRelay(sessions, sink)
    with committed_engine.connect() as other_process:
        other_process.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _RELAY_LOCK_KEY})
        other_process.commit()
        jobs = BackgroundJobs(relay, None, relay_interval_s=60.0)
        jobs.start()
        try:
            deadline = time.monotonic() + 10
            while not relay.held_elsewhere:  # its first tick found the lock taken
                assert time.monotonic() < deadline
                time.sleep(0.01)
            jobs.kick()
            time.sleep(0.2)
            assert sink.recorded == []  # still held elsewhere: nothing shipped twice
            other_process.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _RELAY_LOCK_KEY})
            other_process.commit()
            while sink.recorded != [upload.outbox_id]:
                assert time.monotonic() < deadline, "the kicked relay waited for its next tick"
                time.sleep(0.01)
        finally:
            jobs.stop()
    with Session(committed_engine) as session:
        fact = session.scalars(select(OutboxFact)).one()
        assert fact.sent_at is not None
