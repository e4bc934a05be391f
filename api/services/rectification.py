"""Art. 16 rectification as the API carries it out: the ledger checked before, the vault's
transaction, the ledger's record after.

Order, and why: everything the contracts will check of the subject's request is read from the
ledger BEFORE the vault changes anything (the request exists, is open, is for this dataset,
this subject and this record or an earlier version of it), so a refusal there changes nothing.
Then the vault re-keys the subject and queues the replacement uploads' anchors and the
`record.rectify` fact in one transaction (vault/rectification.py), which the outbox relay
records on the ledger exactly once; the answer waits up to `receipt_wait_s` for it. The same
transaction records the decryption the re-keying made, and tells every consumer the ledger's
access record says received the subject's data in the dataset (GDPR Art. 19), by a notice
naming the rectified record's ids (api/services/recipient_notices.py), signed once the fact is
recorded; when the ledger cannot say who received it, the rectification is refused (503)
rather than done with nobody told.

What a rectification needs of the subject's own request: the subject signs a
`rectification.request` naming the dataset, the record (as their export showed it) and the
hash of their statement of what is wrong; the API relays it (`relay_request`) after checking
that the record is theirs in that dataset, so the contracts never hold a request for someone
else's record. The provider or the DPO then carries it out, naming the request.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from api.http.errors import Forbidden
from api.services import decryptions, recipient_notices
from api.services.gateway import LedgerAnswer, LedgerGateway, LedgerUnavailable
from api.services.keys import Member
from api.services.outbox import wait_for_receipt
from api.services.recipient_notices import NoticeFact
from ledger_bridge.contracts import tx
from ledger_bridge.facts import RECORD_RECTIFY
from vault.errors import NotFound, RecordNotFound, RectificationRefused
from vault.keys import KeyStore
from vault.models import OutboxFact, Record
from vault.reads import VERSIONS_MAX, current_version
from vault.rectification import Rectification, rectify
from vault.uploads import Uploader

if TYPE_CHECKING:
    from api.services.jobs import BackgroundJobs


def check_request(
    ledger: LedgerGateway | None,
    session: Session,
    request: int,
    dataset_id: uuid.UUID,
    record_id: uuid.UUID,
) -> None:
    """The subject's request as the ledger holds it matches this rectification, or a 404/409
    before anything changes."""
    if ledger is None:
        raise LedgerUnavailable("a subject's request lives on the ledger; this instance has none")
    found: dict[str, Any] | None = ledger.query("rectification_request", request=request)["result"]
    if found is None:
        raise NotFound(f"rectification request {request} does not exist")
    if found["status"] != "open":
        raise RectificationRefused(f"rectification request {request} is {found['status']}")
    if found["dataset"] != str(dataset_id):
        raise RectificationRefused(f"rectification request {request} is for another dataset")
    row = session.get(Record, record_id)
    if row is None or row.subject_id != found.get("subject"):
        raise RectificationRefused(f"rectification request {request} is another subject's")
    try:
        named = uuid.UUID(found["record"])
    except (ValueError, KeyError):
        raise RectificationRefused(f"rectification request {request} names no record") from None
    if current_version(session, named) != record_id:
        raise RectificationRefused(f"rectification request {request} names another record")


def earlier_versions(session: Session, record_id: uuid.UUID) -> list[str]:
    """`record_id` and every version before it (the records whose `superseded_by` chain leads
    to it): whichever of them a consumer received, its notice names it."""
    chain = [record_id]
    for _ in range(VERSIONS_MAX):
        before = session.scalar(select(Record.id).where(Record.superseded_by == chain[-1]))
        if before is None:
            break
        chain.append(before)
    return [str(r) for r in chain]


@dataclass(frozen=True, slots=True)
class Outcome:
    """A rectification done in the vault, and where its ledger record stands."""

    done: Rectification
    fact: OutboxFact

    @property
    def state(self) -> Literal["pending", "anchored", "refused"]:
        ledger_state = self.fact.ledger_state
        return "anchored" if ledger_state == "recorded" else ledger_state


def carry_out(
    sessions: sessionmaker[Session],
    store: KeyStore,
    uploader: Uploader,
    *,
    ledger: LedgerGateway | None,
    jobs: BackgroundJobs | None,
    dataset_id: uuid.UUID,
    record_id: uuid.UUID,
    corrected: dict[str, Any],
    request: int | None,
    requester: Member,
    wait_s: float,
) -> Outcome:
    """Check, rectify in one committed transaction, ship, wait for the ledger's record.

    Re-keying decrypts every current record of the subject in the dataset: that decryption is
    recorded in the same transaction (invariant 10), as a read by whoever ordered it; and each
    consumer that received the subject's data there is told (GDPR Art. 19)."""
    with sessions() as session, session.begin():
        if request is not None:
            check_request(ledger, session, request, dataset_id, record_id)
        done = rectify(
            session,
            store,
            dataset_id,
            record_id,
            corrected,
            request=request,
            requester=requester.role,
            uploader=uploader,
            anchored_only=ledger is not None,
        )
        kind: decryptions.Kind = "dpo_read" if requester.role == "dpo" else "provider_read"
        decryptions.record_decryptions(
            session, requester, kind, [(done.subject_id, dataset_id, len(done.versions))]
        )
        if ledger is not None:
            fact = NoticeFact(RECORD_RECTIFY, outbox_id=done.outbox_id)
            told = earlier_versions(session, done.replaced)
            subject = done.subject_id
            recipient_notices.announce(
                session, ledger, dataset_id, subject, "rectification", fact, records=told
            )
    if jobs is not None:
        jobs.kick()
    return Outcome(done, wait_for_receipt(sessions, done.outbox_id, wait_s))


def relay_request(
    ledger: LedgerGateway, session: Session, subject_id: str, signed: tx.SignedTx
) -> LedgerAnswer:
    """Relay the subject's signed request, once the record it names is theirs in that dataset
    and not erased (404 otherwise, whether it exists or not: no oracle on others' records)."""
    if signed.author.hex() != subject_id:
        raise Forbidden("the request is signed by another key than the subject's")
    body = signed.body
    try:
        record_id = uuid.UUID(str(body["record"]))
    except ValueError:
        raise RecordNotFound("the request names no record of this subject") from None
    row = session.get(Record, record_id)
    if row is None or str(row.dataset_id) != body["dataset"] or row.subject_id != subject_id:
        raise RecordNotFound(f"record {record_id} is no record of this subject in that dataset")
    if row.envelope is None and row.superseded_by is None:
        raise RectificationRefused(f"record {record_id} is erased: there is nothing to rectify")
    return ledger.submit(signed.encode())
