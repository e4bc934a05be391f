"""The lock a rectification holds alone over a dataset's subject secrets, and the others share.

Why: a rectification (vault/rectification.py) replaces a subject's secret in a dataset and
writes their records again under the new one. A transaction that read the OLD secret before
and writes after (an upload encrypting new records of that subject) would store records no key
opens any more; an erasure, a withdrawal or an expiry that read the dataset's rows before
would miss the new versions, or a rectification would copy records they just destroyed into
its new uploads. So every writer of a dataset's keys takes this transaction-scoped advisory
lock: uploads, erasures, withdrawals and expiries SHARED (they run side by side as before),
a rectification EXCLUSIVE (it waits for them, and they for it).

One PostgreSQL advisory lock per dataset, in a namespace of its own (the two-integer form, the
first integer `NAMESPACE`); two datasets whose ids share their first four bytes share a lock,
which only serialises them more.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable

import psycopg
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from vault.errors import RectificationBusy

NAMESPACE = 0x52454354  # "RECT"


def _key(dataset_id: uuid.UUID) -> int:
    return int.from_bytes(dataset_id.bytes[:4], "big", signed=True)


def share_datasets(session: Session, dataset_ids: Iterable[uuid.UUID]) -> None:
    """Take the shared lock of each dataset (until the transaction ends), in a fixed order."""
    for key in sorted({_key(d) for d in dataset_ids}):
        session.execute(select(func.pg_advisory_xact_lock_shared(NAMESPACE, key)))


def own_dataset(session: Session, dataset_id: uuid.UUID, timeout_ms: int) -> None:
    """Take the dataset's lock alone, waiting at most `timeout_ms` for the writers holding it
    (then `RectificationBusy`). Writers that come after wait behind this one."""
    previous = session.scalar(select(func.current_setting("lock_timeout")))
    session.execute(select(func.set_config("lock_timeout", f"{int(timeout_ms)}ms", True)))
    try:
        session.execute(select(func.pg_advisory_xact_lock(NAMESPACE, _key(dataset_id))))
    except OperationalError as exc:
        if isinstance(exc.orig, psycopg.errors.LockNotAvailable):
            raise RectificationBusy(
                f"dataset {dataset_id} has an upload or an erasure in progress; retry shortly"
            ) from None
        raise
    session.execute(select(func.set_config("lock_timeout", previous, True)))
