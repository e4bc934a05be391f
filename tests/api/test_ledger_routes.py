"""The ledger over HTTP against four real replica processes: status, headers, certificates.

The certificate test re-checks every COMMIT signature itself from the JSON (the way a member
without this service's code would), rather than trusting the answer's `verified` flag.
"""

from __future__ import annotations

import itertools
import uuid

from ledger_bridge.pbft import messages as m
from tests.api.ledger_env import LedgerEnv
from tests.api.ledger_env import ledger_cluster as ledger_cluster  # fixture
from tests.api.ledger_env import ledger_env as ledger_env  # fixture


def _register_dataset(env: LedgerEnv) -> tuple[str, str]:
    """A dataset registered by the vault for the founding provider: (dataset id, tx id)."""
    dataset = str(uuid.uuid4())
    answer = env.gateway.act(
        "dataset.register",
        {
            "dataset": dataset,
            "owner": bytes.fromhex(env.provider.id),
            "category": "energy",
            "purposes": ["research"],
            "retention_days": 30,
            "legal_basis": "consent",
        },
    )
    return dataset, answer.receipt.tx_id


def test_status_any_member_sees_every_replica_and_the_quorum(ledger_env: LedgerEnv) -> None:
    env = ledger_env
    _register_dataset(env)  # a block at least
    assert env.client.get("/v1/ledger/status").status_code == 401
    for role in ("consumer", "provider", "dpo", "subject"):
        r = env.client.get("/v1/ledger/status", headers=env.headers(role))
        assert r.status_code == 200, r.text
    body = r.json()
    assert body["chain_id"] == env.chain_id
    assert (body["n"], body["f"], body["quorum"]) == (4, 1, 3)
    assert body["answering"] == 4 and body["quorum_reachable"] is True
    assert [x["id"] for x in body["replicas"]] == [0, 1, 2, 3]
    assert all(x["reachable"] and x["height"] >= 1 for x in body["replicas"])


def test_status_reports_a_stopped_replica_and_keeps_the_quorum(ledger_env: LedgerEnv) -> None:
    env = ledger_env
    env.cluster.stop(2)
    try:
        body = env.client.get("/v1/ledger/status", headers=env.headers("consumer")).json()
        assert body["answering"] == 3 and body["quorum_reachable"] is True
        down = [x for x in body["replicas"] if not x["reachable"]]
        assert down == [
            {"id": 2, "college": down[0]["college"], "reachable": False}
            | {"height": None, "view": None, "primary": None, "stable_seq": None}
            | {"redactions_applied": None, "redactions_pending": None}
        ]
    finally:
        env.cluster.start([2])
        env.cluster.wait_ready([2])


def test_block_headers_chain_by_hash(ledger_env: LedgerEnv) -> None:
    env = ledger_env
    for _ in range(3):
        _register_dataset(env)
    headers = env.headers("provider")
    page = env.client.get("/v1/ledger/blocks?from_height=1&limit=3", headers=headers).json()
    blocks = page["blocks"]
    assert [b["height"] for b in blocks] == [1, 2, 3]
    assert blocks[0]["prev_hash"] == "00" * 32
    for prev, cur in itertools.pairwise(blocks):
        assert cur["prev_hash"] == prev["hash"]
    assert page["next_from_height"] == 4
    nxt = env.client.get("/v1/ledger/blocks?from_height=4&limit=1", headers=headers).json()
    assert nxt["blocks"][0]["prev_hash"] == blocks[-1]["hash"]
    last = env.client.get(
        f"/v1/ledger/blocks?from_height={page['height']}&limit=5", headers=headers
    ).json()
    assert last["next_from_height"] is None and len(last["blocks"]) >= 1
    # Bounds and strictness.
    assert env.client.get("/v1/ledger/blocks?limit=101", headers=headers).status_code == 422
    assert env.client.get("/v1/ledger/blocks?from_height=0", headers=headers).status_code == 422
    assert env.client.get("/v1/ledger/blocks?fromheight=2", headers=headers).status_code == 422


def test_block_carries_a_certificate_that_verifies(ledger_env: LedgerEnv) -> None:
    env = ledger_env
    dataset, tx_id = _register_dataset(env)
    answer_height = None
    status = env.client.get("/v1/ledger/status", headers=env.headers("consumer")).json()
    # Find the block that holds our transaction (it is among the newest).
    headers = env.headers("consumer")
    for height in range(status["height"], 0, -1):
        block = env.client.get(f"/v1/ledger/blocks/{height}", headers=headers).json()
        if tx_id in [t["tx_id"] for t in block["transactions"]]:
            answer_height = height
            break
    assert answer_height is not None, "the receipt's transaction is in no block"
    assert block["verified"] is True
    ours = next(t for t in block["transactions"] if t["tx_id"] == tx_id)
    assert ours["type"] == "dataset.register"
    assert ours["author"] == bytes(env.gateway.vault_key.public_key).hex()
    assert dataset not in str(block)  # bodies are not served: ids, types and authors only

    cert = block["certificate"]
    keys = env.gateway.genesis.public_keys()
    assert len(set(cert["signers"])) >= 3
    for signer, signature in zip(cert["signers"], cert["signatures"], strict=True):
        vote = m.Commit(
            cert["view"],
            block["height"],
            bytes.fromhex(block["batch_digest"]),
            signer,
            bytes.fromhex(signature),
        )
        assert m.verify_signed(vote, keys)
    # A signature moved to another signer does not verify: the check above can fail.
    forged = m.Commit(
        cert["view"],
        block["height"],
        bytes.fromhex(block["batch_digest"]),
        (cert["signers"][0] + 1) % 4,
        bytes.fromhex(cert["signatures"][0]),
    )
    assert not m.verify_signed(forged, keys)


def test_block_beyond_the_tip_is_404(ledger_env: LedgerEnv) -> None:
    env = ledger_env
    headers = env.headers("consumer")
    r = env.client.get(f"/v1/ledger/blocks/{2**40}", headers=headers)
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("application/problem+json")
    assert env.client.get("/v1/ledger/blocks/0", headers=headers).status_code == 422
