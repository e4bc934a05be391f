"""Eco-citizen tokens: reward rules, balances, transfers, partners' offers, coupons.

Every write is a transaction its author signs with their own key (a draft from
`POST /v1/drafts`, signed by the wallet, posted here), so no API key is needed to write and
the API cannot move anyone's tokens: a holder signs `token.transfer` and `token.redeem`, a
partner `offer.publish` and `coupon.spend`. Balances and statements are read by their
holder's own API key or wallet sign-in, or the DPO's key; rules and offers by any member.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query
from pydantic import BaseModel, Field

from api.http.bodies import BoundedJsonRoute
from api.http.deps import CurrentMember, LedgerDep, strict_query
from api.http.errors import Forbidden
from api.http.schemas import PUBLIC_KEY_HEX, LedgerReceipt, SignedIn
from api.http.signed import assemble
from api.services.gateway import LedgerAnswer, LedgerGateway, jsonable
from api.services.keys import Member
from api.services.tokens import issued_coupon

router = APIRouter(
    prefix="/v1",
    tags=["eco-citizen tokens"],
    dependencies=[Depends(strict_query)],
    route_class=BoundedJsonRoute,
)

Account = Annotated[str, Path(pattern=PUBLIC_KEY_HEX, description="a member's public key")]
STATEMENT_LIMIT_MAX = 1000


class TokenWriteOut(BaseModel):
    receipt: LedgerReceipt
    result: dict[str, Any] = Field(description="what the contracts answered")


class TokenQueryOut(BaseModel):
    height: int = Field(description="the last committed block the answer reflects")
    result: Any


class CouponOut(BaseModel):
    coupon: str = Field(description="SHA-256 of the wallet's secret (hex), as the ledger keys it")
    offer: str
    price_mtok: int
    height: int = Field(description="the block that committed the redemption")
    signature: str = Field(
        description="the operations key's Ed25519 signature (hex) over "
        '"civis-vault/coupon/v1" || chain_id || coupon || offer || price_mtok (8 bytes BE) '
        "|| height (8 bytes BE); the QR payload carries it in base64url"
    )
    issuer: str = Field(description="the operations key (role vault) that signed it")


class RedemptionOut(TokenWriteOut):
    coupon: CouponOut


def _out(answer: LedgerAnswer) -> TokenWriteOut:
    result = {k: v for k, v in answer.result.items() if k not in ("ok", "tx")}
    return TokenWriteOut(receipt=LedgerReceipt(**answer.receipt.as_dict()), result=jsonable(result))


def _relay(ledger: LedgerGateway, body: SignedIn, tx_type: str) -> LedgerAnswer:
    signed = assemble(ledger.chain_id, body.transaction, body.signature, tx_type)
    return ledger.submit(signed.encode())


def _query(ledger: LedgerGateway, q: str, **args: Any) -> TokenQueryOut:
    answer = ledger.query(q, **args)
    return TokenQueryOut(height=answer["height"], result=jsonable(answer["result"]))


def _own_or_dpo(member: Member, account: str) -> None:
    # The holder: whoever proved the account's key (an API key for it, or a wallet sign-in).
    if member.role != "dpo" and account not in member.pseudonyms:
        raise Forbidden("only the account's holder or the DPO may read it")


@router.get("/reward-rules")
def reward_rules(ledger: LedgerDep, _: CurrentMember) -> TokenQueryOut:
    """The reward rules in force: unit, rate (mtok per unit), device kinds, daily cap."""
    return _query(ledger, "reward_rules")


@router.get("/accounts/{account}")
def balance(account: Account, member: CurrentMember, ledger: LedgerDep) -> TokenQueryOut:
    """The account's balance in mtok and its lots (day minted, mtok), oldest first."""
    _own_or_dpo(member, account)
    return _query(ledger, "balance", account=bytes.fromhex(account))


@router.get("/accounts/{account}/statement")
def token_statement(
    account: Account,
    member: CurrentMember,
    ledger: LedgerDep,
    after: Annotated[int, Query(ge=0, le=(1 << 53) - 1)] = 0,
    limit: Annotated[int, Query(ge=1, le=STATEMENT_LIMIT_MAX)] = 100,
) -> TokenQueryOut:
    """The account's token movements after entry `after`: minted, transferred, redeemed,
    expired."""
    _own_or_dpo(member, account)
    return _query(
        ledger, "token_statement", account=bytes.fromhex(account), after=after, limit=limit
    )


@router.post("/transfers", status_code=201)
def transfer(body: SignedIn, ledger: LedgerDep) -> TokenWriteOut:
    """token.transfer, signed by the holder: 409 `insufficient_tokens` on an overdraft."""
    return _out(_relay(ledger, body, "token.transfer"))


@router.post("/offers", status_code=201)
def publish_offer(body: SignedIn, ledger: LedgerDep) -> TokenWriteOut:
    """offer.publish, signed by an active partner; only its partner republishes an offer."""
    return _out(_relay(ledger, body, "offer.publish"))


@router.get("/offers")
def offers(
    ledger: LedgerDep,
    _: CurrentMember,
    partner: Annotated[str | None, Query(pattern=PUBLIC_KEY_HEX)] = None,
) -> TokenQueryOut:
    """Partners' offers (of one partner if named): title, category, price, active."""
    if partner is None:
        return _query(ledger, "offers")
    return _query(ledger, "offers", partner=bytes.fromhex(partner))


@router.post("/redemptions", status_code=201)
def redeem(body: SignedIn, ledger: LedgerDep) -> RedemptionOut:
    """token.redeem, signed by the holder, naming SHA-256 of the wallet's coupon secret and the
    offer's price the holder agrees to (409 `price_mismatch` if the partner changed it, nothing
    charged): the answer carries the coupon signed by the cooperative for the QR code (the
    wallet alone holds the secret, hence the printable code)."""
    signed = assemble(ledger.chain_id, body.transaction, body.signature, "token.redeem")
    answer = ledger.submit(signed.encode())
    out = _out(answer)
    coupon = issued_coupon(ledger, bytes(signed.body["coupon"]), answer)
    return RedemptionOut(receipt=out.receipt, result=out.result, coupon=CouponOut(**coupon))


@router.post("/coupons/spend", status_code=201)
def spend(body: SignedIn, ledger: LedgerDep) -> TokenWriteOut:
    """coupon.spend, signed by the offer's partner with the coupon's secret: once. A second
    spend is 409 `coupon_spent`, whichever API instance or replica it reaches."""
    return _out(_relay(ledger, body, "coupon.spend"))
