"""Reads pass lists of subject ids as one array literal: whatever a subject id holds, the
server must parse back exactly the strings given, one element each."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, text

from vault.reads import array_literal

_HOSTILE = ['a"b', "a\\b", "a,b", "{a}", "NULL", "", " padded ", "é\u2028", '\\"', "}{,"]


def _parsed(engine: Engine, values: list[str]) -> list[str]:
    with engine.connect() as connection:
        got = connection.execute(
            text("SELECT CAST(:v AS varchar[])"), {"v": array_literal(values)}
        ).scalar_one()
    return list(got)


def test_hostile_strings_come_back_as_given(engine: Engine) -> None:
    assert _parsed(engine, _HOSTILE) == _HOSTILE
    assert _parsed(engine, []) == []


# What PostgreSQL text can hold: any character but NUL, and no lone surrogate (UTF-8 has no
# encoding for one, so no string the driver can send holds one).
_STORABLE = st.characters(codec="utf-8", blacklist_characters="\x00")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(alphabet=_STORABLE), max_size=8))
def test_any_strings_come_back_as_given(engine: Engine, values: list[str]) -> None:
    assert _parsed(engine, values) == values
