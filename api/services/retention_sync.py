"""The vault's copy of each dataset's retention period, kept in step with the ledger.

Why: the period is registered on the ledger and changed there by governance (`set_retention`);
the vault derives every upload's retention day (hence its retention epoch, hence when its key
is destroyed) from its own copy. A vote must take effect in the vault: the upload route reads
the dataset's period from the ledger before storing anything, and the background jobs refresh
every dataset's copy with each retention sweep. The contracts hold the line either way: an
anchor whose retention day goes past the registered period is refused (`retention_exceeded`).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from api.services.gateway import LedgerGateway
from vault.datasets import adopt_registered_retention
from vault.models import Dataset

_log = logging.getLogger(__name__)


def sync_retention(
    sessions: sessionmaker[Session],
    ledger: LedgerGateway,
    dataset_ids: Iterable[uuid.UUID] | None = None,
) -> int:
    """Copy the ledger's retention period of each dataset registered there (of `dataset_ids`,
    or all) into the vault; returns how many changed. Raises `LedgerUnavailable`."""
    with sessions() as session:
        query = select(Dataset.id).where(Dataset.register_tx_id.is_not(None))
        if dataset_ids is not None:
            query = query.where(Dataset.id.in_(list(dataset_ids)))
        ids = list(session.scalars(query.order_by(Dataset.id)))
    changed = 0
    for dataset_id in ids:
        registered = ledger.query("dataset", dataset=str(dataset_id))["result"]
        if registered is None:
            continue
        with sessions() as session, session.begin():
            days = int(registered["retention_days"])
            if adopt_registered_retention(session, dataset_id, days):
                changed += 1
                _log.info("dataset %s: retention now %d days (ledger)", dataset_id, days)
    return changed
