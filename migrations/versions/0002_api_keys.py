"""API keys: members' keys for the HTTP API, stored as SHA-256 hashes of their secret half.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25

Why a hash and not the token: a database dump must not let anyone call the API as a member.
The token has 256 bits of entropy, so a plain SHA-256 (no slow KDF) is enough.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("secret_hash", sa.LargeBinary(), nullable=False),
        sa.Column("member_id", sa.String(length=128), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "role IN ('provider', 'consumer', 'subject', 'dpo', 'validator')",
            name=op.f("ck_api_keys_role"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
    )
    op.create_index(op.f("ix_api_keys_member_id"), "api_keys", ["member_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_api_keys_member_id"), table_name="api_keys")
    op.drop_table("api_keys")
