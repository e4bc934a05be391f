"""Records remember the version that replaced them: Art. 16 rectification.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05

Why: a rectification re-keys a subject in a dataset and writes their records again in new
uploads, one of them corrected (vault/rectification.py). The old rows stay, without their
ciphertext, because their salted leaves keep the other records' inclusion proofs of their
upload valid; `superseded_by` names the record holding the next version, so reads skip the old
ones and a subject's history can be followed from either end. Existing rows are current: NULL.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0011"
down_revision: str | None = "0010_subject_sessions"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "records", sa.Column("superseded_by", postgresql.UUID(as_uuid=True), nullable=True)
    )
    op.create_index(
        "ix_records_superseded_by",
        "records",
        ["superseded_by"],
        postgresql_where=sa.text("superseded_by IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_records_superseded_by", table_name="records")
    op.drop_column("records", "superseded_by")
