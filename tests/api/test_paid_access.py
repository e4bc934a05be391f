"""Paid access over the API, charged by the contracts on four replicas (docs/CONTRACTS.md
"Paid access"): the proof of address for a fee.

The cooperative records the bank's payment as credit; the utility prices its yes/no answers;
the bank names that price when it asks, and the access transaction that decides the answer
also moves the money: the bank pays, the utility earns the price less the cooperative's
commission, the cooperative's operations key (the vault) keeps the commission. A request
naming another price is refused whole and moves nothing.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from api.client import CivisClient, Conflict, PaymentRequired
from tests.api.ledger_env import LedgerEnv
from tests.api.test_consented_access import (
    ADDRESS,
    grant_body,
    register_subject,
    setup_addresses,
    signed,
)

PRICE = 333  # cents: 5 % commission is 16.65, so 16 to the cooperative and 317 to the utility


def as_member(env: LedgerEnv, role: str, member: Any = None) -> CivisClient:
    return CivisClient(http=env.client).with_key(
        env.headers(role, member)["Authorization"].removeprefix("Bearer ")
    )


def balances(env: LedgerEnv, *keys: str) -> list[int]:
    dpo = as_member(env, "dpo", env.dpo)
    return [dpo.statement(k)["totals"]["balance"] for k in keys]


@pytest.fixture(scope="module")
def paid(ledger_env: LedgerEnv) -> dict[str, Any]:
    """A citizen who consented to the bank's proof of address, in a utility's dataset whose
    yes/no answers cost PRICE, and a bank with 1000 cents of credit."""
    env = ledger_env
    citizen = register_subject(env)
    dataset, _ = setup_addresses(env, [citizen])
    grant = grant_body(env, citizen, dataset, "proof-of-address")
    r = env.client.post("/v1/consents", json=signed(env, citizen, "consent.grant", grant))
    assert r.status_code == 201, r.text
    utility = as_member(env, "provider", env.provider)
    out = utility.set_price(dataset, "predicate", PRICE)
    assert out["price_cents"] == PRICE and out["receipt"]["block_height"] >= 1
    credit = as_member(env, "dpo", env.dpo).deposit(env.consumer.id, 1000, f"sepa-{uuid.uuid4()}")
    assert credit["amount_cents"] == 1000
    return {"citizen": citizen, "dataset": dataset}


def ask(env: LedgerEnv, paid: dict[str, Any], price: int | None, value: str = ADDRESS) -> Any:
    body: dict[str, Any] = {
        "dataset_id": paid["dataset"],
        "purpose": "proof-of-address",
        "subjects": [paid["citizen"].id],
        "predicate": {"field": "address", "op": "eq", "value": value},
    }
    if price is not None:
        body["price_cents"] = price
    return env.client.post(
        "/v1/access-requests", headers=env.headers("consumer", env.consumer), json=body
    )


def test_a_paid_yes_no_moves_the_price_from_the_bank_to_the_utility_and_the_cooperative(
    ledger_env: LedgerEnv, paid: dict[str, Any]
) -> None:
    env = ledger_env
    vault = bytes(env.gateway.vault_key.public_key).hex()
    bank = as_member(env, "consumer", env.consumer)
    prices = bank.prices(paid["dataset"])
    assert prices["prices"] == {"predicate": PRICE}
    before = balances(env, env.consumer.id, env.provider.id, vault)

    # a price other than the utility's, or none: 409 problem+json, and nothing moves
    for wrong in (None, PRICE - 1, PRICE + 1):
        r = ask(env, paid, wrong)
        assert r.status_code == 409, r.text
        assert r.headers["content-type"] == "application/problem+json"
        assert "price_mismatch" in r.json()["detail"]
    assert balances(env, env.consumer.id, env.provider.id, vault) == before

    r = ask(env, paid, PRICE)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["result"] is True and answer["charged_cents"] == PRICE
    after = balances(env, env.consumer.id, env.provider.id, vault)
    assert [a - b for a, b in zip(after, before, strict=True)] == [-PRICE, PRICE - 16, 16]

    # each side's statement names the dataset and the access, never the citizen
    dpo = as_member(env, "dpo", env.dpo)
    paid_entry = bank.statement(env.consumer.id)["entries"][-1]
    earned = as_member(env, "provider", env.provider).statement(env.provider.id)["entries"][-1]
    commission = dpo.statement(vault)["entries"][-1]
    assert (paid_entry["kind"], paid_entry["cents"]) == ("fee_paid", PRICE)
    assert (earned["kind"], earned["cents"]) == ("fee_earned", PRICE - 16)
    assert (commission["kind"], commission["cents"]) == ("commission", 16)
    for entry in (paid_entry, earned, commission):
        assert entry["dataset"] == paid["dataset"]
        assert entry["access"] == paid_entry["access"] and entry["access"] is not None
        assert paid["citizen"].id not in str(entry)
    totals = bank.statement(env.consumer.id)["totals"]
    assert totals["deposited"] - totals["paid"] == totals["balance"]


def test_a_credit_too_small_is_402_and_the_answer_is_not_given(
    ledger_env: LedgerEnv, paid: dict[str, Any]
) -> None:
    env = ledger_env
    utility = as_member(env, "provider", env.provider)
    utility.set_price(paid["dataset"], "predicate", 10**6)
    try:
        r = ask(env, paid, 10**6)
        assert r.status_code == 402, r.text
        assert r.headers["content-type"] == "application/problem+json"
        assert "insufficient_credit" in r.json()["detail"]
        bank = as_member(env, "consumer", env.consumer)
        with pytest.raises(PaymentRequired):
            bank.predicate(
                paid["dataset"],
                "proof-of-address",
                subject=paid["citizen"].id,
                field="address",
                op="eq",
                value=ADDRESS,
                price_cents=10**6,
            )
    finally:
        utility.set_price(paid["dataset"], "predicate", PRICE)


def test_who_may_price_deposit_and_read_statements(
    ledger_env: LedgerEnv, paid: dict[str, Any]
) -> None:
    env = ledger_env
    dataset = paid["dataset"]
    # another provider's dataset is not found, as the dataset routes answer
    other = env.client.put(
        f"/v1/datasets/{dataset}/prices/full",
        headers=env.headers("provider", "ab" * 32),
        json={"price_cents": 1},
    )
    assert other.status_code == 404, other.text
    r = env.client.put(
        f"/v1/datasets/{dataset}/prices/predicate",
        headers=env.headers("consumer", env.consumer),
        json={"price_cents": 0},
    )
    assert r.status_code == 403, r.text
    # only the DPO records a deposit; a reference is credited once
    body = {"member": env.consumer.id, "amount_cents": 10**6, "reference": "forged-1"}
    r = env.client.post("/v1/credits", headers=env.headers("consumer", env.consumer), json=body)
    assert r.status_code == 403, r.text
    dpo = as_member(env, "dpo", env.dpo)
    reference = f"sepa-{uuid.uuid4()}"
    dpo.deposit(env.provider.id, 5, reference)
    with pytest.raises(Conflict) as refused:
        dpo.deposit(env.provider.id, 5, reference)
    assert refused.value.code == "duplicate"
    # a statement is its member's, or the DPO's to read
    r = env.client.get(
        f"/v1/members/{env.provider.id}/statement",
        headers=env.headers("consumer", env.consumer),
    )
    assert r.status_code == 403, r.text
    page = dpo.statement(env.provider.id, after=0, limit=1)
    assert len(page["entries"]) == 1 and page["next_after"] == 1
