"""Sybil attacks on governance: a key anyone can mint must weigh nothing in a vote.

A resident joins the cooperative with a key of their own making and is an active member at
once (the white paper: "l'ajout d'associés sera systématique lorsque la personne physique est
résidente"). Nothing on the ledger tells one person's key from a thousand keys of one
attacker, so such a key may consent, erase and read its own data, but it neither votes nor
counts in its college's majority until the cooperative admits it to voting (`admit_voter`,
docs/CONTRACTS.md "Governance").

The cooperative here has eleven honest voting members: the six founders of `Chain.new()` and
five legal entities admitted by vote, among them a citizens' association in the citizens
college. An attacker registers fresh resident keys and tries to block, reject, flood or open
proposals with them.
"""

from __future__ import annotations

import time
from typing import Any

from tests.api.conftest import api_settings  # noqa: F401  (fixture of ledger_env)
from tests.api.ledger_env import (  # noqa: F401  (fixtures)
    DAY_MS,
    LedgerEnv,
    Wallet,
    ledger_cluster,
    ledger_database_url,
    ledger_env,
)
from tests.api.test_consented_access import register_subject, signed
from tests.ledger_bridge.contracts.harness import DAY, Chain, Member

PURPOSE = {"kind": "approve_purpose", "purpose": "air-quality-study"}


def propose(chain: Chain, author: Member, action: dict[str, Any]) -> dict[str, Any]:
    body = {"action": action, "voting_ends": chain.time_ms + DAY}
    return chain.one(author, "governance.propose", body)


def vote(chain: Chain, voter: Member, pid: int, approve: bool = True) -> dict[str, Any]:
    return chain.one(voter, "governance.vote", {"proposal": pid, "approve": approve})


def decide(chain: Chain, pid: int, voters: list[Member], approve: bool = True) -> str:
    """Every voter in turn votes `approve`, until the proposal is decided; its status."""
    status = "open"
    for voter in voters:
        result = vote(chain, voter, pid, approve)
        assert result["ok"], result
        status = result["status"]
        if status != "open":
            break
    return status


def cooperative() -> tuple[Chain, list[Member]]:
    """A chain and its eleven honest voting members."""
    chain = Chain.new()
    v = chain.validators
    honest = [chain.vault, v[0], v[3], chain.dpo, v[1], v[2]]
    for role, college in [
        ("provider", "providers"),
        ("consumer", "services"),
        ("consumer", "citizens"),  # a citizens' association: a legal entity, admitted by vote
        ("provider", "providers"),
        ("consumer", "services"),
    ]:
        entity = chain.fresh(role, college)
        chain.ok(entity, "member.register", {"role": role, "college": college})
        pid = propose(chain, chain.dpo, {"kind": "admit_member", "member": entity.pub})["proposal"]
        assert decide(chain, pid, honest) == "passed"
        honest.append(entity)
    assert len(honest) == 11
    return chain, honest


def sybils(chain: Chain, n: int) -> list[Member]:
    keys = [chain.subject() for _ in range(n)]
    for s in keys:  # residents are members at once: registration is not what the attack abuses
        assert chain.query(q="member", key=s.pub)["status"] == "active"
    return keys


def test_fresh_resident_keys_cannot_hold_a_decision_open() -> None:
    chain, honest = cooperative()
    sybils(chain, 4)
    pid = propose(chain, chain.vault, PURPOSE)["proposal"]
    assert decide(chain, pid, honest) == "passed"
    assert "air-quality-study" in chain.query(q="status")["purposes"]


def test_fresh_resident_keys_cannot_reject_a_decision() -> None:
    chain, honest = cooperative()
    attackers = sybils(chain, 4)
    pid = propose(chain, chain.vault, PURPOSE)["proposal"]
    for s in attackers:
        assert vote(chain, s, pid, approve=False).get("code") == "not_eligible"
    proposal = chain.query(q="proposal", proposal=pid)
    assert proposal["status"] == "open"
    assert proposal["no"]["citizens"] == 0
    assert decide(chain, pid, honest) == "passed"


def test_a_flood_of_resident_keys_leaves_the_counted_members_unchanged() -> None:
    chain, _ = cooperative()
    sybils(chain, 40)
    pid = propose(chain, chain.vault, PURPOSE)["proposal"]
    members = chain.query(q="proposal", proposal=pid)["members"]
    assert members == {"providers": 5, "services": 4, "citizens": 2}
    status = chain.query(q="status")
    assert status["colleges"]["citizens"] == 42  # members: residents do belong to the college
    assert status["voters"]["citizens"] == 2


def test_fresh_resident_keys_cannot_open_proposals() -> None:
    chain, _ = cooperative()
    (attacker,) = sybils(chain, 1)
    before = chain.query(q="proposals", limit=1000)
    assert propose(chain, attacker, PURPOSE).get("code") == "not_eligible"
    assert chain.query(q="proposals", limit=1000) == before


def test_residents_admitted_to_voting_by_the_cooperative_vote_and_count() -> None:
    chain, honest = cooperative()
    alice, bob, late = sybils(chain, 3)
    for resident in (alice, bob):
        admit = {"kind": "admit_voter", "member": resident.pub}
        pid = propose(chain, chain.dpo, admit)["proposal"]
        assert decide(chain, pid, honest) == "passed"
    assert chain.query(q="status")["voters"]["citizens"] == 4

    # residents admitted to voting weigh like any voter: two of four citizens reject
    pid = propose(chain, alice, PURPOSE)["proposal"]
    assert chain.query(q="proposal", proposal=pid)["members"]["citizens"] == 4
    assert vote(chain, alice, pid, approve=False)["status"] == "open"
    # a resident admitted to voting while a proposal is open does not vote on it
    decided = propose(chain, chain.dpo, {"kind": "admit_voter", "member": late.pub})
    assert decide(chain, decided["proposal"], [*honest, alice, bob]) == "passed"
    assert vote(chain, late, pid, approve=False)["code"] == "not_eligible"
    assert vote(chain, bob, pid, approve=False)["status"] == "rejected"


def test_only_residents_without_a_vote_can_be_admitted_to_voting() -> None:
    chain, honest = cooperative()
    (resident,) = sybils(chain, 1)
    pending = chain.fresh("provider", "providers")
    chain.ok(pending, "member.register", {"role": "provider", "college": "providers"})
    stranger = chain.fresh("subject", "citizens")
    for who in (pending, honest[5], stranger):  # a legal entity, a founder, a stranger
        result = propose(chain, chain.dpo, {"kind": "admit_voter", "member": who.pub})
        assert result.get("code") == "not_found", result
    assert propose(chain, chain.dpo, {"kind": "admit_voter", "member": "me"})["code"] == "invalid"

    first = propose(chain, chain.dpo, {"kind": "admit_voter", "member": resident.pub})
    second = propose(chain, chain.dpo, {"kind": "admit_voter", "member": resident.pub})
    assert decide(chain, first["proposal"], honest) == "passed"
    # the second proposal has nothing left to give: it passes and the count stays right
    assert decide(chain, second["proposal"], honest) == "passed"
    assert chain.query(q="status")["voters"]["citizens"] == 3
    result = propose(chain, chain.dpo, {"kind": "admit_voter", "member": resident.pub})
    assert result.get("code") == "not_found", result


def test_over_http_fresh_resident_keys_are_refused_a_vote_and_the_honest_majority_decides(
    ledger_env: LedgerEnv,  # noqa: F811  (the fixture imported above)
) -> None:
    """The same attack on four replica processes behind the API, as an attacker would run it."""
    env = ledger_env
    attackers = [register_subject(env) for _ in range(4)]
    action = {"kind": "approve_purpose", "purpose": f"sybil-{time.monotonic_ns()}"}
    body = {"action": action, "voting_ends": int(time.time() * 1000) + DAY_MS}
    r = env.client.post(
        "/v1/governance/proposals", json=signed(env, env.dpo, "governance.propose", body)
    )
    assert r.status_code == 201, r.text
    pid = int(r.json()["result"]["proposal"])

    def vote_http(voter: Wallet, approve: bool) -> Any:
        ballot = {"proposal": pid, "approve": approve}
        return env.client.post(
            f"/v1/governance/proposals/{pid}/votes",
            json=signed(env, voter, "governance.vote", ballot),
        )

    for attacker in attackers:
        r = vote_http(attacker, approve=False)
        assert r.status_code == 403, r.text
        assert r.headers["content-type"].startswith("application/problem+json")
        assert r.json()["detail"].startswith("not_eligible")
    status = "open"
    for voter in (*env.validators, env.dpo, env.provider, env.consumer):
        r = vote_http(voter, approve=True)
        assert r.status_code == 201, r.text
        status = r.json()["result"]["status"]
        if status != "open":
            break
    assert status == "passed"
    r = env.client.get(f"/v1/governance/proposals/{pid}", headers=env.headers("dpo", env.dpo))
    assert r.status_code == 200, r.text
    assert r.json()["result"]["no"]["citizens"] == 0
