"""The expiry of an outbox fact's transaction, stored with its request id: `outbox.valid_until`.

Revision ID: 0019_outbox_valid_until
Revises: 0018_member_names
Create Date: 2027-02-08

Why: the relay runs in whichever worker process takes its lock, and a resubmission after a
timeout or a crash must send the very request the first submission sent, byte for byte (an
erasure's receipt is a copy of the request that carried it, and the replicas delete that
request from its block once the erasure is stable). The transaction's signature is
deterministic; its `valid_until` came from the clock at signing, so it is stored too. Null
until the fact's first submission, and again once the DPO sends a refused fact anew.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0019_outbox_valid_until"
down_revision: str | None = "0018_member_names"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("outbox", sa.Column("valid_until", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    op.drop_column("outbox", "valid_until")
