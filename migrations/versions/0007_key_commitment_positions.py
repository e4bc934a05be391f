"""Key commitments keep their leaf index once a subject of their upload is forgotten; erasure
facts are found by the subject they name.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05

Why: an upload's key-commitments root is built over its commitments ordered by subject id.
An erasure "everywhere" replaces the subject id with a value that names nobody, which sorts
elsewhere, so the order (and with it the recomputed root) would change. The erasure records
the forgotten row's leaf index in `position` before it rewrites the subject id; the rows that
keep their subject id keep their relative order and fill the other indexes, so they need
nothing: existing rows stay NULL.

Why the index: an erasure everywhere looks up every erasure fact that names the subject, to
drop the subject from them once its own fact is recorded; without it that is a scan of the
whole outbox, anchors included.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("key_commitments", sa.Column("position", sa.Integer(), nullable=True))
    op.create_index(
        "ix_outbox_erasure_subject",
        "outbox",
        [sa.text("(payload -> 'scope' ->> 'subject_id')")],
        postgresql_where=sa.text("kind = 'erasure.record'"),
    )


def downgrade() -> None:
    op.drop_index("ix_outbox_erasure_subject", table_name="outbox")
    op.drop_column("key_commitments", "position")
