"""Impact statistics with k-anonymity: sums per (district, ISO week) over consented records.

The metropolis sees km cycled, litres saved and euros of local produce per district and week,
never a person. Three rules make that hold, each enforced here and tested as a property
(tests/api/test_dashboards.py):

- A cell is shown only if at least k distinct subjects contribute to it, where k is the
  governance parameter `k_anonymity`. Otherwise it is listed as suppressed, without sums or
  count: the reader learns only that fewer than k subjects are there.
- A cell is shown only if EACH dataset contributing to it contributes at least k distinct
  subjects. Why: the caller chooses the datasets; were a cell's parts not each k-anonymous,
  asking for {A, B} and then for {A} would reveal B's small part by subtraction.
- Totals (per district, per week, overall) are sums over SHOWN cells only. Why not over every
  record: a published row total minus the row's shown cells would then be exactly the
  suppressed cell (complementary disclosure). Over shown cells only, the whole answer is a
  function of the shown cells, so nothing in it depends on a suppressed cell's values.

Quantities are summed as integer milli-units (the design's units: 5.3 km is 5300), so the
sums are exact and do not depend on the order the records came in.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from pydantic import BaseModel, Field

QUANTITIES = ("km", "litres", "euros")
# What the impact-statistics purpose declares, in the order the access asks for it.
PROJECTED_FIELDS = ("district", "week", *QUANTITIES)
ISO_WEEK = re.compile(r"^\d{4}-W(0[1-9]|[1-4]\d|5[0-3])$")
DISTRICT = re.compile(r"^[^\x00-\x1f]{1,64}$")
MILLI_MAX = 10**15  # one record's quantity bound: a wild value cannot swamp a cell


@dataclass(frozen=True, slots=True)
class ImpactRecord:
    """One projected event record, its quantities in milli-units (None: not this kind)."""

    dataset: str
    subject: str
    district: str
    week: str
    km: int | None = None
    litres: int | None = None
    euros: int | None = None


def _milli(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    milli = round(value * 1000)
    return milli if 0 <= milli <= MILLI_MAX else None


def record_of(dataset: str, subject: str, payload: dict[str, object]) -> ImpactRecord | None:
    """A projected payload as an `ImpactRecord`, or None when it has no usable district or
    week (a record the statistics cannot place is left out, not guessed)."""
    district, week = payload.get("district"), payload.get("week")
    if not isinstance(district, str) or not DISTRICT.fullmatch(district):
        return None
    if not isinstance(week, str) or not ISO_WEEK.fullmatch(week):
        return None
    km, litres, euros = (_milli(payload.get(q)) for q in QUANTITIES)
    return ImpactRecord(dataset, subject, district, week, km, litres, euros)


class ImpactSums(BaseModel):
    subjects: int = Field(description="distinct contributing subjects")
    km: float
    litres: float
    euros: float


class ImpactCell(BaseModel):
    district: str
    week: str = Field(description="ISO week, e.g. 2026-W49")
    suppressed: bool = Field(description="fewer than k subjects: no figure is given")
    sums: ImpactSums | None = Field(description="absent when suppressed")


class ImpactTotal(BaseModel):
    key: str = Field(description="the district or the week")
    sums: ImpactSums


class ImpactTable(BaseModel):
    k: int
    cells: list[ImpactCell] = Field(description="by district, then week")
    by_district: list[ImpactTotal] = Field(description="over shown cells only")
    by_week: list[ImpactTotal] = Field(description="over shown cells only")
    overall: ImpactSums = Field(description="over shown cells only")


@dataclass
class _Acc:
    subjects: set[str] = field(default_factory=set)
    per_dataset: dict[str, set[str]] = field(default_factory=dict)
    milli: list[int] = field(default_factory=lambda: [0, 0, 0])

    def add(self, r: ImpactRecord) -> None:
        self.subjects.add(r.subject)
        self.per_dataset.setdefault(r.dataset, set()).add(r.subject)
        for i, v in enumerate((r.km, r.litres, r.euros)):
            if v is not None:
                self.milli[i] += v

    def merge(self, other: _Acc) -> None:
        self.subjects |= other.subjects
        for i, v in enumerate(other.milli):
            self.milli[i] += v

    def shown(self, k: int) -> bool:
        return len(self.subjects) >= k and all(len(s) >= k for s in self.per_dataset.values())

    def sums(self) -> ImpactSums:
        km, litres, euros = (m / 1000 for m in self.milli)
        return ImpactSums(subjects=len(self.subjects), km=km, litres=litres, euros=euros)


def aggregate(records: Iterable[ImpactRecord], k: int) -> ImpactTable:
    """Cells per (district, week), suppressed below k, and totals over the shown cells."""
    if k < 1:
        raise ValueError("k must be at least 1")
    cells: dict[tuple[str, str], _Acc] = {}
    for r in records:
        cells.setdefault((r.district, r.week), _Acc()).add(r)
    out: list[ImpactCell] = []
    districts: dict[str, _Acc] = {}
    weeks: dict[str, _Acc] = {}
    overall = _Acc()
    for (district, week), acc in sorted(cells.items()):
        if not acc.shown(k):
            out.append(ImpactCell(district=district, week=week, suppressed=True, sums=None))
            continue
        out.append(ImpactCell(district=district, week=week, suppressed=False, sums=acc.sums()))
        districts.setdefault(district, _Acc()).merge(acc)
        weeks.setdefault(week, _Acc()).merge(acc)
        overall.merge(acc)
    return ImpactTable(
        k=k,
        cells=out,
        by_district=[ImpactTotal(key=d, sums=a.sums()) for d, a in sorted(districts.items())],
        by_week=[ImpactTotal(key=w, sums=a.sums()) for w, a in sorted(weeks.items())],
        overall=overall.sums(),
    )
