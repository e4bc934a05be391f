"""The register's deadlines (GDPR Art. 12(3)): one calendar month after receipt, three when
extended, counted as Regulation 1182/71 counts months (api/services/requests.py).

Examples first, the cases people get wrong (the 31st, February, leap years, December), then
the properties over any instant hypothesis finds. Last, how a rectification request the
contracts list becomes a register request.
"""

from __future__ import annotations

import calendar
import datetime as dt
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from api.services.requests import add_months, due_for, extended_due, rectification_entry


def _at(y: int, m: int, d: int, h: int = 10, minute: int = 30) -> dt.datetime:
    return dt.datetime(y, m, d, h, minute, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("received", "due"),
    [
        (_at(2027, 1, 31), _at(2027, 2, 28)),  # February has no 31st: its last day
        (_at(2028, 1, 31), _at(2028, 2, 29)),  # ... in a leap year, the 29th
        (_at(2028, 1, 29), _at(2028, 2, 29)),
        (_at(2027, 1, 29), _at(2027, 2, 28)),
        (_at(2027, 3, 15), _at(2027, 4, 15)),  # the same date next month
        (_at(2027, 3, 31), _at(2027, 4, 30)),
        (_at(2027, 12, 31), _at(2028, 1, 31)),  # over the year's end
        (_at(2027, 2, 28), _at(2027, 3, 28)),  # not "the end of the month": the same date
    ],
)
def test_one_calendar_month(received: dt.datetime, due: dt.datetime) -> None:
    assert due_for(received) == due


def test_an_extension_makes_three_months_from_receipt_not_two_after_the_first_deadline() -> None:
    received = _at(2027, 1, 31)
    assert due_for(received) == _at(2027, 2, 28)
    assert extended_due(received) == _at(2027, 4, 30)
    # chaining would lose two days: 31 January -> 28 February -> 28 April
    assert add_months(due_for(received), 2) == _at(2027, 4, 28)


def test_the_days_are_the_controllers() -> None:
    """31 January 00:30 in Paris is still 30 January in UTC: counted in UTC days the request
    would be due on 28 February 23:30 UTC, half an hour after Paris's 28 February ended."""
    paris = ZoneInfo("Europe/Paris")
    received = dt.datetime(2027, 1, 31, 0, 30, tzinfo=paris)
    assert due_for(received, paris) == dt.datetime(2027, 2, 28, 0, 30, tzinfo=paris)
    assert due_for(received) > dt.datetime(2027, 2, 28, 23, 59, 59, tzinfo=paris)  # too late
    # across a change to summer time: the same wall-clock time, one hour less in UTC
    march = dt.datetime(2027, 3, 15, 9, 0, tzinfo=paris)
    assert due_for(march, paris) == dt.datetime(2027, 4, 15, 9, 0, tzinfo=paris)
    assert due_for(march, paris) - march == dt.timedelta(days=31, hours=-1)


instants = st.datetimes(
    min_value=dt.datetime(1970, 1, 1),
    max_value=dt.datetime(9000, 12, 31),
    timezones=st.just(dt.UTC),
)


@given(instants)
def test_due_is_the_same_date_next_month_or_its_last_day(received: dt.datetime) -> None:
    due = due_for(received)
    months = (due.year - received.year) * 12 + due.month - received.month
    assert months == 1
    last = calendar.monthrange(due.year, due.month)[1]
    assert due.day == min(received.day, last)
    assert due.time() == received.time() and due.tzinfo == received.tzinfo
    assert dt.timedelta(days=28) <= due - received <= dt.timedelta(days=31)


ZONES = [
    "UTC",
    "Europe/Paris",
    "Europe/Helsinki",
    "Atlantic/Azores",
    "America/Cayenne",
    "Indian/Reunion",
]


@given(instants, st.sampled_from(ZONES))
def test_due_is_never_after_the_end_of_the_legal_day_where_the_controller_is(
    received: dt.datetime, zone_name: str
) -> None:
    """Reg. 1182/71 Art. 3(2)(c) in the controller's days: the period ends at the end of the
    day of the next month with the receipt's date (or that month's last day)."""
    zone = ZoneInfo(zone_name)
    local = received.astimezone(zone)
    year, month = (local.year, local.month + 1) if local.month < 12 else (local.year + 1, 1)
    legal_day = dt.date(year, month, min(local.day, calendar.monthrange(year, month)[1]))
    due = due_for(received, zone)
    assert due.astimezone(zone).date() == legal_day
    end_of_legal_day = dt.datetime.combine(legal_day + dt.timedelta(days=1), dt.time(), zone)
    assert received < due < end_of_legal_day
    assert due.tzinfo == dt.UTC


@given(instants, instants)
def test_a_later_receipt_is_never_due_earlier(a: dt.datetime, b: dt.datetime) -> None:
    first, second = sorted((a, b))
    assert due_for(first) <= due_for(second)
    assert extended_due(first) <= extended_due(second)


@given(instants)
def test_an_extension_adds_two_months_and_never_less(received: dt.datetime) -> None:
    extended = extended_due(received)
    months = (extended.year - received.year) * 12 + extended.month - received.month
    assert months == 3
    assert extended >= add_months(due_for(received), 2)
    assert dt.timedelta(days=89) <= extended - received <= dt.timedelta(days=92)


@given(instants, st.integers(min_value=0, max_value=240))
def test_adding_months_agrees_with_counting_them(received: dt.datetime, n: int) -> None:
    moved = add_months(received, n)
    assert (moved.year * 12 + moved.month) - (received.year * 12 + received.month) == n
    assert moved.day <= received.day
    if received.day <= 28:
        assert moved.day == received.day


def test_an_open_rectification_request_on_the_ledger_becomes_a_register_request() -> None:
    subject = bytes(range(32))
    entry = {
        "request": 7,
        "subject": subject,
        "dataset": "0b5c4a3e-8f7e-4d1e-9d0b-2f6a1c3e5d70",
        "record": "r-1",
        "statement_hash": b"\x01" * 32,
        "height": 12,
        "time": 1_800_000_000_000,
        "status": "open",
    }
    found = rectification_entry(entry)
    assert found is not None
    assert (found.kind, found.request, found.subject) == ("rectification", 7, subject.hex())
    assert (found.dataset, found.height, found.time_ms) == (entry["dataset"], 12, entry["time"])
    assert rectification_entry({**entry, "status": "done"}) is None
    assert rectification_entry({k: v for k, v in entry.items() if k != "subject"}) is None
