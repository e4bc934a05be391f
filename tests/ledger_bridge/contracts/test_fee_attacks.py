"""Paid access as an attacker sees it: what an answer costs must not depend on how the consumer
words a request that discloses the same records."""

from __future__ import annotations

import pytest

from tests.ledger_bridge.contracts.test_fees import World, balance, world

__all__ = ["world"]  # the fixture, imported for this module's tests


@pytest.mark.xfail(
    strict=True,
    reason="a price is per disclosure mode, and under a purpose whose widest mode is `full` "
    "(billing) a projection may name any field: priced for full answers only, the dataset "
    "answers the same records as a projection of every field for free. Which price a "
    "projection under a full purpose owes (full's, or a price per mode the provider must set "
    "explicitly, 0 included) is a pricing decision left to the lead.",
)
def test_a_projection_of_every_field_costs_what_the_full_answer_costs(world: World) -> None:
    chain, _, consumer, subject = world  # d1 priced 333 cents per full answer
    body = {
        "consumer": consumer.pub,
        "dataset": "d1",
        "purpose": "billing",
        "subjects": [subject.subject],
        "fields": ["amount", "customer", "period", "meter", "address"],  # whatever records hold
    }
    [r] = chain.block(chain.sign(consumer, "access.request", body))
    before = 1000
    # the attack: granted the records, and nothing paid
    assert not (
        r["ok"] and r["granted"] == [subject.subject] and balance(chain, consumer) == before
    )
