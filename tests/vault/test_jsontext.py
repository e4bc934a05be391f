"""`vault.jsontext.Loads` against `json.loads`: the same value, or an error where it errs.

Upload validation (library and NDJSON lines) relies on `Loads` being exactly as strict as
`json.loads` with the same options: these compare the two on hand-picked edge cases and on
generated mutations of them.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vault.jsontext import Loads

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
