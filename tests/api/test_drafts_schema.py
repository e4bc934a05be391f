"""`POST /v1/drafts` against the body schemas in openapi.yaml, and those against the contracts.

The schemas come from the declarations the contracts check first
(ledger_bridge/contracts/bodies.py): the example of every type, drafted, signed and submitted
to a real ledger, is never refused for its shape; a body that breaks its schema is refused by
the draft endpoint already, with the field's path in plain words, before anyone signs it.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from api.http.openapi import openapi_document
from api.http.signed import SELF_SIGNED, assemble
from api.services.gateway import LedgerRefused
from ledger_bridge.contracts import bodies
from ledger_bridge.contracts.vocabulary import ROLES
from tests.api.ledger_env import LedgerEnv, Wallet
from tests.api.test_consented_access import notice

SUBMIT: dict[str, str | None] = {
    "member.register": "/v1/members",
    "consent.grant": "/v1/consents",
    "consent.revoke": "/v1/consents/revocations",
    "erasure.request": "/v1/erasure-requests",
    "governance.propose": "/v1/governance/proposals",
    "governance.vote": "/v1/governance/proposals/{proposal}/votes",
    "device.register": "/v1/devices",
    "token.transfer": "/v1/transfers",
    "token.redeem": "/v1/redemptions",
    "offer.publish": "/v1/offers",
    "coupon.spend": "/v1/coupons/spend",
    # relayed only once the vault found the record is the author's: the example names none,
    # so it goes to the ledger directly (`_submit_direct`)
    "rectification.request": None,
    # the path names the author: the relay checks it before the contracts see the body
    "restriction.set": "/v1/subjects/{author}/restrictions",
    "restriction.lift": "/v1/subjects/{author}/restrictions",
    "objection.set": "/v1/subjects/{author}/objections",
    "objection.withdraw": "/v1/subjects/{author}/objections",
}
STRUCTURAL = ("invalid", "malformed")


def _component(tx_type: str) -> str:
    return "".join(part.capitalize() for part in tx_type.split(".")) + "Body"


def test_every_draft_type_has_its_body_schema_behind_a_discriminator() -> None:
    doc = openapi_document()
    request = doc["paths"]["/v1/drafts"]["post"]["requestBody"]["content"]["application/json"]
    mapping = request["schema"]["discriminator"]["mapping"]
    assert request["schema"]["discriminator"]["propertyName"] == "type"
    assert sorted(mapping) == sorted(SELF_SIGNED)
    schemas = doc["components"]["schemas"]
    for tx_type, ref in mapping.items():
        draft = schemas[ref.rsplit("/", 1)[1]]
        assert draft["properties"]["type"]["const"] == tx_type
        body_ref = draft["properties"]["body"]["$ref"]
        assert body_ref == f"#/components/schemas/{_component(tx_type)}"
        assert schemas[_component(tx_type)] == bodies.json_schema(tx_type)


def _draft(env: LedgerEnv, wallet: Wallet, tx_type: str, body: Any) -> Any:
    return env.client.post("/v1/drafts", json={"type": tx_type, "author": wallet.id, "body": body})


@pytest.mark.parametrize("tx_type", SELF_SIGNED)
def test_the_schema_example_passes_the_contracts_structural_check(
    ledger_env: LedgerEnv, tx_type: str
) -> None:
    """Signed by the DPO, a founding member with a vote: the contracts get as far as the rules
    (not_subject, exists, not_found... are fine); only a refusal for shape would fail."""
    env = ledger_env
    example = bodies.example(tx_type)
    if tx_type == "consent.grant":
        # The API relays a consent only with a notice it holds for that consumer and purpose
        # (api/services/notices.py): the example's consumer publishes one.
        example["notice"] = notice(env, example["purpose"], example["consumer"])
    r = _draft(env, env.dpo, tx_type, example)
    assert r.status_code == 201, r.text
    draft = r.json()
    signature = env.dpo.key.sign(bytes.fromhex(draft["signing_payload"])).hex()
    route = SUBMIT[tx_type]
    if route is None:
        _submit_direct(env, tx_type, draft["transaction"], signature)
        return
    path = route.format(proposal=example.get("proposal"), author=env.dpo.id)
    answer = env.client.post(
        path, json={"transaction": draft["transaction"], "signature": signature}
    )
    assert answer.status_code < 500, answer.text
    if answer.status_code >= 400:
        problem = answer.json()
        assert problem["title"] == "Refused by the consent contracts", problem
        assert problem["detail"].split(":", 1)[0] not in STRUCTURAL, problem


def _submit_direct(env: LedgerEnv, tx_type: str, transaction: str, signature: str) -> None:
    """Submit the signed draft to the ledger itself: refused for a rule, never for shape."""
    signed = assemble(env.chain_id, transaction, signature, tx_type)
    try:
        env.gateway.submit(signed.encode())
    except LedgerRefused as refused:
        assert refused.code not in STRUCTURAL, refused.detail


def _with(tx_type: str, path: tuple[str, ...], value: Any) -> dict[str, Any]:
    body = copy.deepcopy(bodies.example(tx_type))
    target: Any = body
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    return body


# (type, a broken body, the problem's detail)
BROKEN: list[tuple[str, dict[str, Any], str]] = [
    ("member.register", {"role": "provider"}, "body.college: is required"),
    (
        "member.register",
        {"role": "queen", "college": "providers"},
        "body.role: must be one of " + ", ".join(ROLES),
    ),
    (
        "consent.grant",
        _with("consent.grant", ("valid_until",), "2027-01-01"),
        "body.valid_until: must be an integer, milliseconds since 1970, in [0, 9007199254740991]",
    ),
    (
        "consent.revoke",
        _with("consent.revoke", ("consumer",), "the bank"),
        "body.consumer: must be a public key: 64 lowercase hex characters",
    ),
    (
        "erasure.request",
        {"scope": {"kind": "subject"}},
        "body.scope.subject: is required",
    ),
    (
        "governance.propose",
        _with("governance.propose", ("voting_ends",), 1.5e12),
        "body.voting_ends: must be an integer, milliseconds since 1970, in [0, 9007199254740991]",
    ),
    (
        "governance.propose",
        _with("governance.propose", ("action", "kind"), "dissolve"),
        # Every action governance knows, in its declaration order (one more is one more here).
        "body.action.kind: must be one of " + ", ".join(bodies.PROPOSAL_ACTIONS.variants),
    ),
    (
        "governance.vote",
        {"proposal": 1, "approve": "yes"},
        "body.approve: must be true or false",
    ),
]


@pytest.mark.parametrize(("tx_type", "body", "detail"), BROKEN)
def test_a_body_that_breaks_its_schema_is_refused_with_its_path(
    ledger_env: LedgerEnv, tx_type: str, body: dict[str, Any], detail: str
) -> None:
    r = _draft(ledger_env, ledger_env.dpo, tx_type, body)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["detail"] == detail


def test_an_unknown_field_is_named_but_never_echoed_in_full(ledger_env: LedgerEnv) -> None:
    body = {"role": "provider", "college": "providers", "n" * 10_000: 1}
    r = _draft(ledger_env, ledger_env.dpo, "member.register", body)
    assert r.status_code == 422, r.text
    assert r.json()["detail"].startswith("body: unknown field(s): nnnn")
    assert len(r.text) < 2_000
