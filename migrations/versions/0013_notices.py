"""Consent notices: what a subject was shown before consenting, by the hash they signed.

Revision ID: 0013_notices
Revises: 0012_subject_requests
Create Date: 2026-12-12

Why: a consent is informed only if the subject was told the purpose, the recipient, the
retention, their rights and who the controller is (GDPR Art. 7(1), 13), and the controller
must be able to show it later. The notice is stored here by the SHA-256 of its canonical
JSON; the subject's signed consent.grant names that hash on the ledger, so neither side can
change the words afterwards.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0013_notices"
down_revision: str | None = "0012_subject_requests"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "notices",
        sa.Column("hash", sa.LargeBinary(), nullable=False),
        sa.Column("body", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint("length(hash) = 32", name=op.f("ck_notices_hash_length")),
        sa.PrimaryKeyConstraint("hash", name=op.f("pk_notices")),
    )


def downgrade() -> None:
    op.drop_table("notices")
