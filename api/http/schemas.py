"""Request and response models at the edge. Never ORM objects; requests are strict.

Strict (`strict=True`, `extra="forbid"`): `0` is not `false`, `"5"` is not `5`, an unknown
field is an error rather than silently dropped, so a client's typo never changes meaning.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    Strict,
    StringConstraints,
)
from pydantic_core import CoreSchema, core_schema

from ledger_bridge.contracts import bodies
from ledger_bridge.contracts.vocabulary import LegalBasis
from vault.datasets import NAME_MAX, PURPOSES_MAX
from vault.models import OutboxFact
from vault.uploads import LEDGER_SUBJECT_ID

# PostgreSQL text holds no NUL; control characters in a name only serve to spoof what an
# operator reads in a log or a page. A pattern, so the OpenAPI document says it too.
NO_CONTROLS = r"^[^\x00-\x1f\x7f-\x9f]+$"


def utf8_text(value: str) -> str:
    # PostgreSQL text holds only valid UTF-8: a lone surrogate (legal in JSON) would be a 500.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("not valid Unicode text") from None
    return value


# Reasons a person writes for another to read (an extension's, a refusal's): a sentence or a
# paragraph, no control characters, valid UTF-8. Never personal data, which a reason needs not
# hold; the bound keeps it a reason.
REASON_CHARS_MAX = 500
ReasonText = Annotated[
    str,
    StringConstraints(min_length=1, max_length=REASON_CHARS_MAX, pattern=NO_CONTROLS),
    AfterValidator(utf8_text),
]


# Purposes and categories as the consent contracts name them (governance approves them).
Name = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")]


class StrictIn(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


# A member's or subject's identity on the ledger: the hex of its Ed25519 public key (the same
# pattern the vault enforces on subject ids when a ledger is attached).
PUBLIC_KEY_HEX = LEDGER_SUBJECT_ID.pattern
PublicKeyHex = Annotated[str, StringConstraints(pattern=PUBLIC_KEY_HEX)]

# JSON has no UUID type: a UUID field of a strict model takes its canonical string form.
UuidIn = Annotated[uuid.UUID, Strict(False)]
# The times the vault computes with (deadlines, windows, milliseconds for the ledger): from
# 1970 to 9998, in UTC. A time at the very edge of what a datetime holds (year 1 at +14:00,
# 9999 at -14:00) cannot even be turned into UTC, nor a 72-hour deadline added to it.
TIME_MIN = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
TIME_MAX = dt.datetime(9999, 1, 1, tzinfo=dt.UTC)


def _representable(value: dt.datetime) -> dt.datetime:
    try:
        utc = (value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)).astimezone(
            dt.UTC
        )
    except OverflowError:
        raise ValueError("a time between 1970 and 9998 (UTC)") from None
    if not TIME_MIN <= utc < TIME_MAX:
        raise ValueError("a time between 1970 and 9998 (UTC)")
    return value


# Nor a time type: a time of a strict model is an ISO 8601 string, within TIME_MIN..TIME_MAX.
TimeIn = Annotated[dt.datetime, Strict(False), AfterValidator(_representable)]

# Text a person writes for another to read on a page: a line (no control character), or
# prose (lines and tabs, no other control character), valid Unicode either way.
Line = Annotated[str, StringConstraints(pattern=NO_CONTROLS), AfterValidator(utf8_text)]
Prose = Annotated[
    str,
    StringConstraints(pattern=r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]+$"),
    AfterValidator(utf8_text),
]


class TxBody:
    """The body of a `tx_type` transaction in a request: any JSON map to pydantic, shown in
    the OpenAPI document as the component `<Type>Body`, the JSON Schema of its declaration
    (ledger_bridge/contracts/bodies.py).

    Why pydantic does not check it: the declaration is checked by `bodies.check`, the same
    walk the contracts run, so the API refuses exactly what the contracts would, with the
    field's path in the message (api/http/signed.py `draft`)."""

    def __init__(self, tx_type: str) -> None:
        self.tx_type = tx_type
        self.name = "".join(part.capitalize() for part in tx_type.split(".")) + "Body"

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        return core_schema.dict_schema(
            core_schema.str_schema(), core_schema.any_schema(), ref=self.name
        )

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> dict[str, Any]:
        ref = handler(schema)  # {"$ref": ...} to the component named by the core schema's ref
        component = handler.resolve_ref_schema(ref)
        component.clear()
        component.update(bodies.json_schema(self.tx_type))
        return ref


def _distinct(values: list[str]) -> list[str]:
    if len(set(values)) != len(values):
        raise ValueError("items must be distinct")
    return values


Hex = Annotated[str, StringConstraints(min_length=2, max_length=1_048_576, pattern=r"^[0-9a-f]+$")]


# A transaction its author signed: every member write (consents, governance, erasure requests)
# arrives in this shape, whichever route relays it (api/http/signed.py). No docstring: it
# would become the schema's description in openapi.yaml.
class SignedIn(StrictIn):
    transaction: Hex = Field(description="a draft's `transaction`")
    signature: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{128}$")] = Field(
        description="the author's Ed25519 signature of the draft's `signing_payload` (hex)"
    )


class DatasetIn(StrictIn):
    name: Annotated[
        str,
        StringConstraints(min_length=1, max_length=NAME_MAX, pattern=NO_CONTROLS),
        AfterValidator(utf8_text),
    ]
    category: Name
    purposes: Annotated[
        list[Name],
        Field(min_length=1, max_length=PURPOSES_MAX, json_schema_extra={"uniqueItems": True}),
        AfterValidator(_distinct),
    ]
    retention_days: Annotated[int, Field(ge=1, le=36600)]
    # GDPR Art. 6(1) (a)-(f), as the consent contracts name them.
    legal_basis: LegalBasis


class LedgerReceipt(BaseModel):
    tx_id: str
    block_height: int

    @classmethod
    def of_fact(cls, fact: OutboxFact) -> LedgerReceipt | None:
        """The receipt the relay stored with an outbox fact, once the ledger recorded it."""
        if fact.sent_at is None or fact.tx_id is None or fact.block_height is None:
            return None
        return cls(tx_id=fact.tx_id, block_height=fact.block_height)


class DatasetOut(BaseModel):
    id: uuid.UUID
    owner_id: str
    name: str
    category: str
    purposes: list[str]
    retention_days: int
    legal_basis: str
    created_at: dt.datetime
    receipt: LedgerReceipt | None = Field(
        default=None, description="the dataset.register transaction, when a ledger is attached"
    )


class UploadOut(BaseModel):
    upload_id: uuid.UUID
    dataset_id: uuid.UUID
    record_count: int
    merkle_root: str = Field(description="hex, RFC 6962 root over the records' leaves")
    commitments_root: str = Field(description="hex, root over the per-subject key commitments")
    retention_day: dt.date
    state: Literal["pending", "anchored", "withdrawn", "refused"]
    receipt: LedgerReceipt | None = Field(
        default=None, description="the upload.anchor transaction, once committed"
    )


class InclusionProof(BaseModel):
    leaf_index: int
    leaf_salt: str
    audit_path: list[str]
    merkle_root: str
    tree_size: int


class RecordOut(BaseModel):
    record_id: uuid.UUID
    dataset_id: uuid.UUID
    upload_id: uuid.UUID
    subject_id: str
    payload: dict[str, Any]
    proof: InclusionProof


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready"]
    checks: dict[str, Literal["ok"]] = Field(description="database, and ledger when configured")
