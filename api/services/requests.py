"""The register of data subjects' requests (GDPR Art. 12(3)): each request's receipt, deadline,
outcome and ledger facts, so the controller can show that every one was answered in time
(Art. 5(2)).

The deadline. Art. 12(3): "without undue delay and in any event within one month of receipt",
extendable "by two further months where necessary", the subject being told of the extension and
its reasons within the first month. A month is a calendar month, counted as Regulation (EEC,
Euratom) No 1182/71 Art. 3(2)(c) counts it: the period ends on the day of the next month with
the same date as the day of receipt, or, when that month has no such day, on its last day
(received 31 January, due 28 February, or 29 in a leap year; received 15 March, due 15 April).
Days are the controller's: its time zone is in its record (`ControllerRecord.timezone`, UTC
until set). The register keeps the wall-clock time of receipt there, on that day of the next
month (`due_for`), not the end of that day: the deadline it shows is never later than the
legal one, and it leaves out Art. 3(4)'s move to the next working day (holidays are national;
a controller answers by the earlier date anyway). An extension makes the whole period three
months from receipt (`extended_due`), not two months from the first deadline: received 31
January, due 30 April, where chaining would lose two days (28 February, then 28 April).

Who writes what. A route a subject calls to exercise a right opens the request and, when the
answer is immediate (an export), closes it in the same transaction. A subject's signed request
on the ledger (`erasure.request`, and `rectification.request` once the contracts have it) is
pulled in by `sync_ledger_requests` (the background jobs and `POST /v1/dpo/requests/sync`), so a
request the vault never saw through its own route (it crashed after the ledger ordered it, or the
subject sent it to a replica) is registered too; the outbox relay closes an erasure request in
the transaction that marks its erasure.record recorded (`record_fulfilment`), and the sync
closes one the ledger shows fulfilled by other means.

Forgetting. A register row names the subject's pseudonym. An erasure replaces it, in the same
transaction as it destroys the subject's secrets, by a value derived from them
(vault/erasure.py), and the relay's marking of the erasure replaces any row the sync wrote
since. The sync writes under `REGISTER_LOCK`, which the relay also takes before it forgets, and
only from a ledger answer at least as recent as every erasure the vault saw recorded, so it never
writes a pseudonym back after the erasure that forgot it.
"""

from __future__ import annotations

import calendar
import datetime as dt
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, Field
from sqlalchemy import func, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session, sessionmaker

from api.http.errors import ApiError
from ledger_bridge import facts as ledger_facts
from ledger_bridge.contracts import tx as contract_tx
from ledger_bridge.contracts.vocabulary import REQUEST_KINDS, RequestKind, RequestState
from vault.errors import NotFound
from vault.models import (
    REQUEST_PENDING_STATES,
    ControllerRecord,
    OutboxFact,
    SubjectRequest,
)

if TYPE_CHECKING:
    from api.services.gateway import LedgerGateway

_log = logging.getLogger(__name__)

PERIOD_MONTHS = 1  # Art. 12(3): one month of receipt
EXTENDED_PERIOD_MONTHS = 3  # ... "extended by two further months"
SOON_DUE = dt.timedelta(days=7)  # the DPO page's "soon due"
LIST_LIMIT_MAX = 1000
# New ledger requests registered per sync (each costs a block read for its tx id); the rest
# wait for the next round.
SYNC_NEW_MAX = 100
# pg_advisory_xact_lock key of the register's writes from the ledger ("CIVR").
REGISTER_LOCK = 0x43495652


def add_months(when: dt.datetime, months: int) -> dt.datetime:
    """`when` moved by `months` calendar months: same day of the month and same time of day,
    or the last day of the target month when it has no such day (see the module)."""
    index = when.month - 1 + months
    year, month = when.year + index // 12, index % 12 + 1
    day = min(when.day, calendar.monthrange(year, month)[1])
    return when.replace(year=year, month=month, day=day)


def due_for(received_at: dt.datetime, zone: dt.tzinfo = dt.UTC) -> dt.datetime:
    """The deadline of a request received at `received_at`, counted in `zone`'s days, in UTC."""
    return add_months(received_at.astimezone(zone), PERIOD_MONTHS).astimezone(dt.UTC)


def extended_due(received_at: dt.datetime, zone: dt.tzinfo = dt.UTC) -> dt.datetime:
    """The deadline once extended: three months from receipt, in `zone`'s days, in UTC."""
    return add_months(received_at.astimezone(zone), EXTENDED_PERIOD_MONTHS).astimezone(dt.UTC)


def controller_zone(session: Session) -> dt.tzinfo:
    """The controller's time zone, whose days the deadlines count (UTC until it is set)."""
    row = session.get(ControllerRecord, 1)
    if row is None or row.timezone == "UTC":
        return dt.UTC
    try:
        return ZoneInfo(row.timezone)
    except (ZoneInfoNotFoundError, ValueError):  # the record is checked when set
        return dt.UTC


class LedgerFact(BaseModel):
    """A ledger transaction that proves a step of the request."""

    type: str = Field(description="the transaction type, e.g. erasure.request, erasure.record")
    tx_id: str | None = Field(
        default=None, description="hex id of the transaction; null when only its height is known"
    )
    height: int | None = Field(default=None, description="the block that committed it")


class RequestOut(BaseModel):
    id: uuid.UUID
    kind: RequestKind
    subject: str = Field(
        description="the subject's pseudonym; after their erasure, a value that names nobody "
        "(it starts with ~)"
    )
    dataset_id: uuid.UUID | None
    received_at: dt.datetime
    due_at: dt.datetime = Field(description="one calendar month after receipt, three if extended")
    state: RequestState
    done_at: dt.datetime | None
    facts: list[LedgerFact]
    request: int | None = Field(
        description="the ledger's number for the subject's signed request, if it is on the ledger"
    )
    extended_at: dt.datetime | None
    extension_reason: str | None
    refusal_reason: str | None
    overdue: bool = Field(description="still pending past its deadline, or answered after it")


class ExtensionRefused(ApiError):
    """An extension Art. 12(3) does not allow: the request is answered, already extended, or
    its first month is over (the subject must be told within it)."""

    status = 409
    title = "Extension refused"


def _utc(when: dt.datetime) -> dt.datetime:
    if when.tzinfo is None:
        raise ValueError("a register time is timezone-aware")
    return when.astimezone(dt.UTC)


def _fact(fact: LedgerFact | dict[str, Any] | None) -> list[dict[str, Any]]:
    if fact is None:
        return []
    model = fact if isinstance(fact, LedgerFact) else LedgerFact.model_validate(fact)
    return [model.model_dump()]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def open_request(
    session: Session,
    kind: str,
    subject: str,
    dataset_id: uuid.UUID | None,
    received_at: dt.datetime,
    fact: LedgerFact | dict[str, Any] | None = None,
    *,
    request: int | None = None,
) -> uuid.UUID:
    """Register a request received at `received_at`; its id.

    `request` is the ledger's number for the subject's signed request: a request of that kind
    and number is registered once, and opening it again returns the first row's id (the sync
    may have found it on the ledger first).
    """
    if kind not in REQUEST_KINDS:
        raise ValueError(f"kind is one of {', '.join(REQUEST_KINDS)}")
    received = _utc(received_at)
    request_id = uuid.uuid4()
    row = {
        "id": request_id,
        "kind": kind,
        "subject": subject,
        "dataset_id": dataset_id,
        "received_at": received,
        "due_at": due_for(received, controller_zone(session)),
        "state": "open",
        "facts": _fact(fact),
        "request": request,
    }
    statement = insert(SubjectRequest).values(**row)
    if request is None:
        session.execute(statement)
        return request_id
    inserted: uuid.UUID | None = session.scalar(
        statement.on_conflict_do_nothing(index_elements=["kind", "request"]).returning(
            SubjectRequest.id
        )
    )
    if inserted is not None:
        return inserted
    existing: uuid.UUID | None = session.scalar(
        select(SubjectRequest.id).where(
            SubjectRequest.kind == kind, SubjectRequest.request == request
        )
    )
    assert existing is not None, "a conflicting row exists"
    return existing


def _row(session: Session, request_id: uuid.UUID) -> SubjectRequest:
    row = session.get(SubjectRequest, request_id, with_for_update=True)
    if row is None:
        raise NotFound(f"request {request_id} does not exist")
    return row


def close_request(
    session: Session,
    request_id: uuid.UUID,
    state: str,
    fact: LedgerFact | dict[str, Any] | None = None,
    *,
    at: dt.datetime | None = None,
    reason: str | None = None,
) -> None:
    """Answer a request: `done`, or `refused` (with the `reason` the subject is given).

    Closing a closed request again in the same state only adds `fact` if it is new (the relay
    and the sync may both see one erasure recorded); in another state it is an error.
    """
    if state not in ("done", "refused"):
        raise ValueError("a request closes as done or refused")
    row = _row(session, request_id)
    new = _fact(fact)
    if row.state in ("done", "refused"):
        if row.state != state:
            raise ValueError(f"request {request_id} is already {row.state}")
        if new and new[0] not in row.facts:
            row.facts = [*row.facts, *new]
        session.flush()
        return
    row.state = state
    row.done_at = _utc(at or _now())
    row.facts = [*row.facts, *new]
    if state == "refused":
        row.refusal_reason = reason
    session.flush()


def extend_request(
    session: Session, request_id: uuid.UUID, reason: str, *, at: dt.datetime | None = None
) -> SubjectRequest:
    """Art. 12(3): move an open request's deadline to three months from receipt, with the
    reasons the subject is told. Refused (409) once answered, once extended, or after the
    first month (the subject must be told within it)."""
    now = _utc(at or _now())
    row = _row(session, request_id)
    if row.state != "open":
        raise ExtensionRefused(f"request {request_id} is {row.state}: only an open one extends")
    if now > row.due_at:
        raise ExtensionRefused(
            f"request {request_id} was due {row.due_at.isoformat()}: Art. 12(3) allows an "
            "extension only within the first month"
        )
    row.state = "extended"
    row.extended_at = now
    row.extension_reason = reason
    row.due_at = extended_due(row.received_at, controller_zone(session))
    session.flush()
    return row


def is_overdue(row: SubjectRequest, now: dt.datetime) -> bool:
    """Still pending past its deadline, or answered after it."""
    end = row.done_at if row.done_at is not None else now
    return end > row.due_at


def request_out(row: SubjectRequest, now: dt.datetime) -> RequestOut:
    return RequestOut(
        id=row.id,
        kind=row.kind,  # type: ignore[arg-type]
        subject=row.subject,
        dataset_id=row.dataset_id,
        received_at=row.received_at,
        due_at=row.due_at,
        state=row.state,  # type: ignore[arg-type]
        done_at=row.done_at,
        facts=[LedgerFact.model_validate(f) for f in row.facts],
        request=row.request,
        extended_at=row.extended_at,
        extension_reason=row.extension_reason,
        refusal_reason=row.refusal_reason,
        overdue=is_overdue(row, now),
    )


def subject_requests(session: Session, subject: str) -> list[SubjectRequest]:
    """A subject's requests, newest first (a subject makes few: at most LIST_LIMIT_MAX)."""
    return list(
        session.scalars(
            select(SubjectRequest)
            .where(SubjectRequest.subject == subject)
            .order_by(SubjectRequest.received_at.desc(), SubjectRequest.id)
            .limit(LIST_LIMIT_MAX)
        )
    )


def dpo_requests(
    session: Session,
    *,
    states: Sequence[str] | None = None,
    due_before: dt.datetime | None = None,
    after: uuid.UUID | None = None,
    limit: int = 100,
) -> list[SubjectRequest]:
    """Requests by deadline (then id), those after request `after` in that order."""
    query = select(SubjectRequest)
    if states:
        query = query.where(SubjectRequest.state.in_(states))
    if due_before is not None:
        query = query.where(SubjectRequest.due_at < _utc(due_before))
    if after is not None:
        last = session.get(SubjectRequest, after)
        if last is None:
            raise NotFound(f"request {after} does not exist")
        query = query.where(
            func.row(SubjectRequest.due_at, SubjectRequest.id) > func.row(last.due_at, last.id)
        )
    order = (SubjectRequest.due_at, SubjectRequest.id)
    return list(session.scalars(query.order_by(*order).limit(limit)))


def pending_due_before(session: Session, before: dt.datetime) -> list[SubjectRequest]:
    """Pending requests due before `before` (the overdue and the soon due), by deadline."""
    return dpo_requests(
        session, states=REQUEST_PENDING_STATES, due_before=before, limit=LIST_LIMIT_MAX
    )


# -- the ledger's side: requests the subjects signed ----------------------------------------


def lock_register(session: Session) -> None:
    """Serialise the register's writes from the ledger with the relay's forgetting (see the
    module): held until the caller's transaction ends."""
    session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": REGISTER_LOCK})


def record_fulfilment(
    session: Session,
    kind: str,
    request: int | None,
    fact: LedgerFact,
    at: dt.datetime,
) -> None:
    """The ledger recorded what fulfils the subject's signed request `request` of `kind`
    (an erasure.record naming it): close its register row, if the register has one."""
    if request is None:
        return
    found = session.scalar(
        select(SubjectRequest.id).where(
            SubjectRequest.kind == kind, SubjectRequest.request == request
        )
    )
    if found is not None:
        close_request(session, found, "done", fact, at=at)


@dataclass(frozen=True, slots=True)
class LedgerRequest:
    """A subject's signed request, open on the ledger."""

    kind: str
    request: int
    subject: str
    dataset: str | None
    height: int
    time_ms: int
    scope: dict[str, Any]


@dataclass(frozen=True, slots=True)
class LedgerRequests:
    """The open requests of `kind` as of ledger height `height` (contract time `now_ms`)."""

    kind: str
    height: int
    now_ms: int
    open: list[LedgerRequest]


def _erasure_requests(ledger: LedgerGateway) -> LedgerRequests:
    answer = ledger.query("erasure_requests")
    out = []
    for entry in answer["result"]:
        scope = entry["scope"]
        if "subject" not in scope:
            continue  # forgotten: an erasure everywhere covered it
        out.append(
            LedgerRequest(
                "erasure",
                int(entry["request"]),
                str(scope["subject"]),
                scope.get("dataset"),
                int(entry["height"]),
                int(entry["time"]),
                dict(scope),
            )
        )
    return LedgerRequests("erasure", int(answer["height"]), int(answer["now"]), out)


def rectification_entry(entry: dict[str, Any]) -> LedgerRequest | None:
    """A `rectification_requests` query entry as a register request, if it is open and names its
    subject. What it reads of the entry: `request` (the rectification.request's number),
    `subject` (key or hex), `dataset`, `record`, `height` and `time` of the request, and
    `status` ("open" until a record.rectify fulfils it)."""
    if entry.get("status", "open") != "open" or "subject" not in entry:
        return None
    subject = entry["subject"]
    subject = subject.hex() if isinstance(subject, bytes) else str(subject)
    dataset = None if entry.get("dataset") is None else str(entry["dataset"])
    scope = {"dataset": dataset, "record": entry.get("record")}
    return LedgerRequest(
        "rectification",
        int(entry["request"]),
        subject,
        dataset,
        int(entry["height"]),
        int(entry["time"]),
        scope,
    )


def _rectification_requests(ledger: LedgerGateway) -> LedgerRequests:
    """The open rectification requests, all datasets at once (`rectification_requests`)."""
    answer = ledger.query("rectification_requests")
    out = [r for e in answer["result"] if (r := rectification_entry(e)) is not None]
    return LedgerRequests("rectification", int(answer["height"]), int(answer["now"]), out)


def _tx_id(ledger: LedgerGateway, wanted: LedgerRequest, tx_type: str) -> str | None:
    """The id of the transaction that made `wanted`, read from its block: the one of
    `tx_type` by its subject whose body names the same scope (None if not exactly one)."""
    try:
        block = ledger.block(wanted.height)
    except ApiError:  # LedgerUnavailable: the height stays a proof, the id is a convenience
        return None
    found = []
    for request in block.requests:
        try:
            signed = contract_tx.decode(request.tx)
        except contract_tx.MalformedTx:
            continue
        if signed.type != tx_type or signed.author.hex() != wanted.subject:
            continue
        scope = signed.body.get("scope", signed.body)
        if all(scope.get(k) == v for k, v in wanted.scope.items() if v is not None):
            found.append(signed.tx_id.hex())
    return found[0] if len(found) == 1 else None


@dataclass(frozen=True, slots=True)
class SyncReport:
    height: int  # the lowest ledger height the sync read
    opened: int
    closed: int
    stale: bool  # the ledger's answer was older than an erasure the vault saw recorded


_SOURCE_TX = {
    "erasure": ledger_facts.ERASURE_REQUEST,
    "rectification": ledger_facts.RECTIFICATION_REQUEST,
}


def _sources(ledger: LedgerGateway) -> list[LedgerRequests]:
    """Every kind of signed request the contracts keep open: erasure.request and
    rectification.request."""
    sources = [_erasure_requests(ledger)]
    try:
        sources.append(_rectification_requests(ledger))
    except ApiError as exc:  # one source failing must not stop the erasure requests'
        _log.error("rectification requests not read (%s)", type(exc).__name__)
    return sources


def sync_ledger_requests(session: Session, ledger: LedgerGateway) -> SyncReport:
    """Pull the subjects' open signed requests from the ledger into the register, and close the
    register's requests the ledger no longer holds open. Idempotent; in the caller's
    transaction, writing under `REGISTER_LOCK` (see the module).

    The ledger is read first (no lock is held while the network answers), then, under the
    lock, compared with the last erasure the vault saw recorded: an older answer (a replica
    lagging behind) changes nothing, since it may still list a request that erasure forgot.
    An erasure recorded after the lock is taken waits for this transaction, then forgets
    whatever it wrote.
    """
    sources = _sources(ledger)
    height = min(s.height for s in sources)
    found = {
        (r.kind, r.request): _tx_id(ledger, r, _SOURCE_TX[r.kind])
        for source in sources
        for r in _unknown(session, source)
    }
    lock_register(session)
    recorded = session.scalar(
        select(func.max(OutboxFact.block_height)).where(
            OutboxFact.kind == ledger_facts.ERASURE_RECORD
        )
    )
    if recorded is not None and height < recorded:
        return SyncReport(height, 0, 0, stale=True)
    opened = closed = 0
    for source in sources:
        for r in _unknown(session, source):
            tx_type = _SOURCE_TX[r.kind]
            fact = LedgerFact(type=tx_type, tx_id=found.get((r.kind, r.request)), height=r.height)
            received = dt.datetime.fromtimestamp(r.time_ms / 1000, dt.UTC)
            dataset = None if r.dataset is None else uuid.UUID(r.dataset)
            open_request(session, r.kind, r.subject, dataset, received, fact, request=r.request)
            opened += 1
        closed += _close_fulfilled(session, source)
    return SyncReport(height, opened, closed, stale=False)


def _unknown(session: Session, source: LedgerRequests) -> list[LedgerRequest]:
    """The source's open requests the register does not hold yet (SYNC_NEW_MAX at most)."""
    known = set(
        session.scalars(
            select(SubjectRequest.request).where(
                SubjectRequest.kind == source.kind,
                SubjectRequest.request.in_([r.request for r in source.open]),
            )
        )
    )
    return [r for r in source.open if r.request not in known][:SYNC_NEW_MAX]


def _close_fulfilled(session: Session, source: LedgerRequests) -> int:
    """Close the register's pending requests of the source's kinds that the ledger, at a
    height that had them, no longer lists open: fulfilled (or covered by an erasure)."""
    still_open = {r.request for r in source.open}
    closed = 0
    for row in session.scalars(
        select(SubjectRequest)
        .where(
            SubjectRequest.kind == source.kind,
            SubjectRequest.request.is_not(None),
            SubjectRequest.state.in_(REQUEST_PENDING_STATES),
        )
        .with_for_update()
    ):
        heights = [f.get("height") for f in row.facts if f.get("type") == _SOURCE_TX[row.kind]]
        made_at = next((h for h in heights if h is not None), None)
        if row.request in still_open or made_at is None or made_at > source.height:
            continue  # open, or the answer is older than the request itself
        at = dt.datetime.fromtimestamp(source.now_ms / 1000, dt.UTC)
        close_request(session, row.id, "done", at=at)
        closed += 1
    return closed


@dataclass(frozen=True, slots=True)
class RegisterSummary:
    """The register in figures, for the DPIA and the page."""

    by_kind: dict[str, dict[str, int]]  # kind -> state -> count
    overdue: int  # pending past their deadline
    answered_late: int


def register_summary(session: Session, now: dt.datetime) -> RegisterSummary:
    by_kind: dict[str, dict[str, int]] = {}
    for kind, state, n in session.execute(
        select(SubjectRequest.kind, SubjectRequest.state, func.count()).group_by(
            SubjectRequest.kind, SubjectRequest.state
        )
    ):
        by_kind.setdefault(kind, {})[state] = int(n)
    count = select(func.count()).select_from(SubjectRequest)
    overdue = session.scalar(
        count.where(SubjectRequest.state.in_(REQUEST_PENDING_STATES), SubjectRequest.due_at < now)
    )
    late = session.scalar(count.where(SubjectRequest.done_at > SubjectRequest.due_at))
    return RegisterSummary(by_kind, int(overdue or 0), int(late or 0))


class RequestSync:
    """One round of `sync_ledger_requests` in a transaction of its own: the background jobs'
    periodic sync (api/services/jobs.py), every `request_sync_interval_s`."""

    def __init__(self, sessions: sessionmaker[Session], ledger: LedgerGateway) -> None:
        self._sessions = sessions
        self._ledger = ledger

    def __call__(self) -> SyncReport:
        with self._sessions() as session, session.begin():
            return sync_ledger_requests(session, self._ledger)
