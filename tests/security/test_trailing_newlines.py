"""Names and codes checked with patterns that end in `$`: in Python, `$` also matches before a
final newline, so "alice\n" would pass for a name apart from "alice" (a member, a pseudonym, a
district, a week), and a webhook URL could carry a line break into a request. Each is refused."""

from __future__ import annotations

import pytest

from api.services import impact
from api.services.recipient_notices import InvalidWebhook, check_webhook_url
from ledger_bridge.contracts.app import GenesisInvalid, _found_purpose
from ledger_bridge.contracts.state import State
from vault.uploads import LEDGER_SUBJECT_ID, SUBJECT_ID


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


def test_the_subject_id_patterns_are_checked_whole() -> None:
    assert SUBJECT_ID.match("s1\n") is not None  # the reason every check uses fullmatch
    assert SUBJECT_ID.fullmatch("s1\n") is None
    assert LEDGER_SUBJECT_ID.fullmatch("a" * 64 + "\n") is None
