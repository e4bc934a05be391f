"""Outbox refusals: a fact the consent contracts refused stops holding up the ones behind it.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02

Why: the relay ships facts in id order, and at revision 0003 it retries the oldest unsent
fact until the ledger takes it. A fact the contracts refuse (they executed it and said no) is
refused again on every retry, so every anchor and erasure behind it would wait forever. From
this revision such a fact is set aside (`refused_at`, the contract's code in `last_error`),
the relay moves on, the DPO sees it (`GET /v1/dpo/outbox`, the `civis_outbox_facts` metric)
and can send it again once the cooperative's state allows it. An upload whose anchor was
refused is `refused`: no consumer gets its records.
A resent fact needs a ledger request id above every one the relay used (the replicas ignore
older ones), hence `request_id` and the sequence it is drawn from.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_STATES_OLD = "state IN ('pending', 'anchored', 'withdrawn')"
_STATES_NEW = "state IN ('pending', 'anchored', 'withdrawn', 'refused')"


def upgrade() -> None:
    op.add_column("outbox", sa.Column("refused_at", sa.DateTime(timezone=True), nullable=True))
    # Before this revision the relay's ledger request id was the fact id; a retried fact needs
    # a fresh one above every id used, so the sequence starts above every fact id ever issued
    # (the id sequence's position, not max(id): facts may have been deleted since).
    op.add_column("outbox", sa.Column("request_id", sa.BigInteger(), nullable=True))
    op.execute("CREATE SEQUENCE outbox_request_ids")
    op.execute(
        """
        DO $$
        DECLARE
            ids text := pg_get_serial_sequence('outbox', 'id');
            used bigint;
        BEGIN
            EXECUTE format('SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM %s', ids)
                INTO used;
            PERFORM setval('outbox_request_ids', used + 1, false);
        END
        $$
        """
    )
    op.drop_index("ix_outbox_pending", table_name="outbox")
    op.create_index(
        "ix_outbox_pending",
        "outbox",
        ["id"],
        postgresql_where=sa.text("sent_at IS NULL AND refused_at IS NULL"),
    )
    op.create_index(
        "ix_outbox_refused", "outbox", ["id"], postgresql_where=sa.text("refused_at IS NOT NULL")
    )
    op.drop_constraint(op.f("ck_uploads_state"), "uploads", type_="check")
    op.create_check_constraint(op.f("ck_uploads_state"), "uploads", _STATES_NEW)


def downgrade() -> None:
    # A refused upload goes back to pending (served to no consumer either way) and its fact back in
    # the queue, where a revision-0003 relay retries it.
    op.execute("UPDATE uploads SET state = 'pending' WHERE state = 'refused'")
    op.drop_constraint(op.f("ck_uploads_state"), "uploads", type_="check")
    op.create_check_constraint(op.f("ck_uploads_state"), "uploads", _STATES_OLD)
    op.drop_index("ix_outbox_refused", table_name="outbox")
    op.drop_index("ix_outbox_pending", table_name="outbox")
    op.create_index(
        "ix_outbox_pending", "outbox", ["id"], postgresql_where=sa.text("sent_at IS NULL")
    )
    op.drop_column("outbox", "request_id")
    op.execute("DROP SEQUENCE outbox_request_ids")
    op.drop_column("outbox", "refused_at")
