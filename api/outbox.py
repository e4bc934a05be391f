"""The outbox relay: ships vault facts (anchors, erasures, expiries) to the ledger exactly once.

Why an outbox: a fact is written in the same database transaction as the change it describes
(keys destroyed, ciphertext dropped, upload stored), so a crash can never leave one without
the other. Shipping it to the ledger is a separate step that may crash too; the relay makes it
exactly-once:

1. one relay at a time per database (a session-level advisory lock), facts in id order;
2. each fact is submitted with an idempotency key derived from its id; the sink must return
   the ORIGINAL receipt when the same key is submitted again (the PBFT reply cache and the
   contracts' per-author nonce give this: a retried request is answered from the cache, never
   executed twice);
3. only after the receipt is in hand is the fact marked sent (tx id, block height), in its own
   transaction. A crash between 2 and 3 resubmits on restart and gets the same receipt.

`CIVIS_CRASH_AT` (tests only) kills the process with SIGKILL at a named step, to prove it.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import select, text, update
from sqlalchemy.orm import Session, sessionmaker

from vault.models import OutboxFact, Upload

_log = logging.getLogger(__name__)
_RELAY_LOCK_KEY = 0x43495649  # "CIVI": the relay's advisory lock id


@dataclass(frozen=True, slots=True)
class FactReceipt:
    tx_id: str
    block_height: int


class FactSink(Protocol):
    def record(self, fact_id: int, kind: str, payload: dict[str, Any]) -> FactReceipt:
        """Record the fact on the ledger; idempotent per fact_id (same receipt every time)."""
        ...


def crash_point(name: str) -> None:
    """SIGKILL this process if the crash-injection tests asked for it at `name`."""
    if os.environ.get("CIVIS_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)


class OutboxRelay:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        sink: FactSink,
        *,
        batch_max: int = 100,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self._sessions = sessions
        self._sink = sink
        self._batch_max = batch_max
        self._clock = clock

    def run_once(self) -> int:
        """Ship pending facts; returns how many were recorded (0 if another relay runs)."""
        with self._sessions() as lock_session:
            got = lock_session.execute(
                text("SELECT pg_try_advisory_lock(:k)"), {"k": _RELAY_LOCK_KEY}
            ).scalar()
            if not got:
                return 0
            try:
                return self._drain()
            finally:
                lock_session.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _RELAY_LOCK_KEY})
                lock_session.commit()

    def _drain(self) -> int:
        shipped = 0
        while shipped < self._batch_max:
            with self._sessions() as session:
                fact = session.execute(
                    select(OutboxFact.id, OutboxFact.kind, OutboxFact.payload)
                    .where(OutboxFact.sent_at.is_(None))
                    .order_by(OutboxFact.id)
                    .limit(1)
                ).first()
            if fact is None:
                break
            fact_id, kind, payload = fact
            crash_point("before-submit")
            try:
                receipt = self._sink.record(fact_id, kind, payload)
            except Exception as exc:
                with self._sessions() as session, session.begin():
                    session.execute(
                        update(OutboxFact)
                        .where(OutboxFact.id == fact_id)
                        .values(
                            attempts=OutboxFact.attempts + 1,
                            last_error=type(exc).__name__ + ": " + str(exc)[:500],
                        )
                    )
                _log.warning("outbox fact %d (%s) not recorded yet: %s", fact_id, kind, exc)
                break
            crash_point("after-submit")
            with self._sessions() as session, session.begin():
                session.execute(
                    update(OutboxFact)
                    .where(OutboxFact.id == fact_id, OutboxFact.sent_at.is_(None))
                    .values(
                        sent_at=self._clock(),
                        tx_id=receipt.tx_id,
                        block_height=receipt.block_height,
                        attempts=OutboxFact.attempts + 1,
                        last_error=None,
                    )
                )
                if kind == "upload.anchor":
                    # Readable from now on: the anchor is committed, in the same transaction
                    # as the mark, so an upload is never anchored without its receipt.
                    session.execute(
                        update(Upload)
                        .where(
                            Upload.id == uuid.UUID(payload["upload_id"]),
                            Upload.state == "pending",
                        )
                        .values(
                            state="anchored",
                            anchor_tx_id=receipt.tx_id,
                            anchor_height=receipt.block_height,
                        )
                    )
            crash_point("after-mark")
            shipped += 1
        return shipped


def wait_for_receipt(sessions: sessionmaker[Session], fact_id: int, wait_s: float) -> OutboxFact:
    """The fact once the relay recorded it, or as it stands after `wait_s` seconds.

    For routes that answer with a receipt: they commit their fact, wake the relay and wait
    here; a slow ledger gets them the fact still pending rather than a hung request.
    """
    deadline = time.monotonic() + wait_s
    while True:
        with sessions() as session:
            fact = session.get(OutboxFact, fact_id)
            if fact is None:
                raise LookupError(f"outbox fact {fact_id} does not exist")
            session.expunge(fact)
        if fact.sent_at is not None or time.monotonic() >= deadline:
            return fact
        time.sleep(0.02)
