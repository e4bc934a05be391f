"""Art. 17 erasure: by the DPO, or on the subject's own signed request; with a certificate.

The vault destroys the scope's key secrets and ciphertext and writes the ledger fact in ONE
database transaction (vault/erasure.py), then the outbox relay records it on the ledger
(exactly once, across crashes). This route commits that transaction itself, wakes the relay
and waits up to `receipt_wait_s` for the receipt, so the answer is usually the finished
certificate (201, `state: recorded`); when the ledger is slow it is 202 with
`state: pending`, and `GET /v1/erasures/{id}` tells the outcome later. A recorded erasure
becomes `final` (with `final_at`) once the scheduled final-erasure cycle retired every KEK that
could open a copy of what it destroyed (vault/final_erasure.py): the certificate then states
that no copy in the database's files or WAL decrypts with any key the host holds. Repeating an
erasure is harmless: nothing is left to destroy, and the answer points at the original
certificate.

Who may erase: the DPO (any subject, a subject in one dataset, an upload) and the subject
(their own data, by a transaction only their wallet can sign). Nobody else.

Recipients told (GDPR Art. 17(2), 19): a subject's erasure writes, in its own transaction, a
notice to every consumer the ledger's access record says received the subject's data in the
datasets erased (api/services/recipient_notices.py); they are signed and delivered once the
erasure is recorded. The ledger is asked before it forgets the subject's accesses, so an
erasure whose recipients cannot be known is refused (503), never done with nobody told.

The erasure receipt: a subject erasure's answer carries `erasure_receipt` {height, request,
tx_id}, the proof that the erasure.record committed (ledger_bridge/receipts.py verifies it),
once the ledger recorded it. An erasure everywhere makes the vault forget the subject as soon
as the fact is recorded, so the vault never keeps the receipt in clear: the route makes a
one-time X25519 key, the relay seals the receipt to its public half, and the route opens it
with the private half, which only this answer ever holds. When the ledger is slow (202) the
answer gives that private half as `receipt_key`, and `GET /v1/erasure-receipts/{id}` serves
the sealed receipt to anyone (it is ciphertext for a key the vault does not have): the subject
opens it with `receipts.open_sealed`. Whoever erases (the subject asking, or the DPO acting on
their behalf) keeps the receipt; the vault cannot give it again.

A receipt is a copy of the request that carried the erasure, and the replicas delete that
request from its block once the erasure is stable. A resubmission after a timeout or a crash,
from any worker, sends that very request again; in rare cases the relay has to read it back
from the block after that (the ledger answered for another request than the one just sent: a
retry so late that it needed a new `valid_until`, or a `replayed` answer): the erasure is then
recorded without a receipt (api/services/outbox.py, `_sealed`), and nothing can ever make one.
The vault says so rather than "not yet": the answer carries `erasure_receipt_lost` (the
reason) in place of both fields, and `GET /v1/erasure-receipts/{id}` answers 410
(`ErasureReceiptLost`). The certificate holds all the same: the ledger recorded the erasure.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session, sessionmaker

from api.http.bodies import BoundedJsonRoute
from api.http.deps import CurrentMember, Dpo, KeyStoreDep, LedgerDep, strict_query
from api.http.errors import PROBLEM_JSON, PROBLEM_SCHEMA, ApiError, Forbidden
from api.http.schemas import LedgerReceipt, PublicKeyHex, SignedIn, StrictIn, UuidIn
from api.http.signed import assemble
from api.services import recipient_notices, requests
from api.services.gateway import LedgerGateway
from api.services.outbox import wait_for_receipt
from api.services.recipient_notices import NoticeFact
from api.services.requests import LedgerFact
from ledger_bridge import receipts
from ledger_bridge.facts import (
    ERASURE_KINDS,
    ERASURE_RECORD,
    ERASURE_REQUEST,
    CertificateState,
    ErasureRecord,
    erasure_from_payload,
)
from vault.erasure import Eraser, ErasureResult, certificate_status
from vault.errors import NotFound
from vault.keys import KeyStore
from vault.models import OutboxFact

router = APIRouter(
    prefix="/v1",
    tags=["erasure"],
    dependencies=[Depends(strict_query)],
    route_class=BoundedJsonRoute,
)

DPO_REASONS = ("dpo_decision", "legal_obligation", "consent_withdrawn", "subject_request")
# The certificate states in which the ledger holds the erasure: the relay sealed its receipt
# then, in the same transaction, or never will.
RECORDED: tuple[CertificateState, ...] = ("recorded", "final")


class ErasureIn(StrictIn):
    """One scope: a subject everywhere, a subject in one dataset, or one upload."""

    subject_id: PublicKeyHex | None = None
    dataset_id: UuidIn | None = None
    upload_id: UuidIn | None = None
    reason: Annotated[str, Field(json_schema_extra={"enum": list(DPO_REASONS)})] = "dpo_decision"


class ErasureReceiptOut(BaseModel):
    height: int = Field(description="the block that committed the erasure.record")
    request: str = Field(description="hex of the encoded PBFT Request that carried it")
    tx_id: str = Field(description="hex id of the erasure.record transaction")


class ErasureCertificate(BaseModel):
    erasure_id: int = Field(description="the vault's id of the erasure fact")
    state: CertificateState = Field(
        description="pending or refused (the ledger's answer), recorded (on the ledger), final "
        "(recorded, and no copy in the live database or its WAL decrypts with any key the host "
        "holds: the KEKs that could open one are retired; docs/KEYS.md)"
    )
    recorded_at: str | None = Field(
        default=None, description="when the ledger recorded the erasure (ISO 8601)"
    )
    final_at: str | None = Field(
        default=None,
        description="when the erasure became final: its cycle of KEK rotation and retirement "
        "finished (ISO 8601); may precede recorded_at, the state is final once both hold",
    )
    kind: str
    scope: dict[str, Any]
    reason: str
    requester: str
    secrets_destroyed: int
    key_commitments: list[str] = Field(description="destroyed per-subject commitments (hex)")
    uploads: list[dict[str, Any]] = Field(description="whole uploads destroyed, by root")
    erased_at: str
    request: int | None = Field(default=None, description="the subject's ledger request id")
    receipt: LedgerReceipt | None = None
    erasure_receipt: ErasureReceiptOut | None = Field(
        default=None,
        description="the proof for the subject, in the erasure's answer only (see the module)",
    )
    receipt_key: str | None = Field(
        default=None,
        description="hex X25519 private key opening GET /v1/erasure-receipts/{id}, given when "
        "the answer came before the ledger recorded the erasure",
    )
    erasure_receipt_lost: str | None = Field(
        default=None,
        description="why this answer has neither erasure_receipt nor receipt_key although the "
        "erasure is recorded: its receipt could not be made and never will be (GET "
        "/v1/erasure-receipts/{id} answers 410); null otherwise, as in a repeated erasure's "
        "answer, which has neither field either",
    )


class SealedReceipt(BaseModel):
    erasure_id: int
    sealed_receipt: str | None = Field(
        description="hex libsodium sealed box of the erasure receipt; null until recorded "
        "(then 410 if it could not be made)"
    )


class InvalidScope(ApiError):
    status = 422
    title = "Invalid erasure scope"


class ErasureReceiptLost(ApiError):
    """An erasure recorded on the ledger whose receipt could not be made (see the module)."""

    status = 410
    title = "Erasure receipt lost"

    def __init__(self, erasure_id: int) -> None:
        super().__init__(receipt_lost(erasure_id))


def receipt_lost(erasure_id: int) -> str:
    """Why an erasure recorded without its receipt has none, for the subject who asked.

    Said the same in the answer and in the 410, so the subject reads one sentence whichever
    they see first."""
    return (
        f"erasure {erasure_id} is recorded on the ledger, so its certificate "
        f"(GET /v1/erasures/{erasure_id}) holds, but its receipt could not be made and never "
        "will be: the receipt is a copy of the ledger request that carried the erasure, and "
        "the ledger had already deleted that request, as it deletes everything that named the "
        "erased person, before the vault could read it back"
    )


def _certificate(fact: OutboxFact) -> ErasureCertificate:
    """The fact's certificate in the API's names (`scope.type`, `subject_id`, `upload_id`),
    which the published schema and its clients read."""
    c = erasure_from_payload(fact.kind, fact.payload).certificate
    status = certificate_status(fact)
    return ErasureCertificate(
        erasure_id=fact.id,
        state=status.state,
        recorded_at=None if status.recorded_at is None else status.recorded_at.isoformat(),
        final_at=None if status.final_at is None else status.final_at.isoformat(),
        kind=fact.kind,
        scope=c.public_scope(),
        reason=c.reason,
        requester=c.requester,
        secrets_destroyed=c.secrets_destroyed,
        key_commitments=[k.hex() for k in c.key_commitments],
        uploads=[u.public() for u in c.uploads],
        erased_at=c.at.isoformat(),
        request=c.request,
        receipt=LedgerReceipt.of_fact(fact),
    )


def _run(
    request: Request, erase: Any, receipt_key: tuple[bytes, bytes] | None = None
) -> JSONResponse:
    """Commit the erasure in its own transaction, ship it, answer with its certificate (and
    its receipt, opened with the private half of `receipt_key` when `erase` sealed it to the
    public half)."""
    sessions: sessionmaker[Session] = request.app.state.sessions
    with sessions() as session, session.begin():
        result: ErasureResult = erase(session)
    if result.outbox_id is None:
        raise NotFound("nothing of this scope is stored, and it was never erased")
    jobs = request.app.state.jobs
    if jobs is not None:
        jobs.kick()
    fact = wait_for_receipt(sessions, result.outbox_id, request.app.state.settings.receipt_wait_s)
    cert = _certificate(fact)
    # A repeated erasure answers the first call's fact, sealed to the first caller's key.
    record = ErasureRecord.from_payload(fact.payload) if fact.kind == ERASURE_RECORD else None
    private = None
    if receipt_key is not None and record is not None and record.receipt_to == receipt_key[1]:
        private = receipt_key[0]
    sealed = None if record is None else record.sealed_receipt
    if private is not None and sealed is not None:
        opened = receipts.open_sealed(sealed, private)
        cert.erasure_receipt = ErasureReceiptOut(**opened.to_json())
    elif private is not None and cert.receipt is None:
        cert.receipt_key = private.hex()
    elif private is not None and cert.state in RECORDED:
        # Recorded, and the relay sealed nothing: without this the answer would read as a
        # repeated erasure's.
        cert.erasure_receipt_lost = receipt_lost(fact.id)
    return JSONResponse(cert.model_dump(mode="json"), status_code=201 if cert.receipt else 202)


def _erase_subject(
    store: KeyStore, ledger: LedgerGateway, subject: str, dataset: uuid.UUID | None, **how: Any
) -> Callable[[Session], ErasureResult]:
    """The subject's erasure, and a notice to every consumer that received their data (GDPR
    Art. 17(2), 19), in one transaction.

    The record ids concerned are read before the erasure rewrites the rows to a forgotten
    id; the consumers are asked of the ledger before the relay submits the erasure, after
    which it forgets the subject's accesses. So the notices need the ledger's answer: when it
    cannot be had, the erasure is refused (503) rather than done with nobody told."""

    def erase(session: Session) -> ErasureResult:
        held = recipient_notices.held_records(session, subject, dataset)
        result = Eraser(store).erase_subject(session, subject, dataset_id=dataset, **how)
        if result.outbox_id is None or not (result.secrets_destroyed or result.rows_forgotten):
            return result  # nothing was erased now: its notices, if any, went the first time
        fact = NoticeFact(ERASURE_RECORD, outbox_id=result.outbox_id)
        for in_dataset, records in held.items():
            recipient_notices.announce(
                session, ledger, in_dataset, subject, "erasure", fact, records=records
            )
        return result

    return erase


_CERT_RESPONSES: dict[int | str, dict[str, Any]] = {
    201: {"model": ErasureCertificate, "description": "erased and recorded on the ledger"},
    202: {"model": ErasureCertificate, "description": "erased; the ledger record is pending"},
}


@router.post(
    "/erasures", status_code=201, responses=_CERT_RESPONSES, response_model=ErasureCertificate
)
def erase(body: ErasureIn, _: Dpo, store: KeyStoreDep, request: Request, ledger: LedgerDep) -> Any:
    """The DPO erases a subject (everywhere or in one dataset) or an upload."""
    eraser = Eraser(store)
    if body.upload_id is not None:
        if body.subject_id is not None or body.dataset_id is not None:
            raise InvalidScope("an upload erasure names the upload only")
        upload_id = body.upload_id
        return _run(
            request,
            lambda s: eraser.withdraw_upload(s, upload_id, reason=body.reason, requester="dpo"),
        )
    if body.subject_id is None:
        raise InvalidScope("name subject_id (and optionally dataset_id), or upload_id")
    private, public = receipts.new_receipt_key()
    erase_subject = _erase_subject(
        store,
        ledger,
        body.subject_id,
        body.dataset_id,
        reason=body.reason,
        requester="dpo",
        receipt_to=public,
    )
    return _run(request, erase_subject, (private, public))


@router.post(
    "/erasure-requests",
    status_code=201,
    responses=_CERT_RESPONSES,
    response_model=ErasureCertificate,
)
def subject_request(body: SignedIn, store: KeyStoreDep, request: Request, ledger: LedgerDep) -> Any:
    """The subject's own erasure request (erasure.request signed by their wallet), carried out.

    The request is recorded on the ledger first (so it exists even if the vault then fails),
    then the vault erases and records the erasure against it.
    """
    signed = assemble(ledger.chain_id, body.transaction, body.signature, "erasure.request")
    answer = ledger.submit(signed.encode())
    scope = signed.body["scope"]
    dataset = None
    if "dataset" in scope:
        try:
            dataset = uuid.UUID(scope["dataset"])
        except ValueError:
            raise InvalidScope("dataset is a dataset id") from None
    request_id = int(answer.result["request"])
    received = dt.datetime.now(dt.UTC)
    made = LedgerFact(
        type=ERASURE_REQUEST, tx_id=answer.receipt.tx_id, height=answer.receipt.block_height
    )
    private, public = receipts.new_receipt_key()
    erase_subject = _erase_subject(
        store,
        ledger,
        scope["subject"],
        dataset,
        reason="subject_request",
        requester="subject",
        request=request_id,
        receipt_to=public,
    )

    def erase(s: Session) -> ErasureResult:
        # Registered in the erasure's transaction (Art. 12(3)); the relay closes it when the
        # erasure.record is recorded, and the erasure itself makes the row forget the subject.
        requests.open_request(
            s, "erasure", scope["subject"], dataset, received, made, request=request_id
        )
        return erase_subject(s)

    return _run(request, erase, (private, public))


@router.get("/erasures/{erasure_id}")
def erasure_status(
    erasure_id: Annotated[int, Path(ge=1, le=1 << 62)], member: CurrentMember, request: Request
) -> ErasureCertificate:
    """An erasure's certificate; the DPO sees all, a subject only their own."""
    sessions: sessionmaker[Session] = request.app.state.sessions
    with sessions() as session:
        fact = session.get(OutboxFact, erasure_id)
        if member.role not in ("dpo", "subject"):
            raise Forbidden("only the DPO or the erased subject may read a certificate")
        if (
            fact is None
            or fact.kind not in ERASURE_KINDS
            or (member.role == "subject" and _subject_of(fact) not in member.pseudonyms)
        ):
            # A subject does not learn which other erasures exist.
            raise NotFound(f"erasure {erasure_id} does not exist")
        return _certificate(fact)


def _subject_of(fact: OutboxFact) -> str | None:
    """The subject an erasure fact names (None for expiries, uploads and forgotten ones)."""
    typed = erasure_from_payload(fact.kind, fact.payload)
    return typed.subject if isinstance(typed, ErasureRecord) else None


_RECEIPT_LOST_RESPONSE: dict[int | str, dict[str, Any]] = {
    410: {
        "description": "the erasure is recorded, but its receipt could not be made and never "
        "will be (`Erasure receipt lost`; the detail says why)",
        "content": {PROBLEM_JSON: {"schema": PROBLEM_SCHEMA}},
    }
}


@router.get("/erasure-receipts/{erasure_id}", responses=_RECEIPT_LOST_RESPONSE)
def sealed_receipt(
    erasure_id: Annotated[int, Path(ge=1, le=1 << 62)], request: Request
) -> SealedReceipt:
    """An erasure's receipt, sealed to the one-time key its answer gave (`receipt_key`).

    Open to anyone, signed in or not: an erased subject has no API key left, and the sealed
    box opens only with a key the vault never stored. A subject erasure answers null until the
    ledger recorded it, then the sealed receipt, or 410 when it was recorded without one: the
    receipt can then never be made, and a client waiting for it would wait for ever. Any other
    id is 404.
    """
    sessions: sessionmaker[Session] = request.app.state.sessions
    with sessions() as session:
        fact = session.get(OutboxFact, erasure_id)
        record = (
            ErasureRecord.from_payload(fact.payload)
            if fact is not None and fact.kind == ERASURE_RECORD
            else None
        )
        if fact is None or record is None or record.receipt_to is None:
            raise NotFound(f"erasure {erasure_id} has no receipt")
        if record.sealed_receipt is None and certificate_status(fact).state in RECORDED:
            raise ErasureReceiptLost(fact.id)
        sealed = None if record.sealed_receipt is None else record.sealed_receipt.hex()
        return SealedReceipt(erasure_id=fact.id, sealed_receipt=sealed)
