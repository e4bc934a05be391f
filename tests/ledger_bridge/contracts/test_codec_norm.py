"""The normaliser's own path against its definition: the same bytes, or the same error.

`codec._norm` walks exact maps and lists in one loop and hands everything else (and anything
16 deep or more) to `codec._norm_general`. A replica on either must agree on every canonical
encoding, and on every refusal (a malformed transaction's message is part of its result), so
the reference here is a plain recursive normaliser with no fast path, which `_norm` must
match exactly.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from typing import Any

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger_bridge.contracts import codec
from ledger_bridge.contracts.codec import INT_MAX, INT_MIN, NotCanonical

_FLAT = frozenset((str, bytes, int))


def reference_norm(obj: Any, depth: int = 0) -> Any:
    if depth > 16:
        raise NotCanonical("nested too deeply")
    t = type(obj)
    if t is str or t is bytes:
        return obj
    if t is int:
        if not INT_MIN <= obj <= INT_MAX:
            raise NotCanonical("integer out of range")
        return obj
    if t is list and all(type(x) is str for x in obj):
        return obj
    if t is dict and all(type(k) is str and type(v) in _FLAT for k, v in obj.items()):
        for v in obj.values():
            if type(v) is int and not INT_MIN <= v <= INT_MAX:
                raise NotCanonical("integer out of range")
        return {k: obj[k] for k in sorted(obj)}
    if obj is None or isinstance(obj, bool | str | bytes):
        return obj
    if isinstance(obj, int):
        if not INT_MIN <= obj <= INT_MAX:
            raise NotCanonical("integer out of range")
        return obj
    if isinstance(obj, list | tuple):
        return [reference_norm(x, depth + 1) for x in obj]
    if isinstance(obj, dict):
        if not all(isinstance(k, str) for k in obj):
            raise NotCanonical("map keys must be strings")
        return {k: reference_norm(obj[k], depth + 1) for k in sorted(obj)}
    raise NotCanonical(f"unsupported type {type(obj).__name__}")


def reference_encode(obj: Any) -> bytes:
    return bytes(msgpack.packb(reference_norm(obj), use_bin_type=True))


class Colour(enum.IntEnum):
    RED = 1


class Name(str):
    pass


def outcome(encode: Any, value: Any) -> tuple[str, Any]:
    try:
        return "bytes", encode(value)
    except NotCanonical as exc:
        return "refused", str(exc)


_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=INT_MIN - 3, max_value=INT_MAX + 3),
    st.sampled_from([INT_MIN - 1, INT_MIN, -1, 0, 127, 128, INT_MAX, INT_MAX + 1]),
    st.text(max_size=4),
    st.binary(max_size=4),
    st.floats(allow_nan=False),
    st.just(Colour.RED),
    st.builds(Name, st.text(max_size=3)),
)
_keys = st.one_of(
    st.text(max_size=3),
    st.builds(Name, st.text(max_size=3)),
    st.integers(0, 3),
    st.binary(max_size=2),
)


def _containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.lists(children, max_size=4),
        st.lists(children, max_size=3).map(tuple),
        st.dictionaries(st.text(max_size=3), children, max_size=4),
        st.dictionaries(_keys, children, max_size=3),
        st.dictionaries(st.text(max_size=3), children, max_size=3).map(OrderedDict),
    )


values = st.recursive(_leaves, _containers, max_leaves=30)


@st.composite
def deep(draw: st.DrawFn) -> Any:
    """A value wrapped 13 to 19 containers deep: the depth limit and the shortcuts around it."""
    value = draw(st.one_of(_leaves, st.lists(st.text(max_size=2), max_size=2), values))
    for _ in range(draw(st.integers(13, 19))):
        if draw(st.booleans()):
            value = [value, *draw(st.lists(_leaves, max_size=2))]
        else:
            value = {"k": value, **draw(st.dictionaries(st.text(max_size=2), _leaves, max_size=2))}
    return value


@settings(max_examples=1500)
@given(values)
def test_encode_matches_the_definition(value: Any) -> None:
    assert outcome(codec.encode, value) == outcome(reference_encode, value)


@settings(max_examples=800)
@given(deep())
def test_encode_matches_the_definition_at_the_depth_limit(value: Any) -> None:
    assert outcome(codec.encode, value) == outcome(reference_encode, value)


def test_the_depth_limit_falls_where_the_definition_puts_it() -> None:
    # a list of strings 16 deep is a shortcut there (never descended), one of ints is not
    def wrap(value: Any, n: int) -> Any:
        for _ in range(n):
            value = [value]
        return value

    inner: Any
    for inner in (["a", "b"], [1, 2], [], [[]], {"a": 1}, {"a": [1]}, "s", 5, None):
        for n in range(14, 19):
            value = wrap(inner, n)
            assert outcome(codec.encode, value) == outcome(reference_encode, value), (inner, n)
    assert outcome(codec.encode, wrap([1], 16))[0] == "refused"
    assert outcome(codec.encode, wrap(["a"], 16))[0] == "bytes"
