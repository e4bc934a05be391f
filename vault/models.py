"""The vault's tables (SQLAlchemy 2 declarative). The migrations must agree with these.

What lives here: ciphertext envelopes, wrapped key-store secrets, key commitments, Merkle leaf
hashes and an outbox of facts for the ledger. What must never live here: a plaintext payload,
an unwrapped secret, a derived DEK. Subject ids are pseudonyms (a wallet public key or an
opaque id chosen by the cooperative), never names or addresses.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any, Literal

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Sequence,
    String,
    Text,
    UniqueConstraint,
    and_,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

SECRET_KINDS = ("upload", "subject", "epoch")
UPLOAD_STATES = ("pending", "anchored", "withdrawn", "refused")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Dataset(Base):
    __tablename__ = "datasets"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    owner_id: Mapped[str] = mapped_column(String(128))  # the provider member's pseudonym
    name: Mapped[str] = mapped_column(String(200))
    category: Mapped[str] = mapped_column(String(100))
    purposes: Mapped[list[str]] = mapped_column(JSONB)
    retention_days: Mapped[int] = mapped_column(Integer)
    legal_basis: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    # The dataset.register receipt, kept so every later read shows what the POST answered; null
    # without a ledger (the contracts never saw the dataset).
    register_tx_id: Mapped[str | None] = mapped_column(String(128))
    register_height: Mapped[int | None] = mapped_column(BigInteger)

    __table_args__ = (
        CheckConstraint("retention_days > 0 AND retention_days <= 36600", name="retention"),
        UniqueConstraint("owner_id", "name"),
    )


class Upload(Base):
    __tablename__ = "uploads"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    dataset_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("datasets.id"), index=True)
    record_count: Mapped[int] = mapped_column(Integer)
    merkle_root: Mapped[bytes] = mapped_column(LargeBinary)
    # RFC 6962 root over the upload's key commitments ordered by subject id: what the ledger
    # anchors, so the list itself (one per subject) need not go on chain.
    commitments_root: Mapped[bytes] = mapped_column(LargeBinary)
    commitment_count: Mapped[int] = mapped_column(Integer)
    retention_day: Mapped[dt.date] = mapped_column(Date, index=True)
    # pending until the ledger committed its upload.anchor; only anchored uploads are served.
    # refused: the contracts refused the anchor (see OutboxFact.refused_at); no consumer gets it.
    state: Mapped[str] = mapped_column(String(16), server_default="pending")
    anchor_tx_id: Mapped[str | None] = mapped_column(String(128))
    anchor_height: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        CheckConstraint("state IN ('pending', 'anchored', 'withdrawn', 'refused')", name="state"),
        CheckConstraint("record_count >= 0", name="record_count"),
    )


class Record(Base):
    __tablename__ = "records"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    dataset_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    upload_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("uploads.id"))
    subject_id: Mapped[str] = mapped_column(String(128))
    leaf_index: Mapped[int] = mapped_column(Integer)
    leaf_hash: Mapped[bytes] = mapped_column(LargeBinary)
    # NULL once erased or expired: the ciphertext goes, the salted leaf stays for the proofs.
    envelope: Mapped[bytes | None] = mapped_column(LargeBinary)

    __table_args__ = (
        UniqueConstraint("upload_id", "leaf_index"),
        Index("ix_records_dataset_subject", "dataset_id", "subject_id"),
        Index("ix_records_subject", "subject_id"),
    )


class KeySecret(Base):
    """One destroyable secret, wrapped by a KEK of the key provider.

    scope: the upload id (kind upload), the subject id (kind subject, per dataset) or the ISO
    retention day (kind epoch, per dataset). Destroying the row erases the scope.
    """

    __tablename__ = "key_secrets"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(16))
    dataset_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    scope: Mapped[str] = mapped_column(String(128))
    kek_id: Mapped[str] = mapped_column(String(64), index=True)
    wrapped: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )

    __table_args__ = (
        UniqueConstraint("kind", "dataset_id", "scope"),
        CheckConstraint("kind IN ('upload', 'subject', 'epoch')", name="kind"),
        Index("ix_key_secrets_kind_scope", "kind", "scope"),
    )


class KeyCommitment(Base):
    """The ledger-visible commitment of each (upload, subject) DEK; never the key itself."""

    __tablename__ = "key_commitments"

    upload_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("uploads.id"), primary_key=True)
    subject_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    commitment: Mapped[bytes] = mapped_column(LargeBinary)
    destroyed_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    # The commitment's leaf index under Upload.commitments_root, set when its subject is
    # forgotten: the replacement id no longer sorts where the subject id did. NULL rows keep
    # their subject id and fill the other indexes in subject-id order
    # (vault.reads.key_commitments_in_order).
    position: Mapped[int | None] = mapped_column(Integer)

    __table_args__ = (Index("ix_key_commitments_subject", "subject_id"),)


class OutboxFact(Base):
    """A fact the ledger must record (anchor, erasure, expiry), written in the same transaction
    as the change it describes, so a crash can never leave one without the other."""

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(32))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    created_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    sent_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    tx_id: Mapped[str | None] = mapped_column(String(128))
    block_height: Mapped[int | None] = mapped_column(BigInteger)
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    last_error: Mapped[str | None] = mapped_column(Text)
    # Set when the consent contracts refused the fact: the relay skips it from then on (it
    # would be refused again and hold up every fact behind it); the DPO may send it again.
    refused_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    # The ledger client's request id for this fact's submission (RELAY_REQUEST_IDS): replicas
    # answer a repeated id from their reply cache and ignore one below the last they executed,
    # so a retried (refused, then requeued) fact needs a fresh one.
    request_id: Mapped[int | None] = mapped_column(BigInteger)
    # Final erasure (vault/final_erasure.py), for erasure and expiry facts only: the cycle of
    # KEK rotation and retirement that covers this fact (set when the cycle starts, to the
    # facts committed by then), and when that cycle retired every KEK that could have wrapped
    # a copy of what the fact destroyed: from then on no copy decrypts with any key the host
    # holds.
    final_cycle: Mapped[int | None] = mapped_column(BigInteger)
    final_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        Index(
            "ix_outbox_pending",
            "id",
            postgresql_where=text("sent_at IS NULL AND refused_at IS NULL"),
        ),
        Index("ix_outbox_refused", "id", postgresql_where=text("refused_at IS NOT NULL")),
        # Erasure facts not final yet: what the next final-erasure cycle covers.
        Index(
            "ix_outbox_not_final",
            "id",
            postgresql_where=text(
                "kind IN ('erasure.record', 'retention.expire') AND final_at IS NULL"
            ),
        ),
        # The erasure facts naming a subject: an erasure everywhere finds them to forget them.
        Index(
            "ix_outbox_erasure_subject",
            # As PostgreSQL writes the expression back, so the migrations' check compares equal.
            text("((payload -> 'scope'::text) ->> 'subject'::text)"),
            postgresql_where=text("kind = 'erasure.record'"),
        ),
    )

    @property
    def ledger_state(self) -> Literal["recorded", "refused", "pending"]:
        """Where the fact stands with the ledger, derived from the two timestamps: the one
        reading that the relay, the routes and the audits share."""
        if self.sent_at is not None:
            return "recorded"
        return "refused" if self.refused_at is not None else "pending"


# The SQL side of `OutboxFact.ledger_state` (the partial indexes' predicates).
OUTBOX_PENDING = and_(OutboxFact.sent_at.is_(None), OutboxFact.refused_at.is_(None))
OUTBOX_REFUSED = OutboxFact.refused_at.is_not(None)


# The outbox relay's ledger request ids (see OutboxFact.request_id). Migration 0004 starts it
# above every fact id, the request ids the relay used before it existed.
RELAY_REQUEST_IDS = Sequence("outbox_request_ids", metadata=Base.metadata)


API_ROLES = ("provider", "consumer", "subject", "dpo", "validator", "partner")


class ApiKey(Base):
    """An API key of a member. Only the SHA-256 of the secret half is stored, never the token.

    Why here and not in api/: one metadata object keeps the migrations' autogenerate check
    (tests/test_migrations.py) seeing every table; the API owns the logic (api/services/keys.py).
    """

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # public key id, in the token
    secret_hash: Mapped[bytes] = mapped_column(LargeBinary)  # SHA-256 of the secret half
    member_id: Mapped[str] = mapped_column(String(128), index=True)  # pseudonym or public key
    role: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    # Null: the key works until revoked. A rotation's grace period sets it on the old key.
    expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        CheckConstraint(
            "role IN ('provider', 'consumer', 'subject', 'dpo', 'validator')", name="role"
        ),
    )


class LedgerBinding(Base):
    """The one chain this vault database records its facts on (a single row, id 1).

    Why: outbox facts name datasets and uploads registered on ONE chain; shipped to another
    chain (a ledger directory recreated, a database pointed at the wrong cluster) the first
    would be refused and hold up every later fact, and the vault's receipts would name blocks
    of a chain that does not know them. The API binds the database at its first start with a
    ledger and refuses to start against any other chain (api/http/app.py).
    """

    __tablename__ = "ledger_binding"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    chain_id: Mapped[str] = mapped_column(String(128))
    validators_digest: Mapped[bytes] = mapped_column(LargeBinary)  # SHA-256 of the validator keys
    bound_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )

    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)


class DpoSession(Base):
    """A signed-in DPO page session: it exists while its row does.

    Why rows and not only a signed cookie: a signed token stays valid until it expires,
    whatever the DPO does; a row is deleted at sign-out, so a copy of the cookie taken before
    is refused after. Only the SHA-256 of the random token is stored (a database dump opens no
    session); revoking or deleting the API key ends its sessions too.
    """

    __tablename__ = "dpo_sessions"

    token_hash: Mapped[bytes] = mapped_column(LargeBinary, primary_key=True)
    key_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("api_keys.id", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), index=True)


class Kek(Base):
    """A key-encryption key the vault has used, by id (`k<N>`); never its value.

    Why a table when the provider holds the KEKs: several processes (API instances, the
    `keys rotate` command) share one master key file or token, and retiring a KEK must be
    agreed through the database they share (vault/final_erasure.py). `retiring_at`: from then
    on no process wraps anything new under it (`KeyStore.ensure` checks, under the KEK's
    advisory lock); `retired_at`: every row it wrapped was rewrapped and it was destroyed.
    `created_at` is when the vault first saw it (KEKs made before this table: their first
    heartbeat), what the audit measures the rotation schedule against.
    """

    __tablename__ = "keks"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    retiring_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    retired_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class VaultInstance(Base):
    """A process serving the vault (an API instance, a uvicorn worker), by its heartbeat.

    What it reports is what KEK retirement waits for: the KEK it wraps new secrets under
    (`current_kek`) and every KEK it holds in memory (`loaded_keks`). An old KEK is retired
    only once every live instance wraps under the new one, and a retirement is final only
    once no live instance still holds the retired KEK. Live means a heartbeat within
    `instance_ttl_s`, by the database's clock (hosts' clocks may differ). A clean stop deletes
    the row; a crashed instance's row goes stale and stops counting.
    """

    __tablename__ = "vault_instances"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    heartbeat_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), index=True
    )
    current_kek: Mapped[str] = mapped_column(String(64))
    loaded_keks: Mapped[list[str]] = mapped_column(JSONB)


class FinalErasureCycle(Base):
    """One run of the final-erasure job: rotate the KEK, let every instance adopt it, rewrap,
    retire the old KEKs, wait until no instance holds them, VACUUM, mark erasures final.

    Each step's time is set when the step is done, so a crashed or blocked cycle resumes where
    it stopped (the job, or `civis-vault keys rotate`, whichever runs next); `blocked` says
    what it is waiting for (an instance that has not adopted the new KEK, a transaction still
    wrapping under an old one), for the DPO.
    """

    __tablename__ = "final_erasure_cycles"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    started_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    new_kek: Mapped[str | None] = mapped_column(String(64))
    rotated_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    adopted_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    rewrapped_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    retired_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    dropped_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    vacuumed_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), index=True)
    secrets_rewrapped: Mapped[int] = mapped_column(BigInteger, server_default="0")
    retired_keks: Mapped[list[str]] = mapped_column(JSONB, server_default="[]")
    facts_final: Mapped[int] = mapped_column(BigInteger, server_default="0")
    blocked: Mapped[str | None] = mapped_column(Text)
