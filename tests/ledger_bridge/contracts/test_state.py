"""The state map's own promises: canonical key bytes, and indexes that follow every write.

Why here and not only through the rules: the indexes (by key positions and by what a value
names) are never hashed, so a stale index entry would not show in any state root; it would
only show as a wrong answer to a query (an access log that forgets or invents a subject).
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger_bridge.contracts import codec
from ledger_bridge.contracts.codec import NotCanonical
from ledger_bridge.contracts.state import State

_part = st.one_of(
    st.text(max_size=70),
    st.binary(max_size=40),
    st.integers(min_value=codec.INT_MIN, max_value=codec.INT_MAX),
    st.booleans(),
    st.none(),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_part, min_size=1, max_size=6))
def test_encode_key_is_the_canonical_encoding(parts: list[Any]) -> None:
    assert codec.encode_key(tuple(parts)) == codec.encode(parts)


@pytest.mark.parametrize("bad", [1.5, 1 << 64, -(1 << 63) - 1, {1: "a"}])
def test_encode_key_refuses_what_encode_refuses(bad: Any) -> None:
    with pytest.raises(NotCanonical):
        codec.encode_key(("t", bad))


def _access(consumer: bytes, granted: list[str], dataset: str = "d1") -> dict[str, Any]:
    return {"consumer": consumer, "granted": granted, "dataset": dataset}


def _by_subject(state: State, subject: str) -> list[int]:
    return [k[0] for k in state.group("access", "subject", subject)]


def test_value_index_follows_puts_rewrites_deletes_and_rollback() -> None:
    s = State()
    s.put("access", 1, _access(b"c1", ["a", "b"]))
    s.put("access", 2, _access(b"c2", ["b"], "d2"))
    assert _by_subject(s, "a") == [1]
    assert _by_subject(s, "b") == [1, 2]
    assert [k[0] for k in s.group("access", "consumer", b"c2")] == [2]
    assert [k[0] for k in s.group("access", "dataset", "d2")] == [2]

    s.put("access", 1, _access(b"c1", ["c"]))  # a rewrite moves the entry
    assert _by_subject(s, "a") == []
    assert _by_subject(s, "c") == [1]

    s.mark()
    s.put("access", 3, _access(b"c1", ["a"]))
    s.delete("access", 2)
    assert _by_subject(s, "a") == [3]
    assert _by_subject(s, "b") == []
    s.rollback()
    assert _by_subject(s, "a") == []
    assert _by_subject(s, "b") == [2]
    assert [k[0] for k in s.group("access", "consumer", b"c1")] == [1]

    restored = State.restore(s.snapshot())  # rebuilt from the entries alone
    assert restored.root() == s.root()
    for subject in ["a", "b", "c"]:
        assert _by_subject(restored, subject) == _by_subject(s, subject)
