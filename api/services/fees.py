"""Paid access on the API's side: prices, credit deposits and statements (the contracts'
rules are in ledger_bridge/contracts/rules/fees.py, docs/CONTRACTS.md "Paid access").

The vault signs every write here, as it registers datasets: a price for the dataset's owner
(the vault checks ownership in its own rows first, and the contracts accept the vault acting
for an owner), a deposit for the cooperative (only its operations key may credit an account:
the money arrived off-chain, at the cooperative's bank).

Who reads a statement: the member itself or the DPO. A statement names datasets and access
numbers, never a subject, so it may outlive any erasure.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.orm import Session

from api.http.errors import Forbidden
from api.services.gateway import LedgerAnswer, LedgerGateway
from api.services.keys import Member
from vault.datasets import get_dataset
from vault.errors import DatasetNotFound


def set_price(
    session: Session,
    ledger: LedgerGateway,
    member: Member,
    dataset_id: uuid.UUID,
    mode: str,
    price_cents: int,
) -> LedgerAnswer:
    """`price.set` for the dataset's owner. Another provider's dataset answers 404, as the
    dataset routes do: a provider must not learn which dataset ids exist elsewhere."""
    dataset = get_dataset(session, dataset_id)
    if dataset.owner_id != member.member_id:
        raise DatasetNotFound(f"dataset {dataset_id} does not exist")
    body = {"dataset": str(dataset_id), "mode": mode, "price_cents": price_cents}
    return ledger.act("price.set", body)


def prices(ledger: LedgerGateway, dataset_id: uuid.UUID) -> tuple[int, dict[str, int]]:
    """The dataset's prices per mode in cents (a mode absent is free), and the height they
    hold at; 404 for a dataset the ledger does not know."""
    answer = ledger.query("prices", dataset=str(dataset_id))
    if answer["result"] is None:
        raise DatasetNotFound(f"dataset {dataset_id} does not exist")
    return answer["height"], dict(answer["result"])


def deposit(ledger: LedgerGateway, member: str, amount_cents: int, reference: str) -> LedgerAnswer:
    """`credit.deposit`, signed by the cooperative's operations key."""
    body = {"member": bytes.fromhex(member), "amount_cents": amount_cents, "reference": reference}
    return ledger.act("credit.deposit", body)


def statement(
    ledger: LedgerGateway, reader: Member, public_key: str, after: int, limit: int
) -> dict[str, Any]:
    """A page of `public_key`'s credit statement, for the member itself or the DPO:
    {height, entries, totals, next_after} (`next_after` set when the page is full)."""
    if reader.role != "dpo" and public_key not in reader.pseudonyms:
        raise Forbidden("only the member itself or the DPO may read its statement")
    answer = ledger.query("statement", member=bytes.fromhex(public_key), after=after, limit=limit)
    result = answer["result"]
    entries = result["entries"]
    return {
        "height": answer["height"],
        "entries": entries,
        "totals": result["totals"],
        "next_after": entries[-1]["n"] if len(entries) == limit else None,
    }
