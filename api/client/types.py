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
    """Art. 15/20: everything held about a subject, machine-readable."""

    subject_id: str
    ledger_height: int
    records: list[dict[str, Any]]
    consents: list[dict[str, Any]]
    accesses: list[dict[str, Any]]
    erasures: list[dict[str, Any]]


class ErasureReceipt(TypedDict):
    """The subject's proof of an erasure (ledger_bridge/receipts.py verifies it): the block,
    the hex of the PBFT request that carried the erasure.record, and its transaction id."""

    height: int
    request: str
    tx_id: str


class SealedReceipt(TypedDict):
    """GET /v1/erasure-receipts/{id}: the receipt sealed to the answer's `receipt_key`
    (hex libsodium sealed box), null until the ledger recorded the erasure."""

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


StatementKind = Literal["deposit", "fee_paid", "fee_earned", "commission"]


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
