"""Recipients told (GDPR Art. 17(2), 19): a consumer's notices of erasures touching data it
received, its webhook, and the DPO's view of their delivery (api/services/recipient_notices.py).

Why the DPO's route is here rather than in routes/dpo.py: one module for one feature, from
the consumer's side to the DPO's, as the service behind them is one.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query
from pydantic import Field

from api.http.bodies import BoundedJsonRoute
from api.http.deps import Consumer, Dpo, LedgerDep, SessionDep, SettingsDep, strict_query
from api.http.schemas import StrictIn
from api.http.settings import Settings
from api.services import recipient_notices as notices
from api.services.identity import ledger_identity
from api.services.recipient_notices import DpoNotices, NoticeFeed, WebhookOut

router = APIRouter(
    prefix="/v1",
    tags=["access"],
    dependencies=[Depends(strict_query)],
    route_class=BoundedJsonRoute,
)
dpo_router = APIRouter(
    prefix="/v1", tags=["dpo"], dependencies=[Depends(strict_query)], route_class=BoundedJsonRoute
)
LIMIT_MAX = 1000


class WebhookIn(StrictIn):
    url: Annotated[str, Field(max_length=notices.URL_MAX)] | None = Field(
        description="https URL at a public address that receives each notice as a POST "
        "(the feed's item, JSON); null removes it"
    )


def policy(settings: Settings) -> notices.DeliveryPolicy:
    return notices.DeliveryPolicy(
        attempts_max=settings.notice_attempts_max,
        retry_base_s=settings.notice_retry_base_s,
        retry_max_s=settings.notice_retry_max_s,
        timeout_s=settings.webhook_timeout_s,
        allow_local=settings.webhook_allow_local,
    )


@router.get("/recipient-notices")
def recipient_notices(
    member: Consumer,
    session: SessionDep,
    ledger: LedgerDep,
    after: Annotated[int, Query(ge=0, le=2**62)] = 0,
    limit: Annotated[int, Query(ge=1, le=LIMIT_MAX)] = 100,
) -> NoticeFeed:
    """Your notices (erasures of data you received), signed by the vault's ledger key, oldest
    first; poll with `after` = the last id you read. Reading one delivers it."""
    consumer = ledger_identity(member).hex()
    return notices.feed(session, ledger.vault_key, consumer, after=after, limit=limit)


@router.put("/consumers/me/webhook")
def webhook(
    body: WebhookIn, member: Consumer, session: SessionDep, settings: SettingsDep
) -> WebhookOut:
    """Where the vault POSTs your notices (retried with a doubling delay until a 2xx), besides
    the feed. https only, to a public address: a URL that is not, or does not resolve, is 422."""
    consumer = ledger_identity(member).hex()
    return notices.set_webhook(
        session, consumer, body.url, allow_local=settings.webhook_allow_local
    )


@dpo_router.get("/dpo/recipient-notices")
def dpo_recipient_notices(
    member: Dpo,
    session: SessionDep,
    settings: SettingsDep,
    undelivered: bool = False,
    after: Annotated[int, Query(ge=0, le=2**62)] = 0,
    limit: Annotated[int, Query(ge=1, le=LIMIT_MAX)] = 100,
) -> DpoNotices:
    """Every recipient notice with its delivery status (oldest first; `undelivered=true` for
    those not delivered yet), and the findings: notices not delivered after
    `notice_attempts_max` attempts or `notice_undelivered_hours`."""
    return notices.dpo_status(
        session,
        policy(settings),
        settings.notice_undelivered_hours,
        undelivered_only=undelivered,
        after=after,
        limit=limit,
    )
