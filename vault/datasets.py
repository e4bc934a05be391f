"""The dataset registry on the vault side: what a provider declared for each dataset.

The ledger holds the authoritative registration (purposes approved by governance, the retention
period as governance last set it); this table is the vault's copy needed to encrypt (retention
period -> epoch) and to build Art. 30 reports. The service keeps the retention period in step
with the ledger (`adopt_registered_retention`, api/services/retention_sync.py).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from vault.errors import DatasetNotFound, VaultError
from vault.models import Dataset

NAME_MAX = 200
PURPOSES_MAX = 32  # as the consent contracts allow


class InvalidDataset(VaultError):
    status = 422
    title = "Invalid dataset"


def register_dataset(
    session: Session,
    *,
    owner_id: str,
    name: str,
    category: str,
    purposes: Sequence[str],
    retention_days: int,
    legal_basis: str,
    dataset_id: uuid.UUID | None = None,
) -> Dataset:
    if not name or len(name) > NAME_MAX:
        raise InvalidDataset(f"name must be 1..{NAME_MAX} characters")
    if not purposes or len(purposes) > PURPOSES_MAX or len(set(purposes)) != len(purposes):
        raise InvalidDataset(f"purposes must be 1..{PURPOSES_MAX} distinct names")
    if not 0 < retention_days <= 36600:
        raise InvalidDataset("retention_days must be between 1 and 36600")
    dataset = Dataset(
        id=dataset_id or uuid.uuid4(),
        owner_id=owner_id,
        name=name,
        category=category,
        purposes=list(purposes),
        retention_days=retention_days,
        legal_basis=legal_basis,
    )
    session.add(dataset)
    session.flush()
    return dataset


def get_dataset(session: Session, dataset_id: uuid.UUID) -> Dataset:
    dataset = session.get(Dataset, dataset_id)
    if dataset is None:
        raise DatasetNotFound(f"dataset {dataset_id} does not exist")
    return dataset


def list_datasets(session: Session, *, owner_id: str | None = None) -> list[Dataset]:
    query = select(Dataset).order_by(Dataset.created_at, Dataset.id)
    if owner_id is not None:
        query = query.where(Dataset.owner_id == owner_id)
    return list(session.scalars(query))


def adopt_registered_retention(
    session: Session, dataset_id: uuid.UUID, retention_days: int
) -> bool:
    """Take the ledger's registered retention period for `dataset_id` (a `set_retention`
    vote changes it there); True if the vault's copy changed. Later uploads get their
    retention day from it; uploads made before keep theirs (the ledger anchored them so)."""
    if not 0 < retention_days <= 36600:
        raise InvalidDataset("retention_days must be between 1 and 36600")
    dataset = session.get(Dataset, dataset_id, with_for_update=True)
    if dataset is None or dataset.retention_days == retention_days:
        return False
    dataset.retention_days = retention_days
    session.flush()
    return True
