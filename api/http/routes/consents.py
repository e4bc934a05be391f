"""What members say with their own keys: membership, governance, consents, erasure requests.

Every write here is a transaction its author signed (see api/http/signed.py): the flow is
`POST /v1/drafts` → sign `signing_payload` with the wallet → `POST` the draft's `transaction`
with the `signature` to the resource's endpoint. The API checks the signature, relays the
transaction to the ledger and answers with the contracts' result and the receipt; it needs no
API key for these, because the signature is the authentication and the contracts the
authorisation. Reads of a subject's consents need the subject's own API key or wallet sign-in
(api/http/routes/sign_in.py), or the DPO's key.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path
from pydantic import BaseModel, ConfigDict, Field

from api.http.bodies import BoundedJsonRoute
from api.http.deps import CurrentMember, LedgerDep, SessionDep, strict_query, subject_or_dpo
from api.http.errors import Forbidden
from api.http.schemas import (
    PUBLIC_KEY_HEX,
    LedgerReceipt,
    PublicKeyHex,
    SignedIn,
    StrictIn,
    TxBody,
)
from api.http.signed import DRAFT_TTL_MAX_S, assemble, draft
from api.services import notices
from api.services.gateway import LedgerAnswer, jsonable
from ledger_bridge.contracts import bodies

router = APIRouter(
    prefix="/v1",
    tags=["consents and governance"],
    dependencies=[Depends(strict_query)],
    route_class=BoundedJsonRoute,
)

EXAMPLE_AUTHOR = bodies.EX_KEY


def _example(tx_type: str) -> ConfigDict:
    example: dict[str, Any] = {
        "type": tx_type,
        "author": EXAMPLE_AUTHOR,
        "body": bodies.example(tx_type),
    }
    return ConfigDict(strict=True, extra="forbid", json_schema_extra={"examples": [example]})


class _Draft(StrictIn):
    """What every draft carries besides its type and body."""

    author: PublicKeyHex = Field(description="the signer's public key (hex)")
    valid_for_s: Annotated[int, Field(ge=1, le=DRAFT_TTL_MAX_S)] = Field(
        default=300, description="seconds the signed transaction stays valid"
    )


# One model per type a member signs (api/http/signed.py SELF_SIGNED), each body the component its
# declaration in ledger_bridge/contracts/bodies.py generates.
class MemberRegisterDraft(_Draft):
    model_config = _example("member.register")
    type: Literal["member.register"]
    body: Annotated[dict[str, Any], TxBody("member.register")]


class ConsentGrantDraft(_Draft):
    model_config = _example("consent.grant")
    type: Literal["consent.grant"]
    body: Annotated[dict[str, Any], TxBody("consent.grant")]


class ConsentRevokeDraft(_Draft):
    model_config = _example("consent.revoke")
    type: Literal["consent.revoke"]
    body: Annotated[dict[str, Any], TxBody("consent.revoke")]


class ErasureRequestDraft(_Draft):
    model_config = _example("erasure.request")
    type: Literal["erasure.request"]
    body: Annotated[dict[str, Any], TxBody("erasure.request")]


class RectificationRequestDraft(_Draft):
    model_config = _example("rectification.request")
    type: Literal["rectification.request"]
    body: Annotated[dict[str, Any], TxBody("rectification.request")]


class GovernanceProposeDraft(_Draft):
    model_config = _example("governance.propose")
    type: Literal["governance.propose"]
    body: Annotated[dict[str, Any], TxBody("governance.propose")]


class GovernanceVoteDraft(_Draft):
    model_config = _example("governance.vote")
    type: Literal["governance.vote"]
    body: Annotated[dict[str, Any], TxBody("governance.vote")]


class DeviceRegisterDraft(_Draft):
    model_config = _example("device.register")
    type: Literal["device.register"]
    body: Annotated[dict[str, Any], TxBody("device.register")]


class TokenTransferDraft(_Draft):
    model_config = _example("token.transfer")
    type: Literal["token.transfer"]
    body: Annotated[dict[str, Any], TxBody("token.transfer")]


class TokenRedeemDraft(_Draft):
    model_config = _example("token.redeem")
    type: Literal["token.redeem"]
    body: Annotated[dict[str, Any], TxBody("token.redeem")]


class OfferPublishDraft(_Draft):
    model_config = _example("offer.publish")
    type: Literal["offer.publish"]
    body: Annotated[dict[str, Any], TxBody("offer.publish")]


class CouponSpendDraft(_Draft):
    model_config = _example("coupon.spend")
    type: Literal["coupon.spend"]
    body: Annotated[dict[str, Any], TxBody("coupon.spend")]


class RestrictionSetDraft(_Draft):
    model_config = _example("restriction.set")
    type: Literal["restriction.set"]
    body: Annotated[dict[str, Any], TxBody("restriction.set")]


class RestrictionLiftDraft(_Draft):
    model_config = _example("restriction.lift")
    type: Literal["restriction.lift"]
    body: Annotated[dict[str, Any], TxBody("restriction.lift")]


class ObjectionSetDraft(_Draft):
    model_config = _example("objection.set")
    type: Literal["objection.set"]
    body: Annotated[dict[str, Any], TxBody("objection.set")]


class ObjectionWithdrawDraft(_Draft):
    model_config = _example("objection.withdraw")
    type: Literal["objection.withdraw"]
    body: Annotated[dict[str, Any], TxBody("objection.withdraw")]


DraftIn = Annotated[
    MemberRegisterDraft
    | ConsentGrantDraft
    | ConsentRevokeDraft
    | ErasureRequestDraft
    | RectificationRequestDraft
    | GovernanceProposeDraft
    | GovernanceVoteDraft
    | DeviceRegisterDraft
    | TokenTransferDraft
    | TokenRedeemDraft
    | OfferPublishDraft
    | CouponSpendDraft
    | RestrictionSetDraft
    | RestrictionLiftDraft
    | ObjectionSetDraft
    | ObjectionWithdrawDraft,
    Field(discriminator="type"),
]


class DraftOut(BaseModel):
    type: str
    transaction: str = Field(description="the canonical unsigned transaction (hex)")
    signing_payload: str = Field(description="the exact bytes the author signs (hex)")
    valid_until: int = Field(description="ms since the epoch; submit before then")


class LedgerWriteOut(BaseModel):
    receipt: LedgerReceipt
    result: dict[str, Any] = Field(description="what the consent contracts answered")


class QueryOut(BaseModel):
    height: int = Field(description="the last committed block the answer reflects")
    result: Any


def _out(answer: LedgerAnswer) -> LedgerWriteOut:
    result = {k: v for k, v in answer.result.items() if k not in ("ok", "tx")}
    return LedgerWriteOut(
        receipt=LedgerReceipt(**answer.receipt.as_dict()), result=jsonable(result)
    )


def _relay(ledger: LedgerDep, body: SignedIn, tx_type: str) -> LedgerWriteOut:
    signed = assemble(ledger.chain_id, body.transaction, body.signature, tx_type)
    return _out(ledger.submit(signed.encode()))


@router.post("/drafts", status_code=201)
def make_draft(body: DraftIn, ledger: LedgerDep) -> DraftOut:
    """An unsigned transaction for a member to sign with their own key (no API key needed).

    The body must match its type's schema (`MemberRegisterBody`, `GovernanceProposeBody`...),
    the declaration the contracts check first: a body that does not is refused 422, naming the
    field (`body.voting_ends: must be an integer, milliseconds since 1970, in [...]`)."""
    return DraftOut(**draft(ledger.chain_id, body.type, body.author, body.body, body.valid_for_s))


@router.post("/members", status_code=201)
def register_member(body: SignedIn, ledger: LedgerDep) -> LedgerWriteOut:
    """member.register: residents are admitted at once, legal entities after a vote."""
    return _relay(ledger, body, "member.register")


@router.get("/members/{public_key}")
def show_member(
    public_key: Annotated[str, Path(pattern=PUBLIC_KEY_HEX)], ledger: LedgerDep, _: CurrentMember
) -> QueryOut:
    answer = ledger.query("member", key=bytes.fromhex(public_key))
    return QueryOut(height=answer["height"], result=jsonable(answer["result"]))


@router.post("/governance/proposals", status_code=201)
def propose(body: SignedIn, ledger: LedgerDep) -> LedgerWriteOut:
    """governance.propose: admit a member, approve a purpose, change a retention or validators."""
    return _relay(ledger, body, "governance.propose")


@router.post("/governance/proposals/{proposal}/votes", status_code=201)
def vote(proposal: Annotated[int, Path(ge=1)], body: SignedIn, ledger: LedgerDep) -> LedgerWriteOut:
    """governance.vote: one college, one vote; each college decides by a majority of members."""
    signed = assemble(ledger.chain_id, body.transaction, body.signature, "governance.vote")
    if signed.body.get("proposal") != proposal:
        raise Forbidden("the signed vote is for another proposal")
    return _out(ledger.submit(signed.encode()))


@router.get("/governance/proposals")
def proposals(ledger: LedgerDep, _: CurrentMember) -> QueryOut:
    answer = ledger.query("proposals", limit=1000)
    return QueryOut(height=answer["height"], result=jsonable(answer["result"]))


@router.get("/governance/proposals/{proposal}")
def show_proposal(
    proposal: Annotated[int, Path(ge=1, le=1 << 62)], ledger: LedgerDep, _: CurrentMember
) -> QueryOut:
    answer = ledger.query("proposal", proposal=proposal)
    if answer["result"] is None:
        from vault.errors import NotFound

        raise NotFound(f"proposal {proposal} does not exist")
    return QueryOut(height=answer["height"], result=jsonable(answer["result"]))


@router.post("/consents", status_code=201)
def grant(body: SignedIn, ledger: LedgerDep, session: SessionDep) -> LedgerWriteOut:
    """consent.grant, signed by the subject: in force from the next block.

    Its `notice` is the hash of the notice the subject was shown (`POST /v1/notices`): one
    the vault does not hold, or that names another consumer or purpose, is refused 422
    before anything reaches the ledger (GDPR Art. 7(1): the controller shows what the subject
    consented to). Its `mode` (predicate, projection, full) and `fields` say what it
    discloses, within what its purpose declares (`GET /v1/purposes`); unnamed, the narrowest
    mode the purpose allows, with all its fields. Beyond the purpose: 403 `exceeds_purpose`."""
    signed = assemble(ledger.chain_id, body.transaction, body.signature, "consent.grant")
    notices.check_consent(session, signed.body)
    return _out(ledger.submit(signed.encode()))


@router.post("/consents/revocations", status_code=201)
def revoke(body: SignedIn, ledger: LedgerDep) -> LedgerWriteOut:
    """consent.revoke, signed by the subject: every access from the next block is refused."""
    return _relay(ledger, body, "consent.revoke")


@router.get("/subjects/{subject_id}/consents")
def consents(
    subject_id: Annotated[str, Path(pattern=PUBLIC_KEY_HEX)],
    member: CurrentMember,
    ledger: LedgerDep,
) -> QueryOut:
    """The subject's consents as committed, each with whether it is in force."""
    subject_or_dpo(member, subject_id)
    answer = ledger.query("consents", subject=subject_id)
    return QueryOut(height=answer["height"], result=jsonable(answer["result"]))
