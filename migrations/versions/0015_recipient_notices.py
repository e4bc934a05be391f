"""Recipients told (GDPR Art. 17(2), 19): `recipient_notices` and `consumer_webhooks`.

Revision ID: 0015_recipient_notices
Revises: 0014_decryptions
Create Date: 2027-01-10

Why: an erasure (a rectification, a restriction) must reach the consumers that received the
data. Each notice is a row, signed once its ledger fact is recorded, delivered to the
consumer's webhook with retries or read from its feed, its delivery status kept for the DPO.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0015_recipient_notices"
down_revision: str | None = "0014_decryptions"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "recipient_notices",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("consumer", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("dataset_id", sa.UUID(), nullable=False),
        sa.Column("body", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("fact_type", sa.String(length=32), nullable=False),
        sa.Column("outbox_id", sa.BigInteger(), nullable=True),
        sa.Column("signature", sa.LargeBinary(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("sealed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("delivered_via", sa.String(length=8), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("webhook_url", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "kind IN ('erasure', 'rectification', 'restriction')",
            name=op.f("ck_recipient_notices_kind"),
        ),
        sa.CheckConstraint(
            "delivered_via IS NULL OR delivered_via IN ('webhook', 'feed')",
            name=op.f("ck_recipient_notices_delivered_via"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_recipient_notices")),
    )
    op.create_index(
        "ix_recipient_notices_consumer", "recipient_notices", ["consumer", "id"], unique=False
    )
    op.create_index(
        "ix_recipient_notices_undelivered",
        "recipient_notices",
        ["next_attempt_at"],
        unique=False,
        postgresql_where=sa.text("delivered_at IS NULL"),
    )
    op.create_index(
        "ix_recipient_notices_unsealed",
        "recipient_notices",
        ["outbox_id"],
        unique=False,
        postgresql_where=sa.text("signature IS NULL"),
    )
    op.create_table(
        "consumer_webhooks",
        sa.Column("consumer", sa.String(length=64), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("consumer", name=op.f("pk_consumer_webhooks")),
    )


def downgrade() -> None:
    op.drop_table("consumer_webhooks")
    op.drop_index("ix_recipient_notices_unsealed", table_name="recipient_notices")
    op.drop_index("ix_recipient_notices_undelivered", table_name="recipient_notices")
    op.drop_index("ix_recipient_notices_consumer", table_name="recipient_notices")
    op.drop_table("recipient_notices")
