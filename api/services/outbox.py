"""The outbox relay: ships vault facts (anchors, erasures, expiries, rectifications) to the
ledger exactly once.

Why an outbox: a fact is written in the same database transaction as the change it describes
(keys destroyed, ciphertext dropped, upload stored), so a crash can never leave one without
the other. Shipping it to the ledger is a separate step that may crash too; the relay makes it
exactly-once:

1. one relay at a time per database (a session-level advisory lock), facts in id order;
2. each fact is submitted with an idempotency key derived from its id (and a ledger request id
   drawn from a sequence, stored before the first submission with the `valid_until` its
   transaction is signed with); the sink must return the ORIGINAL receipt when the same key is
   submitted again (the PBFT reply cache and the contracts' per-author nonce give this: a
   retried request is answered from the cache, never executed twice). With both stored, a
   resubmission by any worker process, or after a crash, sends the same bytes as the first;
3. only after the receipt is in hand is the fact marked sent (tx id, block height), in its own
   transaction. A crash between 2 and 3 resubmits on restart and gets the same receipt. For an
   erasure, the same transaction seals the subject's receipt and makes the vault forget the
   subject (`vault.erasure.settle_erasure`): until the ledger has the fact it must name them.

A fact the contracts REFUSE (they executed it and said no: a dataset the chain does not know,
a vault key that lost its membership) would be refused again on every retry, and facts ship
in order, so it would hold up every anchor and erasure behind it forever. The sink says so by
raising `FactRefused`; the relay then sets the fact aside (`refused_at`, the contract's code
in `last_error`; an upload whose anchor was refused becomes `refused`, served to no consumer)
and moves on. Anything else the sink raises (ledger unreachable, timeout) is retried in
place, in order. The DPO lists refused facts and sends one again (`requeue`) once the
cooperative's state allows it (`GET /v1/dpo/outbox`, `POST /v1/dpo/outbox/{id}/retry`).

`CIVIS_CRASH_AT` (tests only) kills the process with SIGKILL at a named step, to prove it.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, cast

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import CursorResult, func, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from api.services import requests
from ledger_bridge.facts import (
    ERASURE_RECORD,
    RECORD_RECTIFY,
    UPLOAD_ANCHOR,
    ErasureRecord,
    RecordRectify,
    UploadAnchor,
)
from ledger_bridge.receipts import ErasureReceipt, seal
from vault.erasure import is_forgotten, settle_erasure
from vault.models import OUTBOX_PENDING, OUTBOX_REFUSED, RELAY_REQUEST_IDS, OutboxFact, Upload

_log = logging.getLogger(__name__)
_RELAY_LOCK_KEY = 0x43495649  # "CIVI": the relay's advisory lock id


@dataclass(frozen=True, slots=True)
class FactReceipt:
    tx_id: str
    block_height: int
    # The encoded PBFT Request that carried the fact's transaction, when the sink has it: an
    # erasure's receipt for the subject (ledger_bridge/receipts.py).
    request: bytes | None = None


class FactRefused(Exception):
    """The ledger executed the fact's transaction and refused it: sent again unchanged, it
    gets the same answer until the ledger's state changes. `code` is the contract's code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


class FactSink(Protocol):
    def valid_until(self, stored: int | None) -> int:
        """The `valid_until` (ms since the epoch) to sign a fact's transaction with: `stored`,
        that of its earlier submissions, while the ledger would still order a transaction
        valid until then; else a new one (the sink knows how long its transactions live and
        how long a submission may take)."""
        ...

    def record(
        self,
        fact_id: int,
        kind: str,
        payload: dict[str, Any],
        *,
        request_id: int,
        valid_until: int,
    ) -> FactReceipt:
        """Record the fact on the ledger; idempotent per fact_id (same receipt every time).
        `request_id` is the ledger client's: it increases with every new submission, and a
        resubmission after a crash repeats it. `valid_until` is exactly the one to sign with,
        so the same (fact, request_id, valid_until) is the same request, byte for byte,
        whichever process sends it. Raises `FactRefused` when the ledger refused the fact,
        anything else to be retried."""
        ...


# Set in a worker process's environment (api/cli/serving.py): the pid of the instance, the
# supervisor of its workers, which `crash_point` kills to crash the instance whole.
INSTANCE_PID_ENV = "CIVIS_INSTANCE_PID"


def crash_point(name: str) -> None:
    """SIGKILL this instance if the crash-injection tests asked for it at `name`: this
    process, or in a worker process the supervisor, whose workers the kernel then kills
    (api/cli/serving.py): an instance crashes whole."""
    if os.environ.get("CIVIS_CRASH_AT") == name:
        os.kill(int(os.environ.get(INSTANCE_PID_ENV, os.getpid())), signal.SIGKILL)
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
        # Whether the last `run_once` found another relay (another API process) shipping.
        self.held_elsewhere = False

    def run_once(self) -> int:
        """Ship pending facts; returns how many were settled, recorded or refused (0 if
        another relay runs, `held_elsewhere` then says so, or the oldest pending fact must be
        retried later)."""
        with self._sessions() as lock_session:
            got = lock_session.execute(
                text("SELECT pg_try_advisory_lock(:k)"), {"k": _RELAY_LOCK_KEY}
            ).scalar()
            self.held_elsewhere = not got
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
            submission = self._next_submission()
            if submission is None:
                break
            fact_id, kind, payload, request_id, valid_until = submission
            crash_point("before-submit")
            try:
                receipt = self._sink.record(
                    fact_id, kind, payload, request_id=request_id, valid_until=valid_until
                )
            except FactRefused as exc:
                self._set_aside(fact_id, kind, payload, exc)
                shipped += 1
                continue
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
            self._mark_sent(fact_id, kind, payload, receipt)
            crash_point("after-mark")
            shipped += 1
        return shipped

    def _next_submission(self) -> tuple[int, str, dict[str, Any], int, int] | None:
        """The oldest pending fact, as it is to be submitted: (id, kind, payload, request id,
        valid_until), both stored before the submission; None if no fact is pending.

        Stored so that a resubmission by another worker process, or by a relay restarted after
        a crash, repeats the same request id (the replicas' reply cache answers it) and signs
        the same transaction: the request that committed, if one did, which an erasure's
        receipt must copy. A `valid_until` too close to pass is replaced (the sink decides),
        under the same request id: the cache still answers, but the request sent is no longer
        the one that committed."""
        with self._sessions() as session, session.begin():
            fact = session.execute(
                select(
                    OutboxFact.id,
                    OutboxFact.kind,
                    OutboxFact.payload,
                    OutboxFact.request_id,
                    OutboxFact.valid_until,
                )
                .where(OUTBOX_PENDING)
                .order_by(OutboxFact.id)
                .limit(1)
            ).first()
            if fact is None:
                return None
            fact_id, kind, payload, request_id, stored = fact
            values: dict[str, int] = {}
            if request_id is None:
                request_id = values["request_id"] = session.execute(
                    select(RELAY_REQUEST_IDS.next_value())
                ).scalar_one()
            valid_until = self._sink.valid_until(stored)
            if valid_until != stored:
                values["valid_until"] = valid_until
            if values:
                session.execute(update(OutboxFact).where(OutboxFact.id == fact_id).values(**values))
        return fact_id, kind, payload, int(request_id), valid_until

    def _mark_sent(
        self, fact_id: int, kind: str, payload: dict[str, Any], receipt: FactReceipt
    ) -> None:
        """Mark the fact recorded, with what its recording does to the vault, in one
        transaction: a crash leaves either all of it or none (the relay then sends again and
        the ledger answers from its reply cache or by the nonce)."""
        with self._sessions() as session, session.begin():
            marked = session.execute(
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
            if kind == ERASURE_RECORD and cast("CursorResult[Any]", marked).rowcount:
                # The subject's request it fulfils is answered; and recorded, so the vault may
                # now forget whom it erased (in this same transaction: never recorded yet still
                # naming them after a crash). The register's lock first: a sync of the
                # register must not write the subject back behind the forgetting.
                requests.lock_register(session)
                requests.record_fulfilment(
                    session,
                    "erasure",
                    ErasureRecord.from_payload(payload).certificate.request,
                    requests.LedgerFact(
                        type=ERASURE_RECORD, tx_id=receipt.tx_id, height=receipt.block_height
                    ),
                    self._clock(),
                )
                settle_erasure(session, fact_id, sealed_receipt=_sealed(fact_id, payload, receipt))
            if kind == RECORD_RECTIFY and cast("CursorResult[Any]", marked).rowcount:
                requests.record_fulfilment(
                    session,
                    "rectification",
                    RecordRectify.from_payload(payload).request,
                    requests.LedgerFact(
                        type=RECORD_RECTIFY, tx_id=receipt.tx_id, height=receipt.block_height
                    ),
                    self._clock(),
                )
            if kind == UPLOAD_ANCHOR:
                # Readable from now on: the anchor is committed, in the same transaction
                # as the mark, so an upload is never anchored without its receipt.
                _move_upload(
                    session,
                    payload,
                    "pending",
                    state="anchored",
                    anchor_tx_id=receipt.tx_id,
                    anchor_height=receipt.block_height,
                )

    def _set_aside(
        self, fact_id: int, kind: str, payload: dict[str, Any], exc: FactRefused
    ) -> None:
        with self._sessions() as session, session.begin():
            session.execute(
                update(OutboxFact)
                .where(OutboxFact.id == fact_id, OutboxFact.sent_at.is_(None))
                .values(
                    refused_at=self._clock(),
                    attempts=OutboxFact.attempts + 1,
                    last_error=str(exc)[:500],
                )
            )
            if kind == UPLOAD_ANCHOR:
                _move_upload(session, payload, "pending", state="refused")
        # The code only: contract messages name fields, never values, but a log line is no
        # place to find out whether one ever does.
        _log.error(
            "outbox fact %d (%s) refused by the ledger (%s); set aside", fact_id, kind, exc.code
        )


def requeue(session: Session, fact_id: int) -> OutboxFact | None:
    """Put a refused fact back in the queue (the DPO's retry); None if it is not refused.

    It keeps its id, so it ships in its original place relative to facts still pending, and
    its idempotency key: if the ledger did take it meanwhile, the receipt is looked up.
    """
    fact = session.get(OutboxFact, fact_id, with_for_update=True)
    if fact is None or fact.ledger_state != "refused" or is_forgotten(fact.payload):
        # A forgotten erasure fact no longer names its subject: it cannot be sent as it was.
        return None
    fact.refused_at = None
    fact.request_id = None  # the replicas ignore a request id at or below one they executed
    fact.valid_until = None  # a new submission: a new transaction
    if fact.kind == UPLOAD_ANCHOR:
        _move_upload(session, fact.payload, "refused", state="pending")
    return fact


def _sealed(fact_id: int, payload: dict[str, Any], receipt: FactReceipt) -> bytes | None:
    """The erasure's receipt sealed to the key its caller asked for (`receipt_to`), if any.

    Without the request that carried the erasure there is no receipt to seal: the sink could
    not find it. A resubmission sends the request that committed again, byte for byte (its
    request id and `valid_until` are stored), so this is rare: an answer for a request other
    than the one just sent, after the replicas redacted the erasure from its block (a retry
    so late that its transaction needed a new `valid_until`, or a `replayed` answer: another
    request spent the nonce). The erasure is recorded all the same and the vault forgets the
    subject, since no retry brings the body back and a fact held back would keep naming them
    and hold up every fact behind it; the caller is told no receipt will come (the erasure's
    answer, or a 410 for its sealed receipt: api/http/routes/erasures.py), and the operator
    here, by fact id and height only."""
    recipient = ErasureRecord.from_payload(payload).receipt_to
    if recipient is None:
        return None
    if receipt.request is None:
        _log.error(
            "outbox fact %d (%s) recorded at height %d without an erasure receipt: the request "
            "that carried it was no longer in its block when read back",
            fact_id,
            ERASURE_RECORD,
            receipt.block_height,
        )
        return None
    return seal(ErasureReceipt(receipt.block_height, receipt.request, receipt.tx_id), recipient)


def _move_upload(session: Session, anchor: dict[str, Any], from_state: str, **values: Any) -> None:
    """Set `values` on the upload an upload.anchor fact names, if it is still in `from_state`
    (a withdrawn upload stays withdrawn whatever its anchor's fate)."""
    session.execute(
        update(Upload)
        .where(
            Upload.id == uuid.UUID(UploadAnchor.from_payload(anchor).upload),
            Upload.state == from_state,
        )
        .values(**values)
    )


def wait_for_receipt(sessions: sessionmaker[Session], fact_id: int, wait_s: float) -> OutboxFact:
    """The fact once the relay recorded or set it aside (refused), or as it stands after
    `wait_s` seconds.

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
        if fact.ledger_state != "pending" or time.monotonic() >= deadline:
            return fact
        time.sleep(0.02)


def outbox_counts(session: Session) -> tuple[int, int]:
    """(pending, refused): both counted through their partial indexes."""
    pending = session.scalar(select(func.count()).select_from(OutboxFact).where(OUTBOX_PENDING))
    refused = session.scalar(select(func.count()).select_from(OutboxFact).where(OUTBOX_REFUSED))
    return int(pending or 0), int(refused or 0)


class OutboxCollector(Collector):
    """`civis_outbox_facts{state="pending"|"refused"}` at scrape time.

    Why a metric: a refused fact no longer blocks the relay, so nothing else would make noise
    about it; an alert on `refused > 0` (or on `pending` that stays up) tells the DPO and the
    operator that the ledger is missing facts the vault has acted on.
    """

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def collect(self) -> Iterator[GaugeMetricFamily]:
        gauge = GaugeMetricFamily(
            "civis_outbox_facts",
            "Vault facts not recorded on the ledger: pending (queued) or refused (set aside)",
            labels=["state"],
        )
        try:
            with self._sessions() as session:
                pending, refused = outbox_counts(session)
        except Exception:  # a scrape must not fail because the database is down
            return
        gauge.add_metric(["pending"], pending)
        gauge.add_metric(["refused"], refused)
        yield gauge
