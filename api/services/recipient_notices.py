"""Recipients told (GDPR Art. 17(2), 19): when an erasure (a rectification, a restriction)
touches data a consumer received, the consumer gets a notice signed by the vault's ledger key.

Who: the consumers the ledger's access record says were granted the subject's data in that
dataset (`recipients` query). An erasure everywhere makes the ledger forget the subject's
accesses (invariant 7), so `announce` runs in the erasure's own database transaction, before
the relay submits its fact: the notices and the erasure commit together or not at all.

What: the dataset, the kind, the ids of the subject's records in the dataset (what the
consumer received, and can match; never the pseudonym: docs/SECURITY.md "Recipient notices"),
the purpose and height of the consumer's latest access to them (for a consumer that got only
yes/no answers, to match its receipts), and the ledger fact (type, tx id, height). A notice
waiting for a vault fact the relay has not recorded yet stays unsigned; `seal_ready` signs it
once the fact has its receipt.

How: a consumer reads its own notices (`feed`), or registers a webhook (https, a public
address: `check_webhook_url`, checked again at each delivery against DNS rebinding) to which
`NoticeDelivery`, a background job, POSTs each signed notice with retries and a doubling
delay. Whichever channel gets it to the consumer first marks it delivered. A notice not
delivered after `notice_attempts_max` attempts or `notice_undelivered_hours` is a finding of
the DPO's audit (`findings`, `GET /v1/dpo/recipient-notices`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import logging
import re
import socket
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import httpx
from pydantic import BaseModel, Field
from sqlalchemy import ColumnElement, and_, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from api.client.accountability import notice_message
from api.http.errors import ApiError
from api.services.gateway import LedgerGateway
from api.services.retention_audit import FindingOut
from ledger_bridge.crypto import SigningKey
from vault.models import ConsumerWebhook, OutboxFact, RecipientNotice, Record

_log = logging.getLogger(__name__)
NoticeKind = Literal["erasure", "rectification", "restriction"]
URL_MAX = 2048
DELIVERY_BATCH = 50
FINDINGS_MAX = 1000
FINDING = "recipient-notice-undelivered"
_URL_CHARS = re.compile(r"^[\x21-\x7e]+$")  # printable ASCII, no space: no header smuggling


class InvalidWebhook(ApiError):
    status = 422
    title = "Invalid webhook"


@dataclass(frozen=True, slots=True)
class NoticeFact:
    """The ledger fact a notice names: recorded (`tx_id`, `height`) or, for a vault fact the
    relay has not shipped yet, its outbox id (the notice is signed once it is recorded)."""

    type: str
    outbox_id: int | None = None
    tx_id: str | None = None
    height: int | None = None


def held_records(
    session: Session, subject: str, dataset_id: uuid.UUID | None
) -> dict[uuid.UUID, list[str]]:
    """The ids of `subject`'s records, by dataset (in `dataset_id` only, when given): read
    before an erasure, which rewrites the rows to a forgotten id."""
    query = select(Record.dataset_id, Record.id).where(Record.subject_id == subject)
    if dataset_id is not None:
        query = query.where(Record.dataset_id == dataset_id)
    out: dict[uuid.UUID, list[str]] = {}
    for dataset, record_id in session.execute(query):
        out.setdefault(dataset, []).append(str(record_id))
    return {d: sorted(ids) for d, ids in sorted(out.items(), key=lambda kv: str(kv[0]))}


def announce(
    session: Session,
    ledger: LedgerGateway,
    dataset_id: uuid.UUID,
    subject: str,
    kind: NoticeKind,
    fact: NoticeFact,
    *,
    records: Iterable[str] | None = None,
) -> list[int]:
    """One notice per consumer that was granted `subject`'s data in `dataset_id`, in the
    caller's transaction; returns their ids. `records`: the ids of the records concerned
    (default: the subject's records in the dataset as the rows name them now; an erasure
    passes those it read with `held_records` before forgetting the subject)."""
    found = ledger.query("recipients", subject=subject, dataset=str(dataset_id))["result"]
    # Per consumer, the purposes and heights of its accesses to the subject's data: what a
    # consumer that got only yes/no answers (no record ids) matches against its receipts.
    accesses: dict[str, dict[str, list[Any]]] = {
        bytes(row["consumer"]).hex(): {
            "purposes": [str(p) for p in row["purposes"]],
            "heights": [int(h) for h in row["heights"]],
        }
        for row in found
    }
    consumers = sorted(accesses)
    if not consumers:
        return []
    if records is None:
        records = held_records(session, subject, dataset_id).get(dataset_id, [])
    ids = sorted(records)
    content: dict[str, Any] = {
        "v": 1,
        "chain_id": ledger.chain_id,
        "dataset": str(dataset_id),
        "kind": kind,
        "records": ids,
    }
    if fact.tx_id is not None and fact.height is not None:
        content["fact"] = {"type": fact.type, "tx_id": fact.tx_id, "height": fact.height}
    notices = [
        RecipientNotice(
            consumer=consumer,
            kind=kind,
            dataset_id=dataset_id,
            body={**content, "consumer": consumer, "accesses": accesses[consumer]},
            fact_type=fact.type,
            outbox_id=fact.outbox_id,
        )
        for consumer in consumers
    ]
    session.add_all(notices)
    session.flush()
    if "fact" in content:
        seal_ready(session, ledger.vault_key)
    return [n.id for n in notices]


def seal_ready(session: Session, key: SigningKey, *, consumer: str | None = None) -> int:
    """Sign every notice whose fact is on the ledger (of `consumer` only, when given)."""
    query = (
        select(RecipientNotice, OutboxFact)
        .outerjoin(OutboxFact, OutboxFact.id == RecipientNotice.outbox_id)
        .where(
            RecipientNotice.signature.is_(None),
            or_(RecipientNotice.outbox_id.is_(None), OutboxFact.sent_at.is_not(None)),
        )
        .order_by(RecipientNotice.id)
        .with_for_update(of=RecipientNotice, skip_locked=True)
    )
    if consumer is not None:
        query = query.where(RecipientNotice.consumer == consumer)
    sealed = 0
    now = dt.datetime.now(dt.UTC)
    for notice, fact in session.execute(query).all():
        body = dict(notice.body)
        if "fact" not in body:
            if fact is None or fact.tx_id is None or fact.block_height is None:
                continue  # no outbox fact and no receipt: nothing to name yet
            body["fact"] = {"type": fact.kind, "tx_id": fact.tx_id, "height": fact.block_height}
        body |= {"notice": notice.id, "issuer": key.public_key.hex(), "issued_at": now.isoformat()}
        notice.body = body
        notice.signature = key.sign(notice_message(body))
        notice.sealed_at = now
        sealed += 1
    session.flush()
    return sealed


# -- webhooks ---------------------------------------------------------------------------------


def _public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def resolve(host: str, port: int, *, allow_local: bool) -> list[str]:
    """The addresses `host` resolves to now, all of them public unless `allow_local`."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise InvalidWebhook("the webhook's host does not resolve") from None
    addresses = sorted({str(info[4][0]) for info in infos})
    for address in addresses:
        if not allow_local and not _public(ipaddress.ip_address(address.split("%")[0])):
            raise InvalidWebhook(
                "the webhook's host resolves to a private, loopback or reserved address"
            )
    if not addresses:
        raise InvalidWebhook("the webhook's host does not resolve")
    return addresses


def check_webhook_url(url: str, *, allow_local: bool) -> tuple[str, str, int]:
    """(scheme, host, port) of a webhook URL the vault may call, or InvalidWebhook (422)."""
    if len(url) > URL_MAX or not _URL_CHARS.fullmatch(url):
        raise InvalidWebhook(f"a webhook is a URL of at most {URL_MAX} printable characters")
    parts = urlsplit(url)
    allowed = ("https", "http") if allow_local else ("https",)
    if parts.scheme not in allowed:
        raise InvalidWebhook("a webhook is an https:// URL")
    if parts.username is not None or parts.password is not None or parts.fragment:
        raise InvalidWebhook("a webhook URL carries no credentials and no fragment")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise InvalidWebhook("the webhook's port is not a port") from None
    if not parts.hostname:
        raise InvalidWebhook("a webhook URL names a host")
    resolve(parts.hostname, port, allow_local=allow_local)
    return parts.scheme, parts.hostname, port


class WebhookOut(BaseModel):
    url: str | None = Field(description="where your notices are POSTed; null: feed only")
    updated_at: dt.datetime | None


def set_webhook(
    session: Session, consumer: str, url: str | None, *, allow_local: bool
) -> WebhookOut:
    """Register (or with None, remove) `consumer`'s webhook."""
    found = session.get(ConsumerWebhook, consumer)
    if url is None:
        if found is not None:
            session.delete(found)
        return WebhookOut(url=None, updated_at=None)
    check_webhook_url(url, allow_local=allow_local)
    now = dt.datetime.now(dt.UTC)
    if found is None:
        session.add(ConsumerWebhook(consumer=consumer, url=url, updated_at=now))
    else:
        found.url, found.updated_at = url, now
    # Notices that gave up on the old address get a fresh start on the new one.
    session.execute(
        update(RecipientNotice)
        .where(RecipientNotice.consumer == consumer, RecipientNotice.delivered_at.is_(None))
        .values(attempts=0, next_attempt_at=None)
    )
    return WebhookOut(url=url, updated_at=now)


def post_notice(url: str, payload: bytes, *, timeout_s: float, allow_local: bool) -> int:
    """POST `payload` to `url` at an address checked just now (a name that resolved to a public
    address at registration may resolve elsewhere later); no redirect is followed. Returns
    the status; raises InvalidWebhook or httpx's errors.

    Bounded whatever the endpoint does: the status is all that is read (a body, however long,
    is never read), and the whole exchange ends within `timeout_s`, not each read within it
    (a server trickling a byte at a time would otherwise hold the delivery for ever): past
    it, the connection's socket is shut down under the waiting read."""
    scheme, host, port = check_webhook_url(url, allow_local=allow_local)
    address = resolve(host, port, allow_local=allow_local)[0]
    parts = urlsplit(url)
    literal = f"[{address}]" if ":" in address else address
    target = urlunsplit((scheme, f"{literal}:{port}", parts.path or "/", parts.query, ""))
    headers = {"Host": parts.netloc, "Content-Type": "application/json"}
    opened: list[socket.socket] = []

    def trace(event: str, info: dict[str, Any]) -> None:
        if event in ("connection.connect_tcp.complete", "connection.start_tls.complete"):
            opened.append(info["return_value"].get_extra_info("socket"))

    extensions: dict[str, Any] = {"trace": trace}
    if scheme == "https":
        extensions["sni_hostname"] = host
    deadline = threading.Timer(timeout_s, _shut_down, args=(opened,))
    deadline.start()
    try:
        with (
            httpx.Client(timeout=timeout_s, follow_redirects=False, trust_env=False) as client,
            client.stream(
                "POST", target, content=payload, headers=headers, extensions=extensions
            ) as answer,
        ):
            return answer.status_code
    finally:
        deadline.cancel()


def _shut_down(sockets: list[socket.socket]) -> None:
    # A socket closed already (a TLS wrap takes its plain socket over) refuses: nothing to do.
    for sock in sockets:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


# -- delivery -------------------------------------------------------------------------------


class NoticeOut(BaseModel):
    id: int
    kind: NoticeKind
    dataset_id: uuid.UUID
    created_at: dt.datetime
    body: dict[str, Any] = Field(description="what the vault's ledger key signed")
    signature: str = Field(
        description="hex Ed25519 over the body (api/client/accountability.py verify_notice)"
    )
    issuer: str = Field(description="the vault's ledger key (hex): check it is the genesis's")


class NoticeFeed(BaseModel):
    notices: list[NoticeOut]
    next_after: int | None = Field(description="pass as `after` for the next page")


def _out(n: RecipientNotice) -> NoticeOut:
    assert n.signature is not None  # only signed notices leave
    return NoticeOut(
        id=n.id,
        kind=n.kind,  # type: ignore[arg-type]  # the table's CHECK constraint bounds it
        dataset_id=n.dataset_id,
        created_at=n.created_at,
        body=n.body,
        signature=bytes(n.signature).hex(),
        issuer=str(n.body.get("issuer", "")),
    )


def feed(session: Session, key: SigningKey, consumer: str, *, after: int, limit: int) -> NoticeFeed:
    """`consumer`'s signed notices with an id past `after`, oldest first; reading them is
    their delivery, unless a webhook delivered them first."""
    seal_ready(session, key, consumer=consumer)
    notices = list(
        session.scalars(
            select(RecipientNotice)
            .where(
                RecipientNotice.consumer == consumer,
                RecipientNotice.signature.is_not(None),
                RecipientNotice.id > after,
            )
            .order_by(RecipientNotice.id)
            .limit(limit + 1)
        )
    )
    more = len(notices) > limit
    notices = notices[:limit]
    now = dt.datetime.now(dt.UTC)
    for n in notices:
        if n.delivered_at is None:
            n.delivered_at, n.delivered_via = now, "feed"
    session.flush()
    return NoticeFeed(
        notices=[_out(n) for n in notices], next_after=notices[-1].id if more else None
    )


@dataclass(frozen=True, slots=True)
class DeliveryPolicy:
    attempts_max: int = 8
    retry_base_s: float = 30.0
    retry_max_s: float = 3600.0
    timeout_s: float = 10.0
    allow_local: bool = False

    def delay(self, attempts: int) -> dt.timedelta:
        """The wait after the `attempts`-th failure: doubling from the base, capped."""
        seconds = self.retry_base_s * 2 ** min(max(attempts - 1, 0), 30)
        return dt.timedelta(seconds=min(seconds, self.retry_max_s))


class NoticeDelivery:
    """The background job: sign what is ready, then POST due notices to their webhooks.

    Each run claims a few due notices (`FOR UPDATE SKIP LOCKED`, so several instances take
    different ones) by moving their next attempt one timeout ahead, and commits; the POSTs
    run outside any transaction; each outcome is then written in its own. A crash between the
    two leaves the notice due again after that timeout: at least once, never lost (a consumer
    tells a repeat by the notice's number)."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        key: SigningKey,
        policy: DeliveryPolicy,
        *,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self._sessions = sessions
        self._key = key
        self._policy = policy
        self._clock = clock

    def run_once(self) -> int:
        """Deliver what is due; returns how many notices were delivered."""
        with self._sessions() as session, session.begin():
            seal_ready(session, self._key)
        delivered = 0
        for notice_id, url, payload in self._claim():
            delivered += self._deliver(notice_id, url, payload)
        return delivered

    def _claim(self) -> list[tuple[int, str, bytes]]:
        now = self._clock()
        lease = now + dt.timedelta(seconds=self._policy.timeout_s * 2)
        due = and_(
            RecipientNotice.delivered_at.is_(None),
            RecipientNotice.signature.is_not(None),
            RecipientNotice.attempts < self._policy.attempts_max,
            or_(RecipientNotice.next_attempt_at.is_(None), RecipientNotice.next_attempt_at <= now),
        )
        with self._sessions() as session, session.begin():
            rows = session.execute(
                select(RecipientNotice, ConsumerWebhook.url)
                .join(ConsumerWebhook, ConsumerWebhook.consumer == RecipientNotice.consumer)
                .where(due)
                .order_by(RecipientNotice.id)
                .limit(DELIVERY_BATCH)
                .with_for_update(of=RecipientNotice, skip_locked=True)
            ).all()
            claimed = []
            for notice, url in rows:
                notice.next_attempt_at, notice.webhook_url = lease, url
                payload = _out(notice).model_dump_json().encode()
                claimed.append((notice.id, url, payload))
        return claimed

    def _deliver(self, notice_id: int, url: str, payload: bytes) -> int:
        policy = self._policy
        try:
            status = post_notice(
                url, payload, timeout_s=policy.timeout_s, allow_local=policy.allow_local
            )
            error = None if 200 <= status < 300 else f"HTTP {status}"
        except InvalidWebhook as exc:
            error = exc.detail
        except httpx.HTTPError as exc:  # the type only: a message may quote the address
            error = type(exc).__name__
        now = self._clock()
        with self._sessions() as session, session.begin():
            notice = session.get(RecipientNotice, notice_id, with_for_update=True)
            if notice is None or notice.delivered_at is not None:
                return 0
            notice.attempts += 1
            notice.last_error = error
            if error is None:
                notice.delivered_at, notice.delivered_via = now, "webhook"
                notice.next_attempt_at = None
                return 1
            notice.next_attempt_at = now + policy.delay(notice.attempts)
        _log.warning("recipient notice %d not delivered (%s)", notice_id, error)
        return 0


# -- the DPO's view ---------------------------------------------------------------------------


class NoticeStatus(BaseModel):
    id: int
    consumer: str
    kind: NoticeKind
    dataset_id: uuid.UUID
    fact_type: str
    state: Literal["awaiting_fact", "undelivered", "delivered"] = Field(
        description="awaiting_fact: unsigned until its ledger fact is recorded"
    )
    created_at: dt.datetime
    sealed_at: dt.datetime | None
    delivered_at: dt.datetime | None
    delivered_via: Literal["webhook", "feed"] | None
    attempts: int
    next_attempt_at: dt.datetime | None
    last_error: str | None
    webhook: bool = Field(description="whether the consumer has a webhook registered")


class DpoNotices(BaseModel):
    notices: list[NoticeStatus]
    findings: list[FindingOut] = Field(
        description=f"`{FINDING}`: not delivered after the attempts or the hours allowed"
    )
    next_after: int | None


def _state(n: RecipientNotice) -> Literal["awaiting_fact", "undelivered", "delivered"]:
    if n.delivered_at is not None:
        return "delivered"
    return "undelivered" if n.signature is not None else "awaiting_fact"


def overdue(policy: DeliveryPolicy, hours: float, now: dt.datetime) -> ColumnElement[bool]:
    """Notices the audit finds: undelivered after every attempt, or for `hours`."""
    return and_(
        RecipientNotice.delivered_at.is_(None),
        or_(
            RecipientNotice.attempts >= policy.attempts_max,
            RecipientNotice.created_at < now - dt.timedelta(hours=hours),
        ),
    )


def findings(
    session: Session, policy: DeliveryPolicy, hours: float, now: dt.datetime
) -> list[FindingOut]:
    """The overdue notices (`overdue`), oldest first, at most FINDINGS_MAX of them."""
    rows = session.scalars(
        select(RecipientNotice)
        .where(overdue(policy, hours, now))
        .order_by(RecipientNotice.id)
        .limit(FINDINGS_MAX)
    )
    return [
        FindingOut(
            code=FINDING,
            detail=f"recipient notice {n.id} ({n.kind}) to consumer {n.consumer} is "
            f"{_state(n).replace('_', ' ')} after {n.attempts} attempt(s)",
            refs={"notice_id": str(n.id), "consumer": n.consumer, "dataset_id": str(n.dataset_id)},
        )
        for n in rows
    ]


def dpo_status(
    session: Session,
    policy: DeliveryPolicy,
    hours: float,
    *,
    undelivered_only: bool,
    after: int,
    limit: int,
) -> DpoNotices:
    query = select(RecipientNotice).where(RecipientNotice.id > after)
    if undelivered_only:
        query = query.where(RecipientNotice.delivered_at.is_(None))
    notices = list(session.scalars(query.order_by(RecipientNotice.id).limit(limit + 1)))
    more = len(notices) > limit
    notices = notices[:limit]
    hooked = set(
        session.scalars(
            select(ConsumerWebhook.consumer).where(
                ConsumerWebhook.consumer.in_({n.consumer for n in notices})
            )
        )
    )
    return DpoNotices(
        notices=[
            NoticeStatus(
                id=n.id,
                consumer=n.consumer,
                kind=n.kind,  # type: ignore[arg-type]
                dataset_id=n.dataset_id,
                fact_type=n.fact_type,
                state=_state(n),
                created_at=n.created_at,
                sealed_at=n.sealed_at,
                delivered_at=n.delivered_at,
                delivered_via=n.delivered_via,  # type: ignore[arg-type]
                attempts=n.attempts,
                next_attempt_at=n.next_attempt_at,
                last_error=n.last_error,
                webhook=n.consumer in hooked,
            )
            for n in notices
        ],
        findings=findings(session, policy, hours, dt.datetime.now(dt.UTC)),
        next_after=notices[-1].id if more else None,
    )
