"""Personal data breaches the DPO handles (GDPR Art. 33, 34): incidents and their timelines.

Revision ID: 0017
Revises: 0016
Create Date: 2027-01-18

Why: the controller notifies a breach to the supervisory authority within 72 hours of
becoming aware of it, and documents every breach, notified or not (Art. 33(5)). An incident
keeps its discovery time and its deadline (fixed: discovery + 72 h), its scope (a member's
ledger key, a dataset, a time window) and a timeline of facts the database keeps append-only:
a trigger refuses to change or delete an entry, so the documentation shows what was known
when. Neither table names a subject: the subjects affected are derived when asked, from the
ledger and the vault, which forget an erased subject (invariant 7).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0017"
down_revision: str | None = "0016_final_erasure"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_APPEND_ONLY = """
CREATE FUNCTION incident_facts_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'incident_facts is append-only: an entry is never changed or deleted';
END
$$;
CREATE TRIGGER incident_facts_append_only BEFORE UPDATE OR DELETE ON incident_facts
    FOR EACH ROW EXECUTE FUNCTION incident_facts_append_only();
"""


def upgrade() -> None:
    op.create_table(
        "incidents",
        sa.Column("id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("title", sa.String(length=200), nullable=False),
        sa.Column("discovered_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deadline_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "opened_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.Column("opened_by", sa.String(length=128), nullable=False),
        sa.Column("member", sa.String(length=64), nullable=True),
        sa.Column("dataset_id", postgresql.UUID(as_uuid=True), nullable=True),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=True),
        sa.Column("window_end", sa.DateTime(timezone=True), nullable=True),
        sa.Column("state", sa.String(length=8), server_default="open", nullable=False),
        sa.Column("risk", sa.String(length=8), nullable=True),
        sa.Column("notified_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("state IN ('open', 'closed')", name=op.f("ck_incidents_state")),
        sa.CheckConstraint("risk IN ('unlikely', 'risk', 'high')", name=op.f("ck_incidents_risk")),
        sa.CheckConstraint("member ~ '^[0-9a-f]{64}$'", name=op.f("ck_incidents_member")),
        sa.CheckConstraint(
            "deadline_at = discovered_at + interval '72 hours'", name=op.f("ck_incidents_deadline")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_incidents")),
    )
    op.create_index(op.f("ix_incidents_deadline_at"), "incidents", ["deadline_at"], unique=False)
    op.create_table(
        "incident_facts",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("incident_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("kind", sa.String(length=24), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "recorded_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("author", sa.String(length=128), nullable=False),
        sa.Column("text", sa.Text(), nullable=True),
        sa.Column("subjects", sa.BigInteger(), nullable=True),
        sa.Column("records", sa.BigInteger(), nullable=True),
        sa.Column("risk", sa.String(length=8), nullable=True),
        sa.CheckConstraint(
            "kind IN ('nature', 'categories', 'approximate_numbers', 'consequences', "
            "'measures', 'risk', 'delay_reasons', 'notified', 'communicated', 'note')",
            name=op.f("ck_incident_facts_kind"),
        ),
        sa.CheckConstraint(
            "risk IN ('unlikely', 'risk', 'high')", name=op.f("ck_incident_facts_risk")
        ),
        sa.CheckConstraint(
            "subjects >= 0 AND records >= 0", name=op.f("ck_incident_facts_numbers")
        ),
        sa.CheckConstraint("length(text) <= 4000", name=op.f("ck_incident_facts_text_length")),
        sa.ForeignKeyConstraint(
            ["incident_id"],
            ["incidents.id"],
            name=op.f("fk_incident_facts_incident_id_incidents"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_incident_facts")),
    )
    op.create_index(
        op.f("ix_incident_facts_incident_id"), "incident_facts", ["incident_id"], unique=False
    )
    op.execute(_APPEND_ONLY)


def downgrade() -> None:
    op.execute("DROP TRIGGER incident_facts_append_only ON incident_facts")
    op.execute("DROP FUNCTION incident_facts_append_only()")
    op.drop_index(op.f("ix_incident_facts_incident_id"), table_name="incident_facts")
    op.drop_table("incident_facts")
    op.drop_index(op.f("ix_incidents_deadline_at"), table_name="incidents")
    op.drop_table("incidents")
