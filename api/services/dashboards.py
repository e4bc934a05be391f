"""The two dashboards' figures: the metropolis's impact statistics and a partner's redemptions.

The impact dashboard reads personal data, so it reads it the only way a consumer may: one open
projection access per dataset under the purpose `impact-statistics`, decided and recorded by
the consent contracts (api/services/consented_access.py), then aggregated with the ledger's
current `k_anonymity` (api/services/impact.py says what is suppressed and why). The answer
names no subject: cells, totals, k and the receipts of the accesses.

The partner dashboard reads no personal data: the ledger keeps a partner's redemptions as
counters per (day, category) (`("redemptions", partner, day, category)`), and the partner
sees its own only.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.http.schemas import LedgerReceipt
from api.services.consented_access import projected_records, request_projection
from api.services.gateway import LedgerGateway
from api.services.impact import PROJECTED_FIELDS, ImpactRecord, ImpactTable, aggregate, record_of
from vault.keys import KeyStore
from vault.models import Dataset

IMPACT_PURPOSE = "impact-statistics"
# Each dataset costs one ledger transaction per dashboard view: bounded like any list.
DATASETS_MAX = 16


class ImpactAccess(BaseModel):
    dataset_id: uuid.UUID
    access: int = Field(description="the access's id on the ledger")
    receipt: LedgerReceipt
    charged_cents: int = Field(
        description="what the access cost the consumer: the dataset's listed projection price "
        "(0 when free or when nobody was granted)"
    )


class ImpactDashboard(ImpactTable):
    purpose: str
    week_from: str | None
    week_to: str | None
    accesses: list[ImpactAccess] = Field(description="one recorded access per dataset read")


def impact_datasets(session: Session) -> list[uuid.UUID]:
    """The vault's datasets registered on the ledger for the impact-statistics purpose,
    oldest first: what the page reads when the metropolis names none."""
    query = (
        select(Dataset.id)
        .where(Dataset.purposes.contains([IMPACT_PURPOSE]), Dataset.register_height.is_not(None))
        .order_by(Dataset.created_at, Dataset.id)
        .limit(DATASETS_MAX)
    )
    return list(session.scalars(query))


def _in_weeks(record: ImpactRecord, week_from: str | None, week_to: str | None) -> bool:
    # ISO week labels (YYYY-Www, zero-padded) sort as the weeks do.
    return (week_from is None or record.week >= week_from) and (
        week_to is None or record.week <= week_to
    )


def impact_dashboard(
    ledger: LedgerGateway,
    session: Session,
    store: KeyStore,
    consumer: bytes,
    datasets: Sequence[uuid.UUID],
    week_from: str | None = None,
    week_to: str | None = None,
) -> ImpactDashboard:
    """Read each dataset through a recorded consented access, then aggregate with k."""
    k = int(ledger.query("parameters")["result"]["k_anonymity"])
    records: list[ImpactRecord] = []
    accesses: list[ImpactAccess] = []
    for dataset_id in dict.fromkeys(datasets):  # a dataset named twice is read once
        access = request_projection(ledger, consumer, dataset_id, IMPACT_PURPOSE, PROJECTED_FIELDS)
        accesses.append(
            ImpactAccess(
                dataset_id=dataset_id,
                access=access.access,
                receipt=LedgerReceipt(**access.receipt.as_dict()),
                charged_cents=access.charged_cents,
            )
        )
        for subject, payload in projected_records(session, store, access):
            record = record_of(str(dataset_id), subject, json.loads(payload))
            if record is not None and _in_weeks(record, week_from, week_to):
                records.append(record)
    table = aggregate(records, k)
    return ImpactDashboard(
        **table.model_dump(),
        purpose=IMPACT_PURPOSE,
        week_from=week_from,
        week_to=week_to,
        accesses=accesses,
    )


# -- the partner's redemptions ---------------------------------------------------------------


class RedemptionRow(BaseModel):
    day: dt.date
    category: str
    count: int
    mtok: int = Field(description="tokens redeemed, in milli-tokens")


class RedemptionTotal(BaseModel):
    key: str = Field(description="the day (ISO date) or the category")
    count: int
    mtok: int


class PartnerDashboard(BaseModel):
    partner: str
    rows: list[RedemptionRow] = Field(description="by day, then category")
    by_day: list[RedemptionTotal]
    by_category: list[RedemptionTotal]
    count: int
    mtok: int


RedemptionsReader = Callable[[bytes], list[list[Any]]]


def ledger_redemptions(ledger: LedgerGateway) -> RedemptionsReader:
    """The ledger's `redemptions` query: [[day, category, count, mtok], ...] of one partner."""

    def read(partner: bytes) -> list[list[Any]]:
        rows: list[list[Any]] = ledger.query("redemptions", partner=partner)["result"]
        return rows

    return read


def _totals(pairs: dict[str, list[int]]) -> list[RedemptionTotal]:
    return [RedemptionTotal(key=k, count=c, mtok=m) for k, (c, m) in sorted(pairs.items())]


def partner_dashboard(read: RedemptionsReader, partner: bytes) -> PartnerDashboard:
    """A partner's redemptions over time and by category, from its ledger counters."""
    rows = sorted(
        (
            RedemptionRow(
                day=dt.date(1970, 1, 1) + dt.timedelta(days=int(day)),
                category=str(category),
                count=int(count),
                mtok=int(mtok),
            )
            for day, category, count, mtok in read(partner)
        ),
        key=lambda r: (r.day, r.category),
    )
    days: dict[str, list[int]] = {}
    categories: dict[str, list[int]] = {}
    for r in rows:
        for key, table in ((r.day.isoformat(), days), (r.category, categories)):
            entry = table.setdefault(key, [0, 0])
            entry[0] += r.count
            entry[1] += r.mtok
    return PartnerDashboard(
        partner=partner.hex(),
        rows=rows,
        by_day=_totals(days),
        by_category=_totals(categories),
        count=sum(r.count for r in rows),
        mtok=sum(r.mtok for r in rows),
    )
