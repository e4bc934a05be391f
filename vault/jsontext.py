"""`json.loads` with its options bound once, for inputs parsed by the hundred thousand.

Why: `json.loads(data, parse_constant=...)` builds a new `JSONDecoder` (and its scanner) on
every call given any option, detects the encoding of bytes in Python, and matches whitespace
twice with regular expressions. For an upload of 1 KiB records that is more than the parse.
`Loads` builds the decoder once and sends the common case, UTF-8 text that starts with `{` and
ends where the object ends, straight to the decoder's C scanner. It returns what `json.loads`
returns and raises a `ValueError` (or `RecursionError`) wherever `json.loads` raises one;
the tests compare the two on generated inputs.
"""

from __future__ import annotations

import json
import json.scanner
from collections.abc import Callable, Sequence
from itertools import repeat
from operator import itemgetter
from typing import Any, TypeVar

# Outside strings, what the compact encoder never writes: whitespace, a fraction or an
# exponent (a float prints as Python's repr), minus zero (an int prints as 0). An `e` there is
# an exponent unless it ends `true` or `false`.
_NOT_COMPACT = frozenset(" \t\n\r.E")
_VALUE, _END = itemgetter(0), itemgetter(1)
_T = TypeVar("_T")
# Frames below its caller at which `Loads.values` scans: more than `Loads.__call__` adds
# between its caller and the scanner (two).
_DEPTH_MARGIN = 16


# What `shape` reads of parsed JSON text outside its strings: (compact: the compact encoder
# writes these very characters if no object repeats a key, objects and members (repeated keys
# included; both exact when compact), `{` and `[` (an upper bound of the nesting depth)). A
# plain tuple: this runs once per upload line, and a named tuple costs ten times as much.
Shape = tuple[bool, int, int, int]


def shape(text: str) -> Shape:
    """`Shape` of `text`, which `Loads` (or `json.loads`) has just parsed.

    Why: an upload over HTTP stores each payload as `json.dumps(value, separators=(",", ":"),
    ensure_ascii=False)` writes it, and encoding it again costs as much as parsing it. When
    the client sent that very form, its text is already what would be stored. Without a
    backslash, every `"` delimits a string and the encoder writes every string exactly as it
    was read (it escapes only `"`, `\\` and control characters, which the parser refuses
    raw); what lies between the strings is then all the encoder could write differently. A
    key repeated within an object is the one case it cannot see: the caller compares the
    members counted here with the members of the parsed objects."""
    if "\\" in text:
        return False, 0, 0, text.count("{") + text.count("[")
    outside = "".join(text.split('"')[::2])
    objects = outside.count("{")
    compact = (
        _NOT_COMPACT.isdisjoint(outside)
        and "-0" not in outside
        and ("e" not in outside or outside.count("e") == outside.count("ue") + outside.count("se"))
    )
    return compact, objects, outside.count(":"), objects + outside.count("[")


def _beneath(frames: int, call: Callable[[], _T]) -> _T:
    """`call()`, made `frames` Python frames below the caller of `_beneath`."""
    return call() if frames <= 0 else _beneath(frames - 1, call)


class Loads:
    """`json.loads(data, **options)` for one set of decoder options. Stateless between calls
    (as `json`'s own default decoder), so one instance serves every thread."""

    __slots__ = ("_decoder", "_scan")

    def __init__(self, **options: Any) -> None:
        self._decoder = json.JSONDecoder(**options)
        # typeshed types the C scanner factory as taking its own type; it takes the decoder.
        self._scan = json.scanner.make_scanner(self._decoder)  # type: ignore[arg-type]

    @property
    def scan_once(self) -> Callable[[str, int], tuple[Any, int]]:
        """The decoder's C scanner: `scan_once(text, index)` is (the value that starts at
        `index`, where it ends), with these options; `StopIteration` where no value starts,
        `ValueError` (or `RecursionError`) where one starts and is not JSON. No whitespace
        is skipped before the value or after it: for parsing many values in one text."""
        return self._scan

    def __call__(self, data: bytes | str) -> Any:
        if isinstance(data, str):
            if data.startswith("\ufeff"):
                raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", data, 0)
            return self._text(data)
        # `json.detect_encoding` answers UTF-8 for any input whose first two bytes are not NUL
        # and that starts with no byte-order mark, which a leading `{` is not.
        if data[:1] == b"{" and data[1:2] != b"\x00":
            return self._text(data.decode("utf-8", "surrogatepass"))
        return self._decoder.decode(data.decode(json.detect_encoding(data), "surrogatepass"))

    def all_objects(self, payloads: Sequence[bytes]) -> bool:
        """True when every one of `payloads` is UTF-8 text that is one JSON object and
        nothing else, which `self` parses to a dict; False when one may not be (call `self` on
        each to find which and why). False never means a payload is invalid: one that starts
        or ends with whitespace, or is not UTF-8 but valid JSON in another encoding, is left
        to `self`.

        Why: an upload checks hundreds of thousands of payloads, and calling `self` on each
        costs as much in dispatch as the parse (see `objects`)."""
        try:
            texts = list(map(str, payloads, repeat("utf-8"), repeat("surrogatepass")))
        except UnicodeDecodeError:
            return False
        return self.objects(texts) is not None

    def objects(self, texts: Sequence[str]) -> list[dict[str, Any]] | None:
        """The dict `self` parses from each of `texts` when every one is one JSON object and
        nothing else; None when one may not be (`self` on each says which and why)."""
        values = self.values(texts)
        if values is None:
            return None
        return values if set(map(type, values)) <= {dict} else None

    def values(self, texts: Sequence[str]) -> list[Any] | None:
        """What `self` parses from each of `texts` when every one starts with a JSON value
        that ends where the text ends; None when one may not (`self` on each says which and
        why). Made with `object_pairs_hook=list`, `self` gives each object as its list of
        (key, value) pairs, repeated keys included.

        Here the C scanner is mapped over the texts, with no Python frame per text; each scan
        is the one `self` makes of a text that starts with `{`.

        Why `_DEPTH_MARGIN` frames down: the scanner's depth limit is the interpreter's
        recursion limit, counted from the caller's stack (Python 3.11 counts Python frames
        and C recursion together). From the same caller, `self` scans a few frames deeper
        than the `map` here would, so a text nested near the limit could pass here and be
        refused there. Scanned further down, it is refused here first and left to `self`."""
        try:
            # Where no value starts, the scanner's StopIteration ends `map` early: the list is
            # then shorter than `texts`.
            parsed = _beneath(_DEPTH_MARGIN, lambda: list(map(self._scan, texts, repeat(0))))
        except (ValueError, RecursionError):
            return None
        if list(map(_END, parsed)) != list(map(len, texts)):
            return None
        return list(map(_VALUE, parsed))

    def _text(self, text: str) -> Any:
        """`JSONDecoder.decode(text)`: its whitespace passes skipped when there is none."""
        if text[:1] == "{":
            try:
                value, end = self._scan(text, 0)
            except StopIteration as stop:
                raise json.JSONDecodeError("Expecting value", text, stop.value) from None
            if end == len(text):
                return value
        return self._decoder.decode(text)
