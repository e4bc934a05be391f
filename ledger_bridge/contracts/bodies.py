"""The body of every contract transaction, declared once: each field's name, kind, bounds,
whether it is required, what it means and an example.

One declaration, three readers, so they cannot drift apart:
- the contracts (`rules`) call `check(tx_type, body)` before any rule reads the body: a
  body of the wrong shape is refused `invalid` with the path of the first bad field, whoever
  sent it, and the rules that follow read fields whose type and bounds are already known;
- the API refuses a draft whose JSON body does not match (`check(..., json=True)`, the same
  walk, where keys and hashes are hex) and converts it to the ledger's form (`to_ledger`);
- openapi.yaml shows each body as JSON Schema (`json_schema`) with its example (`example`).

Only structure lives here: types, patterns, bounds, required and unknown fields, a list's
length and distinct items, which one of two fields, a nested map chosen by its `kind`.
Whether the author may do it, whether a dataset exists, whether a time is in the future are
rules, and stay in `rules`.

This module is part of the deterministic contracts: pure data and pure functions, no I/O, no
clock, no pydantic, nothing from the API. Its walk follows the declaration order and sorts
unknown names, so every replica refuses a broken body with the same message.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ledger_bridge.contracts.vocabulary import (
    DEVICE_KINDS,
    ERASURE_REASONS,
    EXEMPTION_GROUNDS,
    LEGAL_BASES,
    MODES,
    PARAMETER_NAMES,
    PREDICATE_OPS,
    REQUESTERS,
    RESTRICTION_GROUNDS,
    ROLES,
    UNITS,
)

QUESTIONS_MAX = 1_000_000  # predicate questions a purpose allows per subject and period
PERIOD_DAYS_MAX = 366
SUBJECTS_MAX = 10_000
COMMITMENTS_MAX = 4_096
UPLOADS_MAX = 4_096
PURPOSES_MAX = 32
FIELDS_MAX = 64
VALIDATORS_MAX = 100
RETENTION_DAYS_MAX = 36_600
DAY_INDEX_MAX = 10_000_000  # days since 1970: far beyond any retention
COUNT_MAX = 1 << 40
PARAMETER_VALUE_MAX = 1_000_000  # a governance parameter's value (each has tighter bounds)
CLAIMS_MAX = 256  # event claims in one event.reward
QUANTITY_MILLI_MAX = 10**12  # an event's quantity, in milli-units of its rule's unit
RATE_MTOK_MAX = 10**9  # a reward rule's milli-tokens per unit
# Any token amount; the whole supply never exceeds it either (rules/tokens.py), so every
# balance and counter is an integer a JSON client reads exactly.
MTOK_MAX = (1 << 53) - 1
# Times and sequence numbers stop at the largest integer every JSON client reads exactly
# (RFC 8259 section 6; a JavaScript number): a bound above it is a float in a JSON Schema, and
# a client could round a valid value past it. 2^53 ms is 285,000 years.
JSON_INT_MAX = (1 << 53) - 1
TIME_MAX_MS = JSON_INT_MAX
ID_MAX = JSON_INT_MAX

NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"  # purposes, categories, colleges
ID_PATTERN = r"^[A-Za-z0-9._:-]{1,64}$"  # dataset and upload ids (UUIDs in practice)
SUBJECT_PATTERN = r"^[0-9a-f]{64}$"  # a subject is the hex of its wallet public key
FIELD_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$"  # a record's field name
HEX32_PATTERN = r"^[0-9a-f]{64}$"  # 32 bytes as JSON carries them
# Free text a person reads (the DPO's grounds): no control characters, which only serve to
# spoof what a reader sees (the API's names follow the same rule).
TEXT_PATTERN = r"^[^\x00-\x1f\x7f-\x9f]+$"
GROUNDS_MAX_CHARS = 500
# Messages name fields, never a value: a caller's unknown field names are cut short.
UNKNOWN_SHOWN_MAX = 5
UNKNOWN_NAME_CHARS_MAX = 40


class BodyError(ValueError):
    """A body that does not match its declaration: where (`path`) and what is wrong."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}" if path else problem)
        self.path = path
        self.problem = problem


# -- kinds ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Text:
    """A string, matched whole by `pattern` (when set) and `min_length`..`max_length` long."""

    what: str
    pattern: str | None = None
    min_length: int = 0
    max_length: int | None = None

    def matches(self, value: str) -> bool:
        if len(value) < self.min_length:
            return False
        if self.max_length is not None and len(value) > self.max_length:
            return False
        # fullmatch: `$` alone would let "billing\n" pass for "billing". (`re` caches the
        # compiled pattern.)
        return self.pattern is None or re.fullmatch(self.pattern, value) is not None


@dataclass(frozen=True)
class Integer:
    low: int
    high: int
    unit: str = ""


@dataclass(frozen=True)
class Bytes32:
    """`size` bytes on the ledger (32 unless said), twice as many lowercase hex characters in
    JSON. Other sizes: a device's signature (64), a coupon's secret (16)."""

    what: str  # "public key", "hash", "signature", "secret"
    size: int = 32

    @property
    def pattern(self) -> str:
        return HEX32_PATTERN if self.size == 32 else f"^[0-9a-f]{{{2 * self.size}}}$"


@dataclass(frozen=True)
class Boolean:
    pass


@dataclass(frozen=True)
class Enum:
    values: tuple[str, ...]


@dataclass(frozen=True)
class ListOf:
    item: Kind
    max_items: int
    min_items: int = 0
    distinct: bool = False


@dataclass(frozen=True)
class Field:
    name: str
    kind: Kind
    description: str
    example: Any
    required: bool = True


@dataclass(frozen=True)
class Obj:
    """A map with exactly these fields; `exactly_one`: one and only one of these names."""

    fields: tuple[Field, ...]
    exactly_one: tuple[str, ...] = ()
    title: str = ""


@dataclass(frozen=True)
class OneOf:
    """A map whose `kind` field chooses which declaration the rest follows."""

    variants: dict[str, Obj] = field(default_factory=dict)


Kind = Text | Integer | Bytes32 | Boolean | Enum | ListOf | Obj | OneOf


# -- the walk -------------------------------------------------------------------------------


def check(tx_type: str, body: Any, *, json: bool = False) -> None:
    """Raise BodyError at the first field of `body` that does not match `tx_type`'s body.

    `json`: keys and hashes are hex strings (the API's form) rather than bytes (the ledger's).
    """
    _walk(BODIES[tx_type], body, "", json)


def check_kind(kind: Kind, value: Any) -> None:
    """`check` for one declared part (a purpose's declaration in a genesis file)."""
    _walk(kind, value, "", False)


def _at(path: str, name: str | int) -> str:
    if isinstance(name, int):
        return f"{path}[{name}]"
    return f"{path}.{name}" if path else name


def _walk(kind: Kind, value: Any, path: str, json: bool) -> None:
    if isinstance(kind, Obj):
        _walk_obj(kind, value, path, json)
    elif isinstance(kind, OneOf):
        if not isinstance(value, dict):
            raise BodyError(path, "must be a map")
        tag = value.get("kind")
        if not isinstance(tag, str) or tag not in kind.variants:
            raise BodyError(_at(path, "kind"), f"must be one of {', '.join(kind.variants)}")
        _walk_obj(kind.variants[tag], value, path, json)
    elif isinstance(kind, ListOf):
        _walk_list(kind, value, path, json)
    else:
        problem = _leaf_problem(kind, value, json)
        if problem is not None:
            raise BodyError(path, problem)


def _walk_obj(kind: Obj, value: Any, path: str, json: bool) -> None:
    if not isinstance(value, dict):
        raise BodyError(path, "must be a map")
    declared = {f.name for f in kind.fields}
    unknown = [name for name in value if name not in declared]
    if unknown:
        raise BodyError(path, f"unknown field(s): {_names(unknown)}")
    for f in kind.fields:
        if f.required and f.name not in value:
            raise BodyError(_at(path, f.name), "is required")
    if kind.exactly_one and sum(name in value for name in kind.exactly_one) != 1:
        raise BodyError(path, f"name exactly one of {' or '.join(kind.exactly_one)}")
    for f in kind.fields:
        if f.name in value:
            _walk(f.kind, value[f.name], _at(path, f.name), json)


def _walk_list(kind: ListOf, value: Any, path: str, json: bool) -> None:
    if not isinstance(value, list) or not kind.min_items <= len(value) <= kind.max_items:
        least = f"at least {kind.min_items} and " if kind.min_items else ""
        raise BodyError(path, f"must be a list of {least}at most {kind.max_items} items")
    for i, item in enumerate(value):
        _walk(kind.item, item, _at(path, i), json)
    # Items are leaves (strings or bytes) wherever `distinct` is declared, so they hash.
    if kind.distinct and len(set(value)) != len(value):
        raise BodyError(path, "items must be distinct")


def _leaf_problem(kind: Kind, value: Any, json: bool) -> str | None:
    if isinstance(kind, Text):
        ok = isinstance(value, str) and kind.matches(value)
        return None if ok else f"must be {kind.what}"
    if isinstance(kind, Integer):
        unit = f", {kind.unit}," if kind.unit else ""
        ok = type(value) is int and kind.low <= value <= kind.high
        return None if ok else f"must be an integer{unit} in [{kind.low}, {kind.high}]"
    if isinstance(kind, Bytes32):
        if json:
            ok = isinstance(value, str) and re.fullmatch(kind.pattern, value) is not None
            return (
                None if ok else f"must be a {kind.what}: {2 * kind.size} lowercase hex characters"
            )
        ok = isinstance(value, bytes) and len(value) == kind.size
        return None if ok else f"must be a {kind.size}-byte {kind.what}"
    if isinstance(kind, Boolean):
        return None if type(value) is bool else "must be true or false"
    if isinstance(kind, Enum):
        ok = isinstance(value, str) and value in kind.values
        return None if ok else f"must be one of {', '.join(kind.values)}"
    raise AssertionError(f"not a leaf kind: {kind!r}")


def _names(names: Iterable[Any]) -> str:
    """Field names a sender chose, for a refusal message: a few, each cut short, so a result
    never carries back (or into a log) more of the sender's input than a reader needs."""
    shown = sorted(str(n)[:UNKNOWN_NAME_CHARS_MAX] for n in names)
    more = len(shown) - UNKNOWN_SHOWN_MAX
    return ", ".join(shown[:UNKNOWN_SHOWN_MAX]) + (f" and {more} more" if more > 0 else "")


# -- JSON form ------------------------------------------------------------------------------


def to_ledger(tx_type: str, body: dict[str, Any]) -> dict[str, Any]:
    """A JSON body that passed `check(..., json=True)`, with its keys and hashes as bytes."""
    out: dict[str, Any] = _convert(BODIES[tx_type], body)
    return out


def _convert(kind: Kind, value: Any) -> Any:
    if isinstance(kind, Bytes32):
        return bytes.fromhex(value)
    if isinstance(kind, ListOf):
        return [_convert(kind.item, v) for v in value]
    if isinstance(kind, OneOf):
        kind = kind.variants[value["kind"]]
    if isinstance(kind, Obj):
        kinds = {f.name: f.kind for f in kind.fields}
        return {k: _convert(kinds[k], v) for k, v in value.items()}
    return value


def example(tx_type: str) -> dict[str, Any]:
    """The declared example of `tx_type`'s body, in JSON form."""
    return {f.name: f.example for f in BODIES[tx_type].fields if f.example is not None}


def json_schema(tx_type: str) -> dict[str, Any]:
    """JSON Schema (OpenAPI 3.1) of `tx_type`'s body in JSON form, with its example."""
    body = BODIES[tx_type]
    return {**_schema(body), "examples": [example(tx_type)]}


def _schema(kind: Kind) -> dict[str, Any]:
    if isinstance(kind, Obj):
        return _obj_schema(kind)
    if isinstance(kind, OneOf):
        return {
            "oneOf": [_obj_schema(v, tag=t) for t, v in kind.variants.items()],
            "description": f"a map whose `kind` is one of {', '.join(kind.variants)}",
        }
    if isinstance(kind, ListOf):
        out: dict[str, Any] = {"type": "array", "items": _schema(kind.item)}
        if kind.min_items:
            out["minItems"] = kind.min_items
        out["maxItems"] = kind.max_items
        if kind.distinct:
            out["uniqueItems"] = True
        return out
    if isinstance(kind, Text):
        text: dict[str, Any] = {"type": "string"}
        if kind.pattern is not None:
            text["pattern"] = kind.pattern
        if kind.min_length:
            text["minLength"] = kind.min_length
        if kind.max_length is not None:
            text["maxLength"] = kind.max_length
        return text
    if isinstance(kind, Integer):
        return {"type": "integer", "minimum": kind.low, "maximum": kind.high}
    if isinstance(kind, Bytes32):
        return {"type": "string", "pattern": kind.pattern}
    if isinstance(kind, Boolean):
        return {"type": "boolean"}
    return {"type": "string", "enum": list(kind.values)}


def _obj_schema(kind: Obj, tag: str | None = None) -> dict[str, Any]:
    props: dict[str, Any] = {}
    for f in kind.fields:
        if tag is not None and f.name == "kind":
            props["kind"] = {"type": "string", "const": tag, "description": f.description}
        else:
            props[f.name] = {**_schema(f.kind), "description": f.description}
    out: dict[str, Any] = {"type": "object"}
    if kind.title:
        out["title"] = kind.title
    out["properties"] = props
    out["required"] = [f.name for f in kind.fields if f.required]
    out["additionalProperties"] = False
    if kind.exactly_one:
        out["oneOf"] = [{"required": [name]} for name in kind.exactly_one]
    return out


# -- the declarations -----------------------------------------------------------------------

NAME = Text("a name: 1 to 64 of a-z 0-9 . _ -, starting with a letter or digit", NAME_PATTERN)
IDENT = Text("an identifier: 1 to 64 of A-Z a-z 0-9 . _ : -", ID_PATTERN)
SUBJECT = Text("a subject: the 64 lowercase hex characters of their wallet key", SUBJECT_PATTERN)
FIELD_NAME = Text(
    "a field name: 1 to 64 of A-Z a-z 0-9 _ . -, starting with a letter or _", FIELD_PATTERN
)
KEY = Bytes32("public key")
HASH = Bytes32("hash")
TIME_MS = Integer(0, TIME_MAX_MS, "milliseconds since 1970")
RETENTION_DAYS = Integer(1, RETENTION_DAYS_MAX, "days")
DAY_INDEX = Integer(0, DAY_INDEX_MAX, "days since 1970")

EX_KEY = "3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29"
EX_KEY_2 = "8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c"
EX_HASH = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
EX_DATASET = "5f0c7a3e-2b1d-4c8e-9a6f-1d2e3f4a5b6c"
EX_UPLOAD = "9b2d4f6a-8c0e-4a1b-b3d5-7e9f1a2b3c4d"
EX_TIME_MS = 1_798_761_600_000  # 2027-01-01

# Paid access: prices and credits are integer euro cents (contracts/rules/fees.py).
PRICE_CENTS_MAX = 100_000_000  # one million euros per answer
DEPOSIT_CENTS_MAX = 10_000_000_000  # one hundred million euros per deposit
PRICE_CENTS = Integer(0, PRICE_CENTS_MAX, "euro cents")

_SCOPE_NOTE = "name exactly one of `dataset` or `category`"

MEMBER_REGISTER = Obj(
    (
        Field("role", Enum(ROLES), "the member's role; `subject` for a resident", "provider"),
        Field("college", NAME, "one of the cooperative's colleges", "providers"),
    ),
    title="member.register",
)

DATASET_REGISTER = Obj(
    (
        Field("dataset", IDENT, "the dataset's id", EX_DATASET),
        Field("owner", KEY, "the owning provider's public key", EX_KEY),
        Field("category", NAME, "the data category", "energy"),
        Field(
            "purposes",
            ListOf(NAME, PURPOSES_MAX, min_items=1, distinct=True),
            "purposes approved by governance",
            ["billing"],
        ),
        Field("retention_days", RETENTION_DAYS, "how long records are kept", 365),
        Field("legal_basis", Enum(LEGAL_BASES), "GDPR Art. 6(1)", "contract"),
    ),
    title="dataset.register",
)

UPLOAD_ANCHOR = Obj(
    (
        Field("upload", IDENT, "the upload's id", EX_UPLOAD),
        Field("dataset", IDENT, "the dataset's id", EX_DATASET),
        Field("record_count", Integer(0, COUNT_MAX), "records in the upload", 100),
        Field("merkle_root", HASH, "root over the records' leaves", EX_HASH),
        Field("key_commitments_root", HASH, "root over the key commitments", EX_HASH),
        Field("key_commitment_count", Integer(0, COUNT_MAX), "key commitments", 10),
        Field("retention_day", DAY_INDEX, "the day the records expire at its end", 20_820),
    ),
    title="upload.anchor",
)

_CONSENT_FIELDS = (
    Field("subject", SUBJECT, "the subject: the author's own public key", EX_KEY),
    Field("consumer", KEY, "the consumer's public key", EX_KEY_2),
    Field("purpose", NAME, "the purpose consented to", "billing"),
)
_CONSENT_SCOPE = (
    Field("dataset", IDENT, f"one dataset ({_SCOPE_NOTE})", EX_DATASET, required=False),
    Field("category", NAME, f"every dataset of a category ({_SCOPE_NOTE})", None, required=False),
)

CONSENT_GRANT = Obj(
    (
        *_CONSENT_FIELDS,
        Field("valid_until", TIME_MS, "the consent's end, in the future", EX_TIME_MS),
        *_CONSENT_SCOPE,
        Field(
            "mode",
            Enum(MODES),
            "what it discloses: yes/no answers, named fields or whole records, among the "
            "modes its purpose declares (none: the narrowest of them)",
            None,
            required=False,
        ),
        Field(
            "fields",
            ListOf(FIELD_NAME, FIELDS_MAX, min_items=1, distinct=True),
            "the record fields a predicate or projection consent covers, among its "
            "purpose's (none: all of the purpose's); a full consent names none",
            None,
            required=False,
        ),
        Field(
            "notice",
            HASH,
            "SHA-256 of the canonical notice the subject was shown (Art. 7(1), 13: purpose, "
            "recipient, retention, rights, controller), kept off-ledger by the vault; "
            "optional here so chains from before it still verify, required by the API",
            EX_HASH,
            required=False,
        ),
    ),
    exactly_one=("dataset", "category"),
    title="consent.grant",
)

CONSENT_REVOKE = Obj(
    (*_CONSENT_FIELDS, *_CONSENT_SCOPE),
    exactly_one=("dataset", "category"),
    title="consent.revoke",
)

PREDICATE = Obj(
    (
        Field("field", FIELD_NAME, "the record field compared", "address"),
        Field("op", Enum(PREDICATE_OPS), "the comparison", "eq"),
        Field("commitment", HASH, "a salted commitment to the compared value", EX_HASH),
    )
)

ACCESS_REQUEST = Obj(
    (
        Field("consumer", KEY, "the consumer's public key", EX_KEY_2),
        Field("dataset", IDENT, "the dataset's id", EX_DATASET),
        Field("purpose", NAME, "the declared purpose", "billing"),
        Field(
            "subjects",
            ListOf(SUBJECT, SUBJECTS_MAX, distinct=True),
            "the subjects asked for (none: every subject with a consent)",
            [EX_KEY],
            required=False,
        ),
        Field(
            "fields",
            ListOf(FIELD_NAME, FIELDS_MAX),
            "the record fields wanted",
            None,
            required=False,
        ),
        Field("predicate", PREDICATE, "a yes/no question instead of records", None, False),
        Field("reference", IDENT, "the consumer's own reference", None, required=False),
        Field(
            "price_cents",
            PRICE_CENTS,
            "the price the consumer agrees to pay, exactly the dataset's for this mode "
            "(none: a dataset without a price for it)",
            None,
            required=False,
        ),
    ),
    title="access.request",
)

_KIND = Field("kind", Text("a kind"), "which variant", None)

ERASURE_SUBJECT = Obj(
    (
        _KIND,
        Field("subject", SUBJECT, "the subject whose data is erased", EX_KEY),
        Field("dataset", IDENT, "only this dataset (none: every dataset)", None, False),
    )
)
ERASURE_UPLOAD = Obj((_KIND, Field("upload", IDENT, "the upload erased", EX_UPLOAD)))

ERASURE_REQUEST = Obj(
    (
        Field(
            "scope",
            OneOf({"subject": ERASURE_SUBJECT}),
            "the author's own data: everywhere, or in one dataset",
            {"kind": "subject", "subject": EX_KEY},
        ),
    ),
    title="erasure.request",
)

UPLOAD_REF = Obj(
    (
        Field("upload", IDENT, "the upload's id", EX_UPLOAD),
        Field("key_commitments_root", HASH, "as anchored", EX_HASH),
        Field("key_commitment_count", Integer(0, COUNT_MAX), "as anchored", 10),
    )
)

ERASURE_RECORD = Obj(
    (
        Field(
            "scope",
            OneOf({"subject": ERASURE_SUBJECT, "upload": ERASURE_UPLOAD}),
            "what was erased",
            {"kind": "subject", "subject": EX_KEY},
        ),
        Field(
            "key_commitments",
            ListOf(HASH, COMMITMENTS_MAX, distinct=True),
            "destroyed key commitments",
            [EX_HASH],
        ),
        Field("uploads", ListOf(UPLOAD_REF, UPLOADS_MAX), "whole uploads destroyed", []),
        Field("reason", Enum(ERASURE_REASONS), "why", "subject_request"),
        Field("requester", Enum(REQUESTERS), "who asked", "subject"),
        Field("request", Integer(1, ID_MAX), "the subject's erasure request", None, False),
    ),
    title="erasure.record",
)

RETENTION_EXPIRE = Obj(
    (
        Field("dataset", IDENT, "the dataset's id", EX_DATASET),
        Field("day", DAY_INDEX, "the retention day that ended", 20_820),
        Field("uploads", ListOf(UPLOAD_REF, UPLOADS_MAX), "the epoch's uploads", []),
        Field(
            "key_commitments",
            ListOf(HASH, COMMITMENTS_MAX, distinct=True),
            "destroyed key commitments",
            None,
            required=False,
        ),
    ),
    title="retention.expire",
)

VALIDATOR = Obj(
    (
        Field("public_key", KEY, "the replica's signing key", EX_KEY),
        Field("college", NAME, "the college hosting it", "providers"),
        Field("address", Text("1 to 255 characters", None, 1, 255), "host:port", "10.0.0.1:7000"),
    )
)

DECLARATION = Obj(
    (
        Field(
            "fields",
            ListOf(FIELD_NAME, FIELDS_MAX, distinct=True),
            "the record fields it needs: what a projection returns and a predicate asks about",
            ["address"],
        ),
        Field(
            "modes",
            ListOf(Enum(MODES), len(MODES), min_items=1, distinct=True),
            "the modes its consents may have (predicate, projection, full)",
            ["predicate"],
        ),
        Field(
            "operators",
            ListOf(Enum(PREDICATE_OPS), len(PREDICATE_OPS), distinct=True),
            "the operators its predicate questions may use",
            ["eq"],
        ),
        Field(
            "questions",
            Integer(0, QUESTIONS_MAX),
            "predicate questions per subject, consumer and period",
            10,
        ),
        Field("period_days", Integer(1, PERIOD_DAYS_MAX, "days"), "the budget's period", 1),
    )
)

# -- eco-citizen tokens (rules/devices.py, rules/tokens.py) ---------------------------------

SIGNATURE = Bytes32("signature", 64)
SECRET = Bytes32("secret", 16)
MTOK = Integer(1, MTOK_MAX, "milli-tokens")
EX_SIGNATURE = "5e" * 64
EX_SECRET = "00112233445566778899aabbccddeeff"  # noqa: S105 (an example, not a secret)

DEVICE_REGISTER = Obj(
    (
        Field("device", KEY, "the device's own Ed25519 key (it signs event claims)", EX_KEY_2),
        Field("kind", Enum(DEVICE_KINDS), "what the device is", "bike_reader"),
        Field("dataset", IDENT, "the author's dataset its events' records go to", EX_DATASET),
        Field("district", NAME, "where it stands", "centre"),
    ),
    title="device.register",
)

EVENT_CLAIM = Obj(
    (
        Field("device", KEY, "the certifying device's key", EX_KEY_2),
        Field("event", HASH, "the device's unique id of the event", EX_HASH),
        Field("commitment", HASH, "SHA-256 commitment to the event's salted record", EX_HASH),
        Field("rule", NAME, "the reward rule", "cycling"),
        Field(
            "quantity_milli",
            Integer(1, QUANTITY_MILLI_MAX, "milli-units of the rule's unit"),
            "how much, in thousandths of the rule's unit (5.3 km: 5300)",
            5300,
        ),
        Field("subject", SUBJECT, "the rewarded subject's key", EX_KEY),
        Field("at", TIME_MS, "when it happened", EX_TIME_MS),
        Field("signature", SIGNATURE, "the device's Ed25519 signature of the claim", EX_SIGNATURE),
    ),
    title="event claim",
)

EVENT_REWARD = Obj(
    (
        Field(
            "claims",
            ListOf(EVENT_CLAIM, CLAIMS_MAX, min_items=1),
            "the device-signed claims rewarded together (all or none)",
            [{f.name: f.example for f in EVENT_CLAIM.fields}],
        ),
        Field(
            "upload",
            IDENT,
            "the vault's upload holding the events' records: its erasure or retention expiry "
            "blanks this reward too (optional so chains from before it still verify)",
            EX_UPLOAD,
            required=False,
        ),
    ),
    title="event.reward",
)

TOKEN_TRANSFER = Obj(
    (
        Field("to", KEY, "the receiving member's key", EX_KEY_2),
        Field("amount_mtok", MTOK, "how many milli-tokens", 1000),
    ),
    title="token.transfer",
)

OFFER_PUBLISH = Obj(
    (
        Field("offer", NAME, "the offer's name", "bakery-5pct"),
        Field("title", Text("1 to 120 characters", None, 1, 120), "what it gives", "5 % off"),
        Field("category", NAME, "the offer's category", "food"),
        Field("price_mtok", MTOK, "its price in milli-tokens", 5000),
        Field("active", Boolean(), "whether it may be redeemed", True),
    ),
    title="offer.publish",
)

TOKEN_REDEEM = Obj(
    (
        Field("offer", NAME, "the offer redeemed", "bakery-5pct"),
        Field("coupon", HASH, "SHA-256 of the coupon's secret, chosen by the wallet", EX_HASH),
        Field(
            "price_mtok",
            MTOK,
            "the offer's price the holder agrees to pay; another current price refuses",
            5000,
        ),
    ),
    title="token.redeem",
)

COUPON_SPEND = Obj(
    (Field("secret", SECRET, "the coupon's secret, shown by its holder", EX_SECRET),),
    title="coupon.spend",
)

REWARD_RULE_ACTION = Obj(
    (
        _KIND,
        Field("rule", NAME, "the rule's name", "cycling"),
        Field("unit", Enum(UNITS), "the unit events count in", "km"),
        Field(
            "rate_mtok",
            Integer(0, RATE_MTOK_MAX, "milli-tokens per unit"),
            "milli-tokens per unit (0 retires the rule)",
            1000,
        ),
        Field(
            "device_kinds",
            ListOf(Enum(DEVICE_KINDS), len(DEVICE_KINDS), min_items=1, distinct=True),
            "the device kinds that certify it",
            ["bike_reader"],
        ),
        Field(
            "cap_mtok_per_day",
            Integer(0, MTOK_MAX, "milli-tokens"),
            "most a subject earns by it per day (0: no cap)",
            0,
        ),
    )
)

PROPOSAL_ACTIONS = OneOf(
    {
        "admit_member": Obj(
            (_KIND, Field("member", KEY, "a pending legal entity's key", EX_KEY_2)),
        ),
        "admit_voter": Obj((_KIND, Field("member", KEY, "a resident's key", EX_KEY_2))),
        "approve_purpose": Obj(
            (
                _KIND,
                Field("purpose", NAME, "the purpose", "billing"),
                Field(
                    "declaration",
                    DECLARATION,
                    "what the purpose may disclose (none: nothing, until a later "
                    "approve_purpose declares it)",
                    None,
                    required=False,
                ),
            )
        ),
        "set_retention": Obj(
            (
                _KIND,
                Field("dataset", IDENT, "the dataset's id", EX_DATASET),
                Field("retention_days", RETENTION_DAYS, "the new retention", 365),
            )
        ),
        "set_validators": Obj(
            (
                _KIND,
                Field(
                    "validators",
                    ListOf(VALIDATOR, VALIDATORS_MAX),
                    "the new set: 3f+1 replicas with distinct keys",
                    None,
                ),
            )
        ),
        "set_parameter": Obj(
            (
                _KIND,
                Field("parameter", Enum(PARAMETER_NAMES), "which parameter", "commission_bp"),
                Field(
                    "value",
                    Integer(0, PARAMETER_VALUE_MAX),
                    "its new value (each parameter has its own bounds)",
                    500,
                ),
            )
        ),
        "admit_device": Obj((_KIND, Field("device", KEY, "a registered device's key", EX_KEY_2))),
        "suspend_device": Obj((_KIND, Field("device", KEY, "an admitted device's key", EX_KEY_2))),
        "set_reward_rule": REWARD_RULE_ACTION,
        "suspend_member": Obj(
            (_KIND, Field("member", KEY, "an admitted legal entity's key", EX_KEY_2))
        ),
        "reinstate_member": Obj(
            (_KIND, Field("member", KEY, "a suspended member's key", EX_KEY_2))
        ),
        "rotate_member_key": Obj(
            (
                _KIND,
                Field("member", KEY, "the member's current key", EX_KEY_2),
                Field(
                    "new_key",
                    KEY,
                    "a key that applied (member.register) with the member's role and college",
                    EX_KEY,
                ),
            )
        ),
    }
)

GOVERNANCE_PROPOSE = Obj(
    (
        Field(
            "action",
            PROPOSAL_ACTIONS,
            "what the cooperative decides",
            {"kind": "admit_member", "member": EX_KEY_2},
        ),
        Field(
            "voting_ends",
            TIME_MS,
            "the end of the vote, at most 90 days ahead",
            EX_TIME_MS,
        ),
    ),
    title="governance.propose",
)

GOVERNANCE_VOTE = Obj(
    (
        Field("proposal", Integer(1, ID_MAX), "the proposal's number", 1),
        Field("approve", Boolean(), "yes or no", True),
    ),
    title="governance.vote",
)

# -- paid access (contracts/rules/fees.py) ----------------------------------------------------

PRICE_SET = Obj(
    (
        Field("dataset", IDENT, "the dataset's id", EX_DATASET),
        Field("mode", Enum(MODES), "the disclosure mode priced", "predicate"),
        Field("price_cents", PRICE_CENTS, "the price of one answer (0: free)", 25),
    ),
    title="price.set",
)

CREDIT_DEPOSIT = Obj(
    (
        Field("member", KEY, "the provider or consumer credited", EX_KEY_2),
        Field(
            "amount_cents",
            Integer(1, DEPOSIT_CENTS_MAX, "euro cents"),
            "the payment received off-chain",
            10_000,
        ),
        Field(
            "reference", IDENT, "the payment's reference (bank transfer, invoice)", "inv-2027-001"
        ),
    ),
    title="credit.deposit",
)

# -- accountability of decryptions (contracts/rules/reads.py) ---------------------------------

READS_MAX = 1 << 20  # decryptions in one read.record batch

READ_RECORD = Obj(
    (
        Field(
            "reads_root",
            HASH,
            "RFC 6962 root over the batch's salted read leaves (no reader, no subject in clear)",
            EX_HASH,
        ),
        Field("count", Integer(1, READS_MAX), "the decryptions in the batch", 100),
    ),
    title="read.record",
)

# -- rectification (contracts/rules/rectification.py) -----------------------------------------

RECTIFICATION_REQUEST = Obj(
    (
        Field("dataset", IDENT, "the dataset holding the record", EX_DATASET),
        Field(
            "record",
            IDENT,
            "the record to correct, by its id as the subject's export showed it",
            EX_UPLOAD,
        ),
        Field(
            "statement_hash",
            HASH,
            "SHA-256 of the subject's statement of what is wrong (the statement stays off the "
            "ledger)",
            EX_HASH,
        ),
    ),
    title="rectification.request",
)

KEY_REF = Obj(
    (
        Field("upload", IDENT, "the upload's id", EX_UPLOAD),
        Field("key_commitment", HASH, "the (upload, subject) key's commitment", EX_HASH),
    )
)

RECORD_RECTIFY = Obj(
    (
        Field("dataset", IDENT, "the dataset's id", EX_DATASET),
        Field(
            "superseded",
            ListOf(KEY_REF, COMMITMENTS_MAX, min_items=1),
            "the keys destroyed with the subject's old secret: the old versions",
            [{"upload": EX_UPLOAD, "key_commitment": EX_HASH}],
        ),
        Field(
            "replacement",
            ListOf(KEY_REF, UPLOADS_MAX, min_items=1),
            "the keys of the new uploads holding the current versions, one per replacement upload",
            [{"upload": EX_UPLOAD, "key_commitment": EX_HASH}],
        ),
        Field(
            "request",
            Integer(1, ID_MAX),
            "the subject's rectification.request it carries out",
            None,
            required=False,
        ),
    ),
    title="record.rectify",
)

# -- restriction (Art. 18) and objection (Art. 21), contracts/rules/restriction.py -------------

_OWN_DATASET = Field(
    "dataset", IDENT, "the dataset; the author is the subject (their key in it)", EX_DATASET
)
_NAMED_DATASET = Field("dataset", IDENT, "the dataset's id", EX_DATASET)
_NAMED_SUBJECT = Field("subject", SUBJECT, "the subject it concerns", EX_KEY)

RESTRICTION_SET = Obj(
    (
        _OWN_DATASET,
        Field(
            "ground",
            Enum(RESTRICTION_GROUNDS),
            "why, GDPR Art. 18(1) (a)-(d); a restriction in force is set again to change it",
            "accuracy_contested",
        ),
    ),
    title="restriction.set",
)
RESTRICTION_LIFT = Obj((_OWN_DATASET,), title="restriction.lift")
OBJECTION_SET = Obj((_OWN_DATASET,), title="objection.set")
OBJECTION_WITHDRAW = Obj((_OWN_DATASET,), title="objection.withdraw")
RESTRICTION_EXEMPT = Obj(
    (
        _NAMED_DATASET,
        _NAMED_SUBJECT,
        Field(
            "ground",
            Enum(EXEMPTION_GROUNDS),
            "Art. 18(2): the provider's own reads for legal claims (never a consumer's)",
            "legal_claims",
        ),
        Field("until", TIME_MS, "the exemption's end, in the future", EX_TIME_MS),
    ),
    title="restriction.exempt",
)
OBJECTION_OVERRIDE = Obj(
    (
        _NAMED_DATASET,
        _NAMED_SUBJECT,
        Field(
            "grounds",
            Text(
                f"1 to {GROUNDS_MAX_CHARS} characters, no control characters",
                TEXT_PATTERN,
                1,
                GROUNDS_MAX_CHARS,
            ),
            "the DPO's compelling legitimate grounds (Art. 21(1)), shown to the subject; "
            "no personal data",
            "Network security monitoring required by the operator's licence, art. 12",
        ),
    ),
    title="objection.override",
)

BODIES: dict[str, Obj] = {
    "member.register": MEMBER_REGISTER,
    "dataset.register": DATASET_REGISTER,
    "upload.anchor": UPLOAD_ANCHOR,
    "consent.grant": CONSENT_GRANT,
    "consent.revoke": CONSENT_REVOKE,
    "access.request": ACCESS_REQUEST,
    "erasure.request": ERASURE_REQUEST,
    "erasure.record": ERASURE_RECORD,
    "retention.expire": RETENTION_EXPIRE,
    "governance.propose": GOVERNANCE_PROPOSE,
    "governance.vote": GOVERNANCE_VOTE,
    "device.register": DEVICE_REGISTER,
    "event.reward": EVENT_REWARD,
    "token.transfer": TOKEN_TRANSFER,
    "offer.publish": OFFER_PUBLISH,
    "token.redeem": TOKEN_REDEEM,
    "coupon.spend": COUPON_SPEND,
    # paid access
    "price.set": PRICE_SET,
    "credit.deposit": CREDIT_DEPOSIT,
    # accountability of decryptions
    "read.record": READ_RECORD,
    # rectification
    "rectification.request": RECTIFICATION_REQUEST,
    "record.rectify": RECORD_RECTIFY,
    # restriction and objection
    "restriction.set": RESTRICTION_SET,
    "restriction.lift": RESTRICTION_LIFT,
    "restriction.exempt": RESTRICTION_EXEMPT,
    "objection.set": OBJECTION_SET,
    "objection.withdraw": OBJECTION_WITHDRAW,
    "objection.override": OBJECTION_OVERRIDE,
}
