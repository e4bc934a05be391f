"""The facts the vault asks the ledger to record, typed once for both sides.

The vault writes a fact to its outbox (JSONB, in the transaction of the change it describes);
the relay turns it into a contract transaction body. Both forms are defined here, next to each
other, so the vault, the relay and the audits agree on one shape and one set of names: the
ledger's (`kind`, `upload`, `dataset`, `subject`). The outbox form differs from the contract
body only where JSON must: hashes are hex, days are ISO dates (the contracts count days since
`LEDGER_EPOCH`), and a few vault-only fields ride along (who asked, when, where to seal the
receipt), which `to_body` leaves out.

Why this module imports nothing but the standard library: the vault may import it (and no
other part of ledger_bridge, tests/test_layering.py), so it must not pull the ledger in.

`from_payload` reads the ledger's names only: migration 0008 rewrites any stored row to them,
so the JSONB queries (the erasure's scope match, the subject index, the audits) need one
spelling too.

The HTTP answers (an erasure's certificate, the DPO's erasure log) keep the field names of the
published API (`ErasureCertificate.public_scope`, `UploadRef.public`): clients parse them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Literal

# -- transaction types (the contracts' names, also the outbox's `kind`) ----------------------

MEMBER_REGISTER = "member.register"
DATASET_REGISTER = "dataset.register"
UPLOAD_ANCHOR = "upload.anchor"
CONSENT_GRANT = "consent.grant"
CONSENT_REVOKE = "consent.revoke"
ACCESS_REQUEST = "access.request"
ERASURE_REQUEST = "erasure.request"
ERASURE_RECORD = "erasure.record"
RETENTION_EXPIRE = "retention.expire"
GOVERNANCE_PROPOSE = "governance.propose"
GOVERNANCE_VOTE = "governance.vote"
# Eco-citizen tokens (ledger_bridge/contracts/rules/devices.py and tokens.py).
DEVICE_REGISTER = "device.register"
EVENT_REWARD = "event.reward"
TOKEN_TRANSFER = "token.transfer"  # noqa: S105 (a transaction type)
OFFER_PUBLISH = "offer.publish"
TOKEN_REDEEM = "token.redeem"  # noqa: S105 (a transaction type)
COUPON_SPEND = "coupon.spend"
# paid access (contracts/rules/fees.py)
PRICE_SET = "price.set"
CREDIT_DEPOSIT = "credit.deposit"
# accountability of decryptions (contracts/rules/reads.py)
READ_RECORD = "read.record"
# Art. 16 rectification (contracts/rules/rectification.py)
RECTIFICATION_REQUEST = "rectification.request"
RECORD_RECTIFY = "record.rectify"
# restriction (Art. 18) and objection (Art. 21), contracts/rules/restriction.py
RESTRICTION_SET = "restriction.set"
RESTRICTION_LIFT = "restriction.lift"
RESTRICTION_EXEMPT = "restriction.exempt"
OBJECTION_SET = "objection.set"
OBJECTION_WITHDRAW = "objection.withdraw"
OBJECTION_OVERRIDE = "objection.override"

TX_TYPES = (
    MEMBER_REGISTER,
    DATASET_REGISTER,
    UPLOAD_ANCHOR,
    CONSENT_GRANT,
    CONSENT_REVOKE,
    ACCESS_REQUEST,
    ERASURE_REQUEST,
    ERASURE_RECORD,
    RETENTION_EXPIRE,
    GOVERNANCE_PROPOSE,
    GOVERNANCE_VOTE,
    DEVICE_REGISTER,
    EVENT_REWARD,
    TOKEN_TRANSFER,
    OFFER_PUBLISH,
    TOKEN_REDEEM,
    COUPON_SPEND,
    # paid access
    PRICE_SET,
    CREDIT_DEPOSIT,
    # accountability of decryptions
    READ_RECORD,
    # rectification
    RECTIFICATION_REQUEST,
    RECORD_RECTIFY,
    # restriction and objection
    RESTRICTION_SET,
    RESTRICTION_LIFT,
    RESTRICTION_EXEMPT,
    OBJECTION_SET,
    OBJECTION_WITHDRAW,
    OBJECTION_OVERRIDE,
)
# The facts that destroy something: each carries an `ErasureCertificate`.
ERASURE_KINDS = (ERASURE_RECORD, RETENTION_EXPIRE)

# The contracts count days from here (UTC): a retention day on the ledger is
# (day - LEDGER_EPOCH).days, and it ends at (day + 1) * 86_400_000 ms.
LEDGER_EPOCH = dt.date(1970, 1, 1)


def ledger_day(day: dt.date) -> int:
    """A date as the contracts' day number."""
    return (day - LEDGER_EPOCH).days


def from_ledger_day(number: int) -> dt.date:
    """The contracts' day number as a date."""
    return LEDGER_EPOCH + dt.timedelta(days=number)


# -- scopes -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SubjectScope:
    """A subject everywhere (`dataset` None) or in one dataset. `subject` is None once the
    vault forgot whom the erasure was for (`ErasureRecord.forgetting`)."""

    subject: str | None
    dataset: str | None = None
    kind: Literal["subject"] = "subject"

    def to_payload(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind}
        if self.subject is not None:
            out["subject"] = self.subject
        if self.dataset is not None:
            out["dataset"] = self.dataset
        return out

    def public(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.kind}
        if self.subject is not None:
            out["subject_id"] = self.subject
        if self.dataset is not None:
            out["dataset_id"] = self.dataset
        return out


@dataclass(frozen=True, slots=True)
class UploadScope:
    upload: str
    kind: Literal["upload"] = "upload"

    def to_payload(self) -> dict[str, Any]:
        return {"kind": self.kind, "upload": self.upload}

    def public(self) -> dict[str, Any]:
        return {"type": self.kind, "upload_id": self.upload}


@dataclass(frozen=True, slots=True)
class EpochScope:
    """A retention epoch: every upload of `dataset` whose retention ends on `day`."""

    dataset: str
    day: dt.date
    kind: Literal["epoch"] = "epoch"

    def to_payload(self) -> dict[str, Any]:
        return {"kind": self.kind, "dataset": self.dataset, "day": self.day.isoformat()}

    def public(self) -> dict[str, Any]:
        return {"type": self.kind, "dataset_id": self.dataset, "day": self.day.isoformat()}


Scope = SubjectScope | UploadScope | EpochScope


def scope_from_payload(obj: Mapping[str, Any]) -> Scope:
    kind = obj["kind"]
    if kind == "subject":
        return SubjectScope(obj.get("subject"), obj.get("dataset"))
    if kind == "upload":
        return UploadScope(str(obj["upload"]))
    if kind == "epoch":
        return EpochScope(str(obj["dataset"]), dt.date.fromisoformat(obj["day"]))
    raise ValueError(f"unknown erasure scope kind {kind!r}")


@dataclass(frozen=True, slots=True)
class UploadRef:
    """A whole upload destroyed, named by the key-commitments root it was anchored with."""

    upload: str
    key_commitments_root: bytes
    key_commitment_count: int

    def to_payload(self) -> dict[str, Any]:
        return {
            "upload": self.upload,
            "key_commitments_root": self.key_commitments_root.hex(),
            "key_commitment_count": self.key_commitment_count,
        }

    @classmethod
    def from_payload(cls, obj: Mapping[str, Any]) -> UploadRef:
        return cls(
            str(obj["upload"]),
            bytes.fromhex(obj["key_commitments_root"]),
            int(obj["key_commitment_count"]),
        )

    def to_body(self) -> dict[str, Any]:
        return {
            "upload": self.upload,
            "key_commitments_root": self.key_commitments_root,
            "key_commitment_count": self.key_commitment_count,
        }

    def public(self) -> dict[str, Any]:
        return {
            "upload_id": self.upload,
            "key_commitments_root": self.key_commitments_root.hex(),
            "key_commitment_count": self.key_commitment_count,
        }


# -- the facts --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UploadAnchor:
    upload: str
    dataset: str
    record_count: int
    merkle_root: bytes
    key_commitments_root: bytes
    key_commitment_count: int
    retention_day: dt.date

    kind: ClassVar[str] = UPLOAD_ANCHOR

    def to_payload(self) -> dict[str, Any]:
        return {
            "upload": self.upload,
            "dataset": self.dataset,
            "record_count": self.record_count,
            "merkle_root": self.merkle_root.hex(),
            "key_commitments_root": self.key_commitments_root.hex(),
            "key_commitment_count": self.key_commitment_count,
            "retention_day": self.retention_day.isoformat(),
        }

    @classmethod
    def from_payload(cls, obj: Mapping[str, Any]) -> UploadAnchor:
        return cls(
            upload=str(obj["upload"]),
            dataset=str(obj["dataset"]),
            record_count=int(obj["record_count"]),
            merkle_root=bytes.fromhex(obj["merkle_root"]),
            key_commitments_root=bytes.fromhex(obj["key_commitments_root"]),
            key_commitment_count=int(obj["key_commitment_count"]),
            retention_day=dt.date.fromisoformat(obj["retention_day"]),
        )

    def to_body(self) -> dict[str, Any]:
        return {
            "upload": self.upload,
            "dataset": self.dataset,
            "record_count": self.record_count,
            "merkle_root": self.merkle_root,
            "key_commitments_root": self.key_commitments_root,
            "key_commitment_count": self.key_commitment_count,
            "retention_day": ledger_day(self.retention_day),
        }


@dataclass(frozen=True, slots=True)
class ErasureCertificate:
    """What an erasure or an expiry destroyed, why, at whose request and when: the part of
    the fact that the erasure's HTTP answer and the DPO's erasure log show."""

    scope: Scope
    # Per-(upload, subject) key commitments destroyed; none when whole uploads went (`uploads`
    # names them by their anchored root instead).
    key_commitments: tuple[bytes, ...]
    uploads: tuple[UploadRef, ...]
    secrets_destroyed: int
    reason: str
    requester: str
    at: dt.datetime
    request: int | None = None  # the subject's own erasure.request, on the ledger

    def to_payload(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "scope": self.scope.to_payload(),
            "key_commitments": [c.hex() for c in self.key_commitments],
            "uploads": [u.to_payload() for u in self.uploads],
            "secrets_destroyed": self.secrets_destroyed,
            "reason": self.reason,
            "requester": self.requester,
            "at": self.at.isoformat(),
        }
        if self.request is not None:
            out["request"] = self.request
        return out

    @classmethod
    def from_payload(cls, obj: Mapping[str, Any]) -> ErasureCertificate:
        request = obj.get("request")
        return cls(
            scope=scope_from_payload(obj["scope"]),
            key_commitments=tuple(bytes.fromhex(c) for c in obj.get("key_commitments", [])),
            uploads=tuple(UploadRef.from_payload(u) for u in obj.get("uploads", [])),
            secrets_destroyed=int(obj.get("secrets_destroyed", 0)),
            reason=str(obj["reason"]),
            requester=str(obj["requester"]),
            at=dt.datetime.fromisoformat(obj["at"]),
            request=None if request is None else int(request),
        )

    @property
    def commitment_count(self) -> int:
        """Every key commitment destroyed, named one by one or through an upload's root."""
        return len(self.key_commitments) + sum(u.key_commitment_count for u in self.uploads)

    def public_scope(self) -> dict[str, Any]:
        return self.scope.public()


# An erasure certificate's states: its fact queued for the ledger (`pending`) or refused by it
# (`refused`); `recorded` on the ledger; `final`, recorded AND no copy of what it destroyed, in
# the live database or its WAL, decrypts with any key the host still holds (every KEK that
# could have wrapped a destroyed secret is retired: vault/final_erasure.py).
CERTIFICATE_STATES = ("pending", "refused", "recorded", "final")
CertificateState = Literal["pending", "refused", "recorded", "final"]


@dataclass(frozen=True, slots=True)
class ErasureStatus:
    """Where an erasure certificate stands, with the time of each state reached.

    `final_at` may come before `recorded_at` (the ledger was slow): the state is `final` only
    once both hold, since a certificate the ledger does not have proves nothing to anyone.
    """

    state: CertificateState
    recorded_at: dt.datetime | None
    final_at: dt.datetime | None

    @classmethod
    def of(
        cls,
        *,
        recorded_at: dt.datetime | None,
        refused_at: dt.datetime | None,
        final_at: dt.datetime | None,
    ) -> ErasureStatus:
        state: CertificateState
        if recorded_at is None:
            state = "refused" if refused_at is not None else "pending"
        else:
            state = "final" if final_at is not None else "recorded"
        return cls(state, recorded_at, final_at)


@dataclass(frozen=True, slots=True)
class ErasureRecord:
    """An erasure of a subject (everywhere or in one dataset) or of a withdrawn upload."""

    certificate: ErasureCertificate
    forget: bool = False  # everywhere: once recorded, the vault forgets the subject
    receipt_to: bytes | None = None  # X25519 public key the relay seals the receipt to
    sealed_receipt: bytes | None = None  # set by the relay once the ledger recorded it
    forgotten: bool = False  # the subject was dropped from the fact: it cannot be sent again

    kind: ClassVar[str] = ERASURE_RECORD

    def __post_init__(self) -> None:
        if isinstance(self.certificate.scope, EpochScope):
            raise ValueError("an erasure.record is of a subject or an upload")

    def to_payload(self) -> dict[str, Any]:
        out = self.certificate.to_payload()
        if self.forget:
            out["forget"] = True
        if self.receipt_to is not None:
            out["receipt_to"] = self.receipt_to.hex()
        if self.sealed_receipt is not None:
            out["sealed_receipt"] = self.sealed_receipt.hex()
        if self.forgotten:
            out["forgotten"] = True
        return out

    @classmethod
    def from_payload(cls, obj: Mapping[str, Any]) -> ErasureRecord:
        receipt_to, sealed = obj.get("receipt_to"), obj.get("sealed_receipt")
        return cls(
            certificate=ErasureCertificate.from_payload(obj),
            forget=bool(obj.get("forget")),
            receipt_to=None if receipt_to is None else bytes.fromhex(receipt_to),
            sealed_receipt=None if sealed is None else bytes.fromhex(sealed),
            forgotten=bool(obj.get("forgotten")),
        )

    @property
    def subject(self) -> str | None:
        scope = self.certificate.scope
        return scope.subject if isinstance(scope, SubjectScope) else None

    def forgetting(self) -> ErasureRecord:
        """This fact without the subject's pseudonym (kept for the scope's other fields)."""
        scope = self.certificate.scope
        if isinstance(scope, SubjectScope):
            scope = replace(scope, subject=None)
        return replace(self, certificate=replace(self.certificate, scope=scope), forgotten=True)

    def to_body(self, *, reasons: Collection[str], requesters: Collection[str]) -> dict[str, Any]:
        """The erasure.record body. `reasons` and `requesters` are the values the contracts
        accept: a reason or requester the vault holds that they do not know is mapped to the
        closest one they do, so a fact is never refused for its wording."""
        c = self.certificate
        scope = c.scope
        if isinstance(scope, SubjectScope) and scope.subject is None:
            raise ValueError("a forgotten erasure fact names no subject: it cannot be sent")
        ledger_scope = scope.to_payload()
        requester = c.requester if c.requester in requesters else "vault"
        reason = c.reason
        if reason not in reasons:
            if isinstance(scope, UploadScope):
                reason = "provider_withdrawal"
            elif requester == "subject":
                reason = "subject_request"
            else:
                reason = "dpo_decision"
        body: dict[str, Any] = {
            "scope": ledger_scope,
            "key_commitments": list(c.key_commitments),
            "uploads": [u.to_body() for u in c.uploads],
            "reason": reason,
            "requester": requester,
        }
        if c.request is not None:
            body["request"] = c.request
        return body


@dataclass(frozen=True, slots=True)
class RetentionExpire:
    """A retention epoch ended: its secret and every upload under it are gone."""

    certificate: ErasureCertificate

    kind: ClassVar[str] = RETENTION_EXPIRE

    def __post_init__(self) -> None:
        # Refused when built or read, not when the relay sends it.
        if not isinstance(self.certificate.scope, EpochScope):
            raise ValueError("a retention.expire is of a retention epoch")

    @property
    def scope(self) -> EpochScope:
        scope = self.certificate.scope
        if not isinstance(scope, EpochScope):
            raise ValueError("a retention.expire is of a retention epoch")
        return scope

    def to_payload(self) -> dict[str, Any]:
        return self.certificate.to_payload()

    @classmethod
    def from_payload(cls, obj: Mapping[str, Any]) -> RetentionExpire:
        return cls(ErasureCertificate.from_payload(obj))

    def to_body(self) -> dict[str, Any]:
        return {
            "dataset": self.scope.dataset,
            "day": ledger_day(self.scope.day),
            "uploads": [u.to_body() for u in self.certificate.uploads],
        }


@dataclass(frozen=True, slots=True)
class ReadRecord:
    """A batch of the vault's decryptions (provider reads, subject exports, DPO reads),
    committed as the RFC 6962 root over their salted leaves (vault/decryptions.py): the ledger
    learns how many reads there were and can later prove each one's inclusion, never whose
    data was read nor by whom."""

    reads_root: bytes
    count: int

    kind: ClassVar[str] = READ_RECORD

    def to_payload(self) -> dict[str, Any]:
        return {"reads_root": self.reads_root.hex(), "count": self.count}

    @classmethod
    def from_payload(cls, obj: Mapping[str, Any]) -> ReadRecord:
        return cls(bytes.fromhex(obj["reads_root"]), int(obj["count"]))

    def to_body(self) -> dict[str, Any]:
        return {"reads_root": self.reads_root, "count": self.count}


@dataclass(frozen=True, slots=True)
class KeyRef:
    """One (upload, subject) key by its commitment: the subject stays unnamed, the commitment
    is what the upload's anchored key-commitments root covers."""

    upload: str
    key_commitment: bytes

    def to_payload(self) -> dict[str, Any]:
        return {"upload": self.upload, "key_commitment": self.key_commitment.hex()}

    @classmethod
    def from_payload(cls, obj: Mapping[str, Any]) -> KeyRef:
        return cls(str(obj["upload"]), bytes.fromhex(obj["key_commitment"]))

    def to_body(self) -> dict[str, Any]:
        return {"upload": self.upload, "key_commitment": self.key_commitment}


@dataclass(frozen=True, slots=True)
class RecordRectify:
    """Art. 16: a subject's records in a dataset were re-keyed with one of them corrected.

    `superseded` are the keys destroyed with the old subject secret (every (upload, subject)
    key of the subject in the dataset), `replacement` the keys of the new uploads holding the
    current versions; `request` the subject's own rectification.request when there is one.
    The fact names no subject: the commitments link the old and new versions, and only the
    subject's request (which the ledger forgets with them) says whose they are.
    """

    dataset: str
    superseded: tuple[KeyRef, ...]
    replacement: tuple[KeyRef, ...]
    requester: str  # provider or dpo: who ordered it (vault-side only)
    at: dt.datetime
    request: int | None = None

    kind: ClassVar[str] = RECORD_RECTIFY

    def to_payload(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "dataset": self.dataset,
            "superseded": [k.to_payload() for k in self.superseded],
            "replacement": [k.to_payload() for k in self.replacement],
            "requester": self.requester,
            "at": self.at.isoformat(),
        }
        if self.request is not None:
            out["request"] = self.request
        return out

    @classmethod
    def from_payload(cls, obj: Mapping[str, Any]) -> RecordRectify:
        request = obj.get("request")
        return cls(
            dataset=str(obj["dataset"]),
            superseded=tuple(KeyRef.from_payload(k) for k in obj["superseded"]),
            replacement=tuple(KeyRef.from_payload(k) for k in obj["replacement"]),
            requester=str(obj["requester"]),
            at=dt.datetime.fromisoformat(obj["at"]),
            request=None if request is None else int(request),
        )

    def to_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "dataset": self.dataset,
            "superseded": [k.to_body() for k in self.superseded],
            "replacement": [k.to_body() for k in self.replacement],
        }
        if self.request is not None:
            body["request"] = self.request
        return body


Fact = UploadAnchor | ErasureRecord | RetentionExpire | ReadRecord | RecordRectify
ErasureFact = ErasureRecord | RetentionExpire


def fact_from_payload(kind: str, payload: Mapping[str, Any]) -> Fact:
    """The typed fact of an outbox row."""
    if kind == UPLOAD_ANCHOR:
        return UploadAnchor.from_payload(payload)
    if kind == ERASURE_RECORD:
        return ErasureRecord.from_payload(payload)
    if kind == RETENTION_EXPIRE:
        return RetentionExpire.from_payload(payload)
    if kind == READ_RECORD:
        return ReadRecord.from_payload(payload)
    if kind == RECORD_RECTIFY:
        return RecordRectify.from_payload(payload)
    raise ValueError(f"no outbox fact of kind {kind!r}")


def erasure_from_payload(kind: str, payload: Mapping[str, Any]) -> ErasureFact:
    fact = fact_from_payload(kind, payload)
    if not isinstance(fact, ErasureRecord | RetentionExpire):
        raise ValueError(f"a {kind} destroys nothing by erasure")
    return fact


__all__ = [
    "ERASURE_KINDS",
    "LEDGER_EPOCH",
    "TX_TYPES",
    "EpochScope",
    "ErasureCertificate",
    "ErasureFact",
    "ErasureRecord",
    "Fact",
    "KeyRef",
    "ReadRecord",
    "RecordRectify",
    "RetentionExpire",
    "Scope",
    "SubjectScope",
    "UploadAnchor",
    "UploadRef",
    "UploadScope",
    "erasure_from_payload",
    "fact_from_payload",
    "from_ledger_day",
    "ledger_day",
    "scope_from_payload",
]
