"""The retention sweeper: expire every retention epoch whose last day has passed.

Why per epoch and not per record: all records of a dataset whose retention ends on the same
day share one epoch secret (DESIGN.md, "Keys"), so a sweep over a million records destroys a
handful of secrets and runs one UPDATE per epoch, not a million key deletions.

Rules:
- an epoch `(dataset, day)` holds records that may be kept up to and including `day`; it is
  expired by the first sweep whose `today` is after `day` (never a day before);
- each epoch is expired in its own transaction, after taking its key-store row with
  `FOR UPDATE SKIP LOCKED`: several sweepers (several API instances, a cron job) can run at
  once; each epoch is expired by exactly one of them, and the others skip it without waiting
  or failing. Expiry writes its `retention.expire` fact to the outbox in the same transaction.
- the clock is a parameter, so tests drive it day by day.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from vault.erasure import Eraser, ErasureResult
from vault.models import KeySecret

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SweepReport:
    today: dt.date
    expired: list[ErasureResult]
    skipped_locked: int

    @property
    def secrets_destroyed(self) -> int:
        return sum(e.secrets_destroyed for e in self.expired)

    @property
    def records_erased(self) -> int:
        return sum(e.records_erased for e in self.expired)


def _today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


def due_epochs(session: Session, today: dt.date) -> list[tuple[uuid.UUID, dt.date]]:
    """Epochs whose last day is before `today` (ISO dates compare as strings)."""
    rows = session.execute(
        select(KeySecret.dataset_id, KeySecret.scope)
        .where(KeySecret.kind == "epoch", KeySecret.scope < today.isoformat())
        .order_by(KeySecret.scope, KeySecret.dataset_id)
    )
    return [(d, dt.date.fromisoformat(s)) for d, s in rows]


class RetentionSweeper:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        eraser: Eraser,
        *,
        today: Callable[[], dt.date] = _today,
        epochs_per_sweep_max: int = 10_000,
    ) -> None:
        self._sessions = sessions
        self._eraser = eraser
        self._today = today
        self._limit = epochs_per_sweep_max

    def sweep(self) -> SweepReport:
        today = self._today()
        with self._sessions() as session:
            candidates = due_epochs(session, today)[: self._limit]
        expired: list[ErasureResult] = []
        skipped = 0
        for dataset_id, day in candidates:
            with self._sessions() as session, session.begin():
                locked = session.execute(
                    select(KeySecret.id)
                    .where(
                        KeySecret.kind == "epoch",
                        KeySecret.dataset_id == dataset_id,
                        KeySecret.scope == day.isoformat(),
                    )
                    .with_for_update(skip_locked=True)
                ).first()
                if locked is None:
                    # Another sweeper holds it, or already expired it: either way, not ours.
                    skipped += 1
                    continue
                result = self._eraser.expire_epoch(session, dataset_id, day)
                expired.append(result)
                _log.info(
                    "expired epoch dataset=%s day=%s records=%d",
                    dataset_id,
                    day.isoformat(),
                    result.records_erased,
                )
        return SweepReport(today=today, expired=expired, skipped_locked=skipped)
