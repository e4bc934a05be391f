"""The DPO console's views behind the overview: the access decisions (filtered and paged, each
with its ledger receipt), one block, the subjects, the work queues, erasures and retention,
the members; and each of them as CSV (api/services/csv_export.py defuses formulas).

Each view reads the services the JSON routes read, names keys by the members' directory and
datasets by their names, and keeps the key itself on hover and behind a copy button: the page
never shows a bare 64-hex key as the thing a person reads.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal, cast

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.http.dpo_page import incident_rows, query, render, request_row
from api.http.errors import ApiError
from api.services import console, outbox_admin, requests
from api.services.access_log import AccessFilter, AccessOut, read_access_log
from api.services.csv_export import to_csv
from api.services.directory import MemberList, label, names
from api.services.gateway import LedgerGateway
from ledger_bridge.contracts import tx as txmod
from ledger_bridge.crypto import digest
from ledger_bridge.pbft.blocks import block_hash, verify_block
from vault import audit
from vault.models import REQUEST_PENDING_STATES, Dataset

ACCESS_PAGE = 50  # decisions per page of the drill-down
ACCESS_LIMIT_MAX = 1000  # decisions per ledger read of a CSV download
CSV_ROWS_MAX = 10_000  # rows of one CSV download (the JSON routes page the rest)
EXPORT_ERASURES_MAX = 1000


# -- access decisions ------------------------------------------------------------------------


@dataclass(frozen=True)
class AccessQuery:
    """The drill-down's filters, as the page's form and the charts' links set them."""

    since: dt.date | None = None
    until: dt.date | None = None  # inclusive
    purpose: str | None = None
    consumer: str | None = None
    dataset: str | None = None
    subject: str | None = None
    outcome: Literal["granted", "refused"] | None = None
    after: int = 0

    def filter(self) -> AccessFilter:
        since = None if self.since is None else dt.datetime.combine(self.since, dt.time(), dt.UTC)
        until = None
        if self.until is not None:
            end = dt.datetime.combine(self.until + dt.timedelta(days=1), dt.time(), dt.UTC)
            until = end - dt.timedelta(milliseconds=1)
        return AccessFilter(
            subject=self.subject,
            consumer=self.consumer,
            purpose=self.purpose,
            since=since,
            until=until,
            dataset=self.dataset,
            outcome=self.outcome,
        )

    def params(self) -> dict[str, Any]:
        return {
            "since": self.since,
            "until": self.until,
            "purpose": self.purpose,
            "consumer": self.consumer,
            "dataset": self.dataset,
            "subject": self.subject,
            "outcome": self.outcome,
        }


class InvalidFilter(ApiError):
    status = 422
    title = "Invalid filter"


def _blank(text: str | None) -> str | None:
    """A form's empty field is no filter."""
    return None if text is None or not text.strip() else text.strip()


def _day(text: str | None, name: str) -> dt.date | None:
    text = _blank(text)
    if text is None:
        return None
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise InvalidFilter(f"{name} is a day, YYYY-MM-DD") from None


def _checked(text: str | None, pattern: re.Pattern[str], what: str) -> str | None:
    text = _blank(text)
    if text is not None and not pattern.fullmatch(text):
        raise InvalidFilter(what)
    return text


_KEY = re.compile(r"^[0-9a-f]{64}$")
_PURPOSE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_OUTCOME = re.compile(r"^(granted|refused)$")
_MONTH = re.compile(r"^\d{4}-\d{2}$")
_KIND = re.compile(r"^(erasure\.record|retention\.expire)$")


def access_query(
    since: str | None,
    until: str | None,
    purpose: str | None,
    consumer: str | None,
    dataset: str | None,
    subject: str | None,
    outcome: str | None,
    after: int,
) -> AccessQuery:
    """The drill-down's filters from the query string: blank fields are no filter, any other
    value must be well-formed (a 422 says which is not)."""
    return AccessQuery(
        since=_day(since, "since"),
        until=_day(until, "until"),
        purpose=_checked(purpose, _PURPOSE, "purpose is a purpose's name"),
        consumer=_checked(consumer, _KEY, "consumer is a member's key, 64 hex characters"),
        dataset=_checked(dataset, _UUID, "dataset is a dataset id (a UUID)"),
        subject=_checked(subject, _KEY, "subject is a pseudonym, 64 hex characters"),
        outcome=cast(Any, _checked(outcome, _OUTCOME, "outcome is granted or refused")),
        after=after,
    )


def all_datasets(session: Session) -> dict[str, str]:
    rows = session.execute(select(Dataset.id, Dataset.name).order_by(Dataset.name).limit(1000))
    return {str(i): n for i, n in rows}


def access_row(a: AccessOut, known: dict[str, str], sets: dict[str, str]) -> dict[str, Any]:
    return {
        "access": a.access,
        "time": f"{a.time:%Y-%m-%d %H:%M:%S}",
        "consumer": a.consumer,
        "consumer_name": known.get(a.consumer),
        "purpose": a.purpose,
        "dataset": a.dataset,
        "dataset_name": sets.get(a.dataset),
        "outcome": a.outcome,
        "granted": a.granted_count,
        "denied": a.denied,
        "height": a.height,
        "tx_id": a.tx_id,
    }


def render_accesses(session: Session, gateway: LedgerGateway, q: AccessQuery) -> str:
    log = read_access_log(gateway, q.filter(), after=q.after, limit=ACCESS_PAGE)
    known = names(session)
    sets = all_datasets(session)
    purposes = sorted(gateway.query("status")["result"]["purposes"])
    return render(
        "dpo_accesses.html",
        active="accesses",
        q=q,
        rows=[access_row(a, known, sets) for a in log.accesses],
        next_page=None
        if log.next_after is None
        else query("/dpo/accesses", **q.params(), after=log.next_after),
        csv=query("/dpo/accesses.csv", **q.params()),
        first_page=query("/dpo/accesses", **q.params()),
        consumers=sorted(known.items(), key=lambda kv: kv[1].lower()),
        datasets=sets,
        purposes=purposes,
        known=known,
    )


def _all_accesses(gateway: LedgerGateway, q: AccessQuery) -> Iterator[AccessOut]:
    after, sent = q.after, 0
    while sent < CSV_ROWS_MAX:
        log = read_access_log(gateway, q.filter(), after=after, limit=ACCESS_LIMIT_MAX)
        for a in log.accesses[: CSV_ROWS_MAX - sent]:
            sent += 1
            yield a
        if log.next_after is None:
            return
        after = log.next_after


ACCESS_COLUMNS = (
    "access",
    "time",
    "consumer_name",
    "consumer",
    "purpose",
    "dataset_name",
    "dataset",
    "outcome",
    "granted",
    "denied",
    "block_height",
    "tx_id",
)


def accesses_csv(session: Session, gateway: LedgerGateway, q: AccessQuery) -> str:
    known, sets = names(session), all_datasets(session)
    rows = (access_row(a, known, sets) for a in _all_accesses(gateway, q))
    return to_csv(
        ACCESS_COLUMNS,
        ([r["height"] if c == "block_height" else r[c] for c in ACCESS_COLUMNS] for r in rows),
    )


# -- one block -------------------------------------------------------------------------------


def block_view(gateway: LedgerGateway, height: int) -> dict[str, Any]:
    """A block as the page shows it: header, whether its certificate verifies, and its
    transactions' types, authors and ids (bodies stay off the page, as off /v1/ledger)."""
    block = gateway.block(height)
    txs: list[dict[str, str | None]] = []
    for r in block.requests:
        try:
            signed = txmod.decode(r.tx)
            txs.append(
                {"tx_id": signed.tx_id.hex(), "type": signed.type, "author": signed.author.hex()}
            )
        except txmod.MalformedTx:
            txs.append({"tx_id": digest(r.tx).hex(), "type": None, "author": None})
    return {
        "height": block.height,
        "hash": block_hash(block).hex(),
        "prev_hash": block.prev_hash.hex(),
        "time": dt.datetime.fromtimestamp(block.time_ms / 1000, dt.UTC),
        "state_root": block.state_root.hex(),
        "view": block.view,
        "signers": list(block.signers),
        "verified": verify_block(block, gateway.genesis.public_keys()),
        "transactions": txs,
        "omitted": [
            {"index": o.index, "code": o.code.decode("ascii", "replace")} for o in block.omitted
        ],
    }


def render_block(session: Session, gateway: LedgerGateway, height: int, tip: int, tx: str) -> str:
    b = block_view(gateway, height)
    known = names(session, {t["author"] for t in b["transactions"] if t["author"]})
    return render("dpo_block.html", active="accesses", b=b, tip=tip, tx=tx, known=known)


# -- subjects --------------------------------------------------------------------------------


def render_subject_search(session: Session, text: str | None, matches: list[str]) -> str:
    return render("dpo_subjects.html", active="subjects", text=text, matches=matches, v=None)


def render_subject(session: Session, view: dict[str, Any]) -> str:
    members = {a["consumer"] for a in view["accesses"]} | {c["consumer"] for c in view["consents"]}
    members |= {d["source"]["provider"] for d in view["datasets"]}
    members |= {x["reader"] for x in view["decryptions"]}
    known = names(session, {str(m) for m in members})
    sets = console.dataset_names(session, {str(a["dataset"]) for a in view["accesses"]})
    sets.update({d["dataset_id"]: d["name"] for d in view["datasets"]})
    return render(
        "dpo_subjects.html",
        active="subjects",
        text=None,
        matches=[],
        v=view,
        known=known,
        sets=sets,
    )


def _subject_rows(view: dict[str, Any], known: dict[str, str]) -> Iterator[list[Any]]:
    """The subject view's rows, a section at a time, in the columns of `SUBJECT_COLUMNS`."""
    for d in view["datasets"]:
        owner = d["source"]["provider"]
        yield [
            "dataset",
            d["name"],
            d["dataset_id"],
            label(known, owner),
            d["records"],
            ", ".join(d["purposes"]),
            d["legal_basis"],
            f"{d['retention_days']} days",
        ]
    for c in view["consents"]:
        notice = c.get("notice") or {}
        words = (notice.get("body") or {}).get("purpose_text", "")
        state = "in force" if c["in_force"] else "not in force"
        yield [
            "consent",
            label(known, c["consumer"]),
            c["consumer"],
            c["purpose"],
            state,
            c["scope"],
            notice.get("notice_hash", ""),
            words,
        ]
    yield from _subject_events(view, known)


def _subject_events(view: dict[str, Any], known: dict[str, str]) -> Iterator[list[Any]]:
    """The accesses, erasures, requests and reads of the subject view, as CSV rows."""
    for a in view["accesses"]:
        yield [
            "access",
            label(known, a["consumer"]),
            a["consumer"],
            a["purpose"],
            a["outcome"],
            a["dataset"],
            a["height"],
            a["tx"],
        ]
    for e in view["erasures"]:
        yield [
            "erasure",
            e.get("erasure"),
            e.get("reason", ""),
            "",
            "",
            "",
            e.get("height", ""),
            e.get("tx", ""),
        ]
    for r in view["requests"]:
        yield [
            "request",
            r["kind"],
            r["id"],
            r["state"],
            r["received_at"],
            r["due_at"],
            "overdue" if r["overdue"] else "",
            "",
        ]
    for x in view["decryptions"]:
        yield [
            "read",
            label(known, x["reader"]),
            x["reader"],
            x["kind"],
            x["record_count"],
            x["dataset_id"],
            x["at"],
            "",
        ]


SUBJECT_COLUMNS = (
    "section",
    "what",
    "key_or_id",
    "detail_1",
    "detail_2",
    "detail_3",
    "detail_4",
    "detail_5",
)


def subject_csv(session: Session, view: dict[str, Any]) -> str:
    """The subject view as one CSV: a `section` column, then what each row says."""
    return to_csv(SUBJECT_COLUMNS, _subject_rows(view, names(session)))


# -- work queues -----------------------------------------------------------------------------


def queues(session: Session, findings: list[dict[str, str]]) -> dict[str, Any]:
    now = dt.datetime.now(dt.UTC)
    pending = requests.dpo_requests(session, states=REQUEST_PENDING_STATES, limit=1000)
    refused = outbox_admin.list_facts(session, "refused", after=0, limit=200)
    return {
        "requests": [request_row(r, now) for r in pending],
        "outbox": [f.model_dump(mode="json") for f in refused.facts],
        "outbox_pending": refused.pending,
        "outbox_refused": refused.refused,
        "findings": findings,
        "incidents": incident_rows(session, now),
    }


def render_queues(session: Session, q: dict[str, Any]) -> str:
    datasets = all_datasets(session)
    return render("dpo_queues.html", active="queues", q=q, datasets=datasets)


QUEUE_COLUMNS: dict[str, tuple[str, ...]] = {
    "requests": (
        "id",
        "kind",
        "subject",
        "dataset_id",
        "received",
        "due",
        "state",
        "clock",
        "overdue",
    ),
    "outbox": ("id", "kind", "state", "created_at", "attempts", "last_error", "refused_at"),
    "findings": ("code", "detail"),
    "incidents": ("id", "title", "discovered", "deadline", "left", "risk", "urgent"),
}


def queue_csv(q: dict[str, Any], name: str) -> str:
    columns = QUEUE_COLUMNS[name]
    return to_csv(columns, ([row.get(c) for c in columns] for row in q[name]))


# -- erasures and retention ------------------------------------------------------------------


@dataclass(frozen=True)
class ErasureQuery:
    day: dt.date | None = None
    kind: Literal["erasure.record", "retention.expire"] | None = None
    month: str | None = None  # YYYY-MM: the retention timeline's rows ending that month


def erasure_query(day: str | None, kind: str | None, month: str | None) -> ErasureQuery:
    return ErasureQuery(
        day=_day(day, "day"),
        kind=cast(Any, _checked(kind, _KIND, "kind is erasure.record or retention.expire")),
        month=_checked(month, _MONTH, "month is YYYY-MM"),
    )


def erasure_rows(session: Session, q: ErasureQuery) -> list[dict[str, Any]]:
    rows = audit.erasure_log(session, limit=EXPORT_ERASURES_MAX)
    return [
        e
        for e in rows
        if (q.day is None or e["at"][:10] == q.day.isoformat())
        and (q.kind is None or e["kind"] == q.kind)
    ]


def timeline_rows(session: Session, q: ErasureQuery) -> list[dict[str, Any]]:
    rows = audit.retention_timeline(session, dt.datetime.now(dt.UTC).date(), days_ahead=None)
    return [r for r in rows if q.month is None or r["day"].startswith(q.month)]


def render_erasures(session: Session, q: ErasureQuery) -> str:
    erasures = erasure_rows(session, q)
    known = names(session, {str(e["requester"]) for e in erasures})
    return render(
        "dpo_erasures.html",
        active="erasures",
        q=q,
        erasures=erasures,
        timeline=timeline_rows(session, q),
        known=known,
        params={"day": q.day, "kind": q.kind, "month": q.month},
    )


ERASURE_COLUMNS = (
    "id",
    "kind",
    "at",
    "scope",
    "scope_key",
    "requester_name",
    "requester",
    "reason",
    "keys",
    "status",
    "block_height",
    "tx_id",
)


def scope_key(scope: dict[str, Any]) -> str:
    for k in ("subject_id", "upload_id", "dataset_id", "day"):
        if scope.get(k):
            return str(scope[k])
    return ""


def erasures_csv(session: Session, q: ErasureQuery) -> str:
    rows = erasure_rows(session, q)
    known = names(session, {str(e["requester"]) for e in rows})
    return to_csv(
        ERASURE_COLUMNS,
        (
            [
                e["id"],
                e["kind"],
                e["at"],
                e["scope"].get("type"),
                scope_key(e["scope"]),
                known.get(str(e["requester"]), ""),
                e["requester"],
                e["reason"],
                e["commitments"],
                e["status"],
                e["block_height"],
                e["tx_id"],
            ]
            for e in rows
        ),
    )


def retention_csv(session: Session, q: ErasureQuery) -> str:
    columns = ("day", "dataset", "dataset_id", "uploads", "records", "overdue")
    return to_csv(columns, ([r[c] for c in columns] for r in timeline_rows(session, q)))


# -- members ---------------------------------------------------------------------------------


def render_members(listing: MemberList) -> str:
    return render("dpo_members.html", active="members", members=listing.members)


def members_csv(listing: MemberList) -> str:
    columns = ("display_name", "role", "college", "status", "contact", "member_id")
    return to_csv(columns, ([getattr(m, c) for c in columns] for m in listing.members))
