"""The white paper's stories end to end over real HTTP against one `civis-vault up`.

What a user would see, on the real thing: PostgreSQL, four replica processes running the consent
contracts, the API under uvicorn, all started by `civis-vault up` as a subprocess. First the
`civis-vault demo` command plays the use cases against it (twice: it must be repeatable on one
system; then each story alone, the last first: none may rely on another), and what the demo
says happened is read back over the API: the eco-citizen balances, the spent coupon refused
again, the metropolis's k-anonymous cells, the bank's fee split between the utility and the
cooperative. Then this module plays the stories itself as assertions over HTTP: a legal entity
acts only once the colleges voted it in; the bank learns one bit with the citizen's consent and
is refused after the revocation; the road service reads only the consenting drivers' chosen
fields; after an erasure (by the DPO, or asked by the subject) nothing is readable and the
ledger holds the certificate. Last, every block of the chain, read from the replicas, holds
none of the payload values used, and Ctrl-C stops everything.

Keys the tests make for members are kept where the demo keeps its own (`<data-dir>/demo/
members/<college>/`): both add members to the same colleges, and each later admission needs a
majority of them, so each must be able to cast the other's votes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from api.cli.demo import STORIES
from api.cli.demo.common import Keyring
from api.cli.demo.eco_citizen import (
    CYCLING,
    LOCAL_PRODUCE,
    OFFER_PRICE_MTOK,
    PURCHASES,
    RIDES,
    SAVINGS,
    WATER_SAVING,
)
from api.client import (
    CivisClient,
    College,
    Conflict,
    Dataset,
    Forbidden,
    LedgerWrite,
    NotFound,
    PredicateAnswer,
    ProblemError,
    Role,
    public_hex,
)
from api.client.wallet import Wallet, new_wallet
from api.services.gateway import LedgerGateway
from api.services.keys import create_key
from ledger_bridge.crypto import SigningKey
from ledger_bridge.genesis import load_signing_key
from ledger_bridge.pbft import messages as m
from tests.api.notice_helpers import publish
from tests.api.test_up import Up, _clean_env, _free_port, _replica_pids
from tests.conftest import PgServer
from vault import db

pytestmark = pytest.mark.e2e

DEMO_TIMEOUT_S = 300
START_ATTEMPTS = 3
# What `up` says when a port it chose was taken before it bound it (see _start_up), in lower
# case: uvicorn writes "Address already in use".
PORT_RACES = ("the ledger did not start", "already answers on", "address already in use")
# Refusals of a vote that only mean "not this voter": admitted after the proposal, not (yet)
# admitted, suspended by the incident story, or the proposal already passed.
NOT_A_VOTE = ("not_eligible", "not_admitted", "not_member", "member_suspended", "closed")

# Payload values the stories below upload; none may ever reach a block.
ADDRESS = "7 impasse des Glycines, 69003 Lyon"
WRONG_ADDRESS = "8 impasse des Glycines, 69003 Lyon"
EMPLOYEE = "EMP-E2E-0042"
VIBRATION = "0.7731"
# What the demo uploads (api/cli/demo/): every address it makes up is in this street.
DEMO_ADDRESS = "rue des Lilas"


@dataclass
class System:
    """One running `up`, the means to issue API keys in its database, and its members' keys."""

    up: Up
    data_dir: Path
    database_url: str
    engine: Engine
    api: CivisClient
    dpo: SigningKey
    voters: dict[str, list[SigningKey]] = field(default_factory=dict)

    def client(self, key: SigningKey | str, role: str) -> CivisClient:
        """The API as `key`'s member (a key, or its hex) sees it, with a new API key of `role`."""
        member = key if isinstance(key, str) else public_hex(key)
        with Session(self.engine) as session, session.begin():
            issued = create_key(session, member_id=member, role=role)
        return self.api.with_key(issued.token)

    def member(self, role: Role, college: College) -> SigningKey:
        """A new member's key, kept beside the demo's (it votes on later admissions)."""
        key = new_wallet(
            self.data_dir / "demo" / "members" / college / f"e2e-{secrets.token_hex(6)}.key"
        )
        out = self.api.register(key, role, college)
        expected = "active" if role == "subject" else "pending"
        assert out["result"]["status"] == expected
        self.voters.setdefault(college, []).append(key)
        return key

    def load_voters(self) -> None:
        """The founders' keys on this host and every member key kept so far (demo runs too):
        the demo's own keyring, which also derives its citizens' pseudonyms from their wallets."""
        self.voters = Keyring.load(self.data_dir).by_college

    def admit(self, key: SigningKey) -> int:
        """The DPO proposes the admission; members vote yes until it passes."""
        self.load_voters()
        pid = int(self.api.propose_admission(self.dpo, public_hex(key))["result"]["proposal"])
        for voters in self.voters.values():
            for voter in voters:
                try:
                    out = self.api.vote(voter, pid)
                except ProblemError as exc:
                    assert exc.code in NOT_A_VOTE, exc
                    continue
                if out["result"]["status"] == "passed":
                    return pid
        raise AssertionError(f"proposal {pid} never passed")


def _stop_and_reap(up: Up, data_dir: Path) -> int:
    code = up.stop()
    for pid in _replica_pids(data_dir / "ledger"):
        os.kill(pid, signal.SIGKILL)  # only if `up` failed to stop its own replicas
    return code


def _start_up(tmp_path_factory: pytest.TempPathFactory, database_url: str) -> tuple[Up, Path]:
    """`up` on a new data directory, started again (elsewhere) if it lost a port to a race.

    `up` picks free ports and binds them a moment later; on a machine where other test runs
    start clusters too, one may take a port in between, and `up` then exits saying so. That is
    the machine, not the system under test: any other early exit fails at once.
    """
    for attempt in range(1, START_ATTEMPTS + 1):
        data_dir = tmp_path_factory.mktemp("e2e-up") / "civis"
        up = Up("--data-dir", str(data_dir), "--database-url", database_url)
        try:
            up.wait_until("/readyz", 200)
            return up, data_dir
        except AssertionError:
            _stop_and_reap(up, data_dir)
            if attempt == START_ATTEMPTS or not any(s in up.output.lower() for s in PORT_RACES):
                raise
    raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory, pg_server: PgServer) -> Iterator[System]:
    with running_system(tmp_path_factory, pg_server, "civis_e2e") as running:
        yield running


@contextmanager
def running_system(
    tmp_path_factory: pytest.TempPathFactory, pg_server: PgServer, database: str
) -> Iterator[System]:
    """One `up` on a database of its own, stopped and dropped afterwards, whatever happens."""
    database_url = pg_server.create_database(database)
    engine = db.make_engine(database_url, pool_size=1)
    try:
        up, data_dir = _start_up(tmp_path_factory, database_url)
        try:
            with CivisClient(up.url) as api:
                dpo = load_signing_key(data_dir / "keys" / "dpo.key")
                yield System(up, data_dir, database_url, engine, api, dpo)
        finally:
            _stop_and_reap(up, data_dir)
    finally:
        engine.dispose()
        pg_server.drop_database(database_url)


@dataclass
class Entities:
    """A provider and a consumer, admitted by vote, each with a client holding its API key."""

    provider: SigningKey
    consumer: SigningKey
    provider_api: CivisClient
    consumer_api: CivisClient


@pytest.fixture(scope="module")
def entities(system: System) -> Entities:
    provider = system.member("provider", "providers")
    consumer = system.member("consumer", "services")
    system.admit(provider)
    system.admit(consumer)
    return Entities(
        provider,
        consumer,
        system.client(provider, "provider"),
        system.client(consumer, "consumer"),
    )


def _demo(system: System, url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "api.cli",
            "demo",
            "--url",
            url,
            "--data-dir",
            str(system.data_dir),
            "--database-url",
            system.database_url,
            *extra,
        ],
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT_S,
    )


def _live_keys(system: System) -> int:
    with system.engine.connect() as conn:
        return int(conn.scalar(text("SELECT count(*) FROM api_keys WHERE revoked_at IS NULL")))


# -- the demo command ------------------------------------------------------------------------

# What every full run of the demo prints (each story's outcomes, in its words).
DEMO_SAYS = (
    "== 1. Proof of address",
    "admitted [ledger tx ",
    "and learns: yes, and nothing else",
    "it learns: no",
    "is refused after the revocation",
    "reads 4 readings of the 2 consenting drivers",
    "no driver_id",
    "it asks for driver_id too and is refused: exceeds_purpose: field driver_id",
    "it asks for Alice's record itself and is refused: exceeds_purpose",
    ": no_consent",
    "the ledger shows it: block ",
    "pseudonym again: refused (unknown_subject), and the ledger keeps only the",
    "the subject export now holds 0 readable records",
    "readings [ledger tx ",  # the road service reads the driver before the erasure
    "demo: every expected outcome happened.",
    "'s wallet derives the pseudonym",
    "only her wallet links them",
    "… (the utility Lumen-",  # Alice's pseudonym there, beside her fleet one
    "everywhere (no dataset named)",
    "'s wallet keeps the certificate's receipt and raises the dataset's generation to 1",
    # the fee on the bank's yes/no
    "the utility prices each yes/no answer from its dataset at 0.40 €",
    "the bank pays the cooperative 5.00 €; the DPO records it as the bank's credit",
    "); charged 0.40 € [ledger tx ",
    "it learns: no; charged 0.40 €",
    "the bank's statement: deposited 5.00 €, paid 0.80 €",
    "balance 4.20 €",
    "the utility's statement: earned 0.38 € + 0.38 € for the same accesses",
    "read by the DPO): 0.02 € + 0.02 €",
    # eco-citizen tokens
    "== 4. Eco-citizen tokens",
    "cycling is in force from the next block [ledger tx ",
    "water-saving is in force from the next block [ledger tx ",
    "local-produce is in force from the next block [ledger tx ",
    "the bike reader in croix-rousse is active [ledger tx ",
    "cycling credits 74.9 tokens [ledger tx ",
    "water-saving credits 121.5 tokens [ledger tx ",
    "local-produce credits 31.4 tokens [ledger tx ",
    "water-saving pseudonyms, read by the DPO): Bruno-",
    "reads her own balance: 2.4 tokens left",
    "valid, and it names nobody",
    "spends the coupon and hands over the croissant [ledger tx ",
    "the same code shown a second time is refused: coupon_spent",
    "shown, 10 citizens (k = 10), 74.9 km in all",
    "suppressed (fewer than k = 10 citizens): no figure at all",
    # a personal data breach
    "== 5. A stolen key",
    "reports its ledger key stolen an hour ago; the DPO opens incident",
    "the DPO's work queues (/dpo/queues) list it: deadline ",
    "suspended [ledger tx ",
    "whoever holds the bank's key asks again and is refused: member_suspended",
    "the DPO lists the subjects affected, from the ledger's access record: 2 pseudonyms",
    "exports the Art. 33 notification draft",
    # the citizen exercises her rights
    "== 6. Subject rights",
    "signs in with her wallet, no API key: each of her 2 pseudonyms signs",
    "it verifies from the genesis alone",
    "the utility asks for the old version: gone (410)",
    "the bank asks again: yes for the right address, no for the old one",
    "the bank asks and is refused (restricted)",
    "(1 record withheld, her record itself 409 restricted)",
    "kept under a contract (basis_is_consent)",
    "the utility read 2 readings of hers, now none",
    "rectification (rectification.request, record.rectify)",
    "she signs out: the session's token opens nothing any more (401)",
)


def _demo_files(system: System) -> tuple[set[Path], set[Path]]:
    """The member keys and citizens' wallets the demo has kept so far."""
    demo = system.data_dir / "demo"
    return set(demo.glob("members/*/*.key")), set(demo.glob("wallets/*.key"))


def test_the_demo_plays_every_story_twice_on_one_system(system: System) -> None:
    outputs = []
    for _ in range(2):
        live_before = _live_keys(system)
        members_before, wallets_before = _demo_files(system)
        done = _demo(system, system.up.url)
        assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
        out = done.stdout
        outputs.append(out)
        for line in DEMO_SAYS:
            assert line in out, out
        # Every ledger step prints its receipt.
        assert len(re.findall(r"\[ledger tx [0-9a-f]{16}…, block \d+\]", out)) >= 100
        assert "FAILED" not in out and "Traceback" not in done.stderr
        # The demo's API keys were revoked when it ended; its members' keys stay to vote later.
        assert _live_keys(system) == live_before
        # What it said happened, read back over the API: this run's members and citizens.
        members, wallets = _demo_files(system)
        _the_ledger_agrees(system, out, members - members_before, wallets - wallets_before)
    run_ids = [re.findall(r"demo, run ([0-9a-f]+)", o) for o in outputs]
    assert len(run_ids[0]) == len(run_ids[1]) == 1 and run_ids[0] != run_ids[1]
    kept = list((system.data_dir / "demo" / "members").glob("*/*.key"))
    # The legal entities: the utility, the bank, the fleet, the road service, the market,
    # the bakery, the metropolis and the bank whose key is stolen.
    assert len(kept) == 2 * 8
    kept_wallets = list((system.data_dir / "demo" / "wallets").glob("*.key"))
    # Alice, Bruno, Chloé, the seven other cyclists, Karim, Driss, Emma and Lucie: pseudonyms
    # derived, never stored
    assert len(kept_wallets) == 2 * 14
    relationships = list((system.data_dir / "demo" / "wallets").glob("*.key.pairwise.json"))
    assert len(relationships) == len(kept_wallets)
    assert all(p.stat().st_mode & 0o077 == 0 for p in kept + kept_wallets + relationships)
    # Per run, Alice's two pseudonyms (utility, fleet), Bruno's two (fleet, the erasure's
    # trips) and Chloé's are five keys; the eco-citizen story's fifteen (ten cyclists, three
    # households, two shoppers) twenty; the incident's three (Chloé, Driss, Emma) 23; Lucie's
    # two (the utility's addresses and its meter readings) 25.
    named = [re.findall(r"derives the pseudonym ([0-9a-f]{12})…", o) for o in outputs]
    assert all(len(n) == len(set(n)) == 25 for n in named), named


def _the_ledger_agrees(system: System, out: str, members: set[Path], wallets: set[Path]) -> None:
    """One run's outcomes as the API reports them afterwards, not as the demo printed them."""
    dpo = system.client(system.dpo, "dpo")
    keys = {public_hex(k): k for k in map(load_signing_key, members)}
    roles: dict[str, list[str]] = {}
    for member in keys:
        roles.setdefault(dpo.member(member)["result"]["role"], []).append(member)
    _balances_agree(dpo, wallets)
    # The coupon the demo printed is spent: the bakery showing it again is refused.
    found = re.search(r"keeps the coupon code (CV1-[A-Z2-7-]+) ", out)
    assert found is not None, out
    [bakery] = roles["partner"]
    with pytest.raises(Conflict) as again:
        system.api.spend_coupon(keys[bakery], found.group(1))
    assert again.value.code == "coupon_spent"
    _impact_agrees(system, dpo, roles["consumer"])
    _fees_agree(system, dpo, roles["consumer"] + roles["provider"])
    _rights_agree(system, wallets)


def _rights_agree(system: System, wallets: set[Path]) -> None:
    """Each citizen of the run signs in with her wallet and reads her register: Lucie alone
    asked anything (the stories' other exports are the DPO's, no request of a subject's), and
    it holds her exports, her rectification, restriction and objection, each answered."""
    registers = []
    for path in sorted(wallets):
        me = system.api.sign_in(Wallet.open(path))
        try:
            assert me.session is not None
            found = [r for p in me.session["pseudonyms"] for r in me.requests(p)]
        finally:
            me.sign_out()
        if found:
            registers.append(found)
    [lucie] = registers
    assert sorted(r["kind"] for r in lucie) == sorted(
        [
            *("access", "portability", "rectification", "restriction"),
            *("access", "portability", "objection"),
        ]
    )
    assert {r["state"] for r in lucie} == {"done"}


def _balances_agree(dpo: CivisClient, wallets: set[Path]) -> None:
    """Every pseudonym of the run's citizens holds what its events minted, Alice's cycling
    account less the croissant; every other pseudonym holds nothing."""
    pseudonyms = [public_hex(k) for w in wallets for k in Wallet.open(w).pseudonyms().values()]
    held = [int(dpo.balance(p)["result"]["mtok"]) for p in pseudonyms]
    minted = [
        milli * rule.rate_mtok // 1000
        for rule, people in ((CYCLING, RIDES), (WATER_SAVING, SAVINGS), (LOCAL_PRODUCE, PURCHASES))
        for _, milli in people
    ]
    assert RIDES[0][0] == "Alice"
    minted[0] -= OFFER_PRICE_MTOK
    assert sorted(b for b in held if b) == sorted(minted)
    # the incident story's three citizens and Lucie's two pseudonyms earn nothing
    assert len(pseudonyms) == 25 and held.count(0) == 10


def _impact_agrees(system: System, dpo: CivisClient, consumers: list[str]) -> None:
    """The metropolis (the consumer that read impact statistics) sees one cell, ten cyclists
    in croix-rousse, and the two small districts suppressed, their figures in no total."""
    lines = [
        a for c in consumers for a in dpo.iter_access_log(consumer=c, purpose="impact-statistics")
    ]
    [metropolis] = {a["consumer"] for a in lines}
    datasets = sorted({a["dataset"] for a in lines})
    assert len(datasets) == 3
    board = system.client(metropolis, "consumer").impact_dashboard(datasets)
    assert board["k"] == 10
    cells = {c["district"]: c for c in board["cells"]}
    assert sorted(cells) == ["croix-rousse", "presquile", "vaise"]
    shown = cells["croix-rousse"]["sums"]
    assert not cells["croix-rousse"]["suppressed"]
    assert shown["subjects"] == 10 and shown["km"] == 74.9
    for small in ("presquile", "vaise"):
        assert cells[small]["suppressed"] and cells[small]["sums"] is None
    overall = board["overall"]
    assert (overall["subjects"], overall["km"], overall["litres"], overall["euros"]) == (
        10,
        74.9,
        0,
        0,
    )


def _statement(api: CivisClient, member: str) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    after: int | None = 0
    while after is not None:
        page = api.statement(member, after=after, limit=1000)
        entries += [dict(e) for e in page["entries"]]
        after = page["next_after"]
    return entries


def _fees_agree(system: System, dpo: CivisClient, members: list[str]) -> None:
    """The bank paid 0.40 € for each of its two answers; the utility earned each less the 5 %
    commission, which the cooperative's operations key earned for the same accesses."""
    statements = {m: dpo.statement(m) for m in members}
    [bank] = [m for m, s in statements.items() if s["totals"]["paid"]]
    [utility] = [m for m, s in statements.items() if s["totals"]["earned"]]
    assert statements[bank]["totals"] == {"paid": 80, "earned": 0, "deposited": 500, "balance": 420}
    paid = {e["access"]: e["cents"] for e in statements[bank]["entries"] if e["kind"] == "fee_paid"}
    earned = {e["access"]: e["cents"] for e in statements[utility]["entries"]}
    cooperative = Keyring.load(system.data_dir).operations_key
    commission = {
        e["access"]: e["cents"]
        for e in _statement(dpo, cooperative)
        if e["kind"] == "commission" and e["access"] in paid
    }
    assert len(paid) == 2 and set(paid.values()) == {40}
    assert earned == {a: 38 for a in paid} and commission == {a: 2 for a in paid}


def test_each_story_plays_alone_and_in_any_order(system: System) -> None:
    """Each registered story run on its own, the last first: each casts what it needs."""
    assert len(STORIES) >= 4
    outputs: dict[str, str] = {}
    for story in reversed(STORIES):
        done = _demo(system, system.up.url, "--story", story.name)
        assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
        headers = re.findall(r"^== \d+\. (.*) ==$", done.stdout, re.MULTILINE)
        assert headers == [story.summary], done.stdout
        assert "demo: every expected outcome happened." in done.stdout
        assert "admitted [ledger tx " in done.stdout  # its own legal entities, voted in
        outputs[story.name] = done.stdout
    # Alone, the road story's Alice knows no other dataset, and her wallet says so.
    assert "any other dataset she joins gets a pseudonym of its own" in outputs["road-maintenance"]
    assert "the subject export now holds 0 readable records" in outputs["erasure"]
    # Alone and first, the eco-citizen story casts the utility and the fleet it uses.
    eco = outputs["eco-citizen"]
    assert "the utility Lumen-" in eco and "the fleet operator Transroute-" in eco
    assert "refused: coupon_spent" in eco and "suppressed (fewer than k = 10" in eco
    assert "balance 4.20 €" in outputs["proof-of-address"]
    # Alone, the subject-rights story casts the utility and the bank it uses.
    rights = outputs["subject-rights"]
    assert "the utility Lumen-" in rights and "the bank Crédit-" in rights
    assert "all answered" in rights and "(401)" in rights


def test_the_demo_says_plainly_when_there_is_no_system(system: System) -> None:
    done = _demo(system, f"http://127.0.0.1:{_free_port()}")
    assert done.returncode == 2
    assert "cannot reach the API" in done.stdout and "is `civis-vault up` running" in done.stdout
    assert "Traceback" not in done.stderr


# -- the stories as assertions ---------------------------------------------------------------


def _addresses_dataset(api: CivisClient) -> Dataset:
    return api.create_dataset(
        f"addresses-{secrets.token_hex(4)}",
        category="address",
        purposes=["proof-of-address"],
        retention_days=365,
        legal_basis="contract",
    )


def test_a_legal_entity_acts_only_once_the_colleges_voted_it_in(system: System) -> None:
    utility = system.member("provider", "providers")
    api = system.client(utility, "provider")
    with pytest.raises(Forbidden) as refused:
        _addresses_dataset(api)
    assert refused.value.code == "not_admitted", refused.value
    pid = system.admit(utility)
    dpo = system.client(system.dpo, "dpo")
    proposal = dpo.proposal(pid)["result"]
    assert proposal["status"] == "passed"
    # Every college approved by a strict majority of the members it had at the proposal.
    assert all(2 * proposal["yes"][c] > n for c, n in proposal["members"].items())
    member = dpo.member(public_hex(utility))["result"]
    assert member["status"] == "active" and member["role"] == "provider"
    receipt = _addresses_dataset(api)["receipt"]
    assert receipt is not None and receipt["block_height"] >= 1


def _addresses(entities: Entities, subjects: list[SigningKey]) -> str:
    """A dataset of the utility holding each subject's address, anchored."""
    api = entities.provider_api
    dataset = _addresses_dataset(api)["id"]
    lines = "".join(
        json.dumps({"subject_id": public_hex(s), "payload": {"address": ADDRESS}}) + "\n"
        for s in subjects
    )
    anchored = api.upload(dataset, lines.encode(), media_type="application/x-ndjson")
    assert anchored["state"] == "anchored"
    assert anchored["receipt"] is not None and anchored["receipt"]["block_height"] >= 1
    return dataset


def _grant(
    system: System, subject: SigningKey, consumer: SigningKey, dataset: str, purpose: str
) -> LedgerWrite:
    notice = publish(system.client(consumer, "consumer"), public_hex(consumer), purpose)
    return system.api.grant_consent(
        subject, consumer=public_hex(consumer), purpose=purpose, notice=notice, dataset=dataset
    )


def test_proof_of_address_the_bank_learns_one_bit_then_is_refused(
    system: System, entities: Entities
) -> None:
    citizen = system.member("subject", "citizens")
    dataset = _addresses(entities, [citizen])

    def ask(value: str) -> PredicateAnswer:
        return entities.consumer_api.predicate(
            dataset,
            "proof-of-address",
            subject=public_hex(citizen),
            field="address",
            op="eq",
            value=value,
        )

    with pytest.raises(Forbidden) as before:
        ask(ADDRESS)
    # A problem+json body (RFC 9457), not a bare status: the client read its members.
    assert before.value.body["status"] == 403 and before.value.code == "no_consent"
    granted = _grant(system, citizen, entities.consumer, dataset, "proof-of-address")
    answer = ask(ADDRESS)
    assert set(answer) == {"result", "receipt", "charged_cents"} and answer["result"] is True
    assert answer["receipt"]["block_height"] > granted["receipt"]["block_height"]
    assert ask(WRONG_ADDRESS)["result"] is False

    system.api.revoke_consent(
        citizen,
        consumer=public_hex(entities.consumer),
        purpose="proof-of-address",
        dataset=dataset,
    )
    with pytest.raises(Forbidden) as after:
        ask(ADDRESS)
    assert after.value.detail.startswith("no_consent: no consent in force")
    assert ADDRESS not in str(after.value.body)

    # The citizen's own export: the revoked consent, and the two accesses that reached them.
    export = system.client(citizen, "subject").export(public_hex(citizen))
    assert [c["granted"] for c in export["consents"]] == [False]
    assert len(export["accesses"]) == 2


def test_road_maintenance_reads_only_what_consenting_drivers_allow(
    system: System, entities: Entities
) -> None:
    drivers = [system.member("subject", "citizens") for _ in range(3)]
    dataset = entities.provider_api.create_dataset(
        f"vehicle-sensors-{secrets.token_hex(4)}",
        category="vehicle-telemetry",
        purposes=["road-maintenance"],
        retention_days=90,
        legal_basis="contract",
    )["id"]
    rows = ["subject_id,driver_id,lat,lon,vibration"]
    rows += [
        f"{public_hex(d)},{EMPLOYEE}-{i},45.75{i}{k},4.84{i}{k},{VIBRATION}"
        for i, d in enumerate(drivers)
        for k in range(2)
    ]
    sent: list[int] = []
    upload = entities.provider_api.upload(
        dataset,
        iter([row.encode() + b"\n" for row in rows]),
        media_type="text/csv",
        progress=lambda done, total: sent.append(done),
    )
    assert upload["record_count"] == 6 and upload["state"] == "anchored"
    assert sent[-1] == sum(len(row) + 1 for row in rows)
    for d in drivers[:2]:
        _grant(system, d, entities.consumer, dataset, "road-maintenance")

    fields = ["lat", "lon", "vibration"]
    consumer = entities.consumer_api
    out = consumer.access(dataset, "road-maintenance", fields=fields)
    records = out["records"]
    assert sorted(rec["subject_id"] for rec in records) == sorted(
        public_hex(d) for d in drivers[:2] for _ in range(2)
    )
    assert all(sorted(rec["payload"]) == fields for rec in records)
    assert all(rec["payload"]["vibration"] == VIBRATION for rec in records)
    assert EMPLOYEE not in json.dumps(out)

    everyone = [public_hex(d) for d in drivers]
    named = consumer.access(dataset, "road-maintenance", subjects=everyone, fields=fields)
    assert named["denied"] == [[public_hex(drivers[2]), "no_consent"]]
    # A purpose the dataset was not registered for: refused by the contracts.
    with pytest.raises(Forbidden) as other:
        consumer.access(dataset, "billing", fields=fields)
    assert other.value.code == "purpose_not_allowed", other.value
    # The provider cannot read through the consumer's door, nor can a subject.
    for role, key in (("provider", entities.provider), ("subject", drivers[0])):
        with pytest.raises(Forbidden):
            system.client(key, role).access(dataset, "road-maintenance", fields=fields)


def test_erasure_by_the_dpo_and_by_the_subject_leaves_nothing_readable(
    system: System, entities: Entities
) -> None:
    erased, requester = (system.member("subject", "citizens") for _ in range(2))
    dataset = _addresses(entities, [erased, requester])
    for s in (erased, requester):
        _grant(system, s, entities.consumer, dataset, "proof-of-address")
    ids = [public_hex(erased), public_hex(requester)]
    consumer = entities.consumer_api

    def ask(subject: str) -> PredicateAnswer:
        return consumer.predicate(
            dataset, "proof-of-address", subject=subject, field="address", op="eq", value=ADDRESS
        )

    assert all(ask(i)["result"] is True for i in ids)

    # Only the DPO erases on the vault's side.
    for role, key in (("provider", entities.provider), ("consumer", entities.consumer)):
        with pytest.raises(Forbidden):
            system.client(key, role).erase(subject_id=ids[0])
    dpo = system.client(system.dpo, "dpo")
    cert = dpo.erase(subject_id=ids[0])
    receipt = cert["receipt"]
    assert cert["state"] == "recorded" and cert["secrets_destroyed"] >= 1
    assert cert["key_commitments"] and receipt is not None and receipt["block_height"] >= 1
    # The subject's proof, handed over now: the vault forgets them once it is recorded.
    proof = cert["erasure_receipt"]
    assert proof is not None and proof["height"] == receipt["block_height"]
    block = dpo.block(receipt["block_height"])
    assert block["verified"] is True
    # The block holds the erasure.record, or, once a checkpoint covers it and the replicas
    # redacted it (it names the subject), its digest: the one the subject's receipt opens.
    held = [t["type"] for t in block["transactions"] if t["tx_id"] == receipt["tx_id"]]
    request_digest = hashlib.sha256(bytes.fromhex(proof["request"])).hexdigest()
    redacted = [o["code"] for o in block["omitted"] if o["request_digest"] == request_digest]
    assert held == ["erasure.record"] or redacted == ["redacted"], (held, block["omitted"])

    # The subject's own Art. 17 request, signed with their wallet.
    own = system.api.request_erasure(requester)
    assert own["requester"] == "subject" and own["request"] is not None and own["request"] >= 1

    # Forgotten everywhere, the erased pseudonym is no member: asking about it is refused
    # whole, and the refused request leaves only its digest on the chain.
    with pytest.raises(NotFound) as refused:
        ask(ids[0])
    assert refused.value.code == "unknown_subject"
    # The export holds no readable record.
    assert dpo.export(ids[0])["records"] == []


def test_no_payload_value_is_in_any_block(system: System) -> None:
    """Run after the stories: every committed block, as encoded, read from the replicas."""
    gateway = LedgerGateway.from_directory(
        system.data_dir / "ledger", system.data_dir / "keys", clients=1
    )
    try:
        height = max((gateway.status(i) or {}).get("height", 0) for i in range(4))
        assert height > 100  # the demo's two runs and the stories above
        values = [ADDRESS, WRONG_ADDRESS, EMPLOYEE, VIBRATION, DEMO_ADDRESS]
        needles = [v.encode() for v in values] + [
            hashlib.sha256(v.encode()).digest() for v in (ADDRESS, WRONG_ADDRESS)
        ]
        # The scan sees what blocks do hold: the DPO signed proposals, so its key is there.
        dpo_key = bytes(system.dpo.public_key)
        dpo_seen = 0
        for h in range(1, height + 1):
            raw = m.encode(gateway.block(h))
            found = [n for n in needles if n in raw]
            assert not found, f"block {h} holds a payload value"
            dpo_seen += dpo_key in raw
        assert dpo_seen >= 4
    finally:
        gateway.close()


def test_ctrl_c_stops_the_whole_system(system: System) -> None:
    ledger = system.data_dir / "ledger"
    assert len(_replica_pids(ledger)) == 4
    assert system.up.stop(signal.SIGINT) == 0, system.up.output[-3000:]
    assert "civis-vault up: stopped" in system.up.output
    assert not _replica_pids(ledger)
