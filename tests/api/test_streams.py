"""Body → lines → records without the vault: line numbers, limits, and strictness."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest

from api.http.errors import InvalidLine
from api.http.streams import EmptyUpload, csv_records, ndjson_records, split_lines
from vault.uploads import CompactJson, _payload_bytes


def _lines(body: bytes, chunk: int = 3, line_max: int = 100) -> list[tuple[int, bytes]]:
    chunks = [body[i : i + chunk] for i in range(0, len(body), chunk)]
    return list(split_lines(chunks, line_max_bytes=line_max))


@pytest.mark.parametrize("chunk", [1, 2, 5, 1000])
def test_lines_split_across_chunks_whatever_their_size(chunk: int) -> None:
    body = b"ab\r\ncd\n\nef"
    assert _lines(body, chunk) == [(1, b"ab"), (2, b"cd"), (3, b""), (4, b"ef")]


def test_a_line_over_the_limit_is_refused_before_it_ends() -> None:
    def endless() -> Iterator[bytes]:
        yield b"ok\n"
        while True:
            yield b"x" * 64

    with pytest.raises(InvalidLine) as err:
        list(split_lines(endless(), line_max_bytes=1000))
    assert (err.value.line, err.value.status) == (2, 413)


def test_ndjson_names_the_first_bad_line() -> None:
    good = b'{"subject_id": "s1", "payload": {"a": 1}}'
    cases = {
        b"not json": "not valid JSON",
        b"[1]": "must be a JSON object",
        b'{"subject_id": "s1", "payload": [1]}': "payload must be a JSON object",
        b'{"subject_id": "Jane Doe", "payload": {}}': "subject_id",
        b'{"subject_id": "s1", "payload": {}, "x": 1}': "unknown fields",
        b'{"subject_id": "s1", "payload": {}, "record_id": 7}': "record_id",
        b'{"subject_id": "s1", "payload": {"v": NaN}}': "not valid JSON",
        b'{"subject_id":"s1","payload":{"a":1}' + b"}" * 40: "not valid JSON",
        b'{"subject_id":"s1","payload":' + b'{"a":' * 40 + b"1" + b"}" * 41: "nested deeper",
        b'{"subject_id":"s1","payload":' + b"[" * 40 + b"]" * 40 + b"}": "nested deeper",
        b"": "empty line",
        b" \t": "empty line",
    }
    for bad, reason in cases.items():
        lines = [(1, good), (2, good), (3, bad), (4, good)]
        with pytest.raises(InvalidLine) as err:
            list(ndjson_records(lines))
        assert err.value.line == 3
        assert reason in err.value.detail
        assert "Jane" not in err.value.detail  # never echo the input


def test_ndjson_records_keep_ids_and_payloads() -> None:
    rid = uuid.uuid4()
    line = f'{{"subject_id": "s1", "payload": {{"a": 1}}, "record_id": "{rid}"}}'.encode()
    [record] = ndjson_records([(1, line)])
    assert (record.subject_id, record.payload, record.record_id) == ("s1", {"a": 1}, rid)


_ENCODE = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode
_SPELLINGS = [
    '{"subject_id":"s1","payload":{"a":1,"b":"x y","c":[1,true,null],"d":false}}',
    '{"payload":{"a":1},"subject_id":"s1"}',
    '{"subject_id":"s1","payload":{},"record_id":"' + str(uuid.UUID(int=7)) + '"}',
    '{"subject_id":"s1","payload":{"é":"ü\u2028","e":-1}}',
    '{"subject_id":"s1","record_id":null,"payload":{"payload":{"payload":1}}}',
    '{"subject_id":"s1","payload":{"a":1},"record_id":""}',
    '{"subject_id":"s1","payload":{"a":1,"a":2}}',
    '{"subject_id":"s1","payload":{"a":1.50,"b":1e5,"c":-0}}',
    '{"subject_id":"s1","payload":{"a":1.5}}',
    '{"subject_id":"s1", "payload":{"a":1}}',
    '{"subject_id":"s1","payload":{"a":"\\u00e9\\n"}}',
    '{"subject_id":"s1","payload":{"a":[{"b":1},{"b":1,"b":2}]}}',
    '{"subject_id":"s1","subject_id":"s2","payload":{"a":1}}',
    '{"subject_id":"s1","payload":{"a":1}}\r',
]


@pytest.mark.parametrize("line", _SPELLINGS)
def test_ndjson_payloads_are_the_compact_encoding_of_what_was_parsed(line: str) -> None:
    """Whichever way a line is written, the bytes stored are the compact encoding of the
    payload parsed from it; a compact line's own bytes are passed on, not encoded again."""
    [record] = ndjson_records([(1, line.encode())])
    parsed = json.loads(line)
    expected = _ENCODE(parsed["payload"]).encode()
    assert _payload_bytes(record.payload, 1, 1 << 20) == expected
    assert record.subject_id == parsed["subject_id"]
    # Passed on as sent: compact lines with no escape, no float, and no object in the payload.
    if line == _ENCODE(parsed) and "\\" not in line and "." not in line and line.count("{") == 2:
        assert isinstance(record.payload, CompactJson)


def test_csv_header_and_rows() -> None:
    rows = [(1, b"subject_id,address,record_id"), (2, b's1,"1 rue A, Lyon",')]
    [record] = csv_records(rows)
    assert record.subject_id == "s1"
    assert record.payload == {"address": "1 rue A, Lyon"}
    assert record.record_id is None


@pytest.mark.parametrize(
    ("lines", "line"),
    [
        ([(1, b"name,address")], 1),  # no subject_id column
        ([(1, b"subject_id,a,a")], 1),  # duplicate column
        ([(1, b"subject_id,a"), (2, b"s1,x"), (3, b"s2")], 3),  # short row
        ([(1, b"subject_id,a"), (2, b's1,"open quote')], 2),  # quoted newline
        ([(1, b"subject_id,a"), (2, b"s1,\xff")], 2),  # not UTF-8
    ],
)
def test_csv_errors_carry_the_line(lines: list[tuple[int, bytes]], line: int) -> None:
    with pytest.raises(InvalidLine) as err:
        list(csv_records(lines))
    assert err.value.line == line


def test_empty_bodies_are_refused() -> None:
    with pytest.raises(EmptyUpload):
        list(ndjson_records([]))
    with pytest.raises(EmptyUpload):
        list(csv_records([(1, b"subject_id,a")]))
