"""The figures behind the DPO's console (api/http/dpo_page.py lays them out): accesses per
purpose, consumer and day with the refusals beside the grants, erasures and expiries over
time, what the vault holds until when, and one subject's whole standing.

Why here and not in the page: every figure is a count the DPO may be asked to justify, so it
is computed once, from the same sources the JSON routes read (the ledger's access records,
the outbox's erasure facts, the vault's uploads), and the page, its CSV exports and the
tests all read these functions, never a second computation.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Date, cast, func, select
from sqlalchemy.orm import Session

from api.services import requests
from api.services.access_log import AccessScan, first_access_since, outcome, to_ms
from api.services.decryptions import decryptions_of
from api.services.documents import Document
from api.services.export import SECTION_READERS, Sources, datasets
from api.services.gateway import jsonable
from ledger_bridge.facts import ERASURE_KINDS
from vault.models import Dataset, Decryption, OutboxFact, Record, SubjectRequest

PERIODS = (7, 30, 90)  # the periods the console offers, in days, today included
DEFAULT_PERIOD = 30
SUBJECT_SEARCH_MIN = 6  # hex characters a pseudonym search needs (fewer match too many)
SUBJECT_MATCHES_MAX = 20
SUBJECT_LIST_MAX = 500  # items per list of the subject view (the export pages the rest)
_HEX = re.compile(r"^[0-9a-f]+$")


@dataclass
class Tally:
    """Access decisions: those that delivered someone's data, and those that delivered none."""

    granted: int = 0
    refused: int = 0

    @property
    def total(self) -> int:
        return self.granted + self.refused

    def add(self, row: dict[str, Any]) -> None:
        if outcome(row) == "granted":
            self.granted += 1
        else:
            self.refused += 1


@dataclass
class AccessStats:
    """Access decisions from `first` to `last` (UTC days), counted three ways.

    `complete` is False when the scan stopped at its budget (ACCESS_SCAN_MAX records): the
    page then says the figures are a lower bound.
    """

    first: dt.date
    last: dt.date
    by_purpose: dict[str, Tally] = field(default_factory=dict)
    by_consumer: dict[str, Tally] = field(default_factory=dict)  # hex public key -> tally
    by_day: dict[str, Tally] = field(default_factory=dict)  # every day of the period
    by_dataset: dict[str, Tally] = field(default_factory=dict)
    total: Tally = field(default_factory=Tally)
    complete: bool = True


def period_days(today: dt.date, days: int) -> list[dt.date]:
    """The `days` UTC days ending with `today`, oldest first."""
    return [today - dt.timedelta(days=days - 1 - i) for i in range(days)]


def access_stats(gateway: Any, today: dt.date, days: int) -> AccessStats:
    """One bounded scan of the ledger's access records of the period."""
    span = period_days(today, days)
    stats = AccessStats(first=span[0], last=span[-1])
    stats.by_day = {d.isoformat(): Tally() for d in span}
    since = dt.datetime.combine(span[0], dt.time(), dt.UTC)
    end_ms = to_ms(dt.datetime.combine(today + dt.timedelta(days=1), dt.time(), dt.UTC))
    scan = AccessScan(gateway, after=first_access_since(gateway, to_ms(since)) - 1)
    for row in scan:
        if int(row["time"]) >= end_ms:
            break
        day = dt.datetime.fromtimestamp(int(row["time"]) / 1000, dt.UTC).date().isoformat()
        for table, key in (
            (stats.by_purpose, row["purpose"]),
            (stats.by_consumer, bytes(row["consumer"]).hex()),
            (stats.by_dataset, str(row["dataset"])),
            (stats.by_day, day),
        ):
            table.setdefault(key, Tally()).add(row)
        stats.total.add(row)
    stats.complete = scan.exhausted or scan.cursor == 0
    return stats


@dataclass
class ErasureDay:
    erasures: int = 0  # erasure.record facts: a subject's or an upload's keys destroyed
    expiries: int = 0  # retention.expire facts: a dataset-day's epoch key destroyed


def erasure_series(session: Session, today: dt.date, days: int) -> dict[str, ErasureDay]:
    """Erasures and expiries per UTC day of the period, from the vault's outbox (every one,
    recorded on the ledger or not yet: the page shows the pending ones apart)."""
    span = period_days(today, days)
    out = {d.isoformat(): ErasureDay() for d in span}
    start = dt.datetime.combine(span[0], dt.time(), dt.UTC)
    day = cast(func.timezone("UTC", OutboxFact.created_at), Date)
    rows = session.execute(
        select(day, OutboxFact.kind, func.count())
        .where(OutboxFact.kind.in_(ERASURE_KINDS), OutboxFact.created_at >= start)
        .group_by(day, OutboxFact.kind)
    )
    for when, kind, n in rows:
        entry = out.get(when.isoformat())
        if entry is None:
            continue  # after today (a clock ahead): not in the period shown
        if kind == ERASURE_KINDS[0]:
            entry.erasures += n
        else:
            entry.expiries += n
    return out


def retention_outlook(timeline: list[dict[str, Any]]) -> list[tuple[str, int]]:
    """Records held, by the month their retention ends (YYYY-MM), soonest first."""
    months: Counter[str] = Counter()
    for row in timeline:
        months[row["day"][:7]] += int(row["records"])
    return sorted(months.items())


def dataset_names(session: Session, ids: set[str]) -> dict[str, str]:
    """Dataset names by id (a dataset another vault registered has no row: no name)."""
    wanted = []
    for i in ids:
        try:
            wanted.append(uuid.UUID(i))
        except ValueError:
            continue
    if not wanted:
        return {}
    rows = session.execute(select(Dataset.id, Dataset.name).where(Dataset.id.in_(wanted)))
    return {str(i): name for i, name in rows}


def find_subjects(session: Session, text: str) -> list[str]:
    """Pseudonyms the vault knows (records, requests, reads) that start with `text`
    (lowercase hex, SUBJECT_SEARCH_MIN characters at least); a whole key is always offered,
    since the ledger may know it when the vault holds nothing under it."""
    text = text.strip().lower()
    if len(text) < SUBJECT_SEARCH_MIN or not _HEX.fullmatch(text) or len(text) > 64:
        return []
    found: set[str] = {text} if len(text) == 64 else set()
    pattern = text + "%"
    for column in (Record.subject_id, SubjectRequest.subject, Decryption.subject):
        found.update(
            session.scalars(
                select(column).where(column.like(pattern)).distinct().limit(SUBJECT_MATCHES_MAX)
            )
        )
    return sorted(found)[:SUBJECT_MATCHES_MAX]


def _records_held(session: Session, subject: str) -> dict[str, dict[str, int]]:
    """Per dataset: the records under the pseudonym, and how many are still readable."""
    rows = session.execute(
        select(
            Record.dataset_id,
            func.count(),
            func.count(Record.envelope),
        )
        .where(Record.subject_id == subject)
        .group_by(Record.dataset_id)
    )
    return {str(d): {"records": n, "readable": live} for d, n, live in rows}


def subject_view(src: Sources, subject: str) -> dict[str, Any]:
    """What the vault and the ledger hold about one pseudonym, without decrypting anything:
    datasets (with records held and recipients), consents with the notice shown, accesses
    that reached the subject's data, erasures, requests and recorded reads."""
    held = _records_held(src.session, subject)
    found = datasets(src, [subject])
    for d in found:
        d.update(held.get(d["dataset_id"], {"records": 0, "readable": 0}))
    consents, _ = SECTION_READERS["consents"](src, subject, None, SUBJECT_LIST_MAX)
    accesses = src.ledger.query("accesses", subject=subject, limit=SUBJECT_LIST_MAX)["result"]
    erasures = src.ledger.query("erasures", subject=subject, limit=SUBJECT_LIST_MAX)["result"]
    now = dt.datetime.now(dt.UTC)
    return {
        "subject_id": subject,
        "datasets": found,
        "consents": consents,
        "accesses": [{**jsonable(a), "outcome": outcome(a)} for a in accesses],
        "erasures": [jsonable(e) for e in erasures],
        "requests": [
            requests.request_out(r, now).model_dump(mode="json")
            for r in requests.subject_requests(src.session, subject)
        ],
        "decryptions": decryptions_of(src.session, [subject])[:SUBJECT_LIST_MAX],
    }


def audit_document(
    findings: list[dict[str, str]], summary: requests.RegisterSummary, now: dt.datetime
) -> Document:
    """The audit as a document the DPO files: what was checked, and every finding."""
    doc = Document("Data protection audit")
    doc.para(
        f"Generated {now:%Y-%m-%d %H:%M} UTC from the vault, its key store and the ledger: "
        "no record decryptable past its retention, every expiry and erasure recorded on the "
        "ledger, every subject's request answered within its deadline (Art. 12(3)), the "
        "records of processing complete (Art. 30), every breach notified within 72 hours "
        "(Art. 33) and every recipient told of erasures and rectifications (Art. 19)."
    )
    doc.heading(2, f"Findings: {len(findings)}")
    if findings:
        doc.bullets(f"{f['code']}: {f['detail']}" for f in findings)
    else:
        doc.para("No finding.")
    doc.heading(2, "Subjects' requests")
    doc.bullets(
        [
            f"{kind}: " + ", ".join(f"{n} {state}" for state, n in sorted(states.items()))
            for kind, states in sorted(summary.by_kind.items())
        ]
        + [
            f"pending past their deadline: {summary.overdue}",
            f"answered after their deadline: {summary.answered_late}",
        ]
    )
    return doc
