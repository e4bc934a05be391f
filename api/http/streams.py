"""Upload bodies of any size in constant memory: chunks → lines → records, one at a time.

Why this shape: the vault `Uploader` consumes a synchronous iterator inside one database
savepoint, and the body arrives as an asynchronous stream. The uploader runs in a worker thread
and pulls each chunk from the event loop (`anyio.from_thread.run`), so at most one chunk plus
one line (bounded by `line_max_bytes`) is held, whatever the size of the body; NDJSON is read
a chunk's whole lines at a time (`ndjson_body_records`), which holds a few copies of that (its
bytes and its text, then either its payloads' text, bytes and parsed pairs or the text outside
its strings). Every line is checked here, with its line number, before the vault sees it; the
first bad line raises and the savepoint rolls back everything already written.

Never put a line's content in an error: it is personal data.
"""

from __future__ import annotations

import csv
import logging
import re
import uuid
from collections import deque
from collections.abc import AsyncIterator, Generator, Iterable, Iterator
from itertools import repeat
from operator import add, itemgetter
from typing import Any

import anyio.from_thread

from api.http.bodies import JSON_DEPTH_MAX, TooDeep, loads_bounded, nesting_exceeds
from api.http.errors import ApiError, InvalidLine
from vault.jsontext import Loads, Shape, shape
from vault.uploads import SUBJECT_ID, SUBJECT_ID_CHARS, CompactJson, RecordIn

RESERVED = ("subject_id", "payload", "record_id")
CSV_COLUMNS_MAX = 200
# What a line may carry besides its payload (subject id, record id, JSON framing).
LINE_OVERHEAD_BYTES = 1024
# Body bytes taken per hop from the event loop to the upload's worker thread.
READ_AHEAD_BYTES = 256 * 1024
_FIELDS = frozenset(RESERVED)
_log = logging.getLogger(__name__)


class EmptyUpload(ApiError):
    status = 422
    title = "Empty upload"


def chunks_from_loop(stream: AsyncIterator[bytes]) -> Iterator[bytes]:
    """The chunks of an async body, pulled from a worker thread started by anyio.

    Each hop to the event loop costs tens of microseconds and a body arrives in pieces of a
    few KiB, so one hop takes pieces until it holds `READ_AHEAD_BYTES` or the body ends: memory
    stays bounded by that, and the hops cost a few per megabyte instead of one per piece."""
    ended = False

    async def next_chunks() -> bytes | None:
        nonlocal ended
        parts: list[bytes] = []
        size = 0
        while size < READ_AHEAD_BYTES:
            try:
                chunk = await stream.__anext__()
            except StopAsyncIteration:
                ended = True
                break
            parts.append(chunk)
            size += len(chunk)
        return b"".join(parts)

    while not ended:
        chunk = anyio.from_thread.run(next_chunks)
        if chunk:
            yield chunk


def split_lines(chunks: Iterable[bytes], *, line_max_bytes: int) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, line without its \\n or \\r\\n) for each line of the body.

    A line longer than `line_max_bytes` is refused (413) as soon as it is seen, before the rest
    of it is read: that is what keeps memory flat against a body with no newline at all. Each
    chunk is split in one C call; only the unfinished last line is carried to the next."""
    rest = b""
    line_no = 0
    for chunk in chunks:
        lines = (rest + chunk).split(b"\n")
        rest = lines.pop()
        for line in lines:
            line_no += 1
            if len(line) > line_max_bytes:
                raise InvalidLine(line_no, f"longer than {line_max_bytes} bytes", status=413)
            yield line_no, line[:-1] if line.endswith(b"\r") else line
        if len(rest) > line_max_bytes:
            raise InvalidLine(line_no + 1, f"longer than {line_max_bytes} bytes", status=413)
    if rest:
        yield line_no + 1, rest


def _reject_constant(name: str) -> Any:
    raise ValueError(name)


_loads = Loads(parse_constant=_reject_constant)
_scan = _loads.scan_once
# The same parse, each object given as its (key, value) pairs: a repeated key shows.
_pairs = Loads(parse_constant=_reject_constant, object_pairs_hook=list)
# A `RecordIn` made without its `__init__`, and the setters of its slots (`_plain_records`).
_NEW = object.__new__
_SET_SUBJECT, _SET_PAYLOAD, _SET_RECORD_ID = (
    vars(RecordIn)[name].__set__ for name in ("subject_id", "payload", "record_id")
)
# A whole line of the shape most clients write: the subject, then the payload, nothing else
# (groups: the subject id, the payload's text). `^` matches after each newline (MULTILINE).
# The payload is an object of strings, integers, true, false, null and arrays of those, in
# the very characters the compact encoder writes for them (no space, no `-0`, no float):
# what `_plain_block` takes whole. A string holds no `"`, as blocks with a backslash never
# come here; a control character in one, a newline included (a string would then run on into
# the next line), is the scanner's to refuse. The alternatives each start with a character of
# their own, so a line is matched in one pass, and the repeats are possessive (`*+`): nothing
# is kept to backtrack into. `[^"]` rather than a set that also leaves out the control
# characters: the regular expression engine runs a negated literal at several times the speed
# of a set.
_STRING = r'"[^"]*+"'
_SCALAR = rf"(?:{_STRING}|0|-?[1-9][0-9]*+|true|false|null)"
_VALUE = rf"(?:{_SCALAR}|\[(?:{_SCALAR}(?:,{_SCALAR})*+)?\])"
_MEMBER = rf"{_STRING}:{_VALUE}"
_PLAIN_LINE = re.compile(
    rf'^\{{"subject_id":"({SUBJECT_ID_CHARS})","payload":(\{{(?:{_MEMBER}(?:,{_MEMBER})*+)?\}})\}}\n',
    re.MULTILINE,
)
_SUBJECT, _PAYLOAD = itemgetter(0), itemgetter(1)
# The characters of a plain line besides its subject id and its payload.
_PLAIN_FRAMING = len('{"subject_id":"","payload":}\n')


def _subject(value: object, line_no: int) -> str:
    if not isinstance(value, str) or not SUBJECT_ID.fullmatch(value):
        raise InvalidLine(line_no, "subject_id must be a pseudonym of 1..128 [A-Za-z0-9._:@+=/-]")
    return value


def _record_id(value: object, line_no: int) -> uuid.UUID | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InvalidLine(line_no, "record_id must be a UUID string")
    try:
        return uuid.UUID(value)
    except ValueError:
        raise InvalidLine(line_no, "record_id must be a UUID string") from None


def ndjson_records(lines: Iterable[tuple[int, bytes]]) -> Iterator[RecordIn]:
    """One record per line: {"subject_id", "payload": {...}, optional "record_id"}.

    Blank lines are refused rather than skipped so that record n is line n, and a vault error
    about record n names the right line. A payload the client sent in compact form (as the
    vault stores it) goes on as those bytes (`CompactJson`), any other as the parsed dict.
    """
    count = 0
    for line_no, raw in lines:
        yield _line_record(raw, line_no)
        count += 1
    if count == 0:
        raise EmptyUpload("the body holds no record")


def ndjson_body_records(chunks: Iterable[bytes], *, line_max_bytes: int) -> Iterator[RecordIn]:
    """`ndjson_records(split_lines(chunks, line_max_bytes=...))`, record for record and refusal
    for refusal, at a fraction of its cost per line.

    Why: besides its JSON parse (which the vault library pays too, for each payload), a line
    costs its split, a copy, a decode, and the look at its text that finds it compact
    (`vault.jsontext.shape`); at 1 KiB a line, those cost more than the parse. Here the whole
    lines of each chunk are one block, and that work is done once per block at C speed: one
    decode, then for a block of plain lines one regular expression over all of them and the
    scanner mapped over their payloads (`_plain_block`), else one split at the quotes (the
    text outside strings of every line at once) and each line parsed where it lies in the
    block. A block with a backslash or a carriage return, or that is not UTF-8, and any line
    the scan does not take whole (not an object, not JSON, anything after it on its line,
    nested deep, a field to refuse), go through `ndjson_records`'s own path, which answers or
    refuses them."""
    line_no = 0
    rest = b""
    for chunk in chunks:
        data = rest + chunk if rest else chunk
        cut = data.rfind(b"\n") + 1
        rest = data[cut:]
        if cut:
            block = data if cut == len(data) else data[:cut]
            line_no += yield from _block_records(block, line_no, line_max_bytes)
        if len(rest) > line_max_bytes:
            raise InvalidLine(line_no + 1, f"longer than {line_max_bytes} bytes", status=413)
    if rest:
        line_no += 1
        yield _line_record(rest, line_no)
    if line_no == 0:
        raise EmptyUpload("the body holds no record")


def _block_records(block: bytes, before: int, line_max: int) -> Generator[RecordIn, None, int]:
    """The records of `block`'s lines (each ended by \\n), lines `before` + 1 onwards;
    returns how many lines it held.

    A block of plain lines is read whole by `_plain_block`. Any other block is read line by
    line, each line scanned where it lies in the block: without a backslash, every quote
    delimits a string, and a line the scan takes is valid JSON, its quotes paired: the pieces
    of the block between quotes pairs, taken every other one from the start, are the text
    outside strings, and split at the newlines they are each line's, as `shape` reads it, up
    to the first line that is refused. Past ASCII, a line is found in the text (which the
    scan reads) and in the bytes (whose length is bounded)."""
    if b"\\" in block or b"\r" in block:
        return (yield from _lines_records(block, before, line_max))
    try:
        text = block.decode("utf-8")
    except UnicodeDecodeError:
        return (yield from _lines_records(block, before, line_max))
    plain = _plain_block(block, text, line_max)
    if plain is not None:
        yield from plain
        return len(plain)
    outside_all = b"".join(block.split(b'"')[::2])
    compact = _compact_outside(outside_all)
    outsides = outside_all.split(b"\n")
    outsides.pop()  # after the block's last newline: nothing
    newline, byte_newline = text.index, (None if len(text) == len(block) else block.index)
    pos = at = 0
    line_no = before
    for outside in outsides:
        line_no += 1
        end = newline("\n", pos)
        stop = end if byte_newline is None else byte_newline(b"\n", at)
        if stop - at > line_max:
            raise InvalidLine(line_no, f"longer than {line_max} bytes", status=413)
        record = _scanned_record(text, pos, end, outside, compact, line_no)
        yield _line_record(block[at:stop], line_no) if record is None else record
        pos = end + 1
        at = stop + 1
    if at < len(block):  # never so: a line that would unpair the quotes is refused
        line_no += yield from _lines_records(block[at:], line_no, line_max)
    return line_no - before


def _plain_block(block: bytes, text: str, line_max: int) -> list[RecordIn] | None:
    """The records of a block (no backslash, no carriage return, UTF-8: `_block_records`'s
    `text`) when every line of it is a plain one: `{"subject_id":…,"payload":{…}}`, its
    payload as `_PLAIN_LINE` reads it, no key repeated, no longer than allowed; None
    otherwise, and the block is read line by line.

    Why: most uploads are written so, and for them the per-line work in Python (finding
    the line, scanning it, checking it) costs as much as the parse. Here each step runs over
    all the lines at once in C: one regular expression finds every line's subject and payload
    and checks the payload's form, the scanner parses the payloads, and `dict` counts their
    keys. The records are those the line-by-line path (`_line_record`) makes of the same
    lines; the tests compare the two."""
    found = _PLAIN_LINE.findall(text)
    subjects = list(map(_SUBJECT, found))
    payloads = list(map(_PAYLOAD, found))
    # Each match is one whole line (or runs over several, which the scanner refuses below):
    # it starts at a line's start and ends at a newline. The matches cover the whole text
    # only if every line is one: their lengths are the lines'.
    covered = _PLAIN_FRAMING * len(found) + sum(map(len, subjects)) + sum(map(len, payloads))
    if covered != len(text) or not found:
        return None
    data = list(map(str.encode, payloads))
    # A line's bytes without its newline: the framing, the subject (ASCII) and the payload.
    if max(map(add, map(len, subjects), map(len, data))) + _PLAIN_FRAMING - 1 > line_max:
        return None
    members = _pairs.values(payloads)
    # A repeated key leaves the object with fewer keys than the text has members.
    if members is None or sum(map(len, members)) != sum(map(len, map(dict, members))):
        return None
    return _plain_records(subjects, list(map(CompactJson, data)))


def _plain_records(subjects: list[str], payloads: list[CompactJson]) -> list[RecordIn]:
    """`list(map(RecordIn, subjects, payloads))`, the same records, made in C.

    Why: `RecordIn` is a frozen dataclass, whose `__init__` sets each field through
    `object.__setattr__`, three Python-level calls per record: a fifth of a plain block's
    cost. Its slots' descriptors set the same fields, mapped over every record at once. A
    test holds `RecordIn` to these three fields and no `__post_init__`, which this skips."""
    records = list(map(_NEW, repeat(RecordIn, len(subjects))))
    deque(map(_SET_SUBJECT, records, subjects), 0)
    deque(map(_SET_PAYLOAD, records, payloads), 0)
    deque(map(_SET_RECORD_ID, records, repeat(None)), 0)
    return records


def _lines_records(block: bytes, before: int, line_max: int) -> Generator[RecordIn, None, int]:
    """`_block_records` line by line, as `split_lines` and `ndjson_records` take them."""
    lines = block.split(b"\n")
    lines.pop()  # after the last newline: nothing
    for i, line in enumerate(lines, before + 1):
        if len(line) > line_max:
            raise InvalidLine(i, f"longer than {line_max} bytes", status=413)
        yield _line_record(line[:-1] if line.endswith(b"\r") else line, i)
    return len(lines)


def _compact_outside(outside: bytes) -> bool:
    """`shape`'s compact, of the text outside strings (newlines between lines aside)."""
    if b" " in outside or b"\t" in outside or b"." in outside or b"E" in outside:
        return False
    if b"-0" in outside:
        return False
    return b"e" not in outside or outside.count(b"e") == outside.count(b"ue") + outside.count(b"se")


def _scanned_record(
    text: str, pos: int, end: int, outside: bytes, compact: bool, line_no: int
) -> RecordIn | None:
    """The record of the line text[pos:end] of a block (no backslash) parsed in place, as
    `_line_record` makes it; None for any line it would refuse or read another way."""
    if text[pos] != "{":
        return None
    try:
        item, scanned = _scan(text, pos)
    except (StopIteration, ValueError, RecursionError):
        return None
    objects = outside.count(b"{")
    if scanned != end or objects + outside.count(b"[") > JSON_DEPTH_MAX:
        return None
    payload, subject = item.get("payload"), item.get("subject_id")
    if not item.keys() <= _FIELDS or type(payload) is not dict or type(subject) is not str:
        return None
    if not SUBJECT_ID.fullmatch(subject):
        return None
    record_id = item.get("record_id")
    if record_id is not None:
        record_id = _record_id(record_id, line_no)
    if (
        objects != 2
        or not (compact or _compact_outside(outside))
        or outside.count(b":") != len(item) + len(payload)
    ):
        return RecordIn(subject, payload, record_id)
    # A line that ends `}}` ends with its payload: no other field's value is an object.
    tail = 1 if text[end - 2] == "}" else _payload_tail(item)
    start = text.index('"payload":', pos, end) + len('"payload":')
    if text[start] != "{" or text[end - tail - 1] != "}":  # holds, as in `_compact_payload`
        return RecordIn(subject, payload, record_id)
    return RecordIn(subject, CompactJson(text[start : end - tail].encode()), record_id)


def _line_record(raw: bytes, line_no: int) -> RecordIn:
    """The record of one NDJSON line, or the `InvalidLine` that names what is wrong with it."""
    item, read = _parsed_line(raw, line_no)
    if not isinstance(item, dict):
        raise InvalidLine(line_no, "must be a JSON object")
    if not item.keys() <= _FIELDS:
        # The names are not repeated back: they are the client's input, of any length.
        raise InvalidLine(line_no, f"unknown fields; a record holds only {', '.join(RESERVED)}")
    payload = item.get("payload")
    if not isinstance(payload, dict):
        raise InvalidLine(line_no, "payload must be a JSON object")
    subject = _subject(item.get("subject_id"), line_no)
    record_id = item.get("record_id")
    if record_id is not None:
        record_id = _record_id(record_id, line_no)
    return RecordIn(subject, _compact_payload(read, item, payload) or payload, record_id)


def _parsed_line(raw: bytes, line_no: int) -> tuple[Any, tuple[bytes, str, Shape] | None]:
    """(the line's JSON value, its bytes, text and `Shape` when it was read as UTF-8 text).

    Most lines start with `{` and are UTF-8: they are decoded once, parsed, and their text
    kept for `_compact_payload`. Any other line (blank, a byte-order mark, UTF-16, bytes that
    are not UTF-8) is parsed as `json.loads` would parse it, and answered the same way."""
    try:
        text = raw.decode("utf-8") if raw[:1] == b"{" else None
    except UnicodeDecodeError:
        text = None
    try:
        if text is None:
            if not raw.strip():
                raise InvalidLine(line_no, "empty line")
            return loads_bounded(raw, loads=_loads), None
        item = _loads(text)
        text_shape = shape(text)
        if text_shape[3] > JSON_DEPTH_MAX and nesting_exceeds(item, JSON_DEPTH_MAX):
            raise TooDeep
        return item, (raw, text, text_shape)
    except (TooDeep, RecursionError):
        _log.info("refused upload line %d: nested deeper than %d levels", line_no, JSON_DEPTH_MAX)
        raise InvalidLine(line_no, f"nested deeper than {JSON_DEPTH_MAX} levels") from None
    except (ValueError, UnicodeDecodeError):
        raise InvalidLine(line_no, "not valid JSON") from None


def _compact_payload(
    read: tuple[bytes, str, Shape] | None, item: dict[str, Any], payload: dict[str, Any]
) -> CompactJson | None:
    """The payload's own bytes when the whole line is in compact form, the payload an object
    of no objects, and no key repeated (the members counted in the text are those parsed);
    None otherwise, and the payload is encoded as the vault encodes a dict.

    The line's value is then `{` + its members + `}`, each `"key":value`, in the parsed
    order. Its fields besides the payload are strings (no quote in them: the text has no
    backslash) or null, so the payload's text starts after the first `"payload":` and ends
    where the members after it begin."""
    if read is None:
        return None
    raw, text, (compact, objects, members, _) = read
    if not (compact and objects == 2 and members == len(item) + len(payload)):
        return None
    tail = _payload_tail(item)
    start = text.index('"payload":') + len('"payload":')
    if len(raw) == len(text):  # ASCII: the bytes' offsets are the text's
        data = raw[start : len(raw) - tail]
    else:
        data = text[start : len(text) - tail].encode()
    # Holds by the reasoning above; checked all the same, as it costs nothing.
    if data[:1] != b"{" or data[-1:] != b"}":
        return None
    return CompactJson(data)


def _payload_tail(item: dict[str, Any]) -> int:
    """The length of a compact line after its payload's text: the members after the payload
    (`,"key":value`, each value a string with no escape, or null) and the closing brace."""
    if next(reversed(item)) == "payload":
        return 1
    tail = 1
    after = False
    for key, value in item.items():
        if after:
            tail += len(key) + 4 + (4 if value is None else len(value) + 2)
        after = after or key == "payload"
    return tail


def _csv_row(raw: bytes, line_no: int) -> list[str]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidLine(line_no, "not valid UTF-8") from None
    try:
        # One physical line is one row: a quoted newline would make line numbers lie.
        rows = list(csv.reader([text], strict=True))
    except csv.Error:
        raise InvalidLine(line_no, "not a valid CSV row (no quoted newlines)") from None
    return rows[0] if rows else []


def csv_records(lines: Iterable[tuple[int, bytes]]) -> Iterator[RecordIn]:
    """Line 1 names the columns: `subject_id` (required), `record_id` (optional), and the
    payload fields, whose values stay strings (CSV has no types; the vault adds none)."""
    it = iter(lines)
    first = next(it, None)
    if first is None:
        raise EmptyUpload("the body holds no header line")
    header = [name.strip() for name in _csv_row(first[1], 1)]
    if "subject_id" not in header:
        raise InvalidLine(1, "the header has no subject_id column")
    if len(set(header)) != len(header) or "" in header or "payload" in header:
        raise InvalidLine(1, "column names must be distinct, non-empty, and not 'payload'")
    if len(header) > CSV_COLUMNS_MAX:
        raise InvalidLine(1, f"more than {CSV_COLUMNS_MAX} columns")
    count = 0
    for line_no, raw in it:
        row = _csv_row(raw, line_no)
        if len(row) != len(header):
            raise InvalidLine(line_no, f"{len(row)} fields where the header has {len(header)}")
        values = dict(zip(header, row, strict=True))
        subject = _subject(values.pop("subject_id"), line_no)
        record_id = _record_id(values.pop("record_id", None), line_no)
        count += 1
        yield RecordIn(subject_id=subject, payload=values, record_id=record_id)
    if count == 0:
        raise EmptyUpload("the body holds no record")
