"""Pairwise pseudonyms: nothing a consumer, a provider or a ledger reader sees links two of them.

One citizen's wallet derives a pseudonym for each of two datasets, held by two providers and
read by two consumers (docs/KEYS.md, "Identities"). Over real HTTP against a real `civis-vault
up`, the white paper's flows run under those pseudonyms: proof of address (a yes, then a
refusal after the revocation), road maintenance (a projection, under a category consent),
the subject signing her own consents and her own erasure everywhere, after which her wallet
raises the generation. Then everything the providers and consumers can read through the API
(answers, block listings) and every transaction of the chain (read from the replicas) is cut
into items, one per answer or transaction, and the identifiers in the items that name the
first pseudonym must share nothing with those naming the second, beyond the cooperative's
own infrastructure keys; the wallet's master public key appears nowhere. A second citizen who
uses one key in both datasets, as subjects did before pairwise identities, is the control:
the same check finds her.

The derivation itself is held by property tests: same inputs, same key; different dataset or
generation, different key; another seed, or one pseudonym's own seed used as a master,
gives nothing of the others.
"""

from __future__ import annotations

import inspect
import json
import re
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from api.client import CivisClient, ProblemError, Role, public_hex
from api.client.wallet import Wallet, pairwise_seed, pseudonym_key
from api.services.gateway import VAULT_KEY_FILE, LedgerGateway
from ledger_bridge.contracts import tx as txmod
from ledger_bridge.crypto import SigningKey
from ledger_bridge.genesis import load_genesis, load_signing_key
from ledger_bridge.pbft import messages as m
from tests.api.notice_helpers import publish
from tests.api.test_e2e_up import System, running_system
from tests.conftest import PgServer

HEX_ID = re.compile(r"(?<![0-9a-f])[0-9a-f]{64}(?![0-9a-f])")
UUID_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
FIELDS = ["lat", "lon", "vibration"]
GATEWAY_CLIENTS = inspect.signature(LedgerGateway.from_directory).parameters["clients"].default

# -- the derivation, as properties ----------------------------------------------------------

seeds = st.binary(min_size=32, max_size=32)
datasets = st.uuids().map(str)
generations = st.integers(min_value=0, max_value=2**32 - 1)


@settings(max_examples=200, deadline=None)
@given(seeds, datasets, generations)
def test_same_inputs_same_key(seed: bytes, dataset: str, generation: int) -> None:
    master = SigningKey(seed)
    one = pseudonym_key(master, dataset, generation)
    assert one.public_key == pseudonym_key(SigningKey(seed), dataset, generation).public_key
    assert one.public_key != master.public_key


@settings(max_examples=300, deadline=None)
@given(seeds, datasets, generations, datasets, generations)
def test_distinct_relationships_distinct_keys(
    seed: bytes, d1: str, g1: int, d2: str, g2: int
) -> None:
    assume((d1, g1) != (d2, g2))
    master = SigningKey(seed)
    assert pseudonym_key(master, d1, g1).public_key != pseudonym_key(master, d2, g2).public_key


@settings(max_examples=200, deadline=None)
@given(seeds, seeds, datasets, datasets, generations)
def test_no_pseudonym_derives_another_without_the_seed(
    seed: bytes, other: bytes, d1: str, d2: str, generation: int
) -> None:
    assume(seed != other and d1 != d2)
    first = pairwise_seed(seed, d1, generation)
    second = pairwise_seed(seed, d2, generation)
    # Another wallet's seed gives another pseudonym in the same dataset.
    assert pairwise_seed(other, d1, generation) != first
    # The one thing a pseudonym's holder has besides its public key is its own seed: used in
    # the master's place, it derives nothing of the wallet's other pseudonyms.
    assert pairwise_seed(first, d2, generation) != second
    assert pairwise_seed(first, d1, generation) != first


# -- the flows over HTTP, and what everyone else can see ------------------------------------


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory, pg_server: PgServer) -> Iterator[System]:
    with running_system(tmp_path_factory, pg_server, "civis_pairwise") as running:
        yield running


@dataclass
class Entity:
    key: SigningKey
    api: CivisClient


def _entity(system: System, role: Role) -> Entity:
    key = system.member(role, "providers" if role == "provider" else "services")
    system.admit(key)
    return Entity(key, system.client(key, role))


def _dataset(provider: Entity, category: str, purpose: str) -> str:
    return provider.api.create_dataset(
        f"{category}-{secrets.token_hex(4)}",
        category=category,
        purposes=[purpose],
        retention_days=90,
        legal_basis="contract",
    )["id"]


def _upload(provider: Entity, dataset: str, payloads: dict[str, dict[str, str]]) -> Any:
    lines = "".join(json.dumps({"subject_id": s, "payload": p}) + "\n" for s, p in payloads.items())
    out = provider.api.upload(dataset, lines.encode(), media_type="application/x-ndjson")
    assert out["state"] == "anchored"
    return out


def _refused(call: Callable[[], object]) -> Any:
    """The problem body of a refusal: an answer its caller gets, so it is scanned too."""
    with pytest.raises(ProblemError) as refused:
        call()
    return refused.value.body


@dataclass
class World:
    wallet: Wallet
    p1: str  # the citizen's pseudonym at the utility
    p2: str  # ... and at the fleet
    control: str  # the second citizen's one key, in both datasets
    addresses: str
    sensors: str
    answers: list[Any]  # what providers and consumers got over HTTP
    chain: Chain
    infrastructure: set[str]


@pytest.fixture(scope="module")
def world(system: System) -> World:
    utility, fleet = _entity(system, "provider"), _entity(system, "provider")
    bank, roads = _entity(system, "consumer"), _entity(system, "consumer")
    addresses = _dataset(utility, "address", "proof-of-address")
    sensors = _dataset(fleet, "vehicle-telemetry", "road-maintenance")
    # Kept where the keyring finds wallets: the pseudonyms vote on later admissions.
    wallet = Wallet.create(system.data_dir / "demo" / "wallets" / "pairwise-alice.key")
    p1, p2 = wallet.pseudonym(addresses), wallet.pseudonym(sensors)
    control = SigningKey.generate()
    for key in (p1, p2, control):
        assert system.api.register(key, "subject", "citizens")["result"]["status"] == "active"
    answers: list[Any] = [
        _upload(
            utility,
            addresses,
            {public_hex(p1): {"address": "1 rue A"}, public_hex(control): {"address": "2 rue B"}},
        ),
        _upload(
            fleet,
            sensors,
            {
                public_hex(s): {"lat": "45.1", "lon": "4.8", "vibration": "0.3"}
                for s in (p2, control)
            },
        ),
    ]
    answers += _proof_of_address(system, bank, addresses, p1, control)
    answers += _road_maintenance(system, roads, sensors, p2, control)
    # The chain as anyone saw it before the erasure: once a checkpoint covers the erasure,
    # the replicas keep only digests of what named the second pseudonym.
    before = _chain(system)
    answers += _erasure_everywhere(system, wallet, roads, sensors, p2, control)
    # The first pseudonym is untouched by the second's erasure: the bank still learns yes.
    answers.append(_ask(bank, addresses, p1, "1 rue A"))
    assert answers[-1]["result"] is True
    subjects = [public_hex(k) for k in (p1, p2, control)]
    for entity, dataset in (
        (utility, addresses),
        (fleet, sensors),
        (bank, addresses),
        (roads, sensors),
    ):
        answers += _readable(entity, dataset, subjects)
    answers += _block_answers(bank.api)
    after = _chain(system)
    chain = Chain(
        before.transactions + after.transactions,
        before.blocks + after.blocks,
        before.relays | after.relays,
    )
    return World(
        wallet,
        public_hex(p1),
        public_hex(p2),
        public_hex(control),
        addresses,
        sensors,
        answers,
        chain,
        _infrastructure(system) | chain.relays,
    )


def _ask(bank: Entity, dataset: str, subject: SigningKey, value: str) -> Any:
    return bank.api.predicate(
        dataset,
        "proof-of-address",
        subject=public_hex(subject),
        field="address",
        op="eq",
        value=value,
    )


def _proof_of_address(
    system: System, bank: Entity, dataset: str, p1: SigningKey, control: SigningKey
) -> list[Any]:
    """Refused without consent; yes and no with it; refused after the revocation; consented
    again. The citizen signs each consent with her pseudonym for this dataset."""
    seen = [_refused(lambda: _ask(bank, dataset, p1, "1 rue A"))]
    assert seen[-1]["detail"].startswith("no_consent")
    bank_id = public_hex(bank.key)
    notice = publish(bank.api, bank_id, "proof-of-address")
    for subject in (p1, control):
        system.api.grant_consent(
            subject, consumer=bank_id, purpose="proof-of-address", notice=notice, dataset=dataset
        )
    seen += [_ask(bank, dataset, p1, "1 rue A"), _ask(bank, dataset, p1, "3 rue C")]
    assert [a["result"] for a in seen[-2:]] == [True, False]
    system.api.revoke_consent(p1, consumer=bank_id, purpose="proof-of-address", dataset=dataset)
    seen.append(_refused(lambda: _ask(bank, dataset, p1, "1 rue A")))
    system.api.grant_consent(
        p1, consumer=bank_id, purpose="proof-of-address", notice=notice, dataset=dataset
    )
    seen.append(_ask(bank, dataset, control, "2 rue B"))
    assert seen[-1]["result"] is True
    return seen


def _road_maintenance(
    system: System, roads: Entity, dataset: str, p2: SigningKey, control: SigningKey
) -> list[Any]:
    """A category consent under a pseudonym covers the datasets where that pseudonym is:
    here, the fleet's. The road service reads the chosen fields of both subjects."""
    roads_id = public_hex(roads.key)
    notice = publish(roads.api, roads_id, "road-maintenance")
    system.api.grant_consent(
        p2,
        consumer=roads_id,
        purpose="road-maintenance",
        notice=notice,
        category="vehicle-telemetry",
    )
    system.api.grant_consent(
        control, consumer=roads_id, purpose="road-maintenance", notice=notice, dataset=dataset
    )
    out = roads.api.access(dataset, "road-maintenance", fields=FIELDS)
    got = sorted(r["subject_id"] for r in out["records"])
    assert got == sorted([public_hex(p2), public_hex(control)])
    assert all(sorted(r["payload"]) == FIELDS for r in out["records"])
    ids = [public_hex(p2), public_hex(control)]
    named = roads.api.access(dataset, "road-maintenance", subjects=ids, fields=FIELDS)
    assert sorted(r["subject_id"] for r in named["records"]) == sorted(ids)
    return [out, named]


def _erasure_everywhere(
    system: System,
    wallet: Wallet,
    roads: Entity,
    dataset: str,
    p2: SigningKey,
    control: SigningKey,
) -> list[Any]:
    """The citizen's own Art. 17 request, signed with the pseudonym and naming no dataset;
    her wallet keeps the receipt and never uses the pseudonym again."""
    cert = system.api.request_erasure(p2)
    assert cert["state"] == "recorded" and cert["receipt"] is not None
    following = wallet.record_erasure(dataset, dict(cert))
    assert following.public_key != p2.public_key and wallet.generation(dataset) == 1
    # Forgotten, the pseudonym is no member: naming it is refused whole (only the request's
    # digest reaches the chain); the control is read as before.
    refused = _refused(
        lambda: roads.api.access(
            dataset, "road-maintenance", subjects=[public_hex(p2)], fields=FIELDS
        )
    )
    assert refused["detail"].startswith("unknown_subject"), refused
    out = roads.api.access(
        dataset, "road-maintenance", subjects=[public_hex(control)], fields=FIELDS
    )
    assert [r["subject_id"] for r in out["records"]] == [public_hex(control)]
    return [refused, out]


def _readable(entity: Entity, dataset: str, subjects: list[str]) -> list[Any]:
    """Every read a provider or consumer may try about the datasets, members and proposals:
    answers and refusals alike."""
    calls: list[Callable[[], Any]] = [
        entity.api.datasets,
        lambda: entity.api.dataset(dataset),
        lambda: entity.api.uploads(dataset),
        lambda: entity.api.records(dataset),
        entity.api.proposals,
        entity.api.ledger_status,
    ]
    for s in subjects:
        calls += [partial(entity.api.member, s), partial(entity.api.consents, s)]
        calls.append(partial(entity.api.export, s))
    seen = []
    for call in calls:
        try:
            seen.append(call())
        except ProblemError as exc:
            seen.append(exc.body)
    return seen


def _block_answers(api: CivisClient) -> list[Any]:
    """The chain as any member reads it over HTTP, one item per transaction or refusal."""
    tip = api.ledger_status()["height"]
    seen: list[Any] = []
    for h in range(1, tip + 1):
        block = api.block(h)
        seen += block["transactions"] + block["omitted"]
    return seen


def _identifiers(value: Any) -> set[str]:
    """Keys, ids and digests in an answer or a transaction body: 32-byte values, 64-hex
    strings and UUIDs."""
    if isinstance(value, bytes):
        return {value.hex()} if len(value) == 32 else set()
    if isinstance(value, dict):
        return set().union(*(_identifiers(v) for v in value.values()), set())
    if isinstance(value, list | tuple):
        return set().union(*(_identifiers(v) for v in value), set())
    if isinstance(value, str):
        text = value.lower()
        return set(HEX_ID.findall(text)) | set(UUID_ID.findall(text))
    return set()


@dataclass
class Chain:
    transactions: list[set[str]]  # identifiers of each transaction
    blocks: list[bytes]  # each block as encoded
    relays: set[str]  # the PBFT clients that carried the requests


def _chain(system: System) -> Chain:
    gateway = LedgerGateway.from_directory(
        system.data_dir / "ledger", system.data_dir / "keys", clients=1
    )
    try:
        height = max((gateway.status(i) or {}).get("height", 0) for i in range(4))
        chain = Chain([], [], set())
        for h in range(1, height + 1):
            block = gateway.block(h)
            chain.blocks.append(m.encode(block))
            for request in block.requests:
                signed = txmod.decode(request.tx)
                chain.transactions.append({signed.author.hex()} | _identifiers(signed.body))
                chain.relays.add(request.client_id.hex())
        # Members submit through the API: its gateway's pool of clients, the lane of as many
        # on its serving loop (the access route's) and its outbox relay carry everyone's
        # requests, so a relay is the vault's, never a person's.
        assert len(chain.relays) <= 2 * GATEWAY_CLIENTS + 1, len(chain.relays)
        return chain
    finally:
        gateway.close()


def _infrastructure(system: System) -> set[str]:
    """The cooperative's own keys (the vault's, the DPO's, the validators'): they sign or
    carry every subject's transactions, and they name no one."""
    keys = [system.dpo, load_signing_key(system.data_dir / "keys" / VAULT_KEY_FILE)]
    genesis = load_genesis(system.data_dir / "ledger" / "genesis.toml")
    return {public_hex(k) for k in keys} | {v.public_key.hex() for v in genesis.validators}


def _around(world: World, subject: str) -> set[str]:
    """Every identifier that shares an item (an answer, a transaction) with `subject`, less
    the infrastructure and the other subjects (those are other people)."""
    items = [_identifiers(a) for a in world.answers] + world.chain.transactions
    others = {world.p1, world.p2, world.control} - {subject}
    near = set().union(*(i for i in items if subject in i), set())
    return near - world.infrastructure - others


@pytest.mark.e2e
def test_the_flows_ran_under_pseudonyms(world: World) -> None:
    relation = world.wallet.datasets
    assert set(relation) == {world.addresses, world.sensors}
    assert relation[world.addresses].generation == 0 and relation[world.sensors].generation == 1
    assert [e["pseudonym"] for e in relation[world.sensors].erasures] == [world.p2]
    assert len({world.p1, world.p2, world.wallet.master.public_key.hex()}) == 3


@pytest.mark.e2e
def test_nothing_seen_links_the_two_pseudonyms(world: World) -> None:
    near1, near2 = _around(world, world.p1), _around(world, world.p2)
    # Not vacuous: each pseudonym is seen, with its own dataset.
    assert world.p1 in near1 and world.addresses in near1
    assert world.p2 in near2 and world.sensors in near2
    common = near1 & near2
    assert not common, [a for a in world.answers if common & _identifiers(a)]
    assert world.sensors not in near1 and world.addresses not in near2


@pytest.mark.e2e
def test_the_master_key_appears_nowhere(world: World) -> None:
    master = world.wallet.master.public_key
    text = json.dumps(world.answers)
    assert master.hex() not in text
    assert not [
        h
        for h, raw in enumerate(world.chain.blocks, 1)
        if bytes(master) in raw or master.hex().encode() in raw
    ]


@pytest.mark.e2e
def test_one_key_in_two_datasets_is_linked(world: World) -> None:
    """The control: a citizen with one key for both datasets is seen with both."""
    near = _around(world, world.control)
    assert {world.addresses, world.sensors} <= near
