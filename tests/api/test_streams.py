"""Body → lines → records without the vault: line numbers, limits, and strictness."""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Iterator

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from api.http.bodies import JSON_DEPTH_MAX
from api.http.errors import InvalidLine
from api.http.streams import (
    EmptyUpload,
    _block_records,
    _plain_block,
    _plain_records,
    csv_records,
    ndjson_body_records,
    ndjson_records,
    split_lines,
)
from vault.uploads import CompactJson, RecordIn, _payload_bytes


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


def _outcome(records: Iterator[RecordIn]) -> list[object]:
    """What an upload stores of each record, then the refusal that ended it (if any)."""
    out: list[object] = []
    try:
        for r in records:
            stored = _payload_bytes(r.payload, 1, 1 << 20)
            out.append((r.subject_id, stored, type(r.payload).__name__, r.record_id))
    except (InvalidLine, EmptyUpload) as exc:
        out.append((type(exc).__name__, getattr(exc, "line", None), exc.status, exc.detail))
    return out


_LINES = [
    *(line.encode() for line in _SPELLINGS),
    b'{"subject_id":"s1","payload":{"a":"x","b":[1,2],"c":true,"d":null}}',
    b'{"subject_id":"s2","payload":{"n":-1,"m":0,"t":"tree"},"record_id":null}',
    b'{"record_id":"' + str(uuid.UUID(int=9)).encode() + b'","subject_id":"s3","payload":{}}',
    b'{"subject_id":"s1","payload":{"a":{"b":1}}}',
    b'{"subject_id":"s1","payload":{"a":{}}}',
    b'{"subject_id":"s1","payload":{"a":1e5}}',
    b'{"subject_id":"s1","payload":{"a":-0}}',
    b'{"subject_id":"s1","payload":{"a":"\xc3\xa9"}}',
    '{"subject_id":"s1","payload":{"a":"é","b":[1,"ü"]},"record_id":null}'.encode(),
    ('{"subject_id":"s1","payload":{"a":"ñ"},"record_id":"' + "٠" * 31 + '١"}').encode(),
    '{"subject_id":"s1","payload":{"a":"ñ"},"record_id":"00000000-0000-0000-0000-00000000000ñ"}'.encode(),
    '{"subject_id":"sé","payload":{"a":1}}'.encode(),
    '{"subject_id":"s1","payload":{"a": "é"}}'.encode(),
    '{"subject_id":"s1","payload":{"é":1,"é":2}}'.encode(),
    b'{"subject_id":"s1","payload":{"a":"\xff"}}',
    b'{"subject_id":"s1","payload":{"a":1}} ',
    b' {"subject_id":"s1","payload":{"a":1}}',
    b'{"subject_id":"s1","payload":{"a":1}}{"b":2}',
    b'{"subject_id":"s1","payload":{"a":"b\\"c"}}',
    b'{"subject_id":"s1","payload":' + b"[" * 31 + b"]" * 31 + b"}",
    b'{"subject_id":"s1","payload":' + b"[" * 40 + b"]" * 40 + b"}",
    b'{"subject_id":"s1","payload":{"a":"' + b"y" * 150 + b'"}}',
    b'{"subject_id":"s1","payload":{"a":1},"record_id":7}',
    b'{"subject_id":"s1","payload":{"a":1},"record_id":"nope"}',
    b'{"subject_id":"Jane Doe","payload":{}}',
    b'{"subject_id":"s1","payload":{},"x":1}',
    b'{"subject_id":"s1","payload":[1]}',
    b'{"subject_id":"s1","payload":{"v":NaN}}',
    b'{"subject_id":"s1","payload":{"a":"',
    b'"}}',
    b'{"subject_id":"s1",',
    b'"payload":{}}',
    b"[1]",
    b"not json",
    b"",
    b" \t",
    b"\xff",
]


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.sampled_from(_LINES), max_size=12),
    st.sampled_from([b"\n", b"\r\n"]),
    st.booleans(),
    st.lists(st.integers(1, 200), min_size=1, max_size=6),
)
def test_ndjson_body_records_are_those_of_split_lines_and_ndjson_records(
    lines: list[bytes], newline: bytes, ended: bool, cuts: list[int]
) -> None:
    """The block path stores and refuses exactly as line by line, however the body is cut."""
    body = newline.join(lines) + (newline if ended and lines else b"")
    chunks, at = [], 0
    for i in range(len(body)):
        if at >= len(body):
            break
        size = cuts[i % len(cuts)]
        chunks.append(body[at : at + size])
        at += size
    for line_max in (100, 1000):
        expected = _outcome(ndjson_records(split_lines(chunks, line_max_bytes=line_max)))
        got = _outcome(ndjson_body_records(chunks, line_max_bytes=line_max))
        assert got == expected


# Plain lines (`{"subject_id":…,"payload":{…}}`, compact) and what turns one into a line the
# block's plain path must leave to the line-by-line path, or refuse as it would.
_TWISTS = {
    "space": lambda p: p.replace('":', '": ', 1) if p != "{}" else "{ }",
    "float": lambda p: _member(p, '"f":1.5'),
    "exponent": lambda p: _member(p, '"e":1e5'),
    "minus zero": lambda p: _member(p, '"m":-0'),
    "object": lambda p: _member(p, '"o":{"p":1}'),
    "empty object": lambda p: _member(p, '"o":{}'),
    "repeated key": lambda p: _member(p, '"d":1,"d":2'),
    "deep": lambda p: _member(p, '"z":' + "[" * 31 + "]" * 31),
    "too deep": lambda p: _member(p, '"z":' + "[" * 40 + "]" * 40),
    "long": lambda p: _member(p, '"l":"' + "y" * 150 + '"'),
    "raw tab": lambda p: _member(p, '"t":"a\tb"'),
    "newline in a string": lambda p: _member(p, '"t":"a\nb"'),
    "escape": lambda p: _member(p, '"q":"a\\"b"'),
    "not an object": lambda p: "[1]",
    "unfinished": lambda p: p[:-1],
    "NaN": lambda p: _member(p, '"n":NaN'),
}
_STILL_PLAIN = {"unicode": lambda p: _member(p, '"u":"\u00e9\u2028x"')}
# Text that needs no escape, as most payloads' is: escapes are among the twists.
_TEXT = st.text(
    st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters='"\\'), max_size=6
)
_PLAIN_SCALARS = st.none() | st.booleans() | st.integers(-(10**20), 10**20) | _TEXT
_PLAIN_PAYLOADS = st.dictionaries(
    _TEXT, _PLAIN_SCALARS | st.lists(_PLAIN_SCALARS, max_size=3), max_size=4
)


def _member(payload: str, member: str) -> str:
    return "{" + member + "}" if payload == "{}" else payload[:-1] + "," + member + "}"


def _plain_line(payload: dict[str, object], twist: str, subject: str) -> bytes:
    text = _ENCODE(payload)
    change = _TWISTS.get(twist) or _STILL_PLAIN.get(twist)
    if change is not None:
        text = change(text)
    line = '{"subject_id":"' + subject + '","payload":' + text + "}"
    return (line + (" " if twist == "trailing space" else "")).encode()


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(_PLAIN_PAYLOADS, st.sampled_from(["s1", "subject-0", "a" * 128])), max_size=5
    ),
    st.sampled_from([None, *_TWISTS, *_STILL_PLAIN, "trailing space", "a" * 129, "Jane Doe", "sé"]),
    _PLAIN_PAYLOADS,
    st.integers(0, 5),
    st.sampled_from([100, 1000]),
)
@example([({"a": "b"}, "s1")], "repeated key", {"c": 1}, 1, 1000)
@example([({"a": "b"}, "s1")], "empty object", {}, 0, 1000)
def test_a_block_of_plain_lines_is_read_as_line_by_line(
    plain: list[tuple[dict[str, object], str]],
    twist: str | None,
    payload: dict[str, object],
    at: int,
    line_max: int,
) -> None:
    """Plain lines, and one line twisted (or not): the block's plain path (all lines at
    once) stores and refuses exactly as the lines read one by one."""
    lines = [_plain_line(p, "plain", subject) for p, subject in plain]
    if twist is not None:
        subject = twist if twist.startswith(("a", "J", "s")) else "s2"
        lines.insert(at, _plain_line(payload, twist, subject))
    body = b"".join(line + b"\n" for line in lines)
    expected = _outcome(ndjson_records(split_lines([body], line_max_bytes=line_max)))
    assert _outcome(ndjson_body_records([body], line_max_bytes=line_max)) == expected


def _plain(block: bytes, line_max: int = 1 << 16) -> list[RecordIn] | None:
    return _plain_block(block, block.decode(), line_max)


def test_plain_lines_are_read_all_at_once_and_passed_on_as_sent() -> None:
    payloads: list[dict[str, object]] = [{"a": 1, "b": "x y", "c": [1, True, None]}, {}, {"é": "ü"}]
    lines = [_plain_line(p, "plain", f"s{i}") for i, p in enumerate(payloads)]
    block = b"\n".join(lines) + b"\n"
    records = _plain(block)
    assert records is not None
    assert [r.subject_id for r in records] == ["s0", "s1", "s2"]
    assert [r.payload.data for r in records if isinstance(r.payload, CompactJson)] == [
        _ENCODE(p).encode() for p in payloads
    ]
    assert _outcome(_block_records(block, 0, 1 << 16)) == _outcome(iter(records))
    # A line too long for the limit is the line path's to refuse; one at the limit is plain.
    assert _plain(block, line_max=max(map(len, lines)) - 1) is None
    assert _plain(block, line_max=max(map(len, lines))) is not None
    # A block must end its last line.
    assert _plain(block[:-1]) is None


def test_plain_records_are_the_records_their_class_makes() -> None:
    """Made through the slots' setters, a record equals, hashes and refuses assignment as
    one made by `RecordIn(...)`."""
    payloads = [CompactJson(b'{"a":1}'), CompactJson(b"{}")]
    made = _plain_records(["s1", "s2"], payloads)
    assert made == [RecordIn("s1", payloads[0]), RecordIn("s2", payloads[1])]
    assert [r.record_id for r in made] == [None, None]
    assert hash(made[0]) == hash(RecordIn("s1", payloads[0]))
    with pytest.raises(dataclasses.FrozenInstanceError):
        made[0].subject_id = "s3"  # type: ignore[misc]
    # Made without `__init__`: a field more, or a `__post_init__`, would be left out.
    assert [f.name for f in dataclasses.fields(RecordIn)] == ["subject_id", "payload", "record_id"]
    assert "__post_init__" not in vars(RecordIn)


def test_a_plain_line_is_never_nested_deeper_than_allowed() -> None:
    """The plain path checks no depth: the lines it takes nest three deep at most (the line,
    its payload, an array), within the bound every line is held to."""
    assert JSON_DEPTH_MAX >= 3
    deeper = _plain_line({"a": [[1]]}, "plain", "s1") + b"\n"
    assert _plain(deeper) is None


@pytest.mark.parametrize("twist", [*_TWISTS, "record id"])
def test_one_line_that_is_not_plain_sends_the_whole_block_line_by_line(twist: str) -> None:
    plain = _plain_line({"a": "b"}, "plain", "s1")
    other = (
        plain[:-1] + b',"record_id":"' + str(uuid.UUID(int=3)).encode() + b'"}'
        if twist == "record id"
        else _plain_line({"a": "b"}, twist, "s2")
    )
    block = plain + b"\n" + other + b"\n" + plain + b"\n"
    if b"\\" not in block:  # a block with an escape never reaches the plain path
        assert _plain(block, line_max=100) is None
    expected = _outcome(ndjson_records(split_lines([block], line_max_bytes=100)))
    assert _outcome(_block_records(block, 0, 100)) == expected


@pytest.mark.parametrize(
    "line",
    [
        b'{"subject_id":"s1\\n","payload":{}}',
        b'{"subject_id":"s1\\n","payload":{"a": 1}}',
        b'{"subject_id":"' + b"a" * 64 + b'\\n","payload":{}}',
    ],
)
def test_a_subject_id_ending_in_a_newline_is_refused(line: bytes) -> None:
    """`$` matches before a final newline: "s1\\n" would be a pseudonym apart from "s1",
    whose records an erasure of "s1" would never reach."""
    with pytest.raises(InvalidLine) as refused:
        list(ndjson_records([(1, line)]))
    assert "subject_id" in str(refused.value.detail)
    with pytest.raises(InvalidLine):
        list(ndjson_body_records([line + b"\n"], line_max_bytes=1000))
