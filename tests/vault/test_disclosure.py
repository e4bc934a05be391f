"""Minimal disclosure: projections keep only granted fields; predicates answer one bit."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vault.disclosure import InvalidPredicate, Predicate, evaluate, project

ADDRESS = json.dumps({"address": "3 rue Garibaldi, Lyon", "meter": {"kwh": 412, "id": "M-9"}})


@pytest.mark.parametrize(
    ("field", "op", "value", "expected"),
    [
        ("address", "eq", "3 rue Garibaldi, Lyon", True),
        ("address", "eq", "4 rue Garibaldi, Lyon", False),
        ("address", "ne", "4 rue Garibaldi, Lyon", True),
        ("meter.kwh", "gt", 400, True),
        ("meter.kwh", "lt", 400, False),
        ("meter.kwh", "ge", 412.0, True),
        ("meter.kwh", "eq", "412", False),  # no coercion of "412" to 412
        ("meter.kwh", "in", [1, 412], True),
        ("meter.id", "le", "M-9", True),
        ("meter.missing", "eq", None, False),
        ("address.city", "eq", "Lyon", False),  # a path through a string is missing
    ],
)
def test_predicates(field: str, op: str, value: object, expected: bool) -> None:
    assert evaluate([ADDRESS.encode()], Predicate(field, op, value)) is expected


def test_bool_is_not_a_number() -> None:
    assert not evaluate([b'{"ok": true}'], Predicate("ok", "eq", 1))
    assert not evaluate([b'{"n": 0}'], Predicate("n", "eq", False))
    assert evaluate([b'{"ok": true}'], Predicate("ok", "eq", True))


def test_any_record_of_the_subject_may_match() -> None:
    records = [b'{"address": "old"}', b'{"address": "new"}']
    assert evaluate(records, Predicate("address", "eq", "new"))
    assert not evaluate([], Predicate("address", "eq", "new"))


@pytest.mark.parametrize(
    ("field", "op", "value"),
    [("a", "like", "x"), ("", "eq", 1), ("a..b", "eq", 1), ("a", "in", 3), ("a", "lt", [1])],
)
def test_invalid_predicates_are_refused(field: str, op: str, value: object) -> None:
    with pytest.raises(InvalidPredicate):
        Predicate(field, op, value)


def test_projection_keeps_only_granted_fields() -> None:
    out = json.loads(project(ADDRESS.encode(), ["meter.kwh", "absent"]))
    assert out == {"meter": {"kwh": 412}}
    assert project(ADDRESS.encode(), None) == ADDRESS.encode()


@given(
    st.dictionaries(
        st.text(min_size=1, max_size=5).filter(lambda s: "." not in s),
        st.integers() | st.text(max_size=5),
        max_size=6,
    ),
    st.data(),
)
def test_projection_never_leaks_an_ungranted_field(
    doc: dict[str, object], data: st.DataObject
) -> None:
    granted = data.draw(st.lists(st.sampled_from(sorted(doc) or ["x"]), max_size=3))
    out = json.loads(project(json.dumps(doc).encode(), granted))
    assert set(out) <= set(granted)
    assert all(out[k] == doc[k] for k in out)
