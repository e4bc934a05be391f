"""Outbox facts name things as the ledger does: `scope.kind`, `upload`, `dataset`, `subject`.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05

Why: the vault's facts and the contracts' transaction bodies describe the same things, and
ledger_bridge/facts.py now defines both forms side by side with one set of names, the
ledger's. Rewriting the rows already written (rather than reading both spellings forever)
keeps every query on the JSONB single-minded: the erasure's idempotency match on its scope,
the subject lookup behind `ix_outbox_erasure_subject`, and the audits. The payloads are
rewritten in SQL, so a large outbox of anchors is one statement, and the names are frozen
here: the migration does not import the module whose names it moves to.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# {earlier name: ledger name}: the anchor's top-level keys, the erasure scope's keys, and the
# key of each whole upload an erasure or expiry names.
_ANCHOR = {"upload_id": "upload", "dataset_id": "dataset"}
_SCOPE = {"type": "kind", "subject_id": "subject", "dataset_id": "dataset", "upload_id": "upload"}
_UPLOAD_REF = {"upload_id": "upload"}

# Renames the keys of a JSON object that `names` maps, leaving the others (and every value).
_RENAME_FUNCTION = sa.text(
    "CREATE FUNCTION pg_temp.civis_rename(p jsonb, names jsonb) RETURNS jsonb"
    " LANGUAGE sql IMMUTABLE AS $$"
    " SELECT coalesce(jsonb_object_agg(coalesce(names ->> key, key), value), '{}'::jsonb)"
    " FROM jsonb_each(p) $$"
)
_REWRITE_ANCHORS = sa.text(
    "UPDATE outbox SET payload = pg_temp.civis_rename(payload, CAST(:anchor AS jsonb))"
    " WHERE kind = 'upload.anchor'"
)
_REWRITE_ERASURES = sa.text(
    "UPDATE outbox SET payload = payload"
    " || jsonb_build_object('scope', pg_temp.civis_rename(payload -> 'scope',"
    " CAST(:scope AS jsonb)))"
    " || CASE WHEN jsonb_typeof(payload -> 'uploads') = 'array' THEN jsonb_build_object("
    "  'uploads', (SELECT coalesce(jsonb_agg(pg_temp.civis_rename(u, CAST(:ref AS jsonb))"
    "  ORDER BY n), '[]'::jsonb)"
    "  FROM jsonb_array_elements(payload -> 'uploads') WITH ORDINALITY AS x(u, n)))"
    " ELSE '{}'::jsonb END"
    " WHERE kind IN ('erasure.record', 'retention.expire')"
    " AND jsonb_typeof(payload -> 'scope') = 'object'"
)


def _names(mapping: dict[str, str], *, back: bool) -> str:
    return json.dumps({v: k for k, v in mapping.items()} if back else mapping)


def _rewrite(*, back: bool) -> None:
    bind = op.get_bind()
    bind.execute(_RENAME_FUNCTION)
    bind.execute(_REWRITE_ANCHORS, {"anchor": _names(_ANCHOR, back=back)})
    bind.execute(
        _REWRITE_ERASURES,
        {"scope": _names(_SCOPE, back=back), "ref": _names(_UPLOAD_REF, back=back)},
    )
    bind.execute(sa.text("DROP FUNCTION pg_temp.civis_rename(jsonb, jsonb)"))


def _subject_index(key: str) -> None:
    op.create_index(
        "ix_outbox_erasure_subject",
        "outbox",
        [sa.text(f"(payload -> 'scope' ->> '{key}')")],
        postgresql_where=sa.text("kind = 'erasure.record'"),
    )


def upgrade() -> None:
    op.drop_index("ix_outbox_erasure_subject", table_name="outbox")
    _rewrite(back=False)
    _subject_index("subject")


def downgrade() -> None:
    op.drop_index("ix_outbox_erasure_subject", table_name="outbox")
    _rewrite(back=True)
    _subject_index("subject_id")
