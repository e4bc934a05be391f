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
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
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
    # NULL once erased, expired or rectified: the ciphertext goes, the salted leaf stays for
    # the proofs.
    envelope: Mapped[bytes | None] = mapped_column(LargeBinary)
    # Set when a rectification replaced this version (vault/rectification.py): the id of the
    # record holding the next version. No foreign key: the next version's upload may be
    # withdrawn or expire (its rows deleted) while this row stays for its upload's proofs.
    superseded_by: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))

    __table_args__ = (
        UniqueConstraint("upload_id", "leaf_index"),
        Index("ix_records_dataset_subject", "dataset_id", "subject_id"),
        Index("ix_records_subject", "subject_id"),
        # The versions a record replaced (a subject's history), found from the current one.
        Index(
            "ix_records_superseded_by",
            "superseded_by",
            postgresql_where=text("superseded_by IS NOT NULL"),
        ),
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
    """A fact the ledger must record (anchor, erasure, expiry, rectification), written in the
    same transaction as the change it describes, so a crash can never leave one without the
    other."""

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
    # The `valid_until` (ms since the epoch) the fact's transaction is signed with, stored
    # with `request_id`: every worker, and the relay restarted after a crash, then sends the
    # very request an earlier submission sent (same key, request id and transaction: the same
    # bytes), the one an erasure's receipt must copy if it committed (api/services/outbox.py).
    valid_until: Mapped[int | None] = mapped_column(BigInteger)
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


# A sign-in binds at most this many pseudonyms (one per dataset a wallet knows).
SESSION_PSEUDONYMS_MAX = 256


class SubjectChallenge(Base):
    """A subject's sign-in challenge: random bytes the wallet signs, usable once, for minutes.

    Why a row: single use needs memory of what was handed out; the row goes when a sign-in
    uses it, and the purge drops it once expired (api/services/subject_sessions.py).
    """

    __tablename__ = "subject_challenges"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # 128 random bits, hex
    challenge: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), index=True)


class SubjectSession(Base):
    """A subject signed in with their wallet: a short-lived bearer bound to proven pseudonyms.

    Only the SHA-256 of the token's secret is stored. The row names every pseudonym the
    wallet proved in one sign-in, so while it lives the vault knows they are one person: it
    is deleted at sign-out, purged once expired, and deleted by any erasure of one of its
    pseudonyms (vault/erasure.py), so the link outlives neither.
    """

    __tablename__ = "subject_sessions"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # public session id, in the token
    secret_hash: Mapped[bytes] = mapped_column(LargeBinary)
    pseudonyms: Mapped[list[str]] = mapped_column(ARRAY(String(64)))
    created_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), index=True)

    __table_args__ = (
        CheckConstraint(
            f"cardinality(pseudonyms) BETWEEN 1 AND {SESSION_PSEUDONYMS_MAX}", name="pseudonyms"
        ),
        # An erasure finds the sessions naming a pseudonym (`pseudonyms @> ARRAY[p]`).
        Index("ix_subject_sessions_pseudonyms", "pseudonyms", postgresql_using="gin"),
    )


INCIDENT_STATES = ("open", "closed")
# What the DPO assessed of the risk to the subjects (Art. 33(1), 34(1)): `unlikely` needs no
# notification (but is documented, Art. 33(5)); `risk` is notified to the authority; `high`
# is also communicated to the subjects.
INCIDENT_RISKS = ("unlikely", "risk", "high")
# The kinds of a timeline entry: the contents of Art. 33(3) (nature, categories, numbers,
# consequences, measures), the risk assessment, the reasons for a late notification
# (Art. 33(1)), the notification itself, the communication to the subjects (Art. 34), a note.
INCIDENT_FACT_KINDS = (
    "nature",
    "categories",
    "approximate_numbers",
    "consequences",
    "measures",
    "risk",
    "delay_reasons",
    "notified",
    "communicated",
    "note",
)


class Incident(Base):
    """A personal data breach as the DPO handles it (GDPR Art. 33, 34), from discovery to
    closure; what happened and what was done is its timeline (`IncidentFact`).

    Why no subject in it: the subjects affected are derived when asked, from the ledger's
    access record and the vault (api/services/incidents.py), which forget an erased subject;
    a list kept here would outlive their erasure (invariant 7). The incident keeps counts, and
    names at most a member's ledger key (a legal entity's, never a resident's) and a dataset.
    """

    __tablename__ = "incidents"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    title: Mapped[str] = mapped_column(String(200))
    discovered_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    # discovered_at + 72 h: fixed when opened, so the deadline never moves (Art. 33(1)).
    deadline_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), index=True)
    opened_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    opened_by: Mapped[str] = mapped_column(String(128))  # the DPO's member id
    # What the breach concerns as far as known: a member's ledger key (hex), a dataset, a time
    # window; each optional. The affected-subjects query starts from it.
    member: Mapped[str | None] = mapped_column(String(64))
    dataset_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    window_start: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    window_end: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    state: Mapped[str] = mapped_column(String(8), server_default="open")
    risk: Mapped[str | None] = mapped_column(String(8))
    notified_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    closed_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        CheckConstraint("state IN ('open', 'closed')", name="state"),
        CheckConstraint("risk IN ('unlikely', 'risk', 'high')", name="risk"),
        CheckConstraint("member ~ '^[0-9a-f]{64}$'", name="member"),
        CheckConstraint("deadline_at = discovered_at + interval '72 hours'", name="deadline"),
    )


class IncidentFact(Base):
    """One entry of an incident's timeline, append-only: the database refuses to change or
    delete one (migration 0017's trigger), so the record of what the DPO knew when stays as
    it was written (Art. 33(5): documentation the authority may check)."""

    __tablename__ = "incident_facts"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    incident_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("incidents.id"), index=True)
    kind: Mapped[str] = mapped_column(String(24))
    # When it happened (a notification sent by post yesterday), and when it was written here.
    at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    recorded_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    author: Mapped[str] = mapped_column(String(128))
    text: Mapped[str | None] = mapped_column(Text)
    subjects: Mapped[int | None] = mapped_column(BigInteger)
    records: Mapped[int | None] = mapped_column(BigInteger)
    risk: Mapped[str | None] = mapped_column(String(8))

    __table_args__ = (
        CheckConstraint(
            "kind IN ('nature', 'categories', 'approximate_numbers', 'consequences', "
            "'measures', 'risk', 'delay_reasons', 'notified', 'communicated', 'note')",
            name="kind",
        ),
        CheckConstraint("risk IN ('unlikely', 'risk', 'high')", name="risk"),
        CheckConstraint("subjects >= 0 AND records >= 0", name="numbers"),
        CheckConstraint("length(text) <= 4000", name="text_length"),
    )


# What a decryption was for: a provider reading its own records, a subject's export, the DPO's
# reads; a consumer's access is recorded on the ledger by its access.request instead.
DECRYPTION_KINDS = ("provider_read", "subject_export", "dpo_read", "consumer_access")


class Decryption(Base):
    """One read of one subject's records in one dataset, by one member (GDPR Art. 5(2)).

    Written in the transaction that answers the read (for a stream, committed before its first
    byte), append-only (a trigger of migration 0014 refuses DELETE, TRUNCATE and any UPDATE
    but two: the batcher setting `batch_id` and `leaf_index` once, and an erasure forgetting
    the subject), and committed to the ledger in batches (`read.record`, the RFC 6962 root over
    `leaf_hash`). The leaf hashes every other column with `salt`, 32 random bytes, so a leaf
    or an audit path says nothing of whom it names; an erasure drops the salt with the
    subject, and the leaf (kept, for the others' proofs) can no longer be tested against any
    guess (vault/decryptions.py).
    """

    __tablename__ = "decryptions"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    reader: Mapped[str] = mapped_column(String(128))  # the member id of the key that read
    reader_role: Mapped[str] = mapped_column(String(16))
    kind: Mapped[str] = mapped_column(String(24))
    # The subject whose records were decrypted; `forgotten_id` once erased (vault/erasure.py).
    subject: Mapped[str] = mapped_column(String(128))
    dataset_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    record_count: Mapped[int] = mapped_column(Integer)
    salt: Mapped[bytes | None] = mapped_column(LargeBinary)  # NULL once the subject is forgotten
    leaf_hash: Mapped[bytes] = mapped_column(LargeBinary)
    # The outbox fact (read.record) of the batch, and the leaf's index under its root.
    batch_id: Mapped[int | None] = mapped_column(BigInteger)
    leaf_index: Mapped[int | None] = mapped_column(Integer)

    __table_args__ = (
        CheckConstraint(
            "kind IN ('provider_read', 'subject_export', 'dpo_read', 'consumer_access')",
            name="kind",
        ),
        CheckConstraint("record_count > 0", name="record_count"),
        UniqueConstraint("batch_id", "leaf_index"),
        Index("ix_decryptions_subject", "subject"),
        Index("ix_decryptions_reader", "reader"),
        # The batcher's queue: the rows no read.record covers yet, oldest first.
        Index("ix_decryptions_unbatched", "at", postgresql_where=text("batch_id IS NULL")),
    )


# What a recipient notice tells a consumer about data it received (GDPR Art. 17(2), 19).
NOTICE_KINDS = ("erasure", "rectification", "restriction")
NOTICE_CHANNELS = ("webhook", "feed")


class RecipientNotice(Base):
    """A notice to one consumer that data it received was erased, rectified or restricted.

    `body` is what the vault's ledger key signs (api/client/accountability.py): it names the
    dataset, the kind, the ids of the records concerned (never the subject's pseudonym) and,
    once it is on the ledger, the fact (type, tx id, height). A notice waiting for a vault fact
    the relay has not recorded yet (`outbox_id`) is unsigned until it is; only signed notices
    are delivered, on the consumer's webhook (with retries) or its feed, whichever first.
    """

    __tablename__ = "recipient_notices"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    consumer: Mapped[str] = mapped_column(String(64))  # the consumer's ledger key (hex)
    kind: Mapped[str] = mapped_column(String(16))
    dataset_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    body: Mapped[dict[str, Any]] = mapped_column(JSONB)
    fact_type: Mapped[str] = mapped_column(String(32))
    outbox_id: Mapped[int | None] = mapped_column(BigInteger)
    signature: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    sealed_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    delivered_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    delivered_via: Mapped[str | None] = mapped_column(String(8))
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(Text)
    webhook_url: Mapped[str | None] = mapped_column(Text)  # where the last attempt went

    __table_args__ = (
        CheckConstraint("kind IN ('erasure', 'rectification', 'restriction')", name="kind"),
        CheckConstraint(
            "delivered_via IS NULL OR delivered_via IN ('webhook', 'feed')", name="delivered_via"
        ),
        Index("ix_recipient_notices_consumer", "consumer", "id"),
        # The delivery job's queue and the audit's: signed notices not delivered yet.
        Index(
            "ix_recipient_notices_undelivered",
            "next_attempt_at",
            postgresql_where=text("delivered_at IS NULL"),
        ),
        # Notices waiting for their vault fact to be recorded before they are signed.
        Index(
            "ix_recipient_notices_unsealed",
            "outbox_id",
            postgresql_where=text("signature IS NULL"),
        ),
    )


# The register's closed sets as its check constraints spell them; tests/test_vocabulary.py
# keeps them equal to REQUEST_KINDS and REQUEST_STATES (ledger_bridge/contracts/vocabulary.py),
# which the vault may not import.
REQUEST_KINDS_SQL = (
    "kind IN ('access', 'rectification', 'erasure', 'restriction', 'objection', 'portability')"
)
REQUEST_STATES_SQL = "state IN ('open', 'extended', 'done', 'refused')"
# The states in which a request still waits for its answer.
REQUEST_PENDING_STATES = ("open", "extended")


class SubjectRequest(Base):
    """One request of a data subject (GDPR Art. 15 to 21) in the Art. 12(3) register: when it
    came, when it is due, how it ended, and the ledger facts that prove it
    (api/services/requests.py).

    `subject` is the pseudonym until an erasure forgets it: then it holds the value
    `vault.erasure.forgotten_id` derived from a secret the erasure destroyed, so the row (the
    request and its timing stay provable) names nobody.
    """

    __tablename__ = "subject_requests"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    subject: Mapped[str] = mapped_column(String(128), index=True)
    dataset_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    received_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    due_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    state: Mapped[str] = mapped_column(String(16), server_default="open")
    done_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    # [{"type": tx type, "tx_id": hex or null, "height": int or null}, ...], oldest first.
    facts: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, server_default=text("'[]'::jsonb"))
    # The ledger's number for the subject's own signed request (erasure.request,
    # rectification.request: their result's `request`), when the request is on the ledger.
    request: Mapped[int | None] = mapped_column(BigInteger)
    extended_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    # Art. 12(3) and 12(4): the reasons the subject is given for an extension or a refusal.
    extension_reason: Mapped[str | None] = mapped_column(Text)
    refusal_reason: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        CheckConstraint(REQUEST_KINDS_SQL, name="kind"),
        CheckConstraint(REQUEST_STATES_SQL, name="state"),
        CheckConstraint("due_at > received_at", name="due"),
        CheckConstraint("(done_at IS NULL) = (state IN ('open', 'extended'))", name="done"),
        CheckConstraint(
            "(state = 'extended') <= (extension_reason IS NOT NULL)", name="extension_reason"
        ),
        UniqueConstraint("kind", "request"),
        # The DPO's view: what is still pending, by deadline (overdue, soon due).
        Index(
            "ix_subject_requests_pending_due",
            "due_at",
            postgresql_where=text("state IN ('open', 'extended')"),
        ),
    )


class ConsumerWebhook(Base):
    """Where a consumer wants its recipient notices POSTed (https, a public address)."""

    __tablename__ = "consumer_webhooks"

    consumer: Mapped[str] = mapped_column(String(64), primary_key=True)
    url: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )


class ControllerRecord(Base):
    """Art. 30(1)(a) and (e): who the controller is, its DPO, and any transfer outside the
    EU/EEA, in one row (id 1), set at the cooperative's founding (`civis-vault up`) or by
    `civis-vault controller set`, read by the records of processing and the DPIA.

    Why a row and not the genesis: the record must be kept up to date (a DPO changes, an
    address moves) while a genesis never changes, and the DPO's contact names a person, which
    has no place on a ledger that keeps what it orders for the cooperative's life.
    """

    __tablename__ = "controller_record"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    address: Mapped[str] = mapped_column(String(500), server_default="")
    email: Mapped[str] = mapped_column(String(200), server_default="")
    phone: Mapped[str] = mapped_column(String(50), server_default="")
    representative: Mapped[str] = mapped_column(String(500), server_default="")
    dpo_name: Mapped[str] = mapped_column(String(200), server_default="")
    dpo_email: Mapped[str] = mapped_column(String(200), server_default="")
    dpo_phone: Mapped[str] = mapped_column(String(50), server_default="")
    # Where the controller is (an IANA zone): a request's deadline is counted in its days
    # (api/services/requests.py), as the law counts them where the controller answers.
    timezone: Mapped[str] = mapped_column(String(64), server_default="UTC")
    # [{"recipient", "country", "safeguard"}]: transfers to third countries (Art. 44-49);
    # empty: none.
    transfers: Mapped[list[dict[str, str]]] = mapped_column(
        JSONB, server_default=text("'[]'::jsonb")
    )
    set_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )

    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)


class Notice(Base):
    """A notice a subject is shown before consenting (GDPR Art. 7(1), 13), by its hash.

    `hash` is the SHA-256 of the canonical JSON of `body` (sorted keys, no spaces, UTF-8):
    what the subject's signed consent.grant names in its `notice` field, so the ledger binds
    the consent to the words shown without holding them. Notices hold no personal data (a
    closed set of bounded fields, checked by the API: purpose, recipient, retention, rights,
    controller); they are never erased, as a consent's meaning must stay readable.
    """

    __tablename__ = "notices"

    hash: Mapped[bytes] = mapped_column(LargeBinary, primary_key=True)
    body: Mapped[dict[str, Any]] = mapped_column(JSONB)
    created_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )

    __table_args__ = (CheckConstraint("length(hash) = 32", name="hash_length"),)


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


class MemberName(Base):
    """A member's display name and contact, for the people who read about it (the DPO's page,
    the records of processing): "Lumen, the utility", not `fe0b78e6ff23…`.

    Why off the ledger: a ledger keeps what it orders for the cooperative's life, while a
    name changes and a contact names a person who may leave. Why legal entities only: a
    subject is known by one pseudonym per dataset (docs/KEYS.md, "Identities"), and a name
    beside each would link what the pseudonyms keep apart (api/services/directory.py refuses
    a subject's key).
    """

    __tablename__ = "member_names"

    member_id: Mapped[str] = mapped_column(String(128), primary_key=True)  # hex public key
    display_name: Mapped[str] = mapped_column(String(120))
    contact: Mapped[str] = mapped_column(String(200), server_default="")
    updated_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )

    __table_args__ = (CheckConstraint("length(display_name) > 0", name="display_name"),)
