"""The DPO's audits over HTTP, as JSON under /v1/dpo and as a page at /dpo.

Only the DPO role reaches any of it. What each audit reads:

- access log: the ledger's committed access records (the contracts write one for every
  decision), filtered by subject or consumer on the ledger, by purpose and time here;
- retention audit: the vault's data-side audit (vault/audit.py) AND its cross-check against
  the ledger's erasure records, read in that order (see `_snapshot`);
- ledger verification: every replica's chain as that replica serves it, checked and compared
  (ledger_bridge/audit.py);
- records of processing (Art. 30): the dataset registry, with recipients from the ledger;
- outbox: the vault facts (anchors, erasures, expiries) the ledger has not recorded, those it
  refused first: a refused fact is set aside so it holds up nothing, and waits for the DPO.

Long scans are bounded (a limit on everything): each answer says where to continue.

The page: a browser cannot send an `Authorization` header by itself, and an API key must
never travel in a URL (it would land in logs, history and Referer headers). So the DPO posts
the key ONCE in a form (`POST /dpo/session`); the answer sets a cookie holding a random
token, `v2.<256 bits>`, whose SHA-256 names a row of `dpo_sessions` (shared by every instance
through the database). The cookie is `__Host-` prefixed, `Secure`, `HttpOnly` (no script reads
it) and `SameSite=Strict` (no other site's form or link carries it, so no CSRF). Every request
re-checks the row and the API key: revoking the key ends its sessions. Sessions live 15
minutes; `POST /dpo/logout` deletes the row, so a copy of the cookie is refused afterwards.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import secrets
import urllib.parse
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi import Path as FastApiPath
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import BaseModel, Field, StringConstraints
from sqlalchemy import delete, select, text
from sqlalchemy.orm import Session

from api.http.bodies import BoundedJsonRoute
from api.http.deps import Dpo, LedgerDep, SessionDep, strict_query
from api.http.dpo_page import DpoPageData, render_dpo_page, render_login_page
from api.http.errors import prefers_json, problem
from api.http.routes.ledger import ReplicaReader, ledger_status
from api.http.schemas import LedgerReceipt, PublicKeyHex
from api.services.gateway import LedgerGateway, LedgerUnavailable, jsonable
from api.services.keys import KeyExpired, Member, authenticate
from api.services.outbox import outbox_counts, requeue
from ledger_bridge.audit import Position, verify_replicas
from ledger_bridge.pbft.blocks import block_hash
from vault import audit
from vault.errors import NotFound
from vault.models import OUTBOX_PENDING, OUTBOX_REFUSED, ApiKey, DpoSession, OutboxFact

router = APIRouter(
    prefix="/v1", tags=["dpo"], dependencies=[Depends(strict_query)], route_class=BoundedJsonRoute
)
page_router = APIRouter(include_in_schema=False)

ACCESS_PAGE = 200  # access records per ledger query
ACCESS_SCAN_MAX = 10_000  # ledger access records read per request, then `next_after`
ACCESS_LIMIT_MAX = 1000
GRANTED_SHOWN_MAX = 100  # subjects listed per access line (the count is always exact)
ERASURE_PAGE = 50  # erasure records per ledger query (each may name 4,096 commitments)
ERASURE_SCAN_MAX = 1_000_000
VERIFY_BLOCKS_MAX = 10_000
REDACTIONS_PAGE = 1000  # redaction entries per ledger query (its most)
RECIPIENTS_SCAN_MAX = 100_000
PAGE_DAYS = 30

Purpose = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")]


def _ms(when: dt.datetime) -> int:
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)  # a time without zone is UTC, as the ledger's
    return int(when.timestamp() * 1000)


def _time(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC)


# -- the access log -----------------------------------------------------------------------


class PredicateOut(BaseModel):
    field: str
    op: str
    commitment: str = Field(description="hex commitment to the compared value, never the value")


class AccessOut(BaseModel):
    access: int = Field(description="the ledger's access id (use as `after` to page)")
    time: dt.datetime
    height: int
    tx_id: str
    consumer: str = Field(description="hex public key of the consumer")
    author: str = Field(description="hex public key that signed the request (consumer or vault)")
    dataset: str
    purpose: str
    granted_count: int
    granted: list[str] = Field(description=f"subjects delivered (first {GRANTED_SHOWN_MAX})")
    denied: int = Field(description="named subjects refused")
    fields: list[str]
    predicate: PredicateOut | None
    reference: str | None


class AccessLog(BaseModel):
    accesses: list[AccessOut]
    next_after: int | None = Field(description="pass as `after` for the next page, if any")
    ledger_height: int


def _access_query(gateway: LedgerGateway, after: int, limit: int, **filters: Any) -> list[Any]:
    answer = gateway.query("accesses", after=after, limit=limit, **filters)
    rows: list[Any] = answer["result"]
    return rows


def _access_at(gateway: LedgerGateway, access_id: int) -> dict[str, Any] | None:
    row: dict[str, Any] | None = gateway.query("access", access=access_id)["result"]
    return row


def first_access_since(gateway: LedgerGateway, since_ms: int) -> int:
    """The smallest access id whose time is >= since_ms (or one past the last).

    Access ids are consecutive and their contract time never decreases (rules.py: the
    contracts' clock is monotonic), so a galloping then binary search finds it in O(log n)
    queries instead of a scan of the whole log.
    """
    lo, hi = 0, 1  # invariant: access lo is before since (0: none), hi is unknown
    while True:
        row = _access_at(gateway, hi)
        if row is None or int(row["time"]) >= since_ms:
            break
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        row = _access_at(gateway, mid)
        if row is None or int(row["time"]) >= since_ms:
            hi = mid
        else:
            lo = mid
    return hi


class AccessScan:
    """Committed access records in id order, `scan_max` at most, filtered on the ledger.

    After iteration, `exhausted` tells whether the ledger has nothing more (as opposed to the
    scan budget running out, or the caller stopping), and `cursor` the last id read.
    """

    def __init__(
        self,
        gateway: LedgerGateway,
        *,
        after: int = 0,
        subject: str | None = None,
        consumer: bytes | None = None,
        scan_max: int = ACCESS_SCAN_MAX,
    ) -> None:
        self._gateway = gateway
        self._filters: dict[str, Any] = {}
        if subject is not None:
            self._filters["subject"] = subject
        elif consumer is not None:
            self._filters["consumer"] = consumer
        self._scan_max = scan_max
        self.cursor = after
        self.exhausted = False

    def __iter__(self) -> Iterator[dict[str, Any]]:
        scanned = 0
        while scanned < self._scan_max:
            page = min(ACCESS_PAGE, self._scan_max - scanned)
            rows = _access_query(self._gateway, self.cursor, page, **self._filters)
            scanned += len(rows)
            for row in rows:
                self.cursor = int(row["access"])
                yield row
            if len(rows) < page:
                self.exhausted = True
                return


def _access_out(row: dict[str, Any]) -> AccessOut:
    r = jsonable(row)
    granted: list[str] = r["granted"]
    p = r.get("predicate")
    return AccessOut(
        access=r["access"],
        time=_time(r["time"]),
        height=r["height"],
        tx_id=r["tx"],
        consumer=r["consumer"],
        author=r["author"],
        dataset=r["dataset"],
        purpose=r["purpose"],
        granted_count=len(granted),
        granted=granted[:GRANTED_SHOWN_MAX],
        denied=r["denied"],
        fields=r["fields"],
        predicate=PredicateOut(**p) if p else None,
        reference=r.get("reference"),
    )


@router.get("/dpo/access-log")
def access_log(
    member: Dpo,
    ledger: LedgerDep,
    subject: PublicKeyHex | None = None,
    consumer: PublicKeyHex | None = None,
    purpose: Purpose | None = None,
    since: Annotated[dt.datetime | None, Query(description="from this time (ISO 8601)")] = None,
    until: Annotated[dt.datetime | None, Query(description="up to this time (inclusive)")] = None,
    after: Annotated[int, Query(ge=0, le=2**62)] = 0,
    limit: Annotated[int, Query(ge=1, le=ACCESS_LIMIT_MAX)] = 100,
) -> AccessLog:
    """Every access the consent contracts decided, from the ledger, oldest first.

    Each line is a committed decision: who asked (consumer), for which dataset and purpose,
    which subjects were delivered. `next_after` is set when more lines may follow (the page
    is full, or this request read its share of the ledger and stopped).
    """
    start = after
    if since is not None:
        start = max(start, first_access_since(ledger, _ms(since)) - 1)
    since_ms = _ms(since) if since is not None else None
    until_ms = _ms(until) if until is not None else None
    consumer_key = bytes.fromhex(consumer) if consumer is not None else None
    scan = AccessScan(ledger, after=start, subject=subject, consumer=consumer_key)
    found: list[AccessOut] = []
    past_until = False
    for row in scan:
        if until_ms is not None and int(row["time"]) > until_ms:
            past_until = True  # times never decrease: nothing later can match
            break
        if (
            (consumer_key is None or row["consumer"] == consumer_key)
            and (purpose is None or row["purpose"] == purpose)
            and (since_ms is None or int(row["time"]) >= since_ms)
        ):
            found.append(_access_out(row))
            if len(found) >= limit:
                break
    done = scan.exhausted or past_until
    height = int(ledger.query("status")["height"])
    return AccessLog(accesses=found, next_after=None if done else scan.cursor, ledger_height=height)


# -- the retention audit ------------------------------------------------------------------


class FindingOut(BaseModel):
    code: str
    detail: str
    refs: dict[str, str] = Field(default_factory=dict)


class LedgerMatch(BaseModel):
    erasure_records: int = Field(description="erasure and expiry records read from the ledger")
    epochs_matched: int
    epochs_pending: int = Field(description="expired, fact queued for the ledger (not a finding)")
    commitments_matched: int
    commitments_pending: int


class RetentionAuditOut(BaseModel):
    today: dt.date
    ok: bool = Field(description="false on any finding")
    findings: list[FindingOut]
    uploads_checked: int
    epochs_expired: int
    ledger: LedgerMatch


def ledger_erasures(gateway: LedgerGateway) -> list[dict[str, Any]]:
    """Every erasure and expiry record on the ledger, bytes as hex."""
    out: list[dict[str, Any]] = []
    after = 0
    while len(out) < ERASURE_SCAN_MAX:
        rows = gateway.query("erasures", after=after, limit=ERASURE_PAGE)["result"]
        out += [jsonable(r) for r in rows]
        if len(rows) < ERASURE_PAGE:
            return out
        after = int(rows[-1]["erasure"])
    raise LedgerUnavailable(
        f"more than {ERASURE_SCAN_MAX} erasure records: audit one dataset at a time"
    )


@contextmanager
def _snapshot(request: Request) -> Iterator[Session]:
    """A read-only REPEATABLE READ session whose snapshot is taken at once.

    Why: the cross-check must see the database as it was BEFORE the ledger was read. A fact
    the relay records in between is then "pending" in the snapshot and on the ledger, which
    matches; read the other way round it would look recorded in the vault and missing on the
    ledger, a false finding.
    """
    session: Session = request.app.state.sessions()
    try:
        session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        session.execute(text("SET TRANSACTION READ ONLY"))
        session.execute(text("SELECT 1"))  # takes the snapshot now
        yield session
    finally:
        session.rollback()
        session.close()


def run_retention_audit(
    request: Request, gateway: LedgerGateway, dataset_id: uuid.UUID | None
) -> RetentionAuditOut:
    today = dt.datetime.now(dt.UTC).date()
    with _snapshot(request) as session:
        data_side = audit.retention_audit(session, today, dataset_id=dataset_id)
        cross = audit.ledger_cross_check(
            session, today, ledger_erasures(gateway), dataset_id=dataset_id
        )
    findings = [FindingOut(code=f.code, detail=f.detail, refs=f.refs) for f in data_side.findings]
    findings += [FindingOut(code=f.code, detail=f.detail, refs=f.refs) for f in cross.findings]
    return RetentionAuditOut(
        today=today,
        ok=not findings,
        findings=findings,
        uploads_checked=data_side.uploads_checked,
        epochs_expired=data_side.epochs_expired,
        ledger=LedgerMatch(
            erasure_records=cross.ledger_erasures,
            epochs_matched=cross.epochs_matched,
            epochs_pending=cross.epochs_pending,
            commitments_matched=cross.commitments_matched,
            commitments_pending=cross.commitments_pending,
        ),
    )


@router.get("/dpo/retention-audit")
def retention_audit(
    member: Dpo,
    ledger: LedgerDep,
    request: Request,
    dataset_id: uuid.UUID | None = None,
) -> RetentionAuditOut:
    """No record decryptable past its deadline; every expiry and destruction on the ledger.

    Finding codes: `epoch-key-past-retention`, `decryptable-past-retention`,
    `destroyed-commitment-key-alive`, `expiry-not-recorded` (data side, vault/audit.py);
    `expiry-not-on-ledger`, `destroyed-commitment-not-on-ledger`, `commitments-root-mismatch`,
    `ledger-record-missing`, `ledger-erasure-not-applied` (against the ledger).
    """
    return run_retention_audit(request, ledger, dataset_id)


# -- ledger verification ------------------------------------------------------------------


class LedgerFindingOut(BaseModel):
    code: str = Field(
        description="invalid-block | broken-link | diverging-header | holes | lagging "
        "| unreachable | no-quorum | unredacted (the replica, its stable checkpoint past an "
        "erasure, still serves a transaction the erasure ordered forgotten)"
    )
    severity: Literal["error", "warning"]
    replica: int | None
    height: int | None
    detail: str


class ReplicaVerification(BaseModel):
    id: int
    college: str
    reachable: bool
    verified_height: int | None = Field(description="highest height verified in this range")
    state_root: str | None = Field(description="state root at common_height, as served")


class LedgerVerification(BaseModel):
    ok: bool = Field(description="no error finding (lagging and unreachable are warnings)")
    from_height: int
    to_height: int
    next_from_height: int | None
    common_height: int | None = Field(description="highest height every verified replica has")
    state_roots_equal: bool
    replicas: list[ReplicaVerification]
    findings: list[LedgerFindingOut]


_WARNINGS = ("lagging", "unreachable")


def redactions_in(gateway: LedgerGateway, from_height: int, to_height: int) -> list[Position]:
    """The positions the contracts ordered redacted at heights in the range, from any replica
    (the list is replicated state; a replica that lies about it can only hide a finding
    about another, and the per-replica verification still runs)."""
    out: list[Position] = []
    after = 0
    while True:
        page = gateway.query("redactions", after=after, limit=REDACTIONS_PAGE)["result"]
        out += [
            Position(r["height"], r["index"], r["since"])
            for r in page
            if from_height <= r["height"] <= to_height
        ]
        if len(page) < REDACTIONS_PAGE:
            return out
        after = page[-1]["redaction"]


def _read_chains(
    gateway: LedgerGateway,
    reachable: list[int],
    from_height: int,
    to_height: int,
    finding: Callable[[str, int | None, int | None, str], None],
) -> tuple[dict[int, list[Any]], dict[int, bytes]]:
    """Each reachable replica's blocks in the range, and the header hash of its block just
    below the range (which anchors the range's first link), reporting what it failed to
    serve."""
    chains: dict[int, list[Any]] = {}
    anchors: dict[int, bytes] = {}
    if to_height < from_height:
        return {r: [] for r in reachable}, anchors
    first = max(1, from_height - 1)
    for chain in ReplicaReader(gateway).chains(reachable, first, to_height):
        blocks = chain.blocks
        if from_height > 1 and blocks and blocks[0].height == from_height - 1:
            anchors[chain.replica] = block_hash(blocks[0])
            blocks = blocks[1:]
        chains[chain.replica] = blocks
        if chain.unreachable:
            finding("unreachable", chain.replica, None, "stopped answering during the read")
        if chain.undecodable_at is not None:
            finding(
                "invalid-block",
                chain.replica,
                chain.undecodable_at,
                "the replica served bytes that are not a block",
            )
    return chains, anchors


def verify_ledger(gateway: LedgerGateway, from_height: int, limit: int) -> LedgerVerification:
    genesis = gateway.genesis
    status = ledger_status(gateway)
    reachable = [r.id for r in status.replicas if r.reachable]
    findings: list[LedgerFindingOut] = []

    def finding(code: str, replica: int | None, height: int | None, detail: str) -> None:
        severity: Literal["error", "warning"] = "warning" if code in _WARNINGS else "error"
        findings.append(
            LedgerFindingOut(
                code=code, severity=severity, replica=replica, height=height, detail=detail
            )
        )

    tip = status.height or 0
    to_height = min(tip, from_height + limit - 1)
    chains, anchors = _read_chains(gateway, reachable, from_height, to_height, finding)
    # The reader stops at a replica's first missing block: its own top tells a hole (blocks
    # missing below what it stored) from lag.
    tops = {r.id: min(r.height, to_height) for r in status.replicas if r.height is not None}
    stables = {r.id: r.stable_seq for r in status.replicas if r.stable_seq is not None}
    result = verify_replicas(
        chains,
        genesis.public_keys(),
        start=from_height,
        anchors=anchors,
        tops=tops,
        redactions=redactions_in(gateway, from_height, to_height),
        stables=stables,
    )
    for f in result.findings:
        finding(f.code, f.replica, f.height, f.detail)
    for r in status.replicas:
        if not r.reachable:
            finding("unreachable", r.id, None, "the replica did not answer its status")
    if len(reachable) < status.quorum:
        finding(
            "no-quorum",
            None,
            None,
            f"{len(reachable)} replica(s) answered; {status.quorum} are needed to trust the "
            "comparison",
        )
    verified = dict(result.heights)
    common = min(verified.values(), default=None)
    roots: dict[int, str] = {}
    if common is not None and common >= from_height:
        for replica, blocks in chains.items():
            for b in blocks:
                if b.height == common:
                    roots[replica] = b.state_root.hex()
    replicas = [
        ReplicaVerification(
            id=s.id,
            college=s.college,
            reachable=s.reachable,
            verified_height=verified.get(s.id),
            state_root=roots.get(s.id),
        )
        for s in status.replicas
    ]
    return LedgerVerification(
        ok=not [f for f in findings if f.severity == "error"],
        from_height=from_height,
        to_height=to_height,
        next_from_height=to_height + 1 if to_height < tip else None,
        common_height=common if common is not None and common >= from_height else None,
        state_roots_equal=len(set(roots.values())) <= 1,
        replicas=replicas,
        findings=findings,
    )


@router.get("/dpo/ledger-verification")
def ledger_verification(
    member: Dpo,
    ledger: LedgerDep,
    from_height: Annotated[int, Query(ge=1, le=2**62)] = 1,
    limit: Annotated[int, Query(ge=1, le=VERIFY_BLOCKS_MAX)] = VERIFY_BLOCKS_MAX,
) -> LedgerVerification:
    """Every replica's chain as it serves it: hash links, certificates, equal headers.

    Each block's commit certificate is checked against the genesis validator keys; the
    replicas' headers (results digest, state root, time) must agree at every height. A long
    chain is verified `limit` blocks at a time: continue from `next_from_height`.
    """
    return verify_ledger(ledger, from_height, limit)


# -- records of processing (Art. 30) ------------------------------------------------------


class Recipient(BaseModel):
    consumer: str = Field(description="hex public key of the consumer (a registered member)")
    purposes: list[str]
    accesses: int = Field(description="accesses that delivered at least one subject")


class ProcessingRecord(BaseModel):
    dataset_id: str
    name: str
    controller: str
    category_of_data: str
    purposes: list[str]
    legal_basis: str
    retention: str
    security_measures: str
    uploads: int
    records: int
    recipients: list[Recipient]


class RecordsOfProcessing(BaseModel):
    generated_at: dt.datetime
    recipients_complete: bool = Field(
        description=f"false when the ledger holds more than {RECIPIENTS_SCAN_MAX} accesses and "
        "only the first were read"
    )
    records: list[ProcessingRecord]


def _recipients(gateway: LedgerGateway) -> tuple[dict[str, list[Recipient]], bool]:
    per: dict[str, dict[bytes, tuple[set[str], int]]] = defaultdict(dict)
    scan = AccessScan(gateway, scan_max=RECIPIENTS_SCAN_MAX)
    for row in scan:
        if not row["granted"]:
            continue  # nobody's data left the vault: not a recipient
        purposes, n = per[row["dataset"]].get(row["consumer"], (set(), 0))
        purposes.add(row["purpose"])
        per[row["dataset"]][row["consumer"]] = (purposes, n + 1)
    out = {
        dataset: [
            Recipient(consumer=c.hex(), purposes=sorted(p), accesses=n)
            for c, (p, n) in sorted(consumers.items())
        ]
        for dataset, consumers in per.items()
    }
    return out, scan.exhausted


# -- the outbox: facts the ledger has not recorded ------------------------------------------

OUTBOX_LIMIT_MAX = 1000


class OutboxFactOut(BaseModel):
    id: int = Field(description="the fact's id (an erasure's `erasure_id`)")
    kind: str = Field(description="upload.anchor | erasure.record | retention.expire | ...")
    state: Literal["pending", "refused", "recorded"]
    created_at: dt.datetime
    attempts: int = Field(description="submissions so far")
    last_error: str | None = Field(
        description="the last failure; for a refusal the contract's code and message"
    )
    refused_at: dt.datetime | None
    receipt: LedgerReceipt | None


class OutboxOut(BaseModel):
    pending: int = Field(description="facts waiting for the relay")
    refused: int = Field(description="facts the ledger refused, set aside")
    facts: list[OutboxFactOut] = Field(description="the requested state, oldest first")
    next_after: int | None = Field(description="pass as `after` for the next page")


def _fact_out(f: OutboxFact) -> OutboxFactOut:
    return OutboxFactOut(
        id=f.id,
        kind=f.kind,
        state=f.ledger_state,
        created_at=f.created_at,
        attempts=f.attempts,
        last_error=f.last_error,
        refused_at=f.refused_at,
        receipt=LedgerReceipt.of_fact(f),
    )


@router.get("/dpo/outbox")
def outbox(
    member: Dpo,
    session: SessionDep,
    state: Literal["refused", "pending"] = "refused",
    after: Annotated[int, Query(ge=0, le=2**62)] = 0,
    limit: Annotated[int, Query(ge=1, le=OUTBOX_LIMIT_MAX)] = 100,
) -> OutboxOut:
    """Facts the ledger has not recorded: `refused` ones (the contracts said no; the relay set
    them aside and ships the rest) or `pending` ones (in the relay's queue, in order)."""
    where = OUTBOX_REFUSED if state == "refused" else OUTBOX_PENDING
    facts = list(
        session.scalars(
            select(OutboxFact)
            .where(where, OutboxFact.id > after)
            .order_by(OutboxFact.id)
            .limit(limit + 1)
        )
    )
    more = len(facts) > limit
    facts = facts[:limit]
    pending, refused = outbox_counts(session)
    return OutboxOut(
        pending=pending,
        refused=refused,
        facts=[_fact_out(f) for f in facts],
        next_after=facts[-1].id if more else None,
    )


@router.post("/dpo/outbox/{fact_id}/retry")
def retry_fact(
    fact_id: Annotated[int, FastApiPath(ge=1, le=2**62)], member: Dpo, request: Request
) -> OutboxFactOut:
    """Send a refused fact again, in its original place in the queue (say, once the
    cooperative re-admitted the vault's key or registered the dataset it names). 404 unless
    the fact exists and is refused. The answer is the fact back in the queue; follow it with
    `GET /v1/dpo/outbox?state=pending` or the erasure's certificate."""
    sessions = request.app.state.sessions
    with sessions() as session, session.begin():
        fact = requeue(session, fact_id)
        if fact is None:
            raise NotFound(f"no refused outbox fact {fact_id}")
        out = _fact_out(fact)
    jobs = request.app.state.jobs
    if jobs is not None:
        jobs.kick()
    return out


@router.get("/dpo/records-of-processing")
def records_of_processing(
    member: Dpo, ledger: LedgerDep, session: SessionDep
) -> RecordsOfProcessing:
    """GDPR Art. 30(1), generated from the dataset registry; recipients from the ledger."""
    recipients, complete = _recipients(ledger)
    return RecordsOfProcessing(
        generated_at=dt.datetime.now(dt.UTC),
        recipients_complete=complete,
        records=[
            ProcessingRecord(**entry, recipients=recipients.get(entry["dataset_id"], []))
            for entry in audit.records_of_processing(session)
        ],
    )


# -- the page and its session -------------------------------------------------------------

SESSION_COOKIE = "__Host-civis-dpo"
SESSION_TTL_S = 15 * 60
_PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


_TOKEN = re.compile(r"^v2\.[A-Za-z0-9_-]{43}$")


def _token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def open_session(session: Session, api_key: ApiKey, now: dt.datetime) -> str:
    """A new session of `api_key`: its row, and the token (256 random bits) for the cookie.

    Expired rows go at the same time: sign-ins are rare, and the table stays as small as the
    number of live sessions without a job of its own.
    """
    session.execute(delete(DpoSession).where(DpoSession.expires_at <= now))
    token = f"v2.{secrets.token_urlsafe(32)}"
    expires = now + dt.timedelta(seconds=SESSION_TTL_S)
    session.add(DpoSession(token_hash=_token_hash(token), key_id=api_key.id, expires_at=expires))
    session.flush()
    return token


def close_session(session: Session, token: str) -> None:
    """Sign-out: the session's row goes, so the cookie, wherever a copy of it is, opens nothing."""
    if _TOKEN.match(token):
        session.execute(delete(DpoSession).where(DpoSession.token_hash == _token_hash(token)))


def session_member(session: Session, token: str, now: dt.datetime) -> Member | None:
    """The DPO behind a session token, or None (malformed, unknown, ended, expired, key revoked)."""
    if not _TOKEN.match(token):
        return None
    row = session.get(DpoSession, _token_hash(token))
    if row is None or row.expires_at <= now:
        return None
    key = session.get(ApiKey, row.key_id)
    if key is None or key.revoked_at is not None or key.role != "dpo":
        return None
    if key.expires_at is not None and key.expires_at <= now:
        return None  # a session lives no longer than the key that opened it
    return Member(member_id=key.member_id, role=key.role, key_id=key.id)


def _page_caller(request: Request, session: Session) -> Member | None:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return authenticate(session, header[7:].strip())
    token = request.cookies.get(SESSION_COOKIE)
    if token is None:
        return None
    return session_member(session, token, dt.datetime.now(dt.UTC))


def _login(status: int, message: str | None = None) -> HTMLResponse:
    return HTMLResponse(render_login_page(message), status_code=status, headers=_PAGE_HEADERS)


# What a client that asked for JSON is told instead of the sign-in form.
_SIGN_IN_DETAIL = (
    "sign in with the Data Protection Officer's API key: `Authorization: Bearer …`, or the "
    "form of GET /dpo in a browser"
)
_JSON_ROUTES_DETAIL = (
    "this page is HTML; the same audits as JSON are GET /v1/dpo/access-log, "
    "/v1/dpo/retention-audit, /v1/dpo/ledger-verification, /v1/dpo/outbox and "
    "/v1/dpo/records-of-processing"
)
_PAGE_REFUSALS = {401: "Unauthorized", 403: "Forbidden", 406: "Not Acceptable"}


def _refuse(request: Request, status: int, message: str | None = None) -> Response:
    """The sign-in form for a browser; problem+json for a client that prefers JSON to HTML,
    as every other route answers it (a script reading JSON cannot act on a form)."""
    if not prefers_json(request.headers.get("accept")):
        return _login(status, message)
    answer = problem(status, _PAGE_REFUSALS[status], message or _SIGN_IN_DETAIL, request)
    answer.headers.update(_PAGE_HEADERS)
    return answer


def page_data(request: Request, gateway: LedgerGateway | None, session: Session) -> DpoPageData:
    """What the page shows; the ledger's parts are left empty when there is no ledger."""
    today = dt.datetime.now(dt.UTC).date()
    data = DpoPageData(
        today=today,
        timeline=audit.retention_timeline(session, today),
        erasures=audit.erasure_log(session),
        findings=[],
    )
    if gateway is None:
        data.findings = [
            {"code": f.code, "detail": f.detail}
            for f in audit.retention_audit(session, today).findings
        ]
        return data
    report = run_retention_audit(request, gateway, None)
    data.findings = [{"code": f.code, "detail": f.detail} for f in report.findings]
    since = dt.datetime.combine(today - dt.timedelta(days=PAGE_DAYS - 1), dt.time(), dt.UTC)
    by_purpose: Counter[str] = Counter()
    by_consumer: Counter[str] = Counter()
    by_day: Counter[str] = Counter()
    start = first_access_since(gateway, _ms(since)) - 1
    for row in AccessScan(gateway, after=start):
        by_purpose[row["purpose"]] += 1
        by_consumer[bytes(row["consumer"]).hex()[:12]] += 1
        by_day[_time(int(row["time"])).date().isoformat()] += 1
    data.accesses_by_purpose = sorted(by_purpose.items())
    data.accesses_by_consumer = by_consumer.most_common(12)
    data.accesses_by_day = sorted(by_day.items())
    status = ledger_status(gateway)
    data.ledger_height = status.height
    data.replicas = [
        {
            "id": r.id,
            "college": r.college,
            "height": r.height if r.height is not None else "—",
            "view": r.view if r.view is not None else "—",
            "status": "up" if r.reachable else "down",
        }
        for r in status.replicas
    ]
    return data


@page_router.get("/dpo", response_class=HTMLResponse)
def dpo_page(request: Request, session: SessionDep) -> Response:
    """The DPO's page; anyone else gets the sign-in form (401), a non-DPO key a 403.

    A client that asks for JSON gets those refusals as problem+json, and the DPO a 406 naming
    the JSON routes: the page itself exists only as HTML.
    """
    try:
        member = _page_caller(request, session)
    except KeyExpired as exc:  # the form again, saying why, rather than a bare problem
        return _refuse(request, 401, exc.detail)
    if member is None:
        return _refuse(request, 401)
    if member.role != "dpo":
        return _refuse(request, 403, "This key does not belong to the Data Protection Officer.")
    if prefers_json(request.headers.get("accept")):
        return _refuse(request, 406, _JSON_ROUTES_DETAIL)
    html = render_dpo_page(page_data(request, request.app.state.ledger, session))
    return HTMLResponse(html, headers=_PAGE_HEADERS)


async def _form_key(request: Request) -> str:
    """The `api_key` field of an urlencoded form (the body limit middleware bounds it)."""
    if request.headers.get("content-type", "").split(";")[0].strip() != (
        "application/x-www-form-urlencoded"
    ):
        return ""
    fields = urllib.parse.parse_qs((await request.body()).decode("utf-8", "replace"))
    values = fields.get("api_key", [])
    return values[0].strip() if len(values) == 1 else ""


@page_router.post("/dpo/session")
def dpo_sign_in(
    request: Request, session: SessionDep, api_key: Annotated[str, Depends(_form_key)]
) -> Response:
    """Trade the DPO's API key (posted once, in the body) for a session cookie."""
    try:
        member = authenticate(session, api_key) if api_key else None
    except KeyExpired as exc:
        return _refuse(request, 401, exc.detail)
    if member is None or member.role != "dpo":
        # One answer for every refusal; the key is never echoed.
        return _refuse(request, 401, "Not a valid key of the Data Protection Officer.")
    key = session.get(ApiKey, member.key_id)
    assert key is not None, "authenticate just read this key"
    response = RedirectResponse("/dpo", status_code=303, headers=_PAGE_HEADERS)
    response.set_cookie(
        SESSION_COOKIE,
        open_session(session, key, dt.datetime.now(dt.UTC)),
        max_age=SESSION_TTL_S,
        path="/",
        secure=True,
        httponly=True,
        samesite="strict",
    )
    return response


@page_router.post("/dpo/logout")
def dpo_sign_out(request: Request, session: SessionDep) -> Response:
    """End the session on the server (its row goes), then clear the cookie in the browser."""
    token = request.cookies.get(SESSION_COOKIE)
    if token is not None:
        close_session(session, token)
    response = RedirectResponse("/dpo", status_code=303, headers=_PAGE_HEADERS)
    response.delete_cookie(SESSION_COOKIE, path="/", secure=True, httponly=True, samesite="strict")
    return response
