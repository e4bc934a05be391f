"""The white paper's proof of address over the API, decided by the contracts on four replicas.

A utility holds citizens' addresses; a bank asks whether a citizen lives at the address they
gave. The bank learns yes or no, only while the citizen's own signed consent stands; after
the revocation it is refused; after the DPO's erasure nobody reads the records again; and the
ledger (every block, as encoded) never holds the address.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

from api.client import CivisClient
from api.client.notices import notice_body
from ledger_bridge.pbft import messages as m
from tests.api.ledger_env import DAY_MS, LedgerEnv, Wallet
from tests.api.test_datasets import rec_leaf
from vault.crypto.merkle import verify_inclusion

ADDRESS = "12 rue Imaginaire"
CITY = "Villeurbanne-Sud"


def signed(env: LedgerEnv, wallet: Wallet, tx_type: str, body: dict[str, Any]) -> dict[str, str]:
    """Draft through the API and sign with the wallet, as the client does for every user.

    Only the signed body is returned: these tests post it themselves, to read the raw answer
    (status, problem) of each refusal they provoke.
    """
    signed_tx = CivisClient(http=env.client).sign(wallet.key, tx_type, body)
    return {"transaction": signed_tx["transaction"], "signature": signed_tx["signature"]}


def api(env: LedgerEnv) -> CivisClient:
    """The project's client over the test's app: set-up steps sign as every user's do."""
    return CivisClient(http=env.client)


def vote_through(env: LedgerEnv, proposal: int) -> None:
    """The validators and founding members vote yes in turn until the proposal passes."""
    status = "open"
    for voter in (*env.validators, env.dpo, env.provider, env.consumer):
        status = api(env).vote(voter.key, proposal)["result"]["status"]
        if status == "passed":
            return
    raise AssertionError(f"proposal {proposal} is {status} after every founder voted yes")


def declare_purpose(env: LedgerEnv, purpose: str, declaration: dict[str, Any]) -> None:
    """The founding members vote a purpose's declaration through (docs/CONTRACTS.md
    "Disclosure"): for a purpose founded without one, as `research` is."""
    action = {"kind": "approve_purpose", "purpose": purpose, "declaration": declaration}
    out = api(env).propose(env.dpo.key, action, voting_for_ms=DAY_MS)
    vote_through(env, int(out["result"]["proposal"]))


def register_subject(env: LedgerEnv) -> Wallet:
    citizen = Wallet()
    out = api(env).register(citizen.key, "subject", "citizens")
    assert out["result"]["status"] == "active", out
    return citizen


def setup_addresses(
    env: LedgerEnv, citizens: list[Wallet], purposes: tuple[str, ...] = ("proof-of-address",)
) -> tuple[str, dict[str, str]]:
    utility = env.headers("provider", env.provider)
    r = env.client.post(
        "/v1/datasets",
        headers=utility,
        json={
            "name": f"addresses-{time.monotonic_ns()}",
            "category": "address",
            "purposes": list(purposes),
            "retention_days": 365,
            "legal_basis": "contract",
        },
    )
    assert r.status_code == 201, r.text
    dataset = r.json()
    assert dataset["receipt"]["block_height"] >= 1
    lines = "".join(
        json.dumps({"subject_id": c.id, "payload": {"address": ADDRESS, "city": CITY, "n": i}})
        + "\n"
        for i, c in enumerate(citizens)
    )
    r = env.client.post(
        f"/v1/datasets/{dataset['id']}/uploads",
        headers={**utility, "Content-Type": "application/x-ndjson"},
        content=lines.encode(),
    )
    assert r.status_code == 201, r.text
    # the answer waited for the anchor: the upload is readable and its receipt is in hand
    assert r.json()["state"] == "anchored" and r.json()["receipt"]["block_height"] >= 1
    env.wait_anchored(dataset["id"], r.json()["upload_id"], utility)
    return dataset["id"], utility


def consent(env: LedgerEnv, citizen: Wallet, dataset: str, purpose: str) -> dict[str, Any]:
    return {
        "subject": citizen.id,
        "consumer": env.consumer.id,
        "purpose": purpose,
        "dataset": dataset,
    }


def notice(env: LedgerEnv, purpose: str, consumer: Wallet | str | None = None) -> str:
    """The hash of the notice `consumer` (a wallet or a member id; the founding consumer
    unless named) shows before a consent for `purpose`, published with its own key (the same
    words: the same notice)."""
    who = consumer or env.consumer
    body = notice_body(
        recipient=who if isinstance(who, str) else who.id,
        purpose=purpose,
        purpose_text=f"the tests' consumer uses your records for {purpose}",
        retention="until the consent ends",
        controller="Civis Vault test cooperative",
        contact="dpo@example.invalid",
    )
    r = env.client.post("/v1/notices", headers=env.headers("consumer", who), json=body)
    assert r.status_code == 201, r.text
    notice_hash: str = r.json()["notice_hash"]
    return notice_hash


def grant_body(
    env: LedgerEnv, citizen: Wallet, dataset: str, purpose: str, *, for_ms: int = DAY_MS
) -> dict[str, Any]:
    """A consent.grant body with its notice, valid for `for_ms` from now."""
    return {
        **consent(env, citizen, dataset, purpose),
        "valid_until": int(time.time() * 1000) + for_ms,
        "notice": notice(env, purpose),
    }


def test_proof_of_address_yes_no_with_consent_refused_after_revocation(
    ledger_env: LedgerEnv,
) -> None:
    env = ledger_env
    citizen = register_subject(env)
    dataset, _ = setup_addresses(env, [citizen])
    bank = env.headers("consumer", env.consumer)

    def ask(value: str) -> Any:
        return env.client.post(
            "/v1/access-requests",
            headers=bank,
            json={
                "dataset_id": dataset,
                "purpose": "proof-of-address",
                "subjects": [citizen.id],
                "predicate": {"field": "address", "op": "eq", "value": value},
            },
        )

    # no consent yet: refused, and the refusal is itself on the ledger
    r = ask(ADDRESS)
    assert r.status_code == 403, r.text
    assert r.headers["content-type"] == "application/problem+json"
    grant = grant_body(env, citizen, dataset, "proof-of-address")
    r = env.client.post("/v1/consents", json=signed(env, citizen, "consent.grant", grant))
    assert r.status_code == 201, r.text
    r = ask(ADDRESS)
    assert r.status_code == 200, r.text
    assert set(r.json()) == {"result", "receipt", "charged_cents"} and r.json()["result"] is True
    assert ask("1 other street").json()["result"] is False

    # the bank cannot forge the citizen's consent, nor its revocation
    forged = {"transaction": signed(env, env.consumer, "consent.grant", grant)["transaction"]}
    forged["signature"] = signed(env, citizen, "consent.grant", grant)["signature"]
    assert env.client.post("/v1/consents", json=forged).status_code == 403
    by_bank = signed(env, env.consumer, "consent.grant", grant)  # signed, but not by the subject
    r = env.client.post("/v1/consents", json=by_bank)
    assert r.status_code == 403 and "not_subject" in r.json()["detail"]

    r = env.client.post(
        "/v1/consents/revocations",
        json=signed(
            env, citizen, "consent.revoke", consent(env, citizen, dataset, "proof-of-address")
        ),
    )
    assert r.status_code == 201, r.text
    assert ask(ADDRESS).status_code == 403

    # the citizen sees both accesses that reached their data, and the revoked consent
    own = env.headers("subject", citizen)
    export = env.client.get(f"/v1/subjects/{citizen.id}/export", headers=own).json()
    assert [c["granted"] for c in export["consents"]] == [False]
    assert len(export["accesses"]) == 2
    assert export["records"][0]["payload"]["address"] == ADDRESS
    # ... and nobody else does
    other = env.headers("subject", Wallet())
    assert env.client.get(f"/v1/subjects/{citizen.id}/export", headers=other).status_code == 403


def test_records_with_proofs_only_for_consenting_subjects_then_erasure(
    ledger_env: LedgerEnv,
) -> None:
    env = ledger_env
    yes, no = register_subject(env), register_subject(env)
    # billing reads whole records (a proof of address answers yes/no only)
    dataset, _ = setup_addresses(env, [yes, no], ("proof-of-address", "billing"))
    r = env.client.post(
        "/v1/consents",
        json=signed(env, yes, "consent.grant", grant_body(env, yes, dataset, "billing")),
    )
    assert r.status_code == 201, r.text
    bank = env.headers("consumer", env.consumer)
    ask = {"dataset_id": dataset, "purpose": "billing", "subjects": [yes.id, no.id]}
    r = env.client.post("/v1/access-requests", headers=bank, json=ask)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["granted"] == [yes.id] and body["denied"] == [[no.id, "no_consent"]]
    [record] = body["records"]
    assert record["subject_id"] == yes.id and record["payload"]["address"] == ADDRESS
    # the proof checks against the root anchored on the ledger, not the vault's word
    upload = env.gateway.query("upload", upload=record["upload_id"])["result"]
    proof = record["proof"]
    assert proof["merkle_root"] == upload["merkle_root"].hex()
    assert verify_inclusion(
        rec_leaf(record),
        proof["leaf_index"],
        proof["tree_size"],
        [bytes.fromhex(h) for h in proof["audit_path"]],
        upload["merkle_root"],
    )

    # minimal disclosure: only the city
    r = env.client.post("/v1/access-requests", headers=bank, json={**ask, "fields": ["city"]})
    assert [x["payload"] for x in r.json()["records"]] == [{"city": CITY}]
    assert r.json()["records"][0]["proof"] is None

    # the DPO erases the consenting subject: a certificate recorded on the ledger
    dpo = env.headers("dpo", env.dpo)
    r = env.client.post("/v1/erasures", headers=dpo, json={"subject_id": yes.id})
    assert r.status_code == 201, r.text
    cert = r.json()
    assert cert["state"] == "recorded" and cert["secrets_destroyed"] >= 1
    assert cert["receipt"]["block_height"] >= 1 and cert["key_commitments"]
    r = env.client.post("/v1/access-requests", headers=bank, json=ask)
    # Erased everywhere, the subject is forgotten with their consents and membership: an
    # access naming them is refused whole, so its body (naming them) stays out of the chain.
    assert r.status_code == 404 and r.json()["detail"].startswith("unknown_subject"), r.text
    # a provider and a consumer cannot erase
    for role, who in (("provider", env.provider), ("consumer", env.consumer)):
        headers = env.headers(role, who)
        r = env.client.post("/v1/erasures", headers=headers, json={"subject_id": no.id})
        assert r.status_code == 403

    # no payload value anywhere in the chain's encoding
    height = max((env.gateway.status(i) or {}).get("height", 0) for i in range(4))
    for h in range(1, height + 1):
        raw = m.encode(env.gateway.block(h))
        assert ADDRESS.encode() not in raw and CITY.encode() not in raw
        assert hashlib.sha256(ADDRESS.encode()).digest() not in raw
