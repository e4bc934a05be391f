"""The consent contracts on four real replica processes: same decisions, same state root everywhere.

The white paper's proof-of-address story, driven through `LedgerClient` over TCP: a bank asks
for a citizen's address, is granted while the consent stands and refused after the citizen
revokes it, then the DPO erases the citizen. Every replica must reach the same state root at
every height, each chain must verify with the validator keys alone, and the answers the
client accepted (f+1 matching replies) must be what every replica recorded.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ledger_bridge.client import LedgerClient
from ledger_bridge.cluster import Cluster
from ledger_bridge.contracts import codec, tx
from ledger_bridge.crypto import SigningKey
from ledger_bridge.genesis import Genesis
from ledger_bridge.pbft.blocks import verify_chain
from tests.ledger_bridge.contracts.harness import DAY, key
from tests.ledger_bridge.test_processes import _base_port

pytestmark = pytest.mark.e2e

VAULT, DPO, UTILITY, BANK, CITIZEN = key(50), key(51), key(60), key(61), key(70)

# Signs a transaction as `author`, submits it and returns the decoded result the client accepted.
Submit = Callable[[SigningKey, str, dict[str, Any]], dict[str, Any]]


def pub(k: SigningKey) -> bytes:
    return bytes(k.public_key)


@pytest.fixture()
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    app_genesis = {
        "members": [
            {"public_key": pub(VAULT).hex(), "role": "vault", "college": "providers"},
            {"public_key": pub(DPO).hex(), "role": "dpo", "college": "services"},
            {"public_key": pub(UTILITY).hex(), "role": "provider", "college": "providers"},
            {"public_key": pub(BANK).hex(), "role": "consumer", "college": "services"},
        ]
    }
    params = {"app": "contracts", "batch_size_max": 16, "batch_wait_ms": 2}
    with Cluster(
        tmp_path / "ledger", 4, base_port=_base_port(), params=params, app_genesis=app_genesis
    ) as c:
        c.start()
        c.wait_ready()
        yield c


def _submitter(client: LedgerClient, chain_id: str) -> Submit:
    """A `Submit` that sends this chain's transactions through `client`."""

    def submit(author: SigningKey, tx_type: str, body: dict[str, Any]) -> dict[str, Any]:
        # Block time is the primary's wall clock, so validity is relative to ours.
        now = int(time.time() * 1000)
        signed = tx.sign(author, chain_id, tx_type, body, valid_until=now + 60_000)
        result: dict[str, Any] = codec.decode(client.submit(signed.encode()).result)
        return result

    return submit


def _register_addresses_with_one_upload(submit: Submit) -> None:
    """The utility's address dataset on the chain, with one upload anchored in it."""
    today = int(time.time() * 1000) // DAY
    assert submit(
        VAULT,
        "dataset.register",
        {
            "dataset": "addresses",
            "owner": pub(UTILITY),
            "category": "address",
            "purposes": ["proof-of-address"],
            "retention_days": 30,
            "legal_basis": "consent",
        },
    )["ok"]
    assert submit(
        VAULT,
        "upload.anchor",
        {
            "upload": "u1",
            "dataset": "addresses",
            "record_count": 1,
            "merkle_root": b"\x11" * 32,
            "key_commitments_root": b"\x22" * 32,
            "key_commitment_count": 1,
            "retention_day": today + 30,
        },
    )["ok"]


def _assert_replicas_agree(client: LedgerClient, g: Genesis) -> None:
    """Once every replica has caught up, each chain verifies and all agree block by block."""
    height = max(client.status(i)["height"] for i in range(g.n))
    deadline = time.monotonic() + 30
    while min(client.status(i)["height"] for i in range(g.n)) < height:
        assert time.monotonic() < deadline, "a replica did not catch up"
        time.sleep(0.05)
    chains = [[client.get_block(h, i) for h in range(1, height + 1)] for i in range(g.n)]
    for chain in chains:
        assert verify_chain(chain, g.public_keys())
    for h in range(height):
        assert len({c[h].state_root for c in chains}) == 1, f"state roots differ at {h + 1}"
        assert len({c[h].results_digest for c in chains}) == 1


def test_contracts_decide_alike_on_four_replica_processes(cluster: Cluster) -> None:
    g = cluster.genesis
    client = LedgerClient(cluster.client_transport, g.public_keys(), g.f)
    submit = _submitter(client, g.chain_id)

    citizen = pub(CITIZEN).hex()
    consent = {
        "subject": citizen,
        "consumer": pub(BANK),
        "purpose": "proof-of-address",
        "dataset": "addresses",
    }
    ask = {
        "consumer": pub(BANK),
        "dataset": "addresses",
        "purpose": "proof-of-address",
        "subjects": [citizen],
        # a proof of address is a yes/no question about the address
        "predicate": {"field": "address", "op": "eq", "commitment": b"\x05" * 32},
    }
    try:
        _register_addresses_with_one_upload(submit)
        assert submit(CITIZEN, "member.register", {"role": "subject", "college": "citizens"})["ok"]
        valid_until = int(time.time() * 1000) + 10 * DAY
        assert submit(CITIZEN, "consent.grant", {**consent, "valid_until": valid_until})["ok"]
        granted = submit(BANK, "access.request", ask)
        assert granted["granted"] == [citizen] and granted["uploads"] == ["u1"]
        # a consent signed by the bank on the citizen's behalf is refused by every replica
        forged = submit(BANK, "consent.grant", {**consent, "valid_until": valid_until})
        assert forged["code"] == "not_subject"
        assert submit(CITIZEN, "consent.revoke", consent)["ok"]
        refused = submit(BANK, "access.request", ask)
        assert refused["granted"] == [] and refused["denied"] == [[citizen, "no_consent"]]
        erased = submit(
            DPO,
            "erasure.record",
            {
                "scope": {"kind": "subject", "subject": citizen},
                "key_commitments": [b"\x07" * 32],
                "uploads": [],
                "reason": "dpo_decision",
                "requester": "dpo",
            },
        )
        assert erased["ok"] and erased["forgotten"], erased
        # forgotten: from then on the citizen's key is no member, and an access naming it is
        # refused whole, so its body never enters a block
        after = submit(BANK, "access.request", ask)
        assert after["ok"] is False and after["code"] == "unknown_subject", after

        _assert_replicas_agree(client, g)
        # and the committed state answers the same on every replica
        q = codec.encode({"q": "accesses", "consumer": pub(BANK)})
        answers = [codec.decode(client.query(q, i)) for i in range(g.n)]
        assert all(a["result"] == answers[0]["result"] for a in answers)
        # the access that granted the citizen stays in the log without naming them
        # (the one refused after the erasure is no access at all)
        assert [a["granted"] for a in answers[0]["result"]] == [[], []]
        assert [a.get("forgotten") for a in answers[0]["result"]] == [1, 1]
    finally:
        client.close()
