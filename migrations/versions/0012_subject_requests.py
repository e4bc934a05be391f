"""The subject-request register (GDPR Art. 12(3)) and the controller's Art. 30 record.

Revision ID: 0012_subject_requests
Revises: 0011_rectification
Create Date: 2027-01-10

Why: every request of a data subject (access, rectification, erasure, restriction, objection,
portability) must be answered within one month of receipt, extendable by two further months
with reasons; the controller must be able to show that it was (Art. 5(2)). `subject_requests`
keeps each request's receipt, deadline, outcome and ledger facts. `controller_record` (one
row) holds the controller's and the DPO's contact details and the transfers outside the EU,
which the records of processing (Art. 30(1)(a), (e)) need and the dataset registry lacks.
The closed sets are frozen here, not read from the models, so this revision means the same
whatever later ones add.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0012_subject_requests"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_KINDS = "kind IN ('access', 'rectification', 'erasure', 'restriction', 'objection', 'portability')"
_STATES = "state IN ('open', 'extended', 'done', 'refused')"


def upgrade() -> None:
    op.create_table(
        "subject_requests",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("subject", sa.String(length=128), nullable=False),
        sa.Column("dataset_id", sa.UUID(), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("state", sa.String(length=16), server_default="open", nullable=False),
        sa.Column("done_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "facts",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'[]'::jsonb"),
            nullable=False,
        ),
        sa.Column("request", sa.BigInteger(), nullable=True),
        sa.Column("extended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("extension_reason", sa.Text(), nullable=True),
        sa.Column("refusal_reason", sa.Text(), nullable=True),
        sa.CheckConstraint(_KINDS, name=op.f("ck_subject_requests_kind")),
        sa.CheckConstraint(_STATES, name=op.f("ck_subject_requests_state")),
        sa.CheckConstraint("due_at > received_at", name=op.f("ck_subject_requests_due")),
        sa.CheckConstraint(
            "(done_at IS NULL) = (state IN ('open', 'extended'))",
            name=op.f("ck_subject_requests_done"),
        ),
        sa.CheckConstraint(
            "(state = 'extended') <= (extension_reason IS NOT NULL)",
            name=op.f("ck_subject_requests_extension_reason"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_subject_requests")),
        sa.UniqueConstraint("kind", "request", name=op.f("uq_subject_requests_kind")),
    )
    op.create_index(
        op.f("ix_subject_requests_subject"), "subject_requests", ["subject"], unique=False
    )
    op.create_index(
        "ix_subject_requests_pending_due",
        "subject_requests",
        ["due_at"],
        unique=False,
        postgresql_where=sa.text("state IN ('open', 'extended')"),
    )
    _controller_record()


def _controller_record() -> None:
    op.create_table(
        "controller_record",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("address", sa.String(length=500), server_default="", nullable=False),
        sa.Column("email", sa.String(length=200), server_default="", nullable=False),
        sa.Column("phone", sa.String(length=50), server_default="", nullable=False),
        sa.Column("representative", sa.String(length=500), server_default="", nullable=False),
        sa.Column("dpo_name", sa.String(length=200), server_default="", nullable=False),
        sa.Column("dpo_email", sa.String(length=200), server_default="", nullable=False),
        sa.Column("dpo_phone", sa.String(length=50), server_default="", nullable=False),
        sa.Column("timezone", sa.String(length=64), server_default="UTC", nullable=False),
        sa.Column(
            "transfers",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'[]'::jsonb"),
            nullable=False,
        ),
        sa.Column(
            "set_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint("id = 1", name=op.f("ck_controller_record_single_row")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_controller_record")),
    )


def downgrade() -> None:
    op.drop_table("controller_record")
    op.drop_index("ix_subject_requests_pending_due", table_name="subject_requests")
    op.drop_index(op.f("ix_subject_requests_subject"), table_name="subject_requests")
    op.drop_table("subject_requests")
