"""API keys that expire; the dataset.register receipt kept with the dataset.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-16

Why `expires_at`: a key handed to a partner should stop working on a date agreed in advance,
without somebody remembering to revoke it; a rotation's grace period uses the same column on
the key it replaces. Null keeps every existing key working until revoked, as before.

Why the receipt columns: the receipt of a dataset's registration is known only when the
contracts answer the POST; without a copy, later reads of the dataset had nothing to show.
Datasets registered before this revision keep null receipts: the vault never stored them.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("api_keys", sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("datasets", sa.Column("register_tx_id", sa.String(length=128), nullable=True))
    op.add_column("datasets", sa.Column("register_height", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    op.drop_column("datasets", "register_height")
    op.drop_column("datasets", "register_tx_id")
    op.drop_column("api_keys", "expires_at")
