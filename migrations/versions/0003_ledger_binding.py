"""The ledger binding: the one chain a vault database records its facts on.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25

Why: outbox facts are only meaningful on the chain where their datasets were registered; a
database pointed at another chain must be refused at start, not discovered by a stuck relay.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "ledger_binding",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("chain_id", sa.String(length=128), nullable=False),
        sa.Column("validators_digest", sa.LargeBinary(), nullable=False),
        sa.Column(
            "bound_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint("id = 1", name=op.f("ck_ledger_binding_single_row")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_binding")),
    )


def downgrade() -> None:
    op.drop_table("ledger_binding")
