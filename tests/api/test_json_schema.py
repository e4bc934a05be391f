"""The export schema's own validator (api/client/json_schema.py): what it refuses, and that it
agrees with an independent JSON Schema implementation on the shipped schema."""

from __future__ import annotations

from typing import Any

import pytest

from api.client.json_schema import SchemaError, Validator, export_schema, validate

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "id": {"type": "string", "pattern": "^[0-9a-f]{4}$"},
        "n": {"type": "integer", "minimum": 1},
        "kind": {"enum": ["a", "b"]},
        "v": {"const": 1},
        "r": {"anyOf": [{"type": "null"}, {"$ref": "#/$defs/r"}]},
        "xs": {"type": "array", "items": {"type": ["string", "null"]}},
    },
    "required": ["id", "n"],
    "additionalProperties": False,
    "$defs": {"r": {"type": "object", "required": ["h"], "additionalProperties": True}},
}
GOOD = {"id": "ab12", "n": 1, "kind": "a", "v": 1, "r": {"h": 1, "more": 2}, "xs": ["x", None]}


def test_a_good_instance_passes() -> None:
    assert validate(GOOD, SCHEMA) == []
    assert validate({**GOOD, "r": None}, SCHEMA) == []


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"id": "ab12\n"}, "$.id"),  # an anchored pattern is the whole string
        ({"id": 12}, "$.id"),
        ({"n": True}, "$.n"),  # a boolean is no integer
        ({"n": 0}, "$.n"),
        ({"kind": "c"}, "$.kind"),
        ({"v": 2}, "$.v"),
        ({"r": {"more": 1}}, "$.r"),
        ({"xs": [1]}, "$.xs[0]"),
        ({"extra": 1}, "$.extra"),
    ],
)
def test_each_rule_is_checked(change: dict[str, Any], where: str) -> None:
    errors = validate({**GOOD, **change}, SCHEMA)
    assert errors and errors[0].startswith(where), errors


def test_a_missing_field_is_named() -> None:
    assert validate({"n": 1}, SCHEMA) == ["$.id: is required"]


def test_a_keyword_it_does_not_check_is_an_error_not_a_pass() -> None:
    with pytest.raises(SchemaError, match="maxLength"):
        Validator({"type": "string", "maxLength": 3}).validate("abcd")


def test_the_shipped_schema_agrees_with_an_independent_validator() -> None:
    jsonschema_rs = pytest.importorskip("jsonschema_rs")  # a test dependency (schemathesis)
    schema = export_schema()
    independent = jsonschema_rs.validator_for(schema)
    empty: dict[str, Any] = {
        "format": "civis-vault-export",
        "version": 1,
        "created_at": "2026-01-01T00:00:00+00:00",
        "chain_id": "c",
        "ledger_height": 0,
        **{k: [] for k in ("subjects", "datasets", "uploads", "records", "history")},
        **{k: [] for k in ("consents", "accesses", "erasures", "decryptions", "blocks")},
        "signature": {"issuer": "ab" * 32, "signature": "cd" * 64},
    }
    broken = {**empty, "records": [{"record_id": "x"}], "version": 2}
    for instance, ok in ((empty, True), (broken, False), ({}, False)):
        assert (validate(instance, schema) == []) is ok
        assert independent.is_valid(instance) is ok
