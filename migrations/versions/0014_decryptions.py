"""Every decryption recorded: the append-only table `decryptions` (GDPR Art. 5(2)).

Revision ID: 0014_decryptions
Revises: 0013_notices
Create Date: 2027-01-10

Why: a provider's read of its records, a subject's export and the DPO's reads decrypt personal
data on the vault's own authority, so each is a row written in the read's own transaction
and committed to the ledger in batches (`read.record`).

Why a trigger rather than a role without UPDATE and DELETE: the vault connects as one role,
often the tables' owner, and an owner may grant itself back whatever was revoked; a role
cannot say "UPDATE only this column, only from this value to that shape" either. The trigger
refuses every DELETE and TRUNCATE, and every UPDATE but the two the vault makes: the batcher
setting `batch_id` and `leaf_index` once, and an erasure replacing the subject (and a reader
that was the subject) by a forgotten id (`~...`) and dropping the salt, once. Getting around it
takes DDL (`ALTER TABLE ... DISABLE TRIGGER`, `DROP TRIGGER`) or a superuser's
`session_replication_role`: visible in the server's logs, and a row changed that way no longer
matches the root the ledger holds (tests/api/test_decryptions.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014_decryptions"
down_revision: str | None = "0013_notices"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_GUARD = """
CREATE FUNCTION decryptions_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'UPDATE' THEN
        RAISE EXCEPTION 'decryptions are append-only: % refused', TG_OP
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF NEW.id <> OLD.id OR NEW.at <> OLD.at OR NEW.reader_role <> OLD.reader_role
        OR NEW.kind <> OLD.kind OR NEW.dataset_id <> OLD.dataset_id
        OR NEW.record_count <> OLD.record_count OR NEW.leaf_hash <> OLD.leaf_hash THEN
        RAISE EXCEPTION 'decryptions are append-only: a recorded read never changes'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF (NEW.batch_id, NEW.leaf_index) IS DISTINCT FROM (OLD.batch_id, OLD.leaf_index)
        AND (OLD.batch_id IS NOT NULL OR NEW.batch_id IS NULL OR NEW.leaf_index IS NULL) THEN
        RAISE EXCEPTION 'decryptions are append-only: a read is batched once'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF (NEW.subject, NEW.reader, NEW.salt) IS DISTINCT FROM (OLD.subject, OLD.reader, OLD.salt)
        AND (left(OLD.subject, 1) = '~' OR left(NEW.subject, 1) <> '~' OR NEW.salt IS NOT NULL
             OR (NEW.reader <> OLD.reader
                 AND (OLD.reader <> OLD.subject OR NEW.reader <> NEW.subject))) THEN
        RAISE EXCEPTION 'decryptions are append-only: only an erasure forgets the subject'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER decryptions_append_only BEFORE UPDATE OR DELETE ON decryptions
    FOR EACH ROW EXECUTE FUNCTION decryptions_append_only();
CREATE TRIGGER decryptions_no_truncate BEFORE TRUNCATE ON decryptions
    FOR EACH STATEMENT EXECUTE FUNCTION decryptions_append_only();
"""


def upgrade() -> None:
    op.create_table(
        "decryptions",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reader", sa.String(length=128), nullable=False),
        sa.Column("reader_role", sa.String(length=16), nullable=False),
        sa.Column("kind", sa.String(length=24), nullable=False),
        sa.Column("subject", sa.String(length=128), nullable=False),
        sa.Column("dataset_id", sa.UUID(), nullable=False),
        sa.Column("record_count", sa.Integer(), nullable=False),
        sa.Column("salt", sa.LargeBinary(), nullable=True),
        sa.Column("leaf_hash", sa.LargeBinary(), nullable=False),
        sa.Column("batch_id", sa.BigInteger(), nullable=True),
        sa.Column("leaf_index", sa.Integer(), nullable=True),
        sa.CheckConstraint(
            "kind IN ('provider_read', 'subject_export', 'dpo_read', 'consumer_access')",
            name=op.f("ck_decryptions_kind"),
        ),
        sa.CheckConstraint("record_count > 0", name=op.f("ck_decryptions_record_count")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_decryptions")),
        sa.UniqueConstraint("batch_id", "leaf_index", name=op.f("uq_decryptions_batch_id")),
    )
    op.create_index("ix_decryptions_subject", "decryptions", ["subject"], unique=False)
    op.create_index("ix_decryptions_reader", "decryptions", ["reader"], unique=False)
    op.create_index(
        "ix_decryptions_unbatched",
        "decryptions",
        ["at"],
        unique=False,
        postgresql_where=sa.text("batch_id IS NULL"),
    )
    op.execute(_GUARD)


def downgrade() -> None:
    op.execute("DROP TRIGGER decryptions_no_truncate ON decryptions")
    op.execute("DROP TRIGGER decryptions_append_only ON decryptions")
    op.execute("DROP FUNCTION decryptions_append_only()")
    op.drop_index("ix_decryptions_unbatched", table_name="decryptions")
    op.drop_index("ix_decryptions_reader", table_name="decryptions")
    op.drop_index("ix_decryptions_subject", table_name="decryptions")
    op.drop_table("decryptions")
