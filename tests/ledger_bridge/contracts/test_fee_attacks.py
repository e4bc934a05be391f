"""Paid access as an attacker sees it: what an answer costs must not depend on how the consumer
words a request that discloses the same records."""

from __future__ import annotations

from tests.ledger_bridge.contracts.test_fees import World, balance, world

__all__ = ["world"]  # the fixture, imported for this module's tests


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
    # the projection owes full's price, the only one set: named, it is granted and charged
    [r] = chain.block(chain.sign(consumer, "access.request", {**body, "price_cents": 333}))
    assert r["ok"] and r["granted"] == [subject.subject], r
    assert balance(chain, consumer) == before - 333
