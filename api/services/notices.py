"""Consent notices: stored by the hash a subject's consent names, and checked against it.

Why the vault keeps them: a consent is informed only if the subject was told the purpose, who
receives the data, for how long, their rights and who the controller is (GDPR Art. 7(1),
13), and the controller must be able to show what was said. The consumer that asks for the
consent (or the provider) publishes the notice; the subject's wallet shows it and signs a
consent.grant naming its hash (ledger_bridge/contracts/notices.py); the consent route refuses a
grant whose notice the vault does not hold or that speaks of another consumer or purpose.
Notices hold no personal data: their fields are a closed, bounded set (the route's model).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from api.http.errors import ApiError, Forbidden
from api.services.keys import Member
from ledger_bridge.contracts.notices import NOTICE_BYTES_MAX, canonical, notice_hash
from vault.models import Notice

if TYPE_CHECKING:
    from api.services.gateway import LedgerGateway


class InvalidNotice(ApiError):
    """A notice that cannot be published, or a consent whose notice does not fit it."""

    status = 422
    title = "Invalid notice"


class NoticeNotFound(ApiError):
    status = 404
    title = "No such notice"


def publish(session: Session, member: Member, body: dict[str, Any], ledger: LedgerGateway) -> bytes:
    """Store `body` (checked for shape by the route) under its hash; the same body published
    twice is the same notice. A consumer publishes the notices naming itself as recipient; a
    provider may publish one for any registered consumer (it informs on its dataset's
    recipients)."""
    recipient: str = body["recipient"]
    if member.role == "consumer" and recipient != member.member_id:
        raise Forbidden("a consumer publishes notices that name itself as the recipient")
    if member.role == "provider":
        found = ledger.query("member", key=bytes.fromhex(recipient))["result"]
        if not found or found.get("role") != "consumer":
            raise InvalidNotice("recipient: not a registered consumer of the cooperative")
    raw = canonical(body)
    if len(raw) > NOTICE_BYTES_MAX:
        raise InvalidNotice(
            f"the notice is {len(raw)} bytes as canonical JSON; at most {NOTICE_BYTES_MAX}"
        )
    digest = notice_hash(body)
    session.execute(
        insert(Notice)
        .values(hash=digest, body=body)
        .on_conflict_do_nothing(index_elements=["hash"])
    )
    return digest


def find(session: Session, digest: bytes) -> Notice:
    notice = session.get(Notice, digest)
    if notice is None:
        raise NoticeNotFound(f"no notice with hash {digest.hex()}")
    return notice


def check_consent(session: Session, grant: dict[str, Any]) -> Notice:
    """The notice a consent.grant body (ledger form) names, refused 422 when the grant names
    none, the vault holds none by that hash, or it tells of another consumer or purpose than
    the grant gives: a subject cannot consent to what they were not told."""
    digest = grant.get("notice")
    if not isinstance(digest, bytes):
        raise InvalidNotice(
            "body.notice: a consent names the hash of the notice the subject was shown "
            "(publish it with POST /v1/notices)"
        )
    notice = session.get(Notice, digest)
    if notice is None:
        raise InvalidNotice(f"body.notice: no notice with hash {digest.hex()} was published")
    if notice.body["recipient"] != grant["consumer"].hex():
        raise InvalidNotice("body.notice: the notice names another recipient than the consumer")
    if notice.body["purpose"] != grant["purpose"]:
        raise InvalidNotice("body.notice: the notice is for another purpose than the consent")
    return notice
