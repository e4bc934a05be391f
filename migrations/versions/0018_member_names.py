"""Members' display names and contacts, kept off the ledger: `member_names`.

Revision ID: 0018_member_names
Revises: 0017
Create Date: 2027-02-01

Why: the DPO reads organisations, not keys. A legal entity's name and contact are given when
it joins (`civis-vault up` for the founders, the API key's creation or the DPO's route for the
others) and change over its life, so they live in the vault's registry and not on the ledger.
Subjects get no row: a name beside a pseudonym would link what pairwise pseudonyms keep apart.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0018_member_names"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "member_names",
        sa.Column("member_id", sa.String(length=128), nullable=False),
        sa.Column("display_name", sa.String(length=120), nullable=False),
        sa.Column("contact", sa.String(length=200), server_default="", nullable=False),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint("length(display_name) > 0", name=op.f("ck_member_names_display_name")),
        sa.PrimaryKeyConstraint("member_id", name=op.f("pk_member_names")),
    )


def downgrade() -> None:
    op.drop_table("member_names")
