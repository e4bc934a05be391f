"""The DPO's view of the outbox: the vault facts the ledger has not recorded, and retrying one.

A fact the ledger refused is set aside so it holds up nothing (api/services/outbox.py); it
waits here for the DPO, who may send it again once its cause is fixed (say, the cooperative
re-admitted the vault's key or registered the dataset the fact names).
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.http.schemas import LedgerReceipt
from api.services.outbox import outbox_counts, requeue
from vault.errors import NotFound
from vault.models import OUTBOX_PENDING, OUTBOX_REFUSED, OutboxFact


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


def list_facts(
    session: Session, state: Literal["refused", "pending"], *, after: int, limit: int
) -> OutboxOut:
    """Facts in `state` with an id past `after`, oldest first, `limit` at most."""
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


def retry(session: Session, fact_id: int) -> OutboxFactOut:
    """Put a refused fact back in the queue, in its original place; NotFound unless refused."""
    fact = requeue(session, fact_id)
    if fact is None:
        raise NotFound(f"no refused outbox fact {fact_id}")
    return _fact_out(fact)
