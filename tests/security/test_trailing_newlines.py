"""Names and codes checked with patterns that end in `$`: in Python, `$` also matches before a
final newline, so "alice\n" would pass for a name apart from "alice" (a member, a pseudonym, a
district, a week), and a webhook URL could carry a line break into a request. Each is refused."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import pytest

from api.http.errors import InvalidLine
from api.http.streams import ndjson_body_records
from api.services import impact
from api.services.recipient_notices import InvalidWebhook, check_webhook_url
from ledger_bridge.contracts.app import GenesisInvalid, _found_purpose
from ledger_bridge.contracts.state import State
from vault.errors import InvalidRecord
from vault.uploads import LEDGER_SUBJECT_ID, SUBJECT_ID, RecordIn, _chunks


def test_a_webhook_url_ending_in_a_newline_is_refused() -> None:
    assert check_webhook_url("http://127.0.0.1:9/hook", allow_local=True)
    with pytest.raises(InvalidWebhook, match="printable"):
        check_webhook_url("http://127.0.0.1:9/hook\n", allow_local=True)


@pytest.mark.parametrize(("district", "week"), [("Centre\n", "2026-W01"), ("Centre", "2026-W01\n")])
def test_an_impact_record_with_a_newline_ending_its_place_or_week_is_left_out(
    district: str, week: str
) -> None:
    assert impact.record_of("d", "s", {"district": "Centre", "week": "2026-W01"}) is not None
    assert impact.record_of("d", "s", {"district": district, "week": week}) is None


def test_a_founding_purpose_ending_in_a_newline_is_refused() -> None:
    with pytest.raises(GenesisInvalid):
        _found_purpose(State(), "billing\n")


def _ndjson_line(subject_id: str) -> bytes:
    return (json.dumps({"subject_id": subject_id, "payload": {"ok": 1}}) + "\n").encode()


def test_an_upload_line_whose_subject_id_ends_in_a_newline_is_refused() -> None:
    """The API's reading of an NDJSON upload body, as the upload route calls it: "s1" is
    read, "s1\\n" refused on its line before anything reaches the vault."""
    [record] = ndjson_body_records([_ndjson_line("s1")], line_max_bytes=1024)
    assert record.subject_id == "s1"
    with pytest.raises(InvalidLine, match="subject_id") as refused:
        list(ndjson_body_records([_ndjson_line("s1\n")], line_max_bytes=1024))
    assert refused.value.line == 1


# How a record reaches the vault's uploader: as the API's streams make it, or as a map (the
# library's other callers). The first takes the run-at-once check of `_chunks`, the second
# `_coerce` record by record; both must refuse.
AS_RECORD: dict[str, Callable[[str], Any]] = {
    "RecordIn": lambda subject_id: RecordIn(subject_id, {"ok": 1}),
    "map": lambda subject_id: {"subject_id": subject_id, "payload": {"ok": 1}},
}


@pytest.mark.parametrize("form", list(AS_RECORD))
@pytest.mark.parametrize(
    ("subject_ids", "good"),
    [(SUBJECT_ID, "s1"), (LEDGER_SUBJECT_ID, "a" * 64)],
    ids=["pseudonym", "wallet-key"],
)
def test_the_vault_refuses_a_subject_id_ending_in_a_newline(
    form: str, subject_ids: re.Pattern[str], good: str
) -> None:
    """The vault's own check of every upload's records (`Uploader.upload` runs `_chunks`),
    with either pattern it is configured with: the id alone passes, the id and a newline is
    refused as the record it is."""
    make = AS_RECORD[form]
    [(first, [record])] = list(_chunks([make(good)], 10, subject_ids))
    assert (first, record.subject_id) == (1, good)
    with pytest.raises(InvalidRecord, match=r"^record 1: subject_id must be"):
        list(_chunks([make(good + "\n")], 10, subject_ids))
