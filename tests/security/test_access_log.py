"""A caller's path and query string reach uvicorn's access log cut short, never in full."""

from __future__ import annotations

import logging

from api.http.errors import PATH_CHARS_MAX
from api.http.middleware import BoundedAccessLog, bound_access_log


def _record(path: str) -> logging.LogRecord:
    # The shape uvicorn's httptools and h11 protocols log with.
    return logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "GET", path, "1.1", 404),
        None,
    )


def test_a_60_kb_query_string_is_logged_cut_short() -> None:
    record = _record("/v1/datasets?" + "x" * 60_000)
    assert BoundedAccessLog().filter(record)
    line = record.getMessage()
    assert len(line) < PATH_CHARS_MAX + 100
    assert "(+" in line and line.endswith("404")


def test_a_short_path_is_logged_as_it_is() -> None:
    record = _record("/v1/datasets")
    BoundedAccessLog().filter(record)
    assert record.getMessage() == '127.0.0.1:5000 - "GET /v1/datasets HTTP/1.1" 404'


def test_the_filter_is_installed_once() -> None:
    bound_access_log()
    bound_access_log()
    filters = logging.getLogger("uvicorn.access").filters
    assert sum(isinstance(f, BoundedAccessLog) for f in filters) == 1


def test_a_subjects_pseudonym_never_reaches_the_access_log() -> None:
    """Nothing erases a log line when its subject is erased: a 64-hex key in the path or the
    query string (any case) is masked; shorter or longer hex runs (a UUID, a digest of
    another size) are not keys and stay."""
    key = "ab12" * 16
    for path in (
        f"/v1/subjects/{key}/export",
        f"/v1/erasures?subject_id={key.upper()}&limit=5",
        f"/v1/members/{key}",
    ):
        record = _record(path)
        BoundedAccessLog().filter(record)
        line = record.getMessage()
        assert key not in line.lower() and "<key>" in line, line
    kept = "/v1/datasets/6d45da9b-cf85-410c-9360-9dc2fbb810c8?h=" + "c" * 63
    record = _record(kept)
    BoundedAccessLog().filter(record)
    assert kept in record.getMessage()
