"""Attacks on the impact dashboard's k-anonymity that the per-cell and per-dataset rules do not
stop (api/services/impact.py): pseudonyms the reader controls, and two views a consent apart.
Both are strict xfails: the defence (counting towards k only residents governance admitted to
voting, or noise on published sums) is a design decision, not a patch."""

from __future__ import annotations

import pytest

from api.services.impact import ImpactRecord, aggregate

K = 10
DATASET = "bikes"


def _ride(subject: str, km_milli: int) -> ImpactRecord:
    return ImpactRecord(DATASET, subject, "centre", "2026-W49", km=km_milli)


@pytest.mark.xfail(
    strict=True,
    reason="residents self-register: a reader with k-1 pseudonyms of its own (each consenting "
    "and with one certified ride) makes a cell of one real resident show, and subtracts its "
    "own known rides; only the certified events each pseudonym needs bound them "
    "(docs/SECURITY.md, Known limits)",
)
def test_k_minus_one_pseudonyms_of_the_reader_do_not_unlock_a_residents_cell() -> None:
    target_km = 42_195
    fakes = [_ride(f"fake-{i}", 1000) for i in range(K - 1)]
    table = aggregate([*fakes, _ride("resident", target_km)], K)
    [cell] = table.cells
    shown_km = None if cell.sums is None else round(cell.sums.km * 1000)
    # the attack: shown sum minus the reader's own rides is exactly the resident's distance
    assert shown_km is None or shown_km - (K - 1) * 1000 != target_km


@pytest.mark.xfail(
    strict=True,
    reason="two views of one cell, before and after one more resident consents, differ by "
    "exactly that resident's figures: the dashboard publishes exact sums on every view "
    "(docs/SECURITY.md, Known limits)",
)
def test_two_views_a_consent_apart_do_not_reveal_the_newcomer() -> None:
    crowd = [_ride(f"resident-{i}", 1000 + i) for i in range(K)]
    newcomer = _ride("newcomer", 7_300)
    before = aggregate(crowd, K).cells[0].sums
    after = aggregate([*crowd, newcomer], K).cells[0].sums
    assert before is not None and after is not None  # both views are k-anonymous on their own
    assert round((after.km - before.km) * 1000) != 7_300
