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
from typing import Any


class Loads:
    """`json.loads(data, **options)` for one set of decoder options. Stateless between calls
    (as `json`'s own default decoder), so one instance serves every thread."""

    __slots__ = ("_decoder", "_scan")

    def __init__(self, **options: Any) -> None:
        self._decoder = json.JSONDecoder(**options)
        # typeshed types the C scanner factory as taking its own type; it takes the decoder.
        self._scan = json.scanner.make_scanner(self._decoder)  # type: ignore[arg-type]

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
