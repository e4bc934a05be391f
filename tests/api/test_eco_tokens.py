"""Eco-citizen tokens over the API, decided by the contracts on four replicas.

A provider operates certified devices (admitted by governance); the devices send signed
events; the details go to the vault, the rewards to the subjects' balances; a partner
publishes an offer; a citizen redeems tokens for a coupon the cooperative signs; the partner
spends it once.

Attacks first: a forged device signature stores nothing and reaches no replica; a replayed
batch stores nothing new; a suspended device's events store nothing; an
overdraft, a second spend and two concurrent spends of one coupon are refused.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import pytest

from api.client import CivisClient, Conflict, Forbidden, NotFound, coupons
from api.client.devices import Device
from api.services import events as events_service
from api.services.events import record_id
from tests.api.ledger_env import DAY_MS, LedgerEnv, Wallet
from tests.api.test_consented_access import register_subject, vote_through

pytestmark = pytest.mark.timeout(300)


def api(env: LedgerEnv) -> CivisClient:
    return CivisClient(http=env.client)


def decide(env: LedgerEnv, action: dict[str, Any]) -> None:
    out = api(env).propose(env.dpo.key, action, voting_for_ms=DAY_MS)
    vote_through(env, int(out["result"]["proposal"]))


@dataclass
class Eco:
    env: LedgerEnv
    dataset: str
    provider_headers: dict[str, str]
    device: Device
    suspended: Device
    partner: Wallet
    offer: str


def admitted_device(env: LedgerEnv, dataset: str) -> Device:
    """A new bike reader of `dataset`, registered by its owner and admitted by governance."""
    device = Device(env.chain_id, "centre")
    out = api(env).register_device(
        env.provider.key, device=device.id, kind="bike_reader", dataset=dataset, district="centre"
    )
    assert out["result"]["status"] == "pending", out
    decide(env, {"kind": "admit_device", "device": device.id})
    return device


CYCLING_MTOK_PER_KM = 1000  # the rule `bike_counts` votes in


def bike_counts(env: LedgerEnv) -> str:
    """A new dataset of the provider's for bike readers' counts, and the cycling rule
    (`CYCLING_MTOK_PER_KM`, bike readers, no daily cap) voted in; the dataset's id."""
    r = env.client.post(
        "/v1/datasets",
        headers=env.headers("provider", env.provider),
        json={
            "name": f"bike-counts-{time.monotonic_ns()}",
            "category": "mobility",
            "purposes": ["impact-statistics"],
            "retention_days": 365,
            "legal_basis": "consent",
        },
    )
    assert r.status_code == 201, r.text
    rule = {
        "kind": "set_reward_rule",
        "rule": "cycling",
        "unit": "km",
        "rate_mtok": CYCLING_MTOK_PER_KM,
        "device_kinds": ["bike_reader"],
        "cap_mtok_per_day": 0,
    }
    decide(env, rule)
    dataset: str = r.json()["id"]
    return dataset


@pytest.fixture(scope="module")
def eco(ledger_env: LedgerEnv) -> Eco:
    env = ledger_env
    headers = env.headers("provider", env.provider)
    dataset = bike_counts(env)
    device, suspended = admitted_device(env, dataset), admitted_device(env, dataset)
    decide(env, {"kind": "suspend_device", "device": suspended.id})
    partner = Wallet()
    assert api(env).register(partner.key, "partner", "providers")["result"]["status"] == "pending"
    decide(env, {"kind": "admit_member", "member": partner.id})
    offer = f"bakery-{uuid.uuid4().hex[:8]}"
    api(env).publish_offer(
        partner.key, offer=offer, title="5 % off bread", category="food", price_mtok=2000
    )
    return Eco(env, dataset, headers, device, suspended, partner, offer)


def _uploads(eco: Eco) -> list[dict[str, Any]]:
    r = eco.env.client.get(f"/v1/datasets/{eco.dataset}/uploads", headers=eco.provider_headers)
    assert r.status_code == 200, r.text
    out: list[dict[str, Any]] = r.json()
    return out


def _stored(eco: Eco) -> list[tuple[str, int, str]]:
    """The uploads and what they hold, without their anchoring's progress: an upload is
    answered before the relay anchors it (`pending`, then `anchored`), on its own time."""
    return [(u["upload_id"], u["record_count"], u["merkle_root"]) for u in _uploads(eco)]


def _balance(eco: Eco, citizen: Wallet) -> int:
    headers = eco.env.headers("subject", citizen)
    mine = CivisClient(http=eco.env.client, api_key=headers["Authorization"].split()[1])
    return int(mine.balance(citizen.id)["result"]["mtok"])


def _ride(eco: Eco, citizen: Wallet, km_milli: int, device: Device | None = None) -> dict[str, Any]:
    return (device or eco.device).event(
        subject=citizen.id, rule="cycling", unit="km", quantity_milli=km_milli
    )


def _earn(eco: Eco, citizen: Wallet, mtok: int) -> None:
    out = api(eco.env).send_events(eco.device.id, [_ride(eco, citizen, mtok)])
    assert out["credited"] == [[citizen.id, mtok]], out


# -- attacks ----------------------------------------------------------------------------------


def test_a_forged_device_signature_stores_nothing_and_reaches_no_replica(
    eco: Eco, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    env, citizen = eco.env, register_subject(eco.env)
    honest = _ride(eco, citizen, 5300)
    forged = {**honest, "quantity_milli": 53_000}  # the signature covered 5300
    impostor = Device(env.chain_id, "centre")  # signs with its own key, claims to be the device
    stolen = {**_ride(eco, citizen, 5300, impostor), "device": eco.device.id}
    before = _stored(eco)
    for bad in ([forged], [honest, forged], [stolen]):
        r = env.client.post(f"/v1/devices/{eco.device.id}/events", json={"events": bad})
        assert r.status_code == 403, r.text
        assert r.headers["content-type"].startswith("application/problem+json")
        assert r.json()["detail"].startswith("bad_device_signature")
        assert "53000" not in r.text and honest["detail"]["salt"] not in r.text
    # the body is never logged: neither the subject nor the detail
    assert citizen.id not in caplog.text and honest["detail"]["salt"] not in caplog.text
    assert _stored(eco) == before  # nothing in the vault
    assert _balance(eco, citizen) == 0  # nothing credited
    # nothing on the ledger: the honest event was never recorded, so it is rewarded now
    out = api(env).send_events(eco.device.id, [honest])
    assert out["credited"] == [[citizen.id, 5300]]


def test_the_same_batch_again_is_a_replay_and_stores_nothing_new(eco: Eco) -> None:
    env, citizen = eco.env, register_subject(eco.env)
    batch = [_ride(eco, citizen, 1000), _ride(eco, citizen, 2500)]
    first = api(env).send_events(eco.device.id, batch)
    assert first["record_count"] == 2
    uploads = _stored(eco)
    with pytest.raises(Conflict) as again:
        api(env).send_events(eco.device.id, batch)
    assert again.value.code == "duplicate_event"
    # one stored event in a new batch: the whole batch is refused, nothing stored
    with pytest.raises(Conflict):
        api(env).send_events(eco.device.id, [_ride(eco, citizen, 700), batch[0]])
    assert _stored(eco) == uploads
    assert _balance(eco, citizen) == 3500


def test_a_suspended_devices_events_are_refused_and_store_nothing(eco: Eco) -> None:
    """Its key may be in the wrong hands: its batches reach neither the vault nor the ledger
    (an upload anchored and withdrawn per batch would let it write to both at will)."""
    env, citizen = eco.env, register_subject(eco.env)
    event = _ride(eco, citizen, 4000, eco.suspended)
    before = _stored(eco)
    with pytest.raises(Forbidden) as refused:
        api(env).send_events(eco.suspended.id, [event])
    assert refused.value.code == "device_suspended"
    assert _stored(eco) == before
    rid = record_id(bytes.fromhex(eco.suspended.id), bytes.fromhex(event["event"]))
    r = env.client.get(f"/v1/records/{rid}", headers=eco.provider_headers)
    assert r.status_code == 404, r.text  # never stored
    assert _balance(eco, citizen) == 0


def test_an_unknown_device_is_404_and_an_unregistered_subject_withdraws(eco: Eco) -> None:
    env = eco.env
    stranger = Device(env.chain_id, "centre")
    citizen = register_subject(env)
    with pytest.raises(NotFound) as unknown:
        api(env).send_events(stranger.id, [_ride(eco, citizen, 100, stranger)])
    assert unknown.value.code == "device_unknown"
    nobody = Wallet()  # never registered: the contract refuses, the upload is withdrawn
    with pytest.raises(NotFound) as no_subject:
        api(env).send_events(eco.device.id, [_ride(eco, nobody, 100)])
    assert no_subject.value.code == "unknown_subject"
    assert _uploads(eco)[0]["state"] == "withdrawn"


def test_an_active_devices_dataset_is_read_from_the_ledger_once_for_a_while(
    eco: Eco, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch spares a round trip to the replicas while its device is known active (the
    moment is stretched here so that a slow machine cannot expire it mid-test); an unknown
    device is looked up each time (it may be registered since)."""
    monkeypatch.setattr(events_service, "_ACTIVE_FOR_S", 3600.0)
    env, citizen = eco.env, register_subject(eco.env)
    _earn(eco, citizen, 100)
    asked: list[str] = []
    real = env.gateway.query

    def spy(q: str, **args: Any) -> dict[str, Any]:
        asked.append(q)
        return real(q, **args)

    monkeypatch.setattr(env.gateway, "query", spy)
    _earn(eco, citizen, 200)
    assert "device" not in asked
    stranger = Device(env.chain_id, "centre")
    for _ in range(2):
        with pytest.raises(NotFound):
            api(env).send_events(stranger.id, [_ride(eco, citizen, 100, stranger)])
    assert asked.count("device") == 2
    assert _balance(eco, citizen) == 300


def test_transfer_and_overdraft(eco: Eco) -> None:
    env = eco.env
    alice, bob = register_subject(env), register_subject(env)
    _earn(eco, alice, 3000)
    api(env).transfer(alice.key, to=bob.id, amount_mtok=1200)
    assert (_balance(eco, alice), _balance(eco, bob)) == (1800, 1200)
    with pytest.raises(Conflict) as overdraft:
        api(env).transfer(alice.key, to=bob.id, amount_mtok=1801)
    assert overdraft.value.code == "insufficient_tokens"
    with pytest.raises(NotFound) as unknown:
        api(env).transfer(alice.key, to=Wallet().id, amount_mtok=1)
    assert unknown.value.code == "unknown_member"
    assert (_balance(eco, alice), _balance(eco, bob)) == (1800, 1200)
    holder = env.headers("subject", alice)["Authorization"].split()[1]
    statement = CivisClient(http=env.client, api_key=holder).token_statement(alice.id)["result"]
    assert [(e["kind"], e["mtok"]) for e in statement["entries"]] == [
        ("minted", 3000),
        ("sent", 1200),
    ]
    assert statement["totals"]["balance"] == 1800
    # a balance is its holder's (or the DPO's) to read
    r = env.client.get(f"/v1/accounts/{alice.id}", headers=env.headers("subject", bob))
    assert r.status_code == 403


def test_redeem_then_spend_once_and_the_qr_verifies(eco: Eco) -> None:
    env, citizen = eco.env, register_subject(eco.env)
    _earn(eco, citizen, 5000)
    with pytest.raises(Conflict) as too_poor:
        api(env).redeem(register_subject(env).key, offer=eco.offer, price_mtok=2000)
    assert too_poor.value.code == "insufficient_tokens"
    with pytest.raises(Conflict) as not_that_price:  # the holder names the offer's price
        api(env).redeem(citizen.key, offer=eco.offer, price_mtok=1999)
    assert not_that_price.value.code == "price_mismatch"
    assert _balance(eco, citizen) == 5000
    redeemed = api(env).redeem(citizen.key, offer=eco.offer, price_mtok=2000)
    assert _balance(eco, citizen) == 3000
    issued = redeemed["coupon"]
    assert issued["offer"] == eco.offer and issued["price_mtok"] == 2000
    vault = bytes.fromhex(issued["issuer"])
    assert vault == env.gateway.vault_id
    qr = coupons.verify_qr(redeemed["qr"], chain_id=env.chain_id, issuer=vault, price_mtok=2000)
    assert qr.code == redeemed["code"] and qr.height == redeemed["receipt"]["block_height"]
    for bad_price, bad_chain in ((1999, env.chain_id), (2000, "another-chain")):
        with pytest.raises(coupons.CouponError):
            coupons.verify_qr(
                redeemed["qr"], chain_id=bad_chain, issuer=vault, price_mtok=bad_price
            )
    tampered = redeemed["qr"].replace(f".{qr.height}.", f".{qr.height + 1}.")
    with pytest.raises(coupons.CouponError):
        coupons.verify_qr(tampered, chain_id=env.chain_id, issuer=vault, price_mtok=2000)

    # only the offer's partner spends it, once
    with pytest.raises(Forbidden) as other:
        api(env).spend_coupon(env.provider.key, redeemed["code"])
    assert other.value.code in ("not_your_coupon", "not_member", "unauthorized")
    api(env).spend_coupon(eco.partner.key, redeemed["code"])
    with pytest.raises(Conflict) as twice:
        api(env).spend_coupon(eco.partner.key, redeemed["code"])
    assert twice.value.code == "coupon_spent"
    with pytest.raises(NotFound) as never:
        api(env).spend_coupon(eco.partner.key, coupons.encode_code(coupons.new_secret()))
    assert never.value.code == "unknown_coupon"


def test_two_concurrent_spends_of_one_coupon_exactly_one_succeeds(eco: Eco) -> None:
    env, citizen = eco.env, register_subject(eco.env)
    _earn(eco, citizen, 2000)
    code = api(env).redeem(citizen.key, offer=eco.offer, price_mtok=2000)["code"]
    # both signed first, then sent together: the ledger's order decides
    body = {"secret": coupons.decode_code(code).hex()}
    signed = [api(env).sign(eco.partner.key, "coupon.spend", body) for _ in range(2)]
    statuses: list[int] = []
    start = threading.Barrier(2)

    def spend(transaction: dict[str, str]) -> None:
        start.wait()
        r = env.client.post("/v1/coupons/spend", json=dict(transaction))
        statuses.append(r.status_code)

    threads = [threading.Thread(target=spend, args=(s,)) for s in signed]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(statuses) == [201, 409]


def test_rules_offers_and_devices_are_readable_by_members(eco: Eco) -> None:
    env = eco.env
    reader = CivisClient(
        http=env.client, api_key=env.headers("consumer", env.consumer)["Authorization"].split()[1]
    )
    rules = reader.reward_rules()["result"]
    assert any(r["rule"] == "cycling" and r["rate_mtok"] == 1000 for r in rules)
    offers = reader.offers(partner=eco.partner.id)["result"]
    assert [o["offer"] for o in offers] == [eco.offer]
    device = reader.device(eco.device.id)["result"]
    assert device["status"] == "active" and device["dataset"] == eco.dataset
    assert reader.device(eco.suspended.id)["result"]["status"] == "suspended"
    with pytest.raises(NotFound):
        reader.device(Device(env.chain_id, "x").id)
    r = env.client.get("/v1/reward-rules")
    assert r.status_code == 401  # reads need a member's API key


def _dpo(env: LedgerEnv) -> CivisClient:
    return CivisClient(
        http=env.client, api_key=env.headers("dpo", env.dpo)["Authorization"].split()[1]
    )


def _event_entry(eco: Eco, ride: dict[str, Any]) -> dict[str, Any]:
    """The ride's event entry on the ledger (`event` query); rewarded, so there is one."""
    device, event = bytes.fromhex(eco.device.id), bytes.fromhex(ride["event"])
    found = eco.env.gateway.query("event", device=device, event=event)
    assert found["result"] is not None, found
    out: dict[str, Any] = found["result"]
    return out


def _replica_hits(env: LedgerEnv, needle: bytes) -> dict[int, int]:
    """Files of each replica's store (its SQLite database, write-ahead log and snapshots)
    holding `needle`, raw or hex."""
    hits: dict[int, int] = {}
    for i in range(env.cluster.genesis.n):
        store = env.cluster.directory / "data" / f"node-{i}"
        files = [p for p in store.rglob("*") if p.is_file()]
        found = [
            p for p in files if any(f in p.read_bytes() for f in (needle, needle.hex().encode()))
        ]
        hits[i] = len(found)
    return hits


def _applied_at(env: LedgerEnv, height: int) -> list[int]:
    """Once every replica executed block `height` (a receipt needs only f+1 of them): each
    one's count of redactions applied."""
    deadline = time.monotonic() + 30
    while True:
        statuses = [env.gateway.status(i) or {} for i in range(env.cluster.genesis.n)]
        if all(s.get("last_executed", 0) >= height for s in statuses):
            return [int(s.get("redactions_applied", 0)) for s in statuses]
        assert time.monotonic() < deadline, f"block {height} not everywhere: {statuses}"
        time.sleep(0.1)


def _redacted_everywhere(env: LedgerEnv, applied_before: list[int]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        statuses = [env.gateway.status(i) or {} for i in range(env.cluster.genesis.n)]
        if all(
            s.get("redactions_applied", 0) > applied_before[i] and s.get("redactions_pending") == 0
            for i, s in enumerate(statuses)
        ):
            return
        time.sleep(0.2)
    seen = [(s.get("redactions_applied"), s.get("redactions_pending")) for s in statuses]
    raise AssertionError(f"the redaction was never applied: (applied, pending) {seen}")


def test_an_erasure_in_the_eco_dataset_leaves_no_claim_of_the_subject_on_any_replica(
    eco: Eco,
) -> None:
    """A reward's claim names the subject, the device (hence the district), the time and the
    quantity in clear. The DPO erases one rider from the eco dataset; once every replica applied
    the redaction, no file of any replica's store holds the device's signature over that
    rider's claim (bytes only the reward transaction carries), and the event entry no longer
    names them. The control: the same scan finds the other rider's claim on every replica, and
    found the erased one's before the erasure."""
    env = eco.env
    erased, kept = env.register_subject(), env.register_subject()
    rides = {w.id: _ride(eco, w, 1500) for w in (erased, kept)}
    answers = [api(env).send_events(eco.device.id, [ride]) for ride in rides.values()]
    signature = {who: bytes.fromhex(ride["signature"]) for who, ride in rides.items()}
    applied = _applied_at(env, max(int(a["receipt"]["block_height"]) for a in answers))
    before = _replica_hits(env, signature[erased.id])
    assert all(n >= 1 for n in before.values()), before

    cert = _dpo(env).erase(subject_id=erased.id, dataset_id=eco.dataset)
    assert cert["state"] == "recorded", cert
    _redacted_everywhere(env, applied)

    assert _replica_hits(env, signature[erased.id]) == dict.fromkeys(before, 0)
    assert all(n >= 1 for n in _replica_hits(env, signature[kept.id]).values())
    assert _event_entry(eco, rides[erased.id]) == {}
    assert _event_entry(eco, rides[kept.id])["subject"] == kept.id


def test_an_erased_upload_of_event_records_leaves_no_claim_of_it_on_any_replica(eco: Eco) -> None:
    """The reward names the upload holding its events' records; the DPO erases that upload,
    and once every replica applied the redaction no file of any replica's store holds the
    device's signature over the claim. The control: another batch's claim, in an upload still
    live, is found on every replica."""
    env = eco.env
    rider = env.register_subject()
    rides = [_ride(eco, rider, 700), _ride(eco, rider, 900)]
    answers = [api(env).send_events(eco.device.id, [ride]) for ride in rides]
    signatures = [bytes.fromhex(ride["signature"]) for ride in rides]
    applied = _applied_at(env, max(int(a["receipt"]["block_height"]) for a in answers))
    assert all(n >= 1 for n in _replica_hits(env, signatures[0]).values())

    cert = _dpo(env).erase(upload_id=answers[0]["upload_id"])
    assert cert["state"] == "recorded", cert
    _redacted_everywhere(env, applied)

    assert set(_replica_hits(env, signatures[0]).values()) == {0}
    assert all(n >= 1 for n in _replica_hits(env, signatures[1]).values())
    assert _event_entry(eco, rides[0]) == {}  # rewarded, and nothing more
    assert _event_entry(eco, rides[1])["subject"] == rider.id
