"""`read.record` (the vault's decryptions, in batches) and the `recipients` query (whom to tell
of an erasure, GDPR Art. 17(2) and 19): attacks first, each refused with the state unchanged."""

from __future__ import annotations

from typing import Any

import pytest

from tests.ledger_bridge.contracts.harness import Chain, Member
from tests.ledger_bridge.contracts.test_rules import access, assert_refused_unchanged, grant, world

__all__ = ["world"]  # the fixture this module shares with test_rules.py

ROOT = b"\x42" * 32


def _batch(root: bytes = ROOT, count: int = 3) -> dict[str, Any]:
    return {"reads_root": root, "count": count}


def test_only_the_vault_records_reads(world: tuple[Chain, Member, Member]) -> None:
    chain, provider, consumer = world
    for who in (provider, consumer, chain.dpo, chain.validators[0]):
        assert_refused_unchanged(chain, chain.sign(who, "read.record", _batch()), "unauthorized")
    assert chain.query(q="read_record", reads_root=ROOT) is None


def test_a_batch_is_recorded_once_and_names_nobody(world: tuple[Chain, Member, Member]) -> None:
    chain, _, _ = world
    result = chain.ok(chain.vault, "read.record", _batch())
    assert result["count"] == 3
    entry = chain.query(q="read_record", reads_root=ROOT)
    assert entry["count"] == 3 and entry["height"] == chain.height and entry["tx"] == result["tx"]
    assert set(entry) == {"count", "height", "time", "tx"}
    # the same root again, under a fresh nonce: a replay of the batch, refused
    assert_refused_unchanged(chain, chain.sign(chain.vault, "read.record", _batch()), "duplicate")


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({"reads_root": b"\x01" * 31, "count": 1}, "reads_root"),
        ({"reads_root": ROOT, "count": 0}, "count"),
        ({"reads_root": ROOT, "count": 1, "subject": "ab" * 32}, "unknown"),
        ({"count": 1}, "reads_root"),
    ],
)
def test_a_batch_of_the_wrong_shape_is_refused(
    world: tuple[Chain, Member, Member], body: dict[str, Any], path: str
) -> None:
    chain, _, _ = world
    raw = chain.sign(chain.vault, "read.record", body)
    result = chain.block(raw)[0]
    assert result["code"] == "invalid" and path in result["message"], result


def test_recipients_are_the_consumers_granted_the_subject_in_that_dataset(
    world: tuple[Chain, Member, Member],
) -> None:
    chain, provider, consumer = world
    other = chain.fresh("consumer", "services")
    chain.admit_by_vote(other)
    chain.dataset(provider, "d2")
    s, bystander = chain.subject(), chain.subject()
    chain.block(grant(chain, s, consumer), grant(chain, bystander, other))
    first = chain.block(access(chain, consumer, [s]))[0]
    again = chain.block(access(chain, consumer, [s]))[0]
    chain.block(access(chain, other, [bystander]), access(chain, other, [s]))  # s: no consent
    assert first["granted"] == again["granted"] == [s.subject]

    found = chain.query(q="recipients", subject=s.subject, dataset="d1")
    assert found == [
        {
            "dataset": "d1",
            "consumer": consumer.pub,
            "purposes": ["billing"],
            "heights": [chain.height - 2, chain.height - 1],
        }
    ]
    assert chain.query(q="recipients", subject=s.subject, dataset="d2") == []
    assert chain.query(q="recipients", subject=bystander.subject, dataset="d1") == [
        {"dataset": "d1", "consumer": other.pub, "purposes": ["billing"], "heights": [chain.height]}
    ]


def test_recipients_are_forgotten_with_the_subject(world: tuple[Chain, Member, Member]) -> None:
    """An erasure everywhere takes the subject out of every access: ask before it commits."""
    chain, _, consumer = world
    s = chain.subject()
    chain.block(grant(chain, s, consumer))
    chain.block(access(chain, consumer, [s]))
    assert chain.query(q="recipients", subject=s.subject, dataset="d1")
    body = {
        "scope": {"kind": "subject", "subject": s.subject},
        "key_commitments": [b"\x07" * 32],
        "uploads": [],
        "reason": "dpo_decision",
        "requester": "dpo",
    }
    chain.ok(chain.dpo, "erasure.record", body)
    assert chain.query(q="recipients", subject=s.subject, dataset="d1") == []


def test_recipients_needs_a_subject(world: tuple[Chain, Member, Member]) -> None:
    chain, _, _ = world
    with pytest.raises(ValueError, match="recipients needs"):
        chain.app.query(b"\x81\xa1q\xaarecipients")  # {"q": "recipients"}
