"""Initial schema: datasets, uploads, records (ciphertext), the key store, commitments, outbox.

Revision ID: 0001
Revises:
Create Date: 2026-11-25

Why these tables: records hold only AES-GCM envelopes; key_secrets holds the three kinds of
destroyable secrets wrapped by a KEK; key_commitments and uploads.merkle_root are what the
ledger anchors; outbox holds ledger facts written in the same transaction as their change.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "datasets",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("owner_id", sa.String(length=128), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("category", sa.String(length=100), nullable=False),
        sa.Column("purposes", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("retention_days", sa.Integer(), nullable=False),
        sa.Column("legal_basis", sa.String(length=100), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "retention_days > 0 AND retention_days <= 36600", name=op.f("ck_datasets_retention")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_datasets")),
        sa.UniqueConstraint("owner_id", "name", name=op.f("uq_datasets_owner_id")),
    )
    op.create_table(
        "key_secrets",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("dataset_id", sa.UUID(), nullable=False),
        sa.Column("scope", sa.String(length=128), nullable=False),
        sa.Column("kek_id", sa.String(length=64), nullable=False),
        sa.Column("wrapped", sa.LargeBinary(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "kind IN ('upload', 'subject', 'epoch')", name=op.f("ck_key_secrets_kind")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_key_secrets")),
        sa.UniqueConstraint("kind", "dataset_id", "scope", name=op.f("uq_key_secrets_kind")),
    )
    op.create_index(op.f("ix_key_secrets_kek_id"), "key_secrets", ["kek_id"], unique=False)
    op.create_index("ix_key_secrets_kind_scope", "key_secrets", ["kind", "scope"], unique=False)
    op.create_table(
        "outbox",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("payload", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("tx_id", sa.String(length=128), nullable=True),
        sa.Column("block_height", sa.BigInteger(), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox")),
    )
    op.create_index(
        "ix_outbox_pending",
        "outbox",
        ["id"],
        unique=False,
        postgresql_where=sa.text("sent_at IS NULL"),
    )
    op.create_table(
        "uploads",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("dataset_id", sa.UUID(), nullable=False),
        sa.Column("record_count", sa.Integer(), nullable=False),
        sa.Column("merkle_root", sa.LargeBinary(), nullable=False),
        sa.Column("commitments_root", sa.LargeBinary(), nullable=False),
        sa.Column("commitment_count", sa.Integer(), nullable=False),
        sa.Column("retention_day", sa.Date(), nullable=False),
        sa.Column("state", sa.String(length=16), server_default="pending", nullable=False),
        sa.Column("anchor_tx_id", sa.String(length=128), nullable=True),
        sa.Column("anchor_height", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "state IN ('pending', 'anchored', 'withdrawn')", name=op.f("ck_uploads_state")
        ),
        sa.CheckConstraint("record_count >= 0", name=op.f("ck_uploads_record_count")),
        sa.ForeignKeyConstraint(
            ["dataset_id"], ["datasets.id"], name=op.f("fk_uploads_dataset_id_datasets")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_uploads")),
    )
    op.create_index(op.f("ix_uploads_dataset_id"), "uploads", ["dataset_id"], unique=False)
    op.create_index(op.f("ix_uploads_retention_day"), "uploads", ["retention_day"], unique=False)
    op.create_table(
        "key_commitments",
        sa.Column("upload_id", sa.UUID(), nullable=False),
        sa.Column("subject_id", sa.String(length=128), nullable=False),
        sa.Column("commitment", sa.LargeBinary(), nullable=False),
        sa.Column("destroyed_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["upload_id"], ["uploads.id"], name=op.f("fk_key_commitments_upload_id_uploads")
        ),
        sa.PrimaryKeyConstraint("upload_id", "subject_id", name=op.f("pk_key_commitments")),
    )
    op.create_index("ix_key_commitments_subject", "key_commitments", ["subject_id"], unique=False)
    op.create_table(
        "records",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("dataset_id", sa.UUID(), nullable=False),
        sa.Column("upload_id", sa.UUID(), nullable=False),
        sa.Column("subject_id", sa.String(length=128), nullable=False),
        sa.Column("leaf_index", sa.Integer(), nullable=False),
        sa.Column("leaf_hash", sa.LargeBinary(), nullable=False),
        sa.Column("envelope", sa.LargeBinary(), nullable=True),
        sa.ForeignKeyConstraint(
            ["upload_id"], ["uploads.id"], name=op.f("fk_records_upload_id_uploads")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_records")),
        sa.UniqueConstraint("upload_id", "leaf_index", name=op.f("uq_records_upload_id")),
    )
    op.create_index(
        "ix_records_dataset_subject", "records", ["dataset_id", "subject_id"], unique=False
    )
    op.create_index("ix_records_subject", "records", ["subject_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_records_subject", table_name="records")
    op.drop_index("ix_records_dataset_subject", table_name="records")
    op.drop_table("records")
    op.drop_index("ix_key_commitments_subject", table_name="key_commitments")
    op.drop_table("key_commitments")
    op.drop_index(op.f("ix_uploads_retention_day"), table_name="uploads")
    op.drop_index(op.f("ix_uploads_dataset_id"), table_name="uploads")
    op.drop_table("uploads")
    op.drop_index(
        "ix_outbox_pending", table_name="outbox", postgresql_where=sa.text("sent_at IS NULL")
    )
    op.drop_table("outbox")
    op.drop_index("ix_key_secrets_kind_scope", table_name="key_secrets")
    op.drop_index(op.f("ix_key_secrets_kek_id"), table_name="key_secrets")
    op.drop_table("key_secrets")
    op.drop_table("datasets")
