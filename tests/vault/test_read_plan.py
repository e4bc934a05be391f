"""The consented read's statement probes the key store's index for each subject's secret on
the embedded server, small tables included (vault/embedded.py, `PLANNER_SETTINGS`).

Why: with PostgreSQL's default costs (`random_page_cost` 4, for spinning disks) the planner
scanned the whole `key_secrets` table once per record of a small dataset: about 1.7 times
the server's CPU for the read. The control runs the same statement under the default and
finds the scan, so the check would see it come back."""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Iterator
from typing import Any

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


def _statement(dataset: uuid.UUID, upload: uuid.UUID, subjects: list[str]) -> Any:
    params, shape = reads._dataset_params(dataset, subjects, (), [upload], True)
    return reads._dataset_statement(reads._PSYCOPG, shape, False), params


def _plan(session: Session, dataset: uuid.UUID, upload: uuid.UUID, subjects: list[str]) -> str:
    """The plan of the first page's statement, as it runs with these values."""
    raw, params = _statement(dataset, upload, subjects)
    cursor = db.driver_connection(session).cursor()
    cursor.execute("EXPLAIN " + raw.sql, {**raw.constants, **params, "page": 1000})
    return "\n".join(line for (line,) in cursor.fetchall())


def _generic_plan(session: Session, dataset: uuid.UUID, upload: uuid.UUID) -> Any:
    """The plan PostgreSQL may keep for the prepared statement, whatever its values (psycopg
    prepares a statement it runs often), as JSON."""
    raw, _ = _statement(dataset, upload, [])
    numbers: dict[str, str] = {}
    sql = re.sub(
        r"%\((\w+)\)s", lambda m: numbers.setdefault(m[1], f"${len(numbers) + 1}"), raw.sql
    )
    cursor = db.driver_connection(session).cursor()
    cursor.execute("EXPLAIN (GENERIC_PLAN, FORMAT JSON) " + sql)
    (plan,) = cursor.fetchall()
    return plan[0][0]["Plan"]


def _nodes(plan: Any) -> Iterator[Any]:
    yield plan
    for child in plan.get("Plans", ()):
        yield from _nodes(child)


def _input(node: Any) -> Any:
    """The node's input rows (not a sub-plan it runs first, such as a CTE's)."""
    return next(n for n in node["Plans"] if n["Parent Relationship"] in ("Outer", "Subquery"))


_PROBED = re.compile(r"Index (Only )?Scan using \S+ on key_secrets key_secrets_3")


def test_each_subject_secret_is_probed_by_index_not_scanned(
    committed_engine: Engine, services: VaultServices
) -> None:
    """Under the embedded server's settings, as the statement runs with its values and as a
    generic prepared plan; under PostgreSQL's default costs, the scan (the control)."""
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
        assert "Seq Scan on key_secrets" not in plan and _PROBED.search(plan), plan
        generic = list(_nodes(_generic_plan(session, dataset, upload)))
        lookups = [n for n in generic if n.get("Alias") == "key_secrets_3"]
        assert lookups and all(n["Node Type"] != "Seq Scan" for n in lookups), lookups
        session.execute(text("SET LOCAL random_page_cost = 4"))  # the control: the default
        assert "Seq Scan on key_secrets key_secrets_3" in _plan(session, dataset, upload, subjects)


def test_the_upload_columns_are_thinned_after_the_page_is_cut(
    committed_engine: Engine, services: VaultServices
) -> None:
    """The window that sends an upload's columns once per upload runs over the page, above
    its LIMIT: below it, the sort would take every row the read matches, not a page's."""
    with Session(committed_engine) as session, session.begin():
        dataset = make_dataset(session).id
        upload = services.uploader.upload(session, dataset, [RecordIn("s", b"{}")]).upload_id
    with Session(committed_engine) as session, session.begin():
        plan = _generic_plan(session, dataset, upload)
        window = next(n for n in _nodes(plan) if n["Node Type"] == "WindowAgg")
        below = _input(window)
        while below["Node Type"] == "Subquery Scan":
            below = _input(below)
        assert below["Node Type"] == "Limit", below["Node Type"]
