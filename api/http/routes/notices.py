"""Consent notices: what a subject reads before consenting, published by whoever asks.

`POST /v1/notices` (the consumer asking for consent, or a provider for its dataset's
recipients) stores a notice and answers its hash; the subject's wallet reads it
(`GET /v1/notices/{notice_hash}`, any member) and signs a consent.grant naming that hash, which
the consent route checks (api/services/notices.py). The model below is the whole declaration:
a body with another field, a missing right, or a field beyond its bound is refused 422, so a
notice cannot carry a subject's data or anything but what GDPR Art. 13 asks to be told.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path
from pydantic import AfterValidator, BaseModel, Field, StringConstraints

from api.http.bodies import BoundedJsonRoute
from api.http.deps import CurrentMember, LedgerDep, SessionDep, require_role, strict_query
from api.http.schemas import NO_CONTROLS, Name, PublicKeyHex, StrictIn
from api.services import notices
from api.services.keys import Member

router = APIRouter(
    prefix="/v1",
    tags=["consents and governance"],
    dependencies=[Depends(strict_query)],
    route_class=BoundedJsonRoute,
)

HASH_HEX = r"^[0-9a-f]{64}$"


def _text(value: str) -> str:
    # PostgreSQL JSONB holds only valid UTF-8: a lone surrogate (legal in JSON) would be a 500.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("not valid Unicode text") from None
    return value


# Words for a person to read: bounded, no control characters, valid UTF-8.
Short = Annotated[
    str, StringConstraints(min_length=1, max_length=200, pattern=NO_CONTROLS), AfterValidator(_text)
]
Right = Annotated[
    str, StringConstraints(min_length=1, max_length=500, pattern=NO_CONTROLS), AfterValidator(_text)
]
Retention = Annotated[
    str, StringConstraints(min_length=1, max_length=300, pattern=NO_CONTROLS), AfterValidator(_text)
]
PurposeText = Annotated[
    str,
    StringConstraints(min_length=1, max_length=1000, pattern=NO_CONTROLS),
    AfterValidator(_text),
]


class NoticeController(StrictIn):
    name: Short = Field(description="the controller: the cooperative or the provider")
    contact: Short = Field(description="how to reach the controller or its DPO")


# One field per right of NOTICE_RIGHTS (ledger_bridge/contracts/vocabulary.py), each saying in
# words how the subject exercises it.
class NoticeRights(StrictIn):
    access: Right
    rectification: Right
    erasure: Right
    restriction: Right
    objection: Right
    portability: Right
    withdrawal: Right
    complaint: Right = Field(description="the supervisory authority (the CNIL) and how")


class NoticeIn(StrictIn):
    version: Literal[1] = Field(description="the notice format's version")
    controller: NoticeController
    recipient: PublicKeyHex = Field(description="the consumer who receives the data")
    purpose: Name = Field(description="the purpose as the contracts name it")
    purpose_text: PurposeText = Field(description="the purpose in words, for the subject")
    retention: Retention = Field(description="how long the data is kept, in words")
    rights: NoticeRights


class NoticeHashOut(BaseModel):
    notice_hash: str = Field(
        description="SHA-256 of the canonical notice (hex): what a consent names"
    )


class NoticeOut(BaseModel):
    notice_hash: str
    body: dict[str, Any] = Field(description="the notice as published (a NoticeIn)")
    created_at: dt.datetime


NoticeAuthor = Annotated[Member, Depends(require_role("consumer", "provider"))]


@router.post("/notices", status_code=201)
def publish_notice(
    body: NoticeIn, member: NoticeAuthor, session: SessionDep, ledger: LedgerDep
) -> NoticeHashOut:
    """Publish the notice a subject reads before consenting; answers the hash their
    consent.grant names in `notice`. A consumer names itself as `recipient`; a provider any
    registered consumer. The same notice published twice has the same hash."""
    digest = notices.publish(session, member, body.model_dump(), ledger)
    return NoticeHashOut(notice_hash=digest.hex())


@router.get("/notices/{notice_hash}")
def show_notice(
    notice_hash: Annotated[str, Path(pattern=HASH_HEX)], _: CurrentMember, session: SessionDep
) -> NoticeOut:
    """A notice by its hash: any member may read it (notices hold no personal data)."""
    notice = notices.find(session, bytes.fromhex(notice_hash))
    return NoticeOut(notice_hash=notice_hash, body=notice.body, created_at=notice.created_at)
