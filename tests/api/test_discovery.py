"""What a member can find out before acting: approved purposes, colleges and their majorities,
the governance rules; and a dataset's registration receipt, shown wherever the dataset is.

Against a real ledger (four replica processes): every answer must be what the contracts
decide by, so the tests check each one against what the contracts then do.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from ledger_bridge.contracts import rules
from ledger_bridge.contracts.app import DEFAULT_PURPOSES
from tests.api.ledger_env import DAY_MS, LedgerEnv, Wallet
from tests.api.test_consented_access import register_subject, signed, vote_through


def _now_ms() -> int:
    return int(time.time() * 1000)


def _get(env: LedgerEnv, path: str) -> dict[str, Any]:
    r = env.client.get(path, headers=env.headers("consumer", env.consumer))
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def _propose(env: LedgerEnv, author: Wallet, action: dict[str, Any], ends_ms: int) -> Any:
    body = {"action": action, "voting_ends": ends_ms}
    return env.client.post(
        "/v1/governance/proposals", json=signed(env, author, "governance.propose", body)
    )


def test_purposes_list_the_founding_ones_and_each_one_governance_approves(
    ledger_env: LedgerEnv,
) -> None:
    env = ledger_env
    before = _get(env, "/v1/purposes")
    names = {p["purpose"] for p in before["purposes"]}
    assert set(DEFAULT_PURPOSES) <= names
    assert all(p["approved_at_height"] == 0 for p in before["purposes"])
    # A purpose the list shows is approved: proposing it again is what answered 409 "exists".
    listed = before["purposes"][0]["purpose"]
    r = _propose(env, env.dpo, {"kind": "approve_purpose", "purpose": listed}, _now_ms() + DAY_MS)
    assert r.status_code == 409 and "exists" in r.json()["detail"], r.text
    fresh = f"air-quality-{uuid.uuid4().hex[:8]}"
    assert fresh not in names
    r = _propose(env, env.dpo, {"kind": "approve_purpose", "purpose": fresh}, _now_ms() + DAY_MS)
    assert r.status_code == 201, r.text
    vote_through(env, int(r.json()["result"]["proposal"]))
    after = _get(env, "/v1/purposes")
    approved = {p["purpose"]: p["approved_at_height"] for p in after["purposes"]}
    assert approved[fresh] > 0 and after["height"] >= approved[fresh]


def test_colleges_count_members_and_voters_and_name_the_majority_proposals_use(
    ledger_env: LedgerEnv,
) -> None:
    env = ledger_env
    before = {c["college"]: c for c in _get(env, "/v1/colleges")["colleges"]}
    assert set(before) == {"providers", "services", "citizens"}
    assert [name for name, c in before.items() if c["resident"]] == ["citizens"]
    register_subject(env)  # a resident: a member at once, without a vote
    after = {c["college"]: c for c in _get(env, "/v1/colleges")["colleges"]}
    assert after["citizens"]["members"] == before["citizens"]["members"] + 1
    assert after["citizens"]["voters"] == before["citizens"]["voters"]
    # The counts and majorities are those a proposal made now is decided by.
    r = _propose(
        env,
        env.dpo,
        {"kind": "approve_purpose", "purpose": f"colleges-{uuid.uuid4().hex[:8]}"},
        _now_ms() + DAY_MS,
    )
    assert r.status_code == 201, r.text
    proposal = int(r.json()["result"]["proposal"])
    members = _get(env, f"/v1/governance/proposals/{proposal}")["result"]["members"]
    assert members == {name: c["voters"] for name, c in after.items()}
    for c in after.values():
        assert 2 * c["majority"] > c["voters"] >= 2 * (c["majority"] - 1)


def test_governance_parameters_are_the_bounds_the_contracts_enforce(ledger_env: LedgerEnv) -> None:
    env = ledger_env
    params = _get(env, "/v1/governance/parameters")
    assert params["colleges"] == ["providers", "services", "citizens"]
    assert params["resident_college"] == "citizens"
    assert {"admit_member", "admit_voter", "approve_purpose"} <= set(params["actions"])
    assert params["voting_period_max_ms"] == rules.VOTING_MAX_MS
    assert "every college" in params["rule"]
    action = {"kind": "approve_purpose", "purpose": f"bounds-{uuid.uuid4().hex[:8]}"}
    too_late = _now_ms() + params["voting_period_max_ms"] + DAY_MS
    r = _propose(env, env.dpo, action, too_late)
    assert r.status_code == 422 and "voting_ends" in r.json()["detail"], r.text
    # A kind the parameters do not list is refused as early as the draft.
    unknown = {"action": {**action, "kind": "unknown_kind"}, "voting_ends": _now_ms() + DAY_MS}
    r = env.client.post(
        "/v1/drafts", json={"type": "governance.propose", "author": env.dpo.id, "body": unknown}
    )
    assert r.status_code == 422 and "kind" in r.json()["detail"], r.text
    r = _propose(env, env.dpo, action, _now_ms() + params["voting_period_max_ms"] - DAY_MS)
    assert r.status_code == 201, r.text


def test_datasets_show_the_receipt_their_registration_returned(ledger_env: LedgerEnv) -> None:
    env = ledger_env
    owner = env.headers("provider", env.provider)
    r = env.client.post(
        "/v1/datasets",
        headers=owner,
        json={
            "name": f"meters-{uuid.uuid4().hex[:12]}",
            "category": "energy",
            "purposes": ["billing"],
            "retention_days": 30,
            "legal_basis": "contract",
        },
    )
    assert r.status_code == 201, r.text
    made = r.json()
    receipt = made["receipt"]
    assert receipt is not None and len(receipt["tx_id"]) == 64
    listed = {d["id"]: d for d in env.client.get("/v1/datasets", headers=owner).json()}
    assert listed[made["id"]]["receipt"] == receipt
    shown = env.client.get(f"/v1/datasets/{made['id']}", headers=owner).json()
    assert shown["receipt"] == receipt
    dpo = env.headers("dpo", env.dpo)
    assert env.client.get(f"/v1/datasets/{made['id']}", headers=dpo).json()["receipt"] == receipt
    # The receipt names a real transaction of a real block.
    block = env.client.get(f"/v1/ledger/blocks/{receipt['block_height']}", headers=owner).json()
    assert receipt["tx_id"] in {t["tx_id"] for t in block["transactions"]}
