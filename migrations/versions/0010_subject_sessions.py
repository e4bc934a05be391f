"""Subjects sign in with their wallet: sign-in challenges and short-lived sessions.

Revision ID: 0010_subject_sessions
Revises: 0009_partner_api_keys
Create Date: 2026-12-12

Why: a data subject reads their own export without an API key the operator issues by hand
(`civis-vault apikey create`): the wallet signs a challenge with each of its pseudonyms and
gets a session of minutes bound to them; a challenge is a row so that it can be used once, a
session a row so that signing out, an erasure or its expiry ends it on the server.
Only the SHA-256 of a session's secret is stored.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0010_subject_sessions"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "subject_challenges",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("challenge", sa.LargeBinary(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_subject_challenges")),
    )
    op.create_index(op.f("ix_subject_challenges_expires_at"), "subject_challenges", ["expires_at"])
    op.create_table(
        "subject_sessions",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("secret_hash", sa.LargeBinary(), nullable=False),
        sa.Column("pseudonyms", postgresql.ARRAY(sa.String(length=64)), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "cardinality(pseudonyms) BETWEEN 1 AND 256",
            name=op.f("ck_subject_sessions_pseudonyms"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_subject_sessions")),
    )
    op.create_index(op.f("ix_subject_sessions_expires_at"), "subject_sessions", ["expires_at"])
    op.create_index(
        "ix_subject_sessions_pseudonyms",
        "subject_sessions",
        ["pseudonyms"],
        postgresql_using="gin",
    )


def downgrade() -> None:
    # Sessions and challenges live minutes: dropping them signs every subject out.
    op.drop_index("ix_subject_sessions_pseudonyms", table_name="subject_sessions")
    op.drop_index(op.f("ix_subject_sessions_expires_at"), table_name="subject_sessions")
    op.drop_table("subject_sessions")
    op.drop_index(op.f("ix_subject_challenges_expires_at"), table_name="subject_challenges")
    op.drop_table("subject_challenges")
