"""The access log: the ledger's committed access records, read in id order and bounded.

The consent contracts write one access record for every decision they take, so the log is
read from the ledger, never from the vault. The ledger filters by subject or by consumer;
purpose and time are filtered here. Every scan is bounded (`scan_max`): an answer says where
to continue instead of reading an unbounded log in one request.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, Field

from api.services.gateway import LedgerGateway, jsonable

ACCESS_PAGE = 200  # access records per ledger query
ACCESS_SCAN_MAX = 10_000  # ledger access records read per request, then `next_after`
GRANTED_SHOWN_MAX = 100  # subjects listed per access line (the count is always exact)


def to_ms(when: dt.datetime) -> int:
    """Milliseconds since the epoch, the ledger's time unit."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)  # a time without zone is UTC, as the ledger's
    return int(when.timestamp() * 1000)


def _time(millis: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(millis / 1000, dt.UTC)


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
    outcome: Literal["granted", "refused"] = Field(
        description="granted: the decision delivered someone's data; refused: nobody's"
    )
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

    Access ids are consecutive and their contract time never decreases (`begin_block`: the
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
        dataset: str | None = None,
        scan_max: int = ACCESS_SCAN_MAX,
    ) -> None:
        """The ledger filters by one of `subject`, `consumer`, `dataset` (the first given)."""
        self._gateway = gateway
        self._filters: dict[str, Any] = {}
        if subject is not None:
            self._filters["subject"] = subject
        elif consumer is not None:
            self._filters["consumer"] = consumer
        elif dataset is not None:
            self._filters["dataset"] = dataset
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
        outcome=outcome(row),
        fields=r["fields"],
        predicate=PredicateOut(**p) if p else None,
        reference=r.get("reference"),
    )


@dataclass(frozen=True, slots=True)
class AccessFilter:
    """What the DPO asked for: each field None matches everything."""

    subject: str | None = None
    consumer: str | None = None  # hex public key
    purpose: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None  # inclusive
    dataset: str | None = None
    outcome: Literal["granted", "refused"] | None = None

    def matches(self, row: dict[str, Any], consumer_key: bytes | None) -> bool:
        """Whether a ledger access row passes the filters the ledger did not apply."""
        return (
            (consumer_key is None or row["consumer"] == consumer_key)
            and (self.purpose is None or row["purpose"] == self.purpose)
            and (self.dataset is None or row["dataset"] == self.dataset)
            and (self.outcome is None or outcome(row) == self.outcome)
            and (self.since is None or int(row["time"]) >= to_ms(self.since))
        )


def outcome(row: dict[str, Any]) -> Literal["granted", "refused"]:
    """An access decision delivered someone's data (granted) or nobody's (refused)."""
    return "granted" if row["granted"] else "refused"


def read_access_log(
    gateway: LedgerGateway, wanted: AccessFilter, *, after: int, limit: int
) -> AccessLog:
    """Up to `limit` access lines matching `wanted`, oldest first, from access id `after` on.

    `next_after` is set when more lines may follow: the page is full, or this request read its
    share of the ledger (`ACCESS_SCAN_MAX`) and stopped.
    """
    start = after
    if wanted.since is not None:
        start = max(start, first_access_since(gateway, to_ms(wanted.since)) - 1)
    until_ms = to_ms(wanted.until) if wanted.until is not None else None
    consumer_key = bytes.fromhex(wanted.consumer) if wanted.consumer is not None else None
    scan = AccessScan(
        gateway,
        after=start,
        subject=wanted.subject,
        consumer=consumer_key,
        dataset=wanted.dataset,
    )
    found: list[AccessOut] = []
    past_until = False
    for row in scan:
        if until_ms is not None and int(row["time"]) > until_ms:
            past_until = True  # times never decrease: nothing later can match
            break
        if wanted.matches(row, consumer_key):
            found.append(_access_out(row))
            if len(found) >= limit:
                break
    done = scan.exhausted or past_until
    height = int(gateway.query("status")["height"])
    return AccessLog(accesses=found, next_after=None if done else scan.cursor, ledger_height=height)
