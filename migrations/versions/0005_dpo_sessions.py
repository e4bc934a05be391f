"""DPO page sessions as rows, so that signing out ends a session on the server.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-09

Why: a session cookie that only carries a signature stays valid until it expires, so a copy
taken before sign-out keeps working after it. A session is a row keyed by the SHA-256 of its
random token; sign-out deletes it. The HMAC key file the signed cookies needed
(`dpo-session.key`) is no longer read; sessions signed with it are not rows, so the DPO signs in
again once after the upgrade.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "dpo_sessions",
        sa.Column("token_hash", sa.LargeBinary(), nullable=False),
        sa.Column("key_id", sa.String(length=32), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["key_id"],
            ["api_keys.id"],
            name=op.f("fk_dpo_sessions_key_id_api_keys"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("token_hash", name=op.f("pk_dpo_sessions")),
    )
    op.create_index(op.f("ix_dpo_sessions_key_id"), "dpo_sessions", ["key_id"], unique=False)
    op.create_index(
        op.f("ix_dpo_sessions_expires_at"), "dpo_sessions", ["expires_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_dpo_sessions_expires_at"), table_name="dpo_sessions")
    op.drop_index(op.f("ix_dpo_sessions_key_id"), table_name="dpo_sessions")
    op.drop_table("dpo_sessions")
