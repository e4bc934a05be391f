"""The shapes of the API's answers, as the client hands them back.

Why TypedDicts and not classes: an answer stays the JSON the API sent (a caller can log it,
store it, or compare it with openapi.yaml), while mypy still checks every key a caller reads.
Only the fields a caller acts on are typed precisely; nested ledger results stay `Any`,
because their shape is the contracts' (docs/CONTRACTS.md), which evolves with them.
"""

from __future__ import annotations

from typing import Any, Literal, TypedDict


class Receipt(TypedDict):
    """Where a decision is on the ledger: the transaction's id and its block's height."""

    tx_id: str
    block_height: int


class Draft(TypedDict):
    """An unsigned transaction and the exact bytes its author signs (both hex)."""

    type: str
    transaction: str
    signing_payload: str
    valid_until: int


class SignedTransaction(TypedDict):
    """What a signed endpoint takes: a draft's transaction and the author's signature."""

    transaction: str
    signature: str


class LedgerWrite(TypedDict):
    """A signed transaction's outcome: what the contracts answered and the receipt."""

    receipt: Receipt
    result: dict[str, Any]


class LedgerQuery(TypedDict):
    """A ledger read: the answer and the last committed block it reflects."""

    height: int
    result: Any


class Dataset(TypedDict):
    id: str
    owner_id: str
    name: str
    category: str
    purposes: list[str]
    retention_days: int
    legal_basis: str
    created_at: str
    receipt: Receipt | None


UploadState = Literal["pending", "anchored", "withdrawn", "refused"]


class Upload(TypedDict):
    upload_id: str
    dataset_id: str
    record_count: int
    merkle_root: str
    commitments_root: str
    retention_day: str
    state: UploadState
    receipt: Receipt | None


class AccessAnswer(TypedDict):
    """Records for a consumer. A refused subject is in `denied`, not an error: one request
    may name many subjects, and the others' records still come back."""

    access: int
    receipt: Receipt
    granted: list[str]
    denied: list[list[str]]
    charged_cents: int
    records: list[dict[str, Any]]


class PredicateAnswer(TypedDict):
    """A yes/no about one subject, and nothing else (the consumer learns one bit)."""

    result: bool
    receipt: Receipt
    charged_cents: int


class Export(TypedDict):
    """Art. 15/20: one page of everything held about a subject, machine-readable; each list
    holds at most the page's `limit` items, and `next_cursor` (null at the end) asks for
    the rest (docs/EXPORT.md)."""

    subject_id: str
    ledger_height: int
    datasets: list[dict[str, Any]]
    records: list[dict[str, Any]]
    history: list[dict[str, Any]]
    consents: list[dict[str, Any]]
    accesses: list[dict[str, Any]]
    erasures: list[dict[str, Any]]
    decryptions: list[dict[str, Any]]  # every read of their data (GET /v1/decryptions/{id}/proof)
    next_cursor: str | None
    complete: bool


class SignInChallenge(TypedDict):
    """POST /v1/subjects/challenges: what each pseudonym signs (`signing_payload`), once,
    before `expires_at`."""

    challenge_id: str
    challenge: str
    signing_payload: str
    expires_at: str


class SubjectSession(TypedDict):
    """POST /v1/subjects/sessions: a bearer `cvs_…` for the pseudonyms proven, until
    `expires_at`."""

    token: str
    expires_at: str
    pseudonyms: list[str]


class NoticeHash(TypedDict):
    """A published notice's hash: what a consent names in `notice`."""

    notice_hash: str


class Notice(TypedDict):
    """A consent notice as published: purpose, recipient, retention, rights, controller."""

    notice_hash: str
    body: dict[str, Any]
    created_at: str


class Restrictions(TypedDict):
    """Art. 18/21: a subject's standing in each dataset (restriction and its ground, objection,
    the DPO's override with its grounds, a legal-claims exemption), as the ledger holds it."""

    height: int
    restrictions: list[dict[str, Any]]


class SubjectRequest(TypedDict):
    """A data subject's request in the Art. 12(3) register (docs/API.md "The request
    register"): received, due (one calendar month, three if extended), how it ended."""

    id: str
    kind: Literal["access", "rectification", "erasure", "restriction", "objection", "portability"]
    subject: str  # the pseudonym; after an erasure, a value starting with ~ that names nobody
    dataset_id: str | None
    received_at: str
    due_at: str
    state: Literal["open", "extended", "done", "refused"]
    done_at: str | None
    facts: list[dict[str, Any]]  # {type, tx_id, height}: the ledger transactions behind it
    request: int | None  # the ledger's number for the subject's signed request
    extended_at: str | None
    extension_reason: str | None
    refusal_reason: str | None
    overdue: bool


class ErasureReceipt(TypedDict):
    """The subject's proof of an erasure (ledger_bridge/receipts.py verifies it): the block,
    the hex of the PBFT request that carried the erasure.record, and its transaction id."""

    height: int
    request: str
    tx_id: str


class SealedReceipt(TypedDict):
    """GET /v1/erasure-receipts/{id}: the receipt sealed to the answer's `receipt_key`
    (hex libsodium sealed box), null until the ledger recorded the erasure (a 410 if it was
    recorded without a receipt: `CivisClient.erasure_receipt` raises `ErasureReceiptLost`)."""

    erasure_id: int
    sealed_receipt: str | None


class ErasureCertificate(TypedDict):
    """An erasure's certificate: `recorded` once on the ledger, `final` once, besides, no copy
    in the vault's database or its WAL decrypts with any key the host holds."""

    erasure_id: int
    state: Literal["pending", "refused", "recorded", "final"]
    recorded_at: str | None  # ISO 8601
    final_at: str | None  # ISO 8601; may precede recorded_at
    kind: str
    scope: dict[str, Any]
    reason: str
    requester: str
    secrets_destroyed: int
    key_commitments: list[str]
    uploads: list[dict[str, Any]]
    erased_at: str
    request: int | None
    receipt: Receipt | None
    erasure_receipt: ErasureReceipt | None  # in the erasure's own answer only
    receipt_key: str | None  # hex X25519 key opening the sealed receipt of a pending answer
    erasure_receipt_lost: str | None  # why a recorded answer has no receipt: none will come


class KeyRef(TypedDict):
    upload: str
    key_commitment: str  # hex


class RecordVersion(TypedDict):
    replaced: str  # the old version's record id
    record_id: str  # the current version's
    upload: str  # the replacement upload holding it


class Rectification(TypedDict):
    """POST /v1/datasets/{dataset_id}/records/{record_id}/rectification (Art. 16)."""

    record_id: str  # the corrected record's new id
    replaced: str
    dataset_id: str
    request: int | None
    versions: list[RecordVersion]  # every record of the subject in the dataset, re-keyed
    superseded: list[KeyRef]  # the keys destroyed
    replacement: list[KeyRef]
    state: Literal["pending", "anchored", "refused"]
    receipt: Receipt | None


class RectificationRequest(TypedDict):
    """The subject's rectification.request, relayed: open on the ledger until carried out."""

    request: int
    dataset: str
    record: str
    receipt: Receipt


ConsentMode = Literal["predicate", "projection", "full"]


class PurposeDeclaration(TypedDict):
    """What a purpose may disclose: a consent's mode and fields stay within it."""

    fields: list[str]
    modes: list[ConsentMode]
    operators: list[str]
    questions: int
    period_days: int


class Purpose(TypedDict):
    purpose: str
    approved_at_height: int
    declaration: PurposeDeclaration | None


class Purposes(TypedDict):
    height: int
    purposes: list[Purpose]


# -- paid access (euro cents) --------------------------------------------------------------


class Price(TypedDict):
    """A mode's price as set: one answer in `mode` costs `price_cents` (0: free)."""

    dataset_id: str
    mode: ConsentMode
    price_cents: int
    receipt: Receipt


class Prices(TypedDict):
    """A dataset's prices per mode; a mode absent is free."""

    dataset_id: str
    height: int
    prices: dict[str, int]


class Credit(TypedDict):
    member: str
    amount_cents: int
    credit_cents: int
    receipt: Receipt


StatementKind = Literal[
    "deposit", "fee_paid", "fee_earned", "commission", "carried_out", "carried_in"
]


class StatementEntry(TypedDict):
    """One credit movement. It names a dataset and an access number, never a subject."""

    n: int
    height: int
    kind: StatementKind
    cents: int
    dataset: str | None
    access: int | None


class StatementTotals(TypedDict):
    paid: int
    earned: int
    deposited: int
    balance: int


class Statement(TypedDict):
    member: str
    height: int
    entries: list[StatementEntry]
    totals: StatementTotals
    next_after: int | None
