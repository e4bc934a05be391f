"""Partners hold API keys: the companies where citizens redeem eco-citizen tokens.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05

Why: a partner is a legal entity admitted by governance, like a provider or a consumer; it
publishes offers, spends the coupons its customers show and reads its own dashboard over HTTP,
so it needs an API key of its own role. The roles are frozen here rather than read from
`vault.models.API_ROLES`, so this revision means the same whatever later ones add.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BEFORE = "role IN ('provider', 'consumer', 'subject', 'dpo', 'validator')"
_AFTER = "role IN ('provider', 'consumer', 'subject', 'dpo', 'validator', 'partner')"


def upgrade() -> None:
    op.drop_constraint(op.f("ck_api_keys_role"), "api_keys", type_="check")
    op.create_check_constraint(op.f("ck_api_keys_role"), "api_keys", _AFTER)


def downgrade() -> None:
    # A partner's keys cannot outlive the role: revoked keys go too, their rows mean nothing.
    op.execute("DELETE FROM api_keys WHERE role = 'partner'")
    op.drop_constraint(op.f("ck_api_keys_role"), "api_keys", type_="check")
    op.create_check_constraint(op.f("ck_api_keys_role"), "api_keys", _BEFORE)
