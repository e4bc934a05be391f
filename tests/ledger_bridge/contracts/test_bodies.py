"""The declared transaction bodies (bodies.py) against the contracts that check them.

The declarations are what openapi.yaml shows and what the API checks drafts against, so each
declared example must pass the contracts' structural check, and a broken body must be refused
`invalid` with the path of the field at fault, before any rule about who may do what runs.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from ledger_bridge.contracts import bodies, tx
from tests.ledger_bridge.contracts.harness import Chain, key

STRUCTURAL = ("invalid", "malformed")


@pytest.fixture
def chain() -> Chain:
    return Chain.new()


@pytest.mark.parametrize("tx_type", tx.TX_TYPES)
def test_every_type_declares_a_body(tx_type: str) -> None:
    assert tx_type in bodies.BODIES


@pytest.mark.parametrize("tx_type", tx.TX_TYPES)
def test_the_example_matches_in_json_and_on_the_ledger(tx_type: str) -> None:
    example = bodies.example(tx_type)
    bodies.check(tx_type, example, json=True)
    bodies.check(tx_type, bodies.to_ledger(tx_type, example))


@pytest.mark.parametrize("tx_type", tx.TX_TYPES)
def test_the_contracts_accept_the_example_structurally(chain: Chain, tx_type: str) -> None:
    """A stranger's key: refused for who it is (not_member, not_subject...), never for shape."""
    body = bodies.to_ledger(tx_type, bodies.example(tx_type))
    result = chain.one(key(700), tx_type, body)
    assert result.get("code") not in STRUCTURAL, result


def _set(body: dict[str, Any], path: tuple[str | int, ...], value: Any) -> dict[str, Any]:
    out = copy.deepcopy(body)
    target: Any = out
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    return out


# (type, broken body from the example, the start of the contracts' message)
BROKEN: list[tuple[str, Any, str]] = [
    ("member.register", {"role": "provider"}, "college: is required"),
    ("member.register", {"role": "king", "college": "providers"}, "role: must be one of"),
    ("member.register", {"role": "provider", "college": 7}, "college: must be a name"),
    ("member.register", {"role": "provider", "college": "providers\n"}, "college: must be a"),
    (
        "dataset.register",
        ("purposes", ["billing", "billing"]),
        "purposes: items must be distinct",
    ),
    ("dataset.register", ("purposes", [{}]), "purposes[0]: must be a name"),
    ("upload.anchor", ("merkle_root", "00" * 32), "merkle_root: must be a 32-byte hash"),
    ("consent.grant", ("category", "energy"), "name exactly one of dataset or category"),
    ("consent.grant", ("valid_until", "2027"), "valid_until: must be an integer, milliseconds"),
    ("consent.revoke", ("consumer", b"\x00" * 31), "consumer: must be a 32-byte public key"),
    ("access.request", ("predicate", {"field": "a", "op": "eq"}), "predicate.commitment: is"),
    ("access.request", ("subjects", ["ab"]), "subjects[0]: must be a subject"),
    ("erasure.request", ("scope", {"kind": "upload", "upload": "u"}), "scope.kind: must be one"),
    ("erasure.record", ("scope", {"kind": "subject"}), "scope.subject: is required"),
    ("erasure.record", ("uploads", [{"upload": "u"}]), "uploads[0].key_commitments_root: is"),
    ("retention.expire", ("day", -1), "day: must be an integer, days since 1970, in [0,"),
    ("governance.propose", ("voting_ends", "soon"), "voting_ends: must be an integer, millis"),
    ("governance.propose", ("action", {"kind": "crown"}), "action.kind: must be one of"),
    ("governance.propose", ("action", {"kind": "admit_member"}), "action.member: is required"),
    ("governance.vote", ("approve", 1), "approve: must be true or false"),
    ("governance.vote", ("proposal", 0), "proposal: must be an integer in [1,"),
]


def _broken(tx_type: str, change: Any) -> dict[str, Any]:
    if isinstance(change, dict):
        return change
    name, value = change
    body = bodies.to_ledger(tx_type, bodies.example(tx_type))
    return _set(body, (name,), value)


@pytest.mark.parametrize(("tx_type", "change", "message"), BROKEN)
def test_a_broken_body_is_refused_invalid_with_its_path(
    chain: Chain, tx_type: str, change: Any, message: str
) -> None:
    result = chain.one(chain.vault, tx_type, _broken(tx_type, change))
    assert result["code"] == "invalid", result
    assert result["message"].startswith(message), result["message"]


def test_shape_is_refused_before_who_may_do_it(chain: Chain) -> None:
    """A stranger's broken proposal is refused for its shape, the same on every replica,
    whatever the state says about the stranger."""
    body = {"action": {"kind": "admit_member", "member": "me"}, "voting_ends": 1}
    result = chain.one(key(701), "governance.propose", body)
    assert result["code"] == "invalid"
    assert result["message"] == "action.member: must be a 32-byte public key"


def test_unknown_field_names_come_back_few_and_short(chain: Chain) -> None:
    body: dict[str, Any] = {"role": "provider", "college": "providers"}
    body.update({f"{'x' * 5000}{i:02}": i for i in range(30)})
    result = chain.one(key(702), "member.register", body)
    assert result["code"] == "invalid"
    assert "and 25 more" in result["message"]
    assert len(result["message"]) < 300


def test_json_form_takes_hex_where_the_ledger_takes_bytes() -> None:
    example = bodies.example("governance.propose")
    with pytest.raises(bodies.BodyError) as raised:
        bodies.check("governance.propose", example)  # hex is not a key on the ledger
    assert raised.value.path == "action.member"
    ledger = bodies.to_ledger("governance.propose", example)
    assert ledger["action"]["member"] == bytes.fromhex(example["action"]["member"])
    with pytest.raises(bodies.BodyError) as raised:
        bodies.check("governance.propose", ledger, json=True)
    assert raised.value.problem == "must be a public key: 64 lowercase hex characters"


@pytest.mark.parametrize("tx_type", tx.TX_TYPES)
def test_the_schema_states_what_the_check_requires(tx_type: str) -> None:
    schema = bodies.json_schema(tx_type)
    declared = bodies.BODIES[tx_type]
    assert schema["additionalProperties"] is False
    assert schema["required"] == [f.name for f in declared.fields if f.required]
    assert set(schema["properties"]) == {f.name for f in declared.fields}
    assert schema["examples"] == [bodies.example(tx_type)]
    for f in declared.fields:
        assert schema["properties"][f.name]["description"] == f.description


def _integers(kind: bodies.Kind) -> list[bodies.Integer]:
    if isinstance(kind, bodies.Integer):
        return [kind]
    if isinstance(kind, bodies.ListOf):
        return _integers(kind.item)
    if isinstance(kind, bodies.OneOf):
        return [i for v in kind.variants.values() for i in _integers(v)]
    if isinstance(kind, bodies.Obj):
        return [i for f in kind.fields for i in _integers(f.kind)]
    return []


@pytest.mark.parametrize("tx_type", tx.TX_TYPES)
def test_every_integer_bound_is_exact_in_json(tx_type: str) -> None:
    """A JSON Schema bound is a float to most tools: above 2^53 it rounds, and a value the
    schema allows could be one the contracts refuse."""
    for kind in _integers(bodies.BODIES[tx_type]):
        assert kind.high <= bodies.JSON_INT_MAX
        assert float(kind.high) == kind.high


def test_a_vote_beyond_json_integers_is_refused_for_its_shape(chain: Chain) -> None:
    body = {"proposal": bodies.JSON_INT_MAX + 1, "approve": True}
    result = chain.one(chain.vault, "governance.vote", body)
    assert result["code"] == "invalid"
    assert result["message"].startswith("proposal: must be an integer in [1, 9007199254740991]")
