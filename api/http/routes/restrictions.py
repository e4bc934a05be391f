"""Restriction (GDPR Art. 18) and objection (Art. 21): the subject's signed word, the DPO's
answers, and the standing both of them read.

- `POST /v1/subjects/{subject_id}/restrictions` relays a `restriction.set` or
  `restriction.lift`, and `POST /v1/subjects/{subject_id}/objections` an `objection.set` or
  `objection.withdraw`, that the subject signed with their own key (a draft from
  `POST /v1/drafts`, as for a consent). No API key: the signature is the authentication and
  the contracts the authorisation. The transaction's author must be the subject in the path
  (403 otherwise), so nobody restricts or objects in another's name; a forged signature is 403,
  a replay 409 `replayed`, lifting or withdrawing what is not in force 409 `not_restricted` /
  `not_objected`, an objection where the dataset's legal basis is not public task or
  legitimate interests 409 `basis_is_consent`. Each takes effect from the next block.
- `POST /v1/dpo/restriction-exemptions` (Art. 18(2): the provider's own reads for legal claims,
  until a time; never a consumer's access) and `POST /v1/dpo/objection-overrides` (the DPO's
  compelling legitimate grounds, on the ledger and shown to the subject): the DPO orders, the
  vault's ledger key signs, as for an erasure.
- `GET /v1/subjects/{subject_id}/restrictions`: the subject or the DPO read the standing in
  every dataset: restriction and ground, objection, override and its grounds, exemption.

While processing is stopped, the contracts grant no consumer the subject in that dataset, and
the vault withholds their records from the provider's own reads (api/services/restrictions.py).
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path
from pydantic import AfterValidator, BaseModel, Field, StringConstraints
from sqlalchemy.orm import Session

from api.http.bodies import BoundedJsonRoute
from api.http.deps import CurrentMember, Dpo, LedgerDep, SessionDep, strict_query, subject_or_dpo
from api.http.errors import Forbidden
from api.http.schemas import (
    PUBLIC_KEY_HEX,
    LedgerReceipt,
    PublicKeyHex,
    SignedIn,
    StrictIn,
    UuidIn,
    utf8_text,
)
from api.http.signed import assemble
from api.services import recipient_notices, requests
from api.services.gateway import LedgerAnswer, LedgerGateway, jsonable
from api.services.recipient_notices import NoticeFact
from api.services.restrictions import withheld
from ledger_bridge.contracts import bodies, tx
from ledger_bridge.contracts.vocabulary import ExemptionGround, RestrictionGround

router = APIRouter(
    prefix="/v1",
    tags=["restriction and objection"],
    dependencies=[Depends(strict_query)],
    route_class=BoundedJsonRoute,
)

SubjectId = Annotated[str, Path(pattern=PUBLIC_KEY_HEX, description="the subject's key (hex)")]


class RestrictionWriteOut(BaseModel):
    receipt: LedgerReceipt
    result: dict[str, Any] = Field(
        description="what the contracts answered: `effective_from_height` (and `ground`, `until`)"
    )


class Override(BaseModel):
    grounds: str = Field(description="the DPO's compelling legitimate grounds (Art. 21(1))")
    height: int = Field(description="the block that recorded the override")
    tx: str = Field(description="the objection.override transaction (hex id)")


class Exemption(BaseModel):
    ground: ExemptionGround
    until: int = Field(description="its end, ms since 1970")
    height: int = Field(description="the block that recorded the exemption")
    tx: str = Field(description="the restriction.exempt transaction (hex id)")


class Standing(BaseModel):
    """A subject's standing in one dataset, as the contracts hold it for the next block."""

    subject: str
    dataset: str
    ground: RestrictionGround | None = Field(description="the restriction's ground, if any")
    restricted_at: int | None = Field(description="the block that set the restriction")
    objected: bool
    objected_at: int | None = Field(description="the block that recorded the objection")
    override: Override | None
    exemption: Exemption | None
    processing_stopped: bool = Field(
        description="no consumer is granted the subject's data in this dataset"
    )
    provider_reads_withheld: bool = Field(
        description="the provider's own reads leave the subject's records out now (no live "
        "legal-claims exemption)"
    )
    changed_at_height: int


class RestrictionsOut(BaseModel):
    height: int = Field(description="the last committed block the answer reflects")
    restrictions: list[Standing]


class ExemptionIn(StrictIn):
    """The DPO's order: the provider may read the subject's records in the dataset, for legal
    claims, until `until` (ms since 1970)."""

    dataset: UuidIn
    subject: PublicKeyHex
    ground: ExemptionGround = "legal_claims"
    until: Annotated[int, Field(ge=0, le=bodies.TIME_MAX_MS)]


class OverrideIn(StrictIn):
    """The DPO's compelling legitimate grounds, which let processing go on despite the
    subject's objection. The ledger holds them and the subject reads them: no personal data."""

    dataset: UuidIn
    subject: PublicKeyHex
    grounds: Annotated[
        str,
        StringConstraints(
            min_length=1, max_length=bodies.GROUNDS_MAX_CHARS, pattern=bodies.TEXT_PATTERN
        ),
        AfterValidator(utf8_text),
    ]


def _out(answer: LedgerAnswer) -> RestrictionWriteOut:
    result = {k: v for k, v in answer.result.items() if k not in ("ok", "tx")}
    return RestrictionWriteOut(
        receipt=LedgerReceipt(**answer.receipt.as_dict()), result=jsonable(result)
    )


def _relay(
    ledger: LedgerGateway,
    session: Session,
    subject_id: str,
    body: SignedIn,
    types: tuple[str, ...],
) -> RestrictionWriteOut:
    signed = assemble(ledger.chain_id, body.transaction, body.signature, types)
    if signed.author.hex() != subject_id:
        raise Forbidden(
            "the transaction's author is not the subject in the path: a subject restricts or "
            "objects with their own key, for themselves only"
        )
    answer = ledger.submit(signed.encode())
    if signed.type in ("restriction.set", "objection.set"):
        _registered_and_told(ledger, session, subject_id, signed, answer)
    return _out(answer)


def _registered_and_told(
    ledger: LedgerGateway,
    session: Session,
    subject_id: str,
    signed: tx.SignedTx,
    answer: LedgerAnswer,
) -> None:
    """The request in the register (Art. 12(3)), answered as the ledger committed it; and,
    for a restriction, each consumer that received the subject's data there told (Art. 19)."""
    dataset = uuid.UUID(str(signed.body["dataset"]))
    now = dt.datetime.now(dt.UTC)
    made = requests.LedgerFact(
        type=signed.type, tx_id=answer.receipt.tx_id, height=answer.receipt.block_height
    )
    kind: Literal["restriction", "objection"] = (
        "restriction" if signed.type == "restriction.set" else "objection"
    )
    opened = requests.open_request(session, kind, subject_id, dataset, now, made)
    requests.close_request(session, opened, "done", at=now)
    if kind == "restriction":
        fact = NoticeFact(signed.type, tx_id=made.tx_id, height=made.height)
        recipient_notices.announce(session, ledger, dataset, subject_id, "restriction", fact)


@router.post("/subjects/{subject_id}/restrictions", status_code=201)
def restrict(
    subject_id: SubjectId, body: SignedIn, ledger: LedgerDep, session: SessionDep
) -> RestrictionWriteOut:
    """restriction.set (with its Art. 18(1) ground; set again to change it) or
    restriction.lift, signed by the subject: no consumer gets their data in that dataset, and
    the provider reads none of it, from the next block until lifted."""
    return _relay(ledger, session, subject_id, body, ("restriction.set", "restriction.lift"))


@router.post("/subjects/{subject_id}/objections", status_code=201)
def object_(
    subject_id: SubjectId, body: SignedIn, ledger: LedgerDep, session: SessionDep
) -> RestrictionWriteOut:
    """objection.set or objection.withdraw, signed by the subject (Art. 21(1)): only where the
    dataset's legal basis is public_task or legitimate_interests (409 `basis_is_consent`
    otherwise: withdraw consent instead). Processing stops from the next block until the
    subject withdraws or the DPO overrides it."""
    return _relay(ledger, session, subject_id, body, ("objection.set", "objection.withdraw"))


@router.get("/subjects/{subject_id}/restrictions")
def restrictions(
    subject_id: SubjectId, member: CurrentMember, ledger: LedgerDep
) -> RestrictionsOut:
    """The subject's restrictions, objections, the DPO's overrides with their grounds and
    exemptions, in every dataset (the subject or the DPO)."""
    subject_or_dpo(member, subject_id)
    answer = ledger.query("restrictions", subject=subject_id)
    out = [Standing(**jsonable(s), provider_reads_withheld=withheld(s)) for s in answer["result"]]
    return RestrictionsOut(height=answer["height"], restrictions=out)


@router.post("/dpo/restriction-exemptions", status_code=201)
def exempt(body: ExemptionIn, member: Dpo, ledger: LedgerDep) -> RestrictionWriteOut:
    """restriction.exempt on the DPO's order (Art. 18(2)): the provider may read the
    subject's records in the dataset until `until`, for legal claims; consumers stay refused.
    409 `not_restricted` when nothing stops processing of the subject there."""
    tx_body = {
        "dataset": str(body.dataset),
        "subject": body.subject,
        "ground": body.ground,
        "until": body.until,
    }
    return _out(ledger.act("restriction.exempt", tx_body))


@router.post("/dpo/objection-overrides", status_code=201)
def override(body: OverrideIn, member: Dpo, ledger: LedgerDep) -> RestrictionWriteOut:
    """objection.override on the DPO's order: processing goes on despite the objection, from
    the next block, on the grounds given (shown to the subject). 409 `not_objected` without an
    objection in force, `already_overridden` once answered."""
    tx_body = {"dataset": str(body.dataset), "subject": body.subject, "grounds": body.grounds}
    return _out(ledger.act("objection.override", tx_body))
