"""An erasure everywhere forgets the subject: no state entry names them any more.

The attack: the DPO erases a subject P everywhere, and someone who holds a replica's state
(a snapshot, a state transfer, a stolen disk) looks for P. P's key is public to whoever dealt
with P (the vault, the consumers P consented to), so the look-up is by P's 32 raw bytes and
by its 64-character hex, in the snapshot's bytes. Before forgetting it found P everywhere:
the member entry is keyed by P's key, consents by P's hex, accesses list P, the erasure names
P. The control is a second subject Q with the same history, not erased: the same scan finds
Q, and Q's accesses still list Q, so a scan that finds nothing proves something.

The redaction entries must list exactly the batch positions of the transactions that named P
(checked against the blocks built here, including a block whose batch indices skip one, as
a replica's do for a request it executed before), and the forgetting must not reopen a door:
P's consent replayed within its validity is still refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from ledger_bridge.app import BlockContext, Redaction
from ledger_bridge.contracts import codec, tx
from ledger_bridge.contracts.app import ConsentApp
from tests.ledger_bridge.contracts.harness import CHAIN, DAY, Chain, Member, standard


def hits(snapshot: bytes, m: Member) -> int:
    """How often the snapshot holds `m`'s key, raw or as hex (ascii)."""
    return snapshot.count(m.pub) + snapshot.count(m.subject.encode())


@dataclass
class Story:
    """A chain where subjects P and Q did the same things, and where P's transactions are."""

    chain: Chain
    consumer: Member
    other: Member  # a consumer nobody consented to
    p: Member
    q: Member
    # (height, batch index) of every transaction that succeeded naming P
    p_positions: set[tuple[int, int]] = field(default_factory=set)

    def block(self, *signed: tuple[bytes, bool]) -> list[dict[str, Any]]:
        """One block of (tx, names P); positions of P's transactions that succeed are kept."""
        results = self.chain.block(*(raw for raw, _ in signed))
        for i, ((_, names_p), r) in enumerate(zip(signed, results, strict=True)):
            if names_p and r["ok"]:
                self.p_positions.add((self.chain.height, i))
        return results


def grant_body(s: Member, consumer: Member, **scope: Any) -> dict[str, Any]:
    return {
        "subject": s.subject,
        "consumer": consumer.pub,
        "purpose": "billing",
        "valid_until": 0,  # set by `grant`
        **(scope or {"dataset": "d1"}),
    }


def grant(chain: Chain, s: Member, consumer: Member, **scope: Any) -> bytes:
    body = {**grant_body(s, consumer, **scope), "valid_until": chain.time_ms + 10 * DAY}
    return chain.sign(s, "consent.grant", body)


def access(chain: Chain, consumer: Member, *subjects: Member) -> bytes:
    body: dict[str, Any] = {"consumer": consumer.pub, "dataset": "d1", "purpose": "billing"}
    body["subjects"] = [s.subject for s in subjects]
    return chain.sign(consumer, "access.request", body)


def erase_body(s: Member, dataset: str | None = None, **extra: Any) -> dict[str, Any]:
    scope: dict[str, Any] = {"kind": "subject", "subject": s.subject}
    if dataset is not None:
        scope["dataset"] = dataset
    return {
        "scope": scope,
        "key_commitments": [b"\x07" * 32],
        "uploads": [],
        "reason": "dpo_decision",
        "requester": "dpo",
        **extra,
    }


def story() -> Story:
    """P and Q register, consent, are asked for (granted, denied, openly), ask for erasure,
    are erased in one dataset; P is admitted to voting, votes, and is named by a proposal."""
    chain, provider, consumer = standard()
    chain.dataset(provider, "d1")
    chain.dataset(provider, "d2")
    other = chain.fresh("consumer", "services")
    chain.admit_by_vote(other)
    p, q = chain.fresh("subject", "citizens"), chain.fresh("subject", "citizens")
    st = Story(chain, consumer, other, p, q)
    reg = {"role": "subject", "college": "citizens"}
    st.block(
        (chain.sign(q, "member.register", reg), False),
        (chain.sign(p, "member.register", reg), True),
    )
    st.block(
        (grant(chain, q, consumer), False),
        (grant(chain, p, consumer), True),
        (grant(chain, p, consumer, category="energy"), True),
        (grant(chain, q, consumer, category="energy"), False),
    )
    open_access = chain.sign(
        consumer,
        "access.request",
        {"consumer": consumer.pub, "dataset": "d1", "purpose": "billing"},
    )
    results = st.block(
        (access(chain, consumer, q, p), True),
        (open_access, True),  # grants P: an open request names who it granted
        (access(chain, other, p, q), True),  # denies both
        (access(chain, consumer, q), False),
    )
    assert set(results[0]["granted"]) == {p.subject, q.subject}, results
    assert {d[0] for d in results[2]["denied"]} == {p.subject, q.subject}, results
    request = {"scope": {"kind": "subject", "subject": p.subject, "dataset": "d2"}}
    q_request = {"scope": {"kind": "subject", "subject": q.subject, "dataset": "d2"}}
    st.block(
        (chain.sign(p, "erasure.request", request), True),
        (chain.sign(q, "erasure.request", q_request), False),
    )
    st.block(
        (chain.sign(chain.dpo, "erasure.record", erase_body(q, "d2")), False),
        (chain.sign(chain.dpo, "erasure.record", erase_body(p, "d2", request=1)), True),
    )
    # governance naming P: admitted to voting, P votes on a purpose, a second admission stays open
    height = chain.height
    chain.admit_to_voting(p, consumer, other)
    st.p_positions.add((height + 1, 0))  # the proposal naming P (the votes name a proposal)
    pid = chain.ok(
        chain.vault,
        "governance.propose",
        {
            "action": {"kind": "approve_purpose", "purpose": "studies"},
            "voting_ends": chain.time_ms + DAY,
        },
    )["proposal"]
    st.block((chain.sign(p, "governance.vote", {"proposal": pid, "approve": True}), True))
    assert chain.query(q="colleges")[2]["voters"] >= 2
    return st


def forget_p(st: Story, request: int | None = None) -> dict[str, Any]:
    body = erase_body(st.p) if request is None else erase_body(st.p, request=request)
    [result] = st.block((st.chain.sign(st.chain.dpo, "erasure.record", body), True))
    assert result["ok"] and result["forgotten"], result
    return result


@pytest.fixture()
def told() -> Story:
    return story()


def test_forgetting_leaves_neither_the_raw_key_nor_its_hex_in_the_state(told: Story) -> None:
    chain, p, q = told.chain, told.p, told.q
    before = chain.app.snapshot()
    assert hits(before, p) > 10 and hits(before, q) > 10  # the scan finds a subject
    forget_p(told)
    after = chain.app.snapshot()
    assert hits(after, p) == 0
    assert hits(after, q) == hits(before, q)  # the control: Q is as present as before
    # and restoring it (a state transfer) brings nothing back
    fresh = ConsentApp(CHAIN)
    fresh.restore(after)
    assert fresh.state_root() == chain.app.state_root() and hits(fresh.snapshot(), p) == 0


def test_the_forgotten_subject_is_unknown_to_every_query(told: Story) -> None:
    chain, p, q, consumer = told.chain, told.p, told.q, told.consumer
    colleges_before = chain.query(q="colleges")
    result = forget_p(told)
    assert p.subject not in repr(result) and p.pub not in codec.encode(result)
    assert chain.query(q="member", key=p.pub) is None
    assert chain.query(q="consents", subject=p.subject) == []
    assert chain.query(q="accesses", subject=p.subject) == []
    assert chain.query(q="erasures", subject=p.subject) == []
    # Q is still found, and Q's accesses still list Q
    assert len(chain.query(q="consents", subject=q.subject)) == 2
    q_lines = chain.query(q="accesses", subject=q.subject)  # those that reached Q's data
    assert [a["granted"] for a in q_lines] == [[q.subject]] * 3
    [dataset_erasure] = chain.query(q="erasures", subject=q.subject)
    assert dataset_erasure["scope"]["dataset"] == "d2"
    # the consumers' log keeps every access, without P
    log = chain.query(q="accesses", consumer=consumer.pub)
    assert [a["granted"] for a in log] == [[q.subject]] * 3
    assert [a.get("forgotten") for a in log] == [1, 1, None]
    [denied] = chain.query(q="accesses", consumer=told.other.pub)
    assert denied["granted"] == [] and denied["denied_subjects"] == [q.subject]
    assert denied["denied"] == 1 and denied["forgotten"] == 1
    # the erasure keeps what proves it, and not whom
    erasures = chain.query(q="erasures")
    assert erasures[-1]["scope"] == {"kind": "subject"}
    assert erasures[-1]["key_commitments"] == [b"\x07" * 32]
    assert erasures[-1]["reason"] == "dpo_decision" and erasures[-1]["tx"] == result["tx"]
    assert erasures[-2]["scope"] == {"kind": "subject", "dataset": "d2"}  # P's, in d2
    # counts stay consistent: one member and one voter fewer in the citizens' college
    colleges = chain.query(q="colleges")
    citizens = next(c for c in colleges if c["college"] == "citizens")
    citizens_before = next(c for c in colleges_before if c["college"] == "citizens")
    assert citizens["members"] == citizens_before["members"] - 1
    assert citizens["voters"] == citizens_before["voters"] - 1
    # the governance record keeps the decisions, not P
    proposals = chain.query(q="proposals")
    assert all(p.pub != pr["action"].get("member") for pr in proposals)


def test_an_access_filed_under_the_subjects_key_loses_that_reference(told: Story) -> None:
    """A consumer's own reference is free text: filed under P's key (in capitals, even), the
    access names P without naming P as a subject."""
    chain, p, q, consumer = told.chain, told.p, told.q, told.consumer
    body = {"consumer": consumer.pub, "dataset": "d1", "purpose": "billing"}
    body |= {"subjects": [q.subject], "reference": p.subject.upper()}
    [r] = told.block((chain.sign(consumer, "access.request", body), True))
    forget_p(told)
    snapshot = chain.app.snapshot()
    assert hits(snapshot, p) == 0 and p.subject.upper().encode() not in snapshot
    entry = chain.query(q="access", access=r["access"])
    assert entry["reference"] is None and entry["granted"] == [q.subject]
    assert "forgotten" not in entry  # P was not among its subjects
    assert (chain.height - 1, 0) in {(e.height, e.index) for e in chain.app.redactions(0, 100)}


def test_the_subjects_open_request_is_fulfilled_and_names_nobody(told: Story) -> None:
    chain, p = told.chain, told.p
    request = {"scope": {"kind": "subject", "subject": p.subject}}
    [r] = told.block((chain.sign(p, "erasure.request", request), True))
    q_request = 2  # Q's, in d2, still open
    assert [x["request"] for x in chain.query(q="erasure_requests")] == [q_request, r["request"]]
    forget_p(told, request=r["request"])
    assert [x["request"] for x in chain.query(q="erasure_requests")] == [q_request]
    assert chain.query(q="erasure_requests")[0]["scope"]["subject"] == told.q.subject
    assert hits(chain.app.snapshot(), p) == 0


def test_an_open_proposal_naming_the_subject_is_withdrawn() -> None:
    chain, _, _ = standard()
    p = chain.subject()
    pid = chain.ok(
        chain.vault,
        "governance.propose",
        {"action": {"kind": "admit_voter", "member": p.pub}, "voting_ends": chain.time_ms + DAY},
    )["proposal"]
    assert chain.ok(chain.dpo, "erasure.record", erase_body(p))["forgotten"]
    proposal = chain.query(q="proposal", proposal=pid)
    assert proposal["status"] == "withdrawn" and proposal["action"] == {"kind": "admit_voter"}
    assert (
        chain.one(chain.vault, "governance.vote", {"proposal": pid, "approve": True})["code"]
        == "closed"
    )
    assert hits(chain.app.snapshot(), p) == 0


def test_redactions_list_exactly_the_positions_of_the_subjects_transactions(told: Story) -> None:
    chain = told.chain
    forget_p(told)
    app = chain.app
    entries = app.redactions(0, 1000)
    assert [e.n for e in entries] == list(range(1, len(entries) + 1))
    assert all(e.since == chain.height for e in entries)
    assert {(e.height, e.index) for e in entries} == told.p_positions
    assert len(entries) == len(told.p_positions)  # each position once
    # paged as the replica reads them, and by height as it redacts a peer's block
    assert app.redactions(2, 3) == entries[2:5]
    assert app.redactions(len(entries), 10) == []
    for h in range(1, chain.height + 1):
        assert app.redacted_at(h) == frozenset(i for hh, i in told.p_positions if hh == h)
    # the auditors' query says the same
    answer = chain.query(q="redactions", after=0, limit=1000)
    assert [(r["height"], r["index"], r["since"]) for r in answer] == [
        (e.height, e.index, e.since) for e in entries
    ]


def test_batch_positions_come_from_the_block_context() -> None:
    """A replica hands `execute` the requests it has not executed before, with their batch
    indices: the redaction names the batch index, not the index in the list."""
    chain, _, _ = standard()
    p = chain.fresh("subject", "citizens")
    register = chain.sign(p, "member.register", {"role": "subject", "college": "citizens"})
    chain.height += 1
    chain.time_ms += 1000
    ctx = BlockContext(chain.height, chain.time_ms, b"\x00" * 32, positions=(1, 3))
    other = chain.sign(
        chain.fresh("subject", "citizens"),
        "member.register",
        {"role": "subject", "college": "citizens"},
    )
    results, _ = chain.app.execute([other, register], ctx)
    assert all(codec.decode(r)["ok"] for r in results)
    height = chain.height
    assert chain.ok(chain.dpo, "erasure.record", erase_body(p))["forgotten"]
    assert chain.app.redactions(0, 10) == [
        Redaction(1, height, 3, chain.height),
        Redaction(2, chain.height, 0, chain.height),
    ]


def test_the_same_block_is_forgotten_whatever_the_order(told: Story) -> None:
    """Before the erasure in its block, an access decides as the previous block left things
    (the "from the next block" rule) and is forgotten with the rest: its entry keeps Q, not
    P, and its position is redacted, as is a registration of P's key later in that block.
    After the erasure, P is no member: an access naming P is refused whole, so its body,
    which names P, never enters the block (only its digest does)."""
    chain, p, q, consumer = told.chain, told.p, told.q, told.consumer
    reg = chain.sign(p, "member.register", {"role": "subject", "college": "citizens"})
    results = told.block(
        (access(chain, consumer, p, q), True),
        (chain.sign(chain.dpo, "erasure.record", erase_body(p)), True),
        (access(chain, consumer, p, q), False),
        (reg, True),
        (access(chain, consumer, q), False),
    )
    assert set(results[0]["granted"]) == {p.subject, q.subject}
    assert results[2]["ok"] is False and results[2]["code"] == "unknown_subject"
    assert results[3]["ok"] and results[4]["granted"] == [q.subject]
    assert hits(chain.app.snapshot(), p) == 0
    assert chain.query(q="member", key=p.pub) is None
    assert {(e.height, e.index) for e in chain.app.redactions(0, 1000)} == told.p_positions
    # From the next block, a consumer who kept P's key cannot make the ledger name it again.
    [later] = chain.block(access(chain, consumer, p, q))
    assert later["ok"] is False and later["code"] == "unknown_subject"
    assert hits(chain.app.snapshot(), p) == 0


def test_a_replayed_consent_of_the_forgotten_subject_is_refused(told: Story) -> None:
    chain, p, consumer = told.chain, told.p, told.consumer
    consent = grant(chain, p, consumer, dataset="d2")
    assert told.block((consent, True))[0]["ok"]
    forget_p(told)
    # replayed within its validity, before and after P's key registers again
    assert chain.block(consent)[0]["code"] == "replayed"
    assert chain.ok(p, "member.register", {"role": "subject", "college": "citizens"})
    assert chain.block(consent)[0]["code"] == "replayed"
    signed = tx.decode(consent)
    spent = chain.query(q="nonce", author=p.pub, nonce=signed.nonce)
    assert spent["tx"] == signed.tx_id
    # and its nonce entry goes once its validity has passed, like any other
    chain.time_ms = signed.valid_until + 120_000
    chain.block()
    assert chain.query(q="nonce", author=p.pub, nonce=signed.nonce) is None


def test_registering_again_is_a_new_relationship_with_no_consent(told: Story) -> None:
    chain, p, consumer = told.chain, told.p, told.consumer
    forget_p(told)
    assert chain.ok(p, "member.register", {"role": "subject", "college": "citizens"})
    member = chain.query(q="member", key=p.pub)
    assert member["status"] == "active" and member["votes_since"] is None
    assert chain.query(q="consents", subject=p.subject) == []
    assert chain.block(access(chain, consumer, p))[0]["denied"] == [[p.subject, "no_consent"]]
    # a consent it gives now is a new one, in force from the next block
    chain.block(grant(chain, p, consumer))
    assert chain.block(access(chain, consumer, p))[0]["granted"] == [p.subject]


def test_an_erasure_in_one_dataset_keeps_the_subject_known(told: Story) -> None:
    chain, q, consumer = told.chain, told.q, told.consumer
    [r] = chain.block(chain.sign(chain.dpo, "erasure.record", erase_body(q, "d1")))
    assert r["ok"] and "forgotten" not in r
    assert chain.query(q="member", key=q.pub)["status"] == "active"
    assert chain.block(access(chain, consumer, q))[0]["denied"] == [[q.subject, "erased"]]
    assert len(chain.query(q="erasures", subject=q.subject)) == 2
    assert chain.app.redactions(0, 10) == []


def test_only_a_subjects_key_is_forgotten(told: Story) -> None:
    chain, consumer = told.chain, told.consumer
    for key in (consumer, chain.vault):
        [r] = chain.block(chain.sign(chain.dpo, "erasure.record", erase_body(key)))
        assert r["code"] == "invalid", r
    assert chain.query(q="member", key=consumer.pub)["status"] == "active"
