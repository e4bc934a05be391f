"""Retention end to end: a governance vote on the ledger sets how long the vault keeps records.

On four replicas running the consent contracts, behind the real app: the DPO proposes
`set_retention` for a dataset and the founders vote it through. From then on the vault stores
new uploads for the new period (it reads the period from the ledger before encrypting); a
vault whose copy of the period is stale cannot anchor an upload kept longer (the contracts
refuse it, and no consumer is ever served it); the background sync brings the copy back in
step; and the DPO's audit names the uploads made before the vote that are now kept longer
than the dataset is registered for.
"""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from typing import Any

from sqlalchemy import text, update
from sqlalchemy.orm import Session, sessionmaker

from api.services.retention_sync import sync_retention
from tests.api.ledger_env import DAY_MS, LedgerEnv, Wallet
from tests.api.test_consented_access import api, vote_through
from vault.models import Dataset
from vault.uploads import LEDGER_SUBJECT_ID, RecordIn, Uploader


def _upload(env: LedgerEnv, dataset: str, headers: dict[str, str]) -> dict[str, Any]:
    lines = json.dumps({"subject_id": Wallet().id, "payload": {"kwh": 3}}) + "\n"
    r = env.client.post(
        f"/v1/datasets/{dataset}/uploads",
        headers={**headers, "Content-Type": "application/x-ndjson"},
        content=lines.encode(),
    )
    assert r.status_code == 201, r.text
    out: dict[str, Any] = r.json()
    return out


def _state(env: LedgerEnv, dataset: str, upload: str, headers: dict[str, str]) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        r = env.client.get(f"/v1/datasets/{dataset}/uploads/{upload}", headers=headers)
        state = str(r.json()["state"])
        if state != "pending":
            return state
        time.sleep(0.1)
    raise AssertionError("the upload stayed pending")


def test_a_set_retention_vote_takes_effect_in_the_vault(ledger_env: LedgerEnv) -> None:
    env = ledger_env
    provider = env.headers("provider", env.provider)
    r = env.client.post(
        "/v1/datasets",
        headers=provider,
        json={
            "name": f"meters-{uuid.uuid4().hex[:8]}",
            "category": "energy",
            "purposes": ["billing"],
            "retention_days": 365,
            "legal_basis": "contract",
        },
    )
    assert r.status_code == 201, r.text
    dataset = r.json()["id"]
    today = dt.datetime.now(dt.UTC).date()
    before = _upload(env, dataset, provider)
    assert before["retention_day"] == (today + dt.timedelta(days=365)).isoformat()

    action = {"kind": "set_retention", "dataset": dataset, "retention_days": 7}
    proposal = api(env).propose(env.dpo.key, action, voting_for_ms=DAY_MS)
    vote_through(env, int(proposal["result"]["proposal"]))

    after = _upload(env, dataset, provider)
    assert after["retention_day"] == (today + dt.timedelta(days=7)).isoformat()
    assert after["state"] == "anchored"
    assert env.client.get(f"/v1/datasets/{dataset}", headers=provider).json()["retention_days"] == 7

    # A vault whose copy is stale (say, the ledger did not answer when it looked) cannot keep
    # records longer: the contracts refuse the anchor, and the upload is served to no one.
    state = env.client.app.state  # type: ignore[attr-defined]
    sessions: sessionmaker[Session] = state.sessions
    dataset_id = uuid.UUID(dataset)
    with sessions() as s, s.begin():
        s.execute(update(Dataset).where(Dataset.id == dataset_id).values(retention_days=365))
        stale = Uploader(state.key_store, subject_ids=LEDGER_SUBJECT_ID).upload(
            s, dataset_id, [RecordIn(Wallet().id, {"kwh": 4})]
        )
    state.jobs.kick()
    assert _state(env, dataset, str(stale.upload_id), provider) == "refused"
    refused = env.client.get("/v1/dpo/outbox", headers=env.headers("dpo", env.dpo)).json()
    assert any("retention_exceeded" in (f.get("last_error") or "") for f in refused["facts"])

    # The background sync brings the copy back in step with the ledger.
    assert sync_retention(sessions, env.gateway) >= 1
    with sessions() as s:
        assert s.get_one(Dataset, dataset_id).retention_days == 7

    # The upload from before the vote is kept longer than the dataset is now registered for.
    audit = env.client.get(
        f"/v1/dpo/retention-audit?dataset_id={dataset}", headers=env.headers("dpo", env.dpo)
    ).json()
    beyond = [f for f in audit["findings"] if f["code"] == "retention-beyond-registered"]
    assert [f["refs"]["upload_id"] for f in beyond] == [before["upload_id"]]


def test_the_service_rotates_on_schedule_and_the_audit_says_when_it_is_late(
    ledger_env: LedgerEnv,
) -> None:
    """The DPO's audit reports a KEK older than the schedule and an erasure recorded but not
    final; the running service's own job (the schedule is due: its newest KEK is older than
    a day) then rotates and retires it, and both findings go."""
    env = ledger_env
    dpo = env.headers("dpo", env.dpo)
    provider = env.headers("provider", env.provider)
    r = env.client.post(
        "/v1/datasets",
        headers=provider,
        json={
            "name": f"meters-{uuid.uuid4().hex[:8]}",
            "category": "energy",
            "purposes": ["billing"],
            "retention_days": 30,
            "legal_basis": "contract",
        },
    )
    subject = Wallet().id
    lines = json.dumps({"subject_id": subject, "payload": {"kwh": 1}}) + "\n"
    env.client.post(
        f"/v1/datasets/{r.json()['id']}/uploads",
        headers={**provider, "Content-Type": "application/x-ndjson"},
        content=lines.encode(),
    )
    cert = env.client.post("/v1/erasures", headers=dpo, json={"subject_id": subject}).json()
    assert cert["state"] == "recorded" and cert["final_at"] is None

    def codes() -> set[str]:
        audit = env.client.get("/v1/dpo/retention-audit", headers=dpo).json()
        return {f["code"] for f in audit["findings"]}

    assert not codes() & {"kek-older-than-schedule", "erasure-not-final"}  # control
    state = env.client.app.state  # type: ignore[attr-defined]
    with state.sessions() as s, s.begin():
        s.execute(text("UPDATE keks SET created_at = now() - interval '2 days'"))
        s.execute(
            text("UPDATE outbox SET created_at = now() - interval '2 days' WHERE id = :i"),
            {"i": cert["erasure_id"]},
        )
    assert {"kek-older-than-schedule", "erasure-not-final"} <= codes()

    deadline = time.monotonic() + 60
    while (now := env.client.get(f"/v1/erasures/{cert['erasure_id']}", headers=dpo).json())[
        "state"
    ] != "final":
        assert time.monotonic() < deadline, now
        time.sleep(0.5)
    assert not codes() & {"kek-older-than-schedule", "erasure-not-final"}
