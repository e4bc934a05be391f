"""CSV for the DPO's exports, safe to open in a spreadsheet.

Why escape: a cell that starts with `=`, `+`, `-`, `@` (or a tab, a carriage return or a line
feed, which some spreadsheets skip before reading a formula) is run as a formula when the file
is opened: a dataset name, a notice or an incident title written by someone else would then
compute, fetch a URL or run a command on the DPO's machine (CSV injection, CWE-1236). Such a
text cell is written with a leading apostrophe, which spreadsheets show as text and hide;
numbers are written as numbers. Quoting (RFC 4180) keeps commas, quotes and newlines inside
their cell.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Iterable, Sequence
from typing import Any

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "\n")
MEDIA_TYPE = "text/csv; charset=utf-8"


def cell(value: Any) -> str | int | float:
    """One value as a CSV cell: None empty, a number as is, a time in ISO 8601, any other
    value as text, defused when a spreadsheet would read it as a formula."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return value
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    text = str(value)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def to_csv(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A whole CSV document: the header, then one line per row, every cell through `cell`."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow([cell(h) for h in header])
    for row in rows:
        writer.writerow([cell(v) for v in row])
    return out.getvalue()
