"""A consent's notice hash and the `recipients` query, on one ConsentApp (no network).

The notice is optional in the body (a chain from before it replays unchanged), kept with the
consent's version, carried into its revocation, and shown by the `consents` query; the
`recipients` query answers who received a subject's data, from the access record only.
"""

from __future__ import annotations

from typing import Any

import pytest

from ledger_bridge.contracts import bodies, queries
from tests.ledger_bridge.contracts.harness import DAY, Chain, Member, standard

NOTICE = b"\x07" * 32


def _consent(chain: Chain, s: Member, consumer: Member, purpose: str, **extra: Any) -> None:
    body = {
        "subject": s.subject,
        "consumer": consumer.pub,
        "purpose": purpose,
        "dataset": "d1",
        "valid_until": chain.time_ms + DAY,
        **extra,
    }
    chain.ok(s, "consent.grant", body)


@pytest.fixture()
def world() -> tuple[Chain, Member, Member]:
    chain, provider, consumer = standard()
    chain.dataset(provider, "d1")
    chain.dataset(provider, "d2")
    chain.anchor("d1", "u1", chain.time_ms // DAY + 10)
    chain.anchor("d2", "u2", chain.time_ms // DAY + 10)
    return chain, provider, consumer


def test_a_grant_keeps_its_notice_and_the_revocation_too(
    world: tuple[Chain, Member, Member],
) -> None:
    chain, _, consumer = world
    s = chain.subject()
    _consent(chain, s, consumer, "billing", notice=NOTICE)
    [shown] = chain.query(q="consents", subject=s.subject)
    assert shown["notice"] == NOTICE and shown["granted"]
    chain.ok(
        s,
        "consent.revoke",
        {"subject": s.subject, "consumer": consumer.pub, "purpose": "billing", "dataset": "d1"},
    )
    [revoked] = chain.query(q="consents", subject=s.subject)
    assert revoked["notice"] == NOTICE and not revoked["granted"]


def test_a_grant_without_notice_stays_valid_and_shows_none(
    world: tuple[Chain, Member, Member],
) -> None:
    """The shape of a chain written before notices: same version layout, same state."""
    chain, _, consumer = world
    s = chain.subject()
    _consent(chain, s, consumer, "billing")
    [shown] = chain.query(q="consents", subject=s.subject)
    assert shown["notice"] is None
    key = ("consent", s.subject, consumer.pub, "dataset:d1", "billing")
    assert len(chain.app.state.get(*key)["cur"]) == 5


def test_a_notice_is_a_32_byte_hash() -> None:
    body = {
        "subject": "ab" * 32,
        "consumer": b"\x01" * 32,
        "purpose": "billing",
        "dataset": "d1",
        "valid_until": 1,
    }
    bodies.check("consent.grant", {**body, "notice": NOTICE})
    with pytest.raises(bodies.BodyError, match="notice"):
        bodies.check("consent.grant", {**body, "notice": b"\x07" * 31})


def _access(chain: Chain, consumer: Member, s: Member, dataset: str, purpose: str) -> Any:
    body = {
        "consumer": consumer.pub,
        "dataset": dataset,
        "purpose": purpose,
        "subjects": [s.subject],
    }
    return chain.ok(consumer, "access.request", body)


def test_recipients_are_the_consumers_granted_the_subjects_data(
    world: tuple[Chain, Member, Member],
) -> None:
    chain, _, consumer = world
    s, other = chain.subject(), chain.subject()
    denied = chain.fresh("consumer", "services")
    chain.admit_by_vote(denied)
    _consent(chain, s, consumer, "billing")
    _consent(chain, other, consumer, "billing")
    first = _access(chain, consumer, s, "d1", "billing")
    second = _access(chain, consumer, s, "d1", "billing")
    assert first["granted"] == second["granted"] == [s.subject]
    _access(chain, denied, s, "d1", "billing")  # denied: no consent, so no recipient
    _access(chain, consumer, other, "d1", "billing")  # another subject's recipient
    rows = chain.query(q="recipients", subject=s.subject)
    assert rows == [
        {
            "dataset": "d1",
            "consumer": consumer.pub,
            "purposes": ["billing"],
            "heights": [chain.height - 3, chain.height - 2],
        }
    ]
    assert chain.query(q="recipients", subject=s.subject, dataset="d2") == []
    assert chain.query(q="recipients", subject=chain.subject().subject) == []


def test_recipients_needs_a_subject(world: tuple[Chain, Member, Member]) -> None:
    chain, _, _ = world
    with pytest.raises(ValueError, match="subject"):
        queries.answer(chain.app.state, {"q": "recipients"})
