"""The subjects a breach affects, derived when asked: never stored (invariant 7).

Three sources, each filtered by the breach's scope (a member's key, a dataset, a time window;
each optional, all given ones apply):

- the ledger's access record: every access the consent contracts granted, with the subjects
  it delivered (`accesses`, filtered on the ledger by consumer or dataset, in id order, whose
  times never decrease). For a member's key: what that consumer received;
- the vault's record of decryptions (`decryptions`, the table the DECRYPT part adds: reader,
  subject, dataset, time, records), read by `decryptions_of`: every decryption by that reader,
  of that dataset, in that window. While the table does not exist, it adds nothing;
- with `include_held` and a dataset: every subject whose records the vault holds in it (a
  breach of the data at rest, a stolen backup: the access record says nothing of those).

Why derived rather than kept with the incident: the ledger forgets a subject erased everywhere
(their accesses lose them), the vault forgets them in its tables, so an answer after the
erasure does not name them, and nothing kept before does either: the incident holds counts.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from api.services.access_log import AccessScan, first_access_since, to_ms
from api.services.gateway import LedgerGateway
from vault.erasure import FORGOTTEN_PREFIX
from vault.models import Dataset, Record

AFFECTED_SCAN_MAX = 100_000  # ledger access records read per answer
SUBJECTS_PAGE_MAX = 1000

# Compared as text, whatever the columns' types: the table is another part's.
_DECRYPTIONS = text(
    "SELECT subject, dataset_id::text, coalesce(sum(record_count), 0) FROM decryptions"
    " WHERE (CAST(:reader AS text) IS NULL OR reader::text = :reader)"
    " AND (CAST(:dataset AS text) IS NULL OR dataset_id::text = :dataset)"
    " AND (CAST(:since AS timestamptz) IS NULL OR at >= :since)"
    " AND (CAST(:until AS timestamptz) IS NULL OR at <= :until)"
    " GROUP BY subject, dataset_id"
)


@dataclass(frozen=True, slots=True)
class Scope:
    """What the breach concerns; None matches everything."""

    member: str | None = None  # a consumer's ledger key, hex
    dataset_id: uuid.UUID | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None  # inclusive
    include_held: bool = False


class ScopeOut(BaseModel):
    member: str | None
    dataset_id: uuid.UUID | None
    since: dt.datetime | None
    until: dt.datetime | None
    include_held: bool


class DatasetAffected(BaseModel):
    dataset_id: str
    name: str | None = Field(description="the vault's name for it (null: not in this vault)")
    category: str | None
    subjects: int = Field(description="distinct subjects affected in this dataset")
    accesses: int = Field(description="ledger accesses that delivered some of them")
    decrypted_records: int = Field(description="records decrypted for the scope's readers")
    held_records: int = Field(description="records held (include_held), still decryptable")


class AffectedSubjects(BaseModel):
    scope: ScopeOut
    ledger_height: int
    complete: bool = Field(
        description=f"false when more than {AFFECTED_SCAN_MAX} ledger accesses matched and only "
        "the first were read: narrow the window"
    )
    total: int = Field(description="distinct subjects affected, over every dataset")
    by_dataset: list[DatasetAffected]
    subjects: list[str] = Field(description="the subjects' pseudonyms, sorted, one page")
    next_after: str | None = Field(description="pass as `after` for the next page")


@dataclass
class _Tally:
    subjects: set[str] = field(default_factory=set)
    accesses: int = 0
    decrypted_records: int = 0
    held_records: int = 0


def affected_subjects(
    session: Session,
    gateway: LedgerGateway,
    scope: Scope,
    *,
    after: str | None = None,
    limit: int = SUBJECTS_PAGE_MAX,
) -> AffectedSubjects:
    """Every source's subjects in `scope`, counted per dataset; a page of their pseudonyms."""
    tallies: dict[str, _Tally] = defaultdict(_Tally)
    height = int(gateway.query("status")["height"])
    complete = _from_access_record(gateway, scope, tallies)
    for subject, dataset, records in decryptions_of(session, scope):
        if subject.startswith(FORGOTTEN_PREFIX):
            continue  # an erasure replaced the subject: it names nobody, and counts nobody
        tallies[dataset].subjects.add(subject)
        tallies[dataset].decrypted_records += records
    if scope.include_held and scope.dataset_id is not None:
        _held(session, scope.dataset_id, tallies[str(scope.dataset_id)])
    everyone = sorted({s for t in tallies.values() for s in t.subjects})
    page = [s for s in everyone if after is None or s > after][:limit]
    more = bool(page) and page[-1] != everyone[-1]
    return AffectedSubjects(
        scope=ScopeOut(
            member=scope.member,
            dataset_id=scope.dataset_id,
            since=scope.since,
            until=scope.until,
            include_held=scope.include_held,
        ),
        ledger_height=height,
        complete=complete,
        total=len(everyone),
        by_dataset=_by_dataset(session, tallies),
        subjects=page,
        next_after=page[-1] if more else None,
    )


def _from_access_record(gateway: LedgerGateway, scope: Scope, tallies: dict[str, _Tally]) -> bool:
    """The granted subjects of the ledger's accesses in scope; False if the scan stopped at
    its bound before the end."""
    consumer = None if scope.member is None else bytes.fromhex(scope.member)
    dataset = None if scope.dataset_id is None else str(scope.dataset_id)
    start = 0 if scope.since is None else first_access_since(gateway, to_ms(scope.since)) - 1
    since_ms = None if scope.since is None else to_ms(scope.since)
    until_ms = None if scope.until is None else to_ms(scope.until)
    scan = AccessScan(
        gateway, after=start, consumer=consumer, dataset=dataset, scan_max=AFFECTED_SCAN_MAX
    )
    for row in scan:
        if until_ms is not None and int(row["time"]) > until_ms:
            return True  # access times never decrease: nothing later is in the window
        if not _in_scope(row, consumer, dataset, since_ms) or not row["granted"]:
            continue
        tally = tallies[row["dataset"]]
        tally.accesses += 1
        tally.subjects.update(row["granted"])
    return scan.exhausted


def _in_scope(
    row: dict[str, Any], consumer: bytes | None, dataset: str | None, since_ms: int | None
) -> bool:
    return (
        (consumer is None or row["consumer"] == consumer)
        and (dataset is None or row["dataset"] == dataset)
        and (since_ms is None or int(row["time"]) >= since_ms)
    )


def decryptions_of(session: Session, scope: Scope) -> Iterable[tuple[str, str, int]]:
    """(subject, dataset id, records decrypted) from the vault's record of decryptions, in
    scope: the hook for the `decryptions` table (docs/API.md "Incidents"). Read by its column
    names (`reader`, `subject`, `dataset_id`, `at`, `record_count`); nothing while the table
    does not exist in this database."""
    if session.scalar(text("SELECT to_regclass('decryptions')")) is None:
        return []
    params = {
        "reader": scope.member,
        "dataset": None if scope.dataset_id is None else str(scope.dataset_id),
        "since": scope.since,
        "until": scope.until,
    }
    return [(str(s), str(d), int(n)) for s, d, n in session.execute(_DECRYPTIONS, params)]


def _held(session: Session, dataset_id: uuid.UUID, tally: _Tally) -> None:
    """The subjects whose records the vault still holds (ciphertext present) in the dataset."""
    rows = session.execute(
        select(Record.subject_id, func.count())
        .where(Record.dataset_id == dataset_id, Record.envelope.is_not(None))
        .group_by(Record.subject_id)
    )
    for subject, count in rows:
        if subject.startswith(FORGOTTEN_PREFIX):
            continue
        tally.subjects.add(subject)
        tally.held_records += int(count)


def _by_dataset(session: Session, tallies: dict[str, _Tally]) -> list[DatasetAffected]:
    ids = []
    for key in tallies:
        try:
            ids.append(uuid.UUID(key))
        except ValueError:
            continue  # a dataset the ledger knows by another id: no vault name for it
    names = {str(d.id): d for d in session.scalars(select(Dataset).where(Dataset.id.in_(ids)))}
    out = []
    for key, t in sorted(tallies.items()):
        if not t.subjects:
            continue
        d = names.get(key)
        out.append(
            DatasetAffected(
                dataset_id=key,
                name=None if d is None else d.name,
                category=None if d is None else d.category,
                subjects=len(t.subjects),
                accesses=t.accesses,
                decrypted_records=t.decrypted_records,
                held_records=t.held_records,
            )
        )
    return out
