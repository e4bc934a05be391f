"""Final erasure: the KEKs and the instances that hold them, the cycles that retire old KEKs,
and when each erasure became final.

Revision ID: 0016_final_erasure
Revises: 0015_recipient_notices
Create Date: 2027-01-10

Why: an erasure destroys a secret, but copies of its wrapped bytes stay in dead tuples and
the WAL, readable with the KEK they were wrapped under, until that KEK is retired. Retiring a
KEK while a running instance still wraps under it, or still holds it, loses data or leaves a
key behind; these tables are how the instances and the job agree (vault/final_erasure.py).
`outbox.final_cycle` / `final_at` give an erasure certificate its second state, `final`.
Existing erasure facts have no cycle: the first cycle covers them.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0016_final_erasure"
down_revision: str | None = "0015_recipient_notices"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column("outbox", sa.Column("final_cycle", sa.BigInteger(), nullable=True))
    op.add_column("outbox", sa.Column("final_at", _TZ, nullable=True))
    op.create_index(
        "ix_outbox_not_final",
        "outbox",
        ["id"],
        postgresql_where=sa.text(
            "kind IN ('erasure.record', 'retention.expire') AND final_at IS NULL"
        ),
    )
    op.create_table(
        "keks",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("created_at", _TZ, server_default=sa.func.now(), nullable=False),
        sa.Column("retiring_at", _TZ, nullable=True),
        sa.Column("retired_at", _TZ, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_keks")),
    )
    op.create_table(
        "vault_instances",
        sa.Column("id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", _TZ, server_default=sa.func.now(), nullable=False),
        sa.Column("heartbeat_at", _TZ, server_default=sa.func.now(), nullable=False),
        sa.Column("current_kek", sa.String(64), nullable=False),
        sa.Column("loaded_keks", postgresql.JSONB(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_vault_instances")),
    )
    op.create_index(op.f("ix_vault_instances_heartbeat_at"), "vault_instances", ["heartbeat_at"])
    op.create_table(
        "final_erasure_cycles",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("started_at", _TZ, server_default=sa.func.now(), nullable=False),
        sa.Column("new_kek", sa.String(64), nullable=True),
        sa.Column("rotated_at", _TZ, nullable=True),
        sa.Column("adopted_at", _TZ, nullable=True),
        sa.Column("rewrapped_at", _TZ, nullable=True),
        sa.Column("retired_at", _TZ, nullable=True),
        sa.Column("dropped_at", _TZ, nullable=True),
        sa.Column("vacuumed_at", _TZ, nullable=True),
        sa.Column("finished_at", _TZ, nullable=True),
        sa.Column("secrets_rewrapped", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("retired_keks", postgresql.JSONB(), server_default="[]", nullable=False),
        sa.Column("facts_final", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("blocked", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_final_erasure_cycles")),
    )
    op.create_index(
        op.f("ix_final_erasure_cycles_finished_at"), "final_erasure_cycles", ["finished_at"]
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_final_erasure_cycles_finished_at"), table_name="final_erasure_cycles")
    op.drop_table("final_erasure_cycles")
    op.drop_index(op.f("ix_vault_instances_heartbeat_at"), table_name="vault_instances")
    op.drop_table("vault_instances")
    op.drop_table("keks")
    op.drop_index("ix_outbox_not_final", table_name="outbox")
    op.drop_column("outbox", "final_at")
    op.drop_column("outbox", "final_cycle")
