"""`vault.jsontext.Loads` against `json.loads`: the same value, or an error where it errs.

Upload validation (library and NDJSON lines) relies on `Loads` being exactly as strict as
`json.loads` with the same options: these compare the two on hand-picked edge cases and on
generated mutations of them.
"""

from __future__ import annotations

import json
import tracemalloc
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vault.jsontext import Loads, shape

EDGES: list[bytes | str] = [
    b"{}",
    b'{"a":1}',
    b'{"a":1} ',
    b'{"a":1}\n',
    b'{"a":1}  \t\r\n',
    b' {"a":1}',
    b'{"a":1}x',
    b'{"a":1}{"b":2}',
    b'{"a":1}\x00',
    b'{"a":1}\x0c',
    b"{",
    b"{\x00",
    b"[1]",
    b"1",
    b"",
    b'{"a":NaN}',
    b'{"a":Infinity}',
    b'{"a":-Infinity}',
    b'{"a":1e999}',
    b'{"a": 01}',
    b'{"a":"\xff"}',
    b'{"a":"\\ud800"}',
    b'{"a":"\xed\xa0\x80"}',
    b'{"a":"\t"}',
    b'{"a":1,"a":2}',
    b'{"a":[1,2,{"b":null,"c":true,"d":false,"e":-1.5e3}]}',
    b'\xef\xbb\xbf{"a":1}',
    '{"a":1}'.encode("utf-16-le"),
    '{"a":1}'.encode("utf-16"),
    '{"a":1}'.encode("utf-32"),
    '{"é":"ü"}'.encode(),
    '{"a":1}',
    ' {"a":1} ',
    '\ufeff{"a":1}',
    "{",
    b'{"a":' * 3000 + b"1" + b"}" * 3000,
]


def _reject(name: str) -> Any:
    raise ValueError(name)


def _outcome(loads: Any, data: bytes | str) -> tuple[str, str]:
    try:
        return "value", repr(loads(data))
    except RecursionError:
        return "RecursionError", ""
    except json.JSONDecodeError as exc:
        return "JSONDecodeError", f"{exc.msg} {exc.pos}"
    except UnicodeDecodeError:
        return "UnicodeDecodeError", ""
    except ValueError:
        return "ValueError", ""


@pytest.mark.parametrize("data", EDGES)
def test_edges_as_json_loads(data: bytes | str) -> None:
    assert _outcome(Loads(parse_constant=_reject), data) == _outcome(
        lambda d: json.loads(d, parse_constant=_reject), data
    )
    assert _outcome(Loads(), data) == _outcome(json.loads, data)


@settings(max_examples=400, deadline=None)
@given(
    base=st.sampled_from([e for e in EDGES if isinstance(e, bytes) and len(e) < 100]),
    at=st.integers(0, 99),
    byte=st.integers(0, 255),
    cut=st.booleans(),
)
def test_mutations_as_json_loads(base: bytes, at: int, byte: int, cut: bool) -> None:
    data = bytearray(base)
    if data:
        i = at % len(data)
        if cut:
            del data[i:]
        else:
            data[i] = byte
    raw = bytes(data)
    assert _outcome(Loads(parse_constant=_reject), raw) == _outcome(
        lambda d: json.loads(d, parse_constant=_reject), raw
    )


_COMPACT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode
_JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**30), 10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4)
    ),
    max_leaves=12,
)


def _walk(value: Any, level: int = 1) -> tuple[int, int, int, bool]:
    """(objects, members, depth, holds a float) of a parsed value."""
    if isinstance(value, float):
        return 0, 0, 0, True
    if not isinstance(value, dict | list):
        return 0, 0, 0, False
    items = list(value.values()) if isinstance(value, dict) else value
    below = [_walk(v, level + 1) for v in items]
    return (
        (1 if isinstance(value, dict) else 0) + sum(b[0] for b in below),
        (len(value) if isinstance(value, dict) else 0) + sum(b[1] for b in below),
        max([level] + [b[2] for b in below]),
        any(b[3] for b in below),
    )


def _spellings(value: Any) -> list[str]:
    """The value in compact form and in forms the compact encoder does not write."""
    text = _COMPACT(value)
    return [
        text,
        json.dumps(value, ensure_ascii=False),
        json.dumps(value),
        json.dumps(value, indent=1, ensure_ascii=False),
    ]


def _assert_shape_true_to(text: str) -> None:
    """Sound: `compact` with the members of the parsed objects means the encoder writes this
    very text. Complete where it claims to be: compact text with no backslash and no float
    is recognised. And the bracket count bounds the depth."""
    value = json.loads(text)
    compact, objects, members, brackets = shape(text)
    walked_objects, walked_members, depth, floats = _walk(value)
    if compact and (objects, members) == (walked_objects, walked_members):
        assert text == _COMPACT(value)
    if text == _COMPACT(value) and "\\" not in text and not floats:
        assert compact and (objects, members) == (walked_objects, walked_members)
    assert brackets >= depth


@settings(max_examples=400, deadline=None)
@given(value=_JSON_VALUES)
def test_shape_says_compact_exactly_when_the_encoder_writes_the_text(value: Any) -> None:
    for text in _spellings(value):
        _assert_shape_true_to(text)


@pytest.mark.parametrize(
    "text",
    [
        '{"a":1,"a":1}',
        '{"a":1,"a":2}',
        '{"a":-0}',
        '{"a":1.50}',
        '{"a":1e5}',
        '{"a":1E5}',
        '{"a":100000.0}',
        '{"a":true,"b":false,"c":null,"d":[]}',
        '{"a":"x y.z E e -0 \\u00e9"}',
        '{"a":"\\"","b":"\\\\"}',
        '{"a":"é ü \u2028 \x7f"}',
        '{"a":[1,[2,[3]]],"b":{}}',
        '{"a" :1}',
        '{"a":1}\r',
    ],
)
def test_shape_edges(text: str) -> None:
    _assert_shape_true_to(text)


# Payloads that are not JSON objects alone but join into valid JSON with a neighbour.
_SPLIT_OBJECTS: list[list[bytes]] = [
    [b'{"a":"', b'"}'],
    [b'{"a":[1', b"2]}"],
    [b'{"a":1},{"b":[1', b"2]}"],
    [b'{"a":1}{"b":2}', b"{}"],
    [b"{}", b'{"a":1', b"}"],
    [b'{"a":1', b'}{"b":2}'],
    [b'{"a":12', b"3}"],
    [b'{"a":tr', b"ue}"],
    [b'{"a":"\\', b'u00e9"}'],
    [b'{"a":"\xc3', b'\xa9"}'],
]
_OBJECTS: list[bytes] = [b"{}", b'{"a":1}', b'{"a":[1,{"b":null}],"c":"\xc3\xa9"}', b'{"a":1e5}']


def _all_loaded_are_dicts(loads: Loads, payloads: list[bytes]) -> bool:
    return all(_outcome(loads, p)[0] == "value" and isinstance(loads(p), dict) for p in payloads)


@pytest.mark.parametrize("payloads", _SPLIT_OBJECTS)
def test_all_objects_refuses_payloads_that_are_objects_only_joined(payloads: list[bytes]) -> None:
    loads = Loads(parse_constant=_reject)
    assert not _all_loaded_are_dicts(loads, payloads)
    assert loads.all_objects(payloads) is False


@settings(max_examples=500, deadline=None)
@given(
    payloads=st.lists(
        st.sampled_from(
            [e for e in EDGES if isinstance(e, bytes) and len(e) < 100]
            + _OBJECTS
            + [p for ps in _SPLIT_OBJECTS for p in ps]
        ),
        max_size=6,
    )
)
def test_all_objects_passes_only_what_loads_parses_to_objects(payloads: list[bytes]) -> None:
    loads = Loads(parse_constant=_reject)
    if loads.all_objects(payloads):
        assert _all_loaded_are_dicts(loads, payloads)


@settings(max_examples=200, deadline=None)
@given(values=st.lists(st.dictionaries(st.text(max_size=4), _JSON_VALUES, max_size=4), max_size=8))
def test_all_objects_passes_objects_in_compact_utf8(values: list[dict[str, Any]]) -> None:
    """Complete where an upload needs it: objects as JSON writers emit them pass, so the
    chunk check is the path uploads take and not a fallback that always answers False."""
    payloads = [_COMPACT(v).encode("utf-8", "surrogatepass") for v in values]
    assert Loads(parse_constant=_reject).all_objects(payloads) is True
    assert Loads(parse_constant=_reject).all_objects([*payloads, b" {}"]) is False


def test_all_objects_scans_each_payload_alone() -> None:
    """A chunk built so that each payload's value would run on through all the ones after it
    (each opens a list its successors continue) costs one scan of each payload's own text,
    not one to the chunk's end per payload: memory stays about that of the chunk, where the
    scans to the end would hold every successor's elements once per payload (~20 MB here)."""
    n, k = 128, 400
    payloads = [b"[" + b"0," * k] * (n - 1) + [b"0" + b"]" * (n - 1)]
    loads = Loads(parse_constant=_reject)
    tracemalloc.start()
    try:
        assert loads.all_objects(payloads) is False
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2_000_000, peak


def test_all_objects_passes_no_nesting_loads_refuses_from_the_same_caller() -> None:
    """Nesting near the recursion limit is refused or not by the caller's stack depth: at no
    depth may `all_objects` pass a payload that `Loads`, called from the same frame, refuses
    for its depth. The range holds depths both pass and depths both refuse."""
    loads = Loads(parse_constant=_reject)
    passed, refused = [], []
    for depth in range(800, 1000):
        payload = b'{"a":' * depth + b"1" + b"}" * depth
        chunk_ok = loads.all_objects([payload])
        try:
            loads(payload)
        except RecursionError:
            refused.append(depth)
            assert not chunk_ok, depth
            continue
        if chunk_ok:
            passed.append(depth)
    assert passed and refused
