"""The consented read's statement probes the key store's index for each subject's secret on
the embedded server, small tables included (vault/embedded.py, `PLANNER_SETTINGS`).

Why: with PostgreSQL's default costs (`random_page_cost` 4, for spinning disks) the planner
scanned the whole `key_secrets` table once per record of a small dataset: about 1.7 times
the server's CPU for the read. The control runs the same statement under the default and
finds the scan, so the check would see it come back."""

from __future__ import annotations

import json
import os
import uuid

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from tests.vault.conftest import VaultServices, make_dataset
from vault import db, reads
from vault.embedded import PLANNER_SETTINGS
from vault.uploads import RecordIn

pytestmark = pytest.mark.skipif(
    bool(os.environ.get("CIVIS_TEST_DATABASE_URL")),
    reason="the planner's settings are the embedded server's; an external one keeps its own",
)


def _plan(session: Session, dataset: uuid.UUID, upload: uuid.UUID, subjects: list[str]) -> str:
    params, shape = reads._dataset_params(dataset, subjects, (), [upload], True)
    raw = reads._dataset_statement(session.get_bind().dialect, shape, False)
    cursor = db.driver_connection(session).cursor()
    cursor.execute("EXPLAIN " + raw.sql, {**raw.constants, **params, "page": 1000})
    return "\n".join(line for (line,) in cursor.fetchall())


def test_each_subject_secret_is_probed_by_index_not_scanned(
    committed_engine: Engine, services: VaultServices
) -> None:
    subjects = [f"{i:064x}" for i in range(100)]
    with Session(committed_engine) as session, session.begin():
        dataset = make_dataset(session).id
        upload = services.uploader.upload(
            session, dataset, [RecordIn(s, json.dumps({"s": s}).encode()) for s in subjects]
        ).upload_id
        session.execute(text("UPDATE uploads SET state = 'anchored'"))
    with Session(committed_engine) as session, session.begin():
        session.execute(text("ANALYZE"))
    with Session(committed_engine) as session, session.begin():
        shown = session.execute(text("SHOW random_page_cost")).scalar_one()
        assert shown == PLANNER_SETTINGS["random_page_cost"]
        plan = _plan(session, dataset, upload, subjects)
        assert "Seq Scan on key_secrets" not in plan, plan
        assert "Index Scan using" in plan and "on key_secrets key_secrets_3" in plan, plan
        session.execute(text("SET LOCAL random_page_cost = 4"))  # the control: the default
        assert "Seq Scan on key_secrets key_secrets_3" in _plan(session, dataset, upload, subjects)
