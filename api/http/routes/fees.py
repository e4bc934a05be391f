"""Paid access: a dataset's prices, credit deposits and members' statements
(api/services/fees.py; docs/CONTRACTS.md "Paid access").

Amounts are integer euro cents. A consumer pays for an answer by naming its price in the
access request (`price_cents`, routes/access.py): a price changed meanwhile refuses the
access (409 `price_mismatch`) instead of charging another amount, and a credit too small
refuses it (402 `insufficient_credit`).
"""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Query
from pydantic import BaseModel, Field, StringConstraints

from api.http.bodies import BoundedJsonRoute
from api.http.deps import CurrentMember, Dpo, LedgerDep, Provider, SessionDep, strict_query
from api.http.schemas import PUBLIC_KEY_HEX, LedgerReceipt, PublicKeyHex, StrictIn
from api.services import fees
from ledger_bridge.contracts import bodies
from ledger_bridge.contracts.vocabulary import Mode

router = APIRouter(
    prefix="/v1",
    tags=["fees"],
    dependencies=[Depends(strict_query)],
    route_class=BoundedJsonRoute,
)
STATEMENT_LIMIT_MAX = 1000

Cents = Annotated[int, Field(ge=0, le=bodies.PRICE_CENTS_MAX, description="euro cents")]
Reference = Annotated[str, StringConstraints(pattern=bodies.ID_PATTERN)]


class PriceIn(StrictIn):
    price_cents: Cents = Field(description="the price of one answer in this mode; 0: free")


class PriceOut(BaseModel):
    dataset_id: uuid.UUID
    mode: Mode
    price_cents: int
    receipt: LedgerReceipt


class PricesOut(BaseModel):
    dataset_id: uuid.UUID
    height: int = Field(description="the last committed block the prices reflect")
    prices: dict[str, int] = Field(
        description="cents per answer in each disclosure mode: the mode's own price or, "
        "without one, the nearest wider priced mode's; a mode absent is free"
    )


class CreditIn(StrictIn):
    member: PublicKeyHex = Field(description="the provider or consumer credited")
    amount_cents: Annotated[int, Field(ge=1, le=bodies.DEPOSIT_CENTS_MAX)] = Field(
        description="the payment received off-chain, in euro cents"
    )
    reference: Reference = Field(
        description="the payment's own reference; a reference is credited once"
    )


class CreditOut(BaseModel):
    member: str
    amount_cents: int
    credit_cents: int = Field(description="the member's credit after the deposit")
    receipt: LedgerReceipt


class StatementEntry(BaseModel):
    n: int = Field(description="the entry's number in the member's statement, from 1")
    height: int = Field(description="the block that moved the credit")
    kind: Literal["deposit", "fee_paid", "fee_earned", "commission", "carried_out", "carried_in"]
    cents: int
    dataset: str | None = Field(description="the dataset whose answer was paid; null: a deposit")
    access: int | None = Field(description="the paid access's id on the ledger; null: a deposit")


class StatementTotals(BaseModel):
    paid: int
    earned: int = Field(description="fees earned, and for the cooperative its commissions")
    deposited: int
    balance: int


class StatementOut(BaseModel):
    member: str
    height: int
    entries: list[StatementEntry]
    totals: StatementTotals
    next_after: int | None = Field(description="the `after` of the next page; null: no more")


@router.put("/datasets/{dataset_id}/prices/{mode}")
def set_price(
    dataset_id: uuid.UUID,
    mode: Mode,
    body: PriceIn,
    member: Provider,
    session: SessionDep,
    ledger: LedgerDep,
) -> PriceOut:
    """Price one disclosure mode of your dataset (`price.set`, the vault signing for you). An
    unpriced narrower mode owes this price too; 0 deletes the mode's own price."""
    answer = fees.set_price(session, ledger, member, dataset_id, mode, body.price_cents)
    receipt = LedgerReceipt(**answer.receipt.as_dict())
    return PriceOut(dataset_id=dataset_id, mode=mode, price_cents=body.price_cents, receipt=receipt)


@router.get("/datasets/{dataset_id}/prices")
def prices(dataset_id: uuid.UUID, ledger: LedgerDep, _: CurrentMember) -> PricesOut:
    """What one answer costs in each mode: the price an access request must name. A mode the
    provider did not price owes the nearest wider priced mode's (predicate, projection, full),
    so a narrower answer never costs less than a wider one unless priced lower explicitly."""
    height, by_mode = fees.prices(ledger, dataset_id)
    return PricesOut(dataset_id=dataset_id, height=height, prices=by_mode)


@router.post("/credits", status_code=201)
def credit(body: CreditIn, ledger: LedgerDep, _: Dpo) -> CreditOut:
    """Record a payment the cooperative received (`credit.deposit`, by its operations key)."""
    answer = fees.deposit(ledger, body.member, body.amount_cents, body.reference)
    return CreditOut(
        member=body.member,
        amount_cents=body.amount_cents,
        credit_cents=answer.result["credit_cents"],
        receipt=LedgerReceipt(**answer.receipt.as_dict()),
    )


@router.get("/members/{public_key}/statement")
def statement(
    public_key: Annotated[str, Path(pattern=PUBLIC_KEY_HEX)],
    ledger: LedgerDep,
    member: CurrentMember,
    after: Annotated[int, Query(ge=0, le=bodies.JSON_INT_MAX)] = 0,
    limit: Annotated[int, Query(ge=1, le=STATEMENT_LIMIT_MAX)] = 100,
) -> StatementOut:
    """A member's credit movements and totals, for the member itself or the DPO."""
    page = fees.statement(ledger, member, public_key, after, limit)
    return StatementOut(member=public_key, **page)
