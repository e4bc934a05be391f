"""Eco-citizen tokens: certified devices reward citizens' rides, water savings and local
purchases; a citizen redeems tokens at a partner for a coupon spent once; the metropolis sees
the impact per district and week, never a person, and no cell of fewer than k citizens.

Why each citizen here is a pseudonym of the device's dataset: the device certifies an event
for the subject it knows, the event's detail goes to that dataset in the vault, and the reward
to that pseudonym's balance; the same citizen cycling and saving water holds two unlinkable
accounts. Why ten cyclists: k-anonymity's k is 10 unless governance set it otherwise, so ten
consenting cyclists in one district and week make a cell the metropolis may see, and the three
households of another district, or the two shoppers of a third, make cells it may not.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from api.cli.demo.common import RESIDENTS, DemoFailed, Story, receipt_text
from api.cli.demo.proof_of_address import UTILITY
from api.cli.demo.road_maintenance import FLEET
from api.cli.demo.stage import Entity, Party, Stage
from api.client import coupons
from api.client.devices import Device

PURPOSE = "impact-statistics"
MARKET: Entity = ("the covered market Halles", "providers", "provider")
BAKERY: Entity = ("the bakery Fournil", "services", "partner")
METROPOLIS: Entity = ("the metropolis Grand Lyon", "services", "consumer")
OFFER_PRICE_MTOK = 10_000
QUANTITY_WORDS = {"km": "km", "litre": "litres", "euro": "euros"}


@dataclass(frozen=True)
class Rule:
    """A white paper reward rule: its name, unit, rate (mtok per unit), certifying kind."""

    name: str
    unit: str
    rate_mtok: int
    kind: str

    def action(self) -> dict[str, Any]:
        return {
            "kind": "set_reward_rule",
            "rule": self.name,
            "unit": self.unit,
            "rate_mtok": self.rate_mtok,
            "device_kinds": [self.kind],
            "cap_mtok_per_day": 0,
        }

    def minted(self, quantity_milli: int) -> int:
        return quantity_milli * self.rate_mtok // 1000


CYCLING = Rule("cycling", "km", 1000, "bike_reader")
WATER_SAVING = Rule("water-saving", "litre", 3000, "water_meter")
LOCAL_PRODUCE = Rule("local-produce", "euro", 1000, "shop_scanner")
RULES = (CYCLING, WATER_SAVING, LOCAL_PRODUCE)

# Who did what, in thousandths of the rule's unit (12.4 km is 12400).
RIDES = [
    ("Alice", 12_400),
    ("Bruno", 5_300),
    ("Chloé", 8_100),
    ("Dmitri", 3_700),
    ("Émile", 15_000),
    ("Fatou", 6_200),
    ("Gaspard", 4_800),
    ("Hélène", 9_900),
    ("Inès", 2_500),
    ("Jules", 7_000),
]
SAVINGS = [("Bruno", 12_000), ("Chloé", 8_500), ("Karim", 20_000)]
PURCHASES = [("Alice", 7_500), ("Karim", 23_900)]


def tokens(mtok: int) -> str:
    return f"{mtok / 1000:g} token{'' if mtok == 1000 else 's'}"


def quantity(rule: Rule, milli: int) -> str:
    return f"{milli / 1000:g} {QUANTITY_WORDS[rule.unit]}"


@dataclass
class Station:
    """A device where it stands: its rule, operator, dataset, and the citizens it serves
    (each a pseudonym of the dataset, with the quantity it certifies for them)."""

    what: str
    rule: Rule
    operator: Party
    device: Device
    dataset: str
    citizens: list[tuple[Party, int]] = field(default_factory=list)

    @property
    def district(self) -> str:
        return self.device.district


def play(stage: Stage) -> None:
    for rule in RULES:
        stage.decide(
            rule.action(),
            f"the reward rule {rule.name}: {tokens(rule.rate_mtok)} per {rule.unit}, "
            f"certified by a {rule.kind}",
            f"{rule.name} is in force from the next block",
        )
    lumen, fleet, market, bakery, metropolis = stage.entities(
        UTILITY, FLEET, MARKET, BAKERY, METROPOLIS
    )
    stations = [
        _station(stage, fleet, "bike reader", CYCLING, "croix-rousse", "mobility"),
        _station(stage, lumen, "water meter", WATER_SAVING, "vaise", "water"),
        _station(stage, market, "shop scanner", LOCAL_PRODUCE, "presquile", "retail"),
    ]
    for station, people in zip(stations, (RIDES, SAVINGS, PURCHASES), strict=True):
        for citizen, milli in people:
            station.citizens.append((_enrol(stage, citizen, station, metropolis), milli))
    for station in stations:
        _certify(stage, station)
    _balances(stage, stations)
    alice = stations[0].citizens[0][0]
    _redeem(stage, bakery, alice, stations[0].rule.minted(RIDES[0][1]))
    _impact(stage, metropolis, stations)


def _station(
    stage: Stage, operator: Party, what: str, rule: Rule, district: str, category: str
) -> Station:
    """The operator's dataset for the device's events, the device registered and admitted."""
    dataset = stage.dataset(operator, f"{rule.name}-events", category, PURPOSE)
    device = Device(stage.keys.chain_id, district)
    with stage.doing(f"{operator.name} registering its {what}"):
        out = operator.api.register_device(
            operator.key, device=device.id, kind=rule.kind, dataset=dataset, district=district
        )
    stage.tell(
        f"{operator.name} registers a {what} ({rule.kind}, key {device.id[:12]}…) in "
        f"{district}, its events going to that dataset: {out['result']['status']} "
        f"{receipt_text(out['receipt'])}"
    )
    stage.decide(
        {"kind": "admit_device", "device": device.id},
        f"to admit {operator.name}'s {what} (a device mints tokens: the colleges decide)",
        f"the {what} in {district} is active",
    )
    return Station(what, rule, operator, device, dataset)


def _enrol(stage: Stage, citizen: str, station: Station, metropolis: Party) -> Party:
    """The citizen's pseudonym for the station's dataset, registered as a resident, and her
    consent to the metropolis's impact statistics over that dataset."""
    wallet = stage.wallet(citizen)
    party = Party(f"{citizen}-{stage.run_id}", wallet.pseudonym(station.dataset), stage.api, wallet)
    with stage.doing(f"{party.name} joining the {station.what}'s dataset"):
        joined = stage.api.register(party.key, "subject", RESIDENTS)
        consent = stage.api.grant_consent(
            party.key,
            consumer=metropolis.id,
            purpose=PURPOSE,
            notice=stage.notice(metropolis, PURPOSE),
            dataset=station.dataset,
        )
    stage.keys.by_college.setdefault(RESIDENTS, []).append(party.key)
    stage.tell(
        f"{party.name}'s wallet derives the pseudonym {party.id[:12]}… for the {station.what} "
        f"in {station.district}, registers it {receipt_text(joined['receipt'])} and consents "
        f"to the metropolis's impact statistics {receipt_text(consent['receipt'])}"
    )
    return party


def _certify(stage: Stage, station: Station) -> None:
    """One signed batch from the device: details to the vault, rewards to the pseudonyms."""
    rule, at = station.rule, int(time.time() * 1000)
    events = [
        station.device.event(
            subject=p.id, rule=rule.name, unit=rule.unit, quantity_milli=milli, at_ms=at
        )
        for p, milli in station.citizens
    ]
    with stage.doing(f"the {station.what} sending its events"):
        out = stage.api.send_events(station.device.id, events)
    expected = sorted([p.id, rule.minted(milli)] for p, milli in station.citizens)
    stage.check(
        sorted(out["credited"]) == expected and out["record_count"] == len(events),
        f"the {station.what}'s events should credit {expected}: {out}",
    )
    done = ", ".join(f"{p.name} {quantity(rule, milli)}" for p, milli in station.citizens)
    minted = sum(m for _, m in out["credited"])
    stage.tell(
        f"the {station.what} signs {len(events)} events ({done}); the vault keeps their "
        f"details encrypted in {station.operator.name}'s dataset ({out['record_count']} "
        f"records), the ledger only their commitments, and {rule.name} credits "
        f"{tokens(minted)} {receipt_text(out['receipt'])}"
    )
    # Consumers are served anchored uploads only: the metropolis reads these once anchored.
    with stage.doing(f"the {station.what}'s events being anchored"):
        upload = station.operator.api.wait_anchored(out["dataset_id"], out["upload_id"])
    stage.tell(
        f"the upload of those details is anchored (Merkle root "
        f"{upload['merkle_root'][:12]}…) {receipt_text(upload['receipt'])}"
    )


def _balances(stage: Stage, stations: list[Station]) -> None:
    for station in stations:
        shown = []
        for party, milli in station.citizens:
            with stage.doing(f"the DPO reading {party.name}'s balance"):
                mtok = int(stage.dpo.api.balance(party.id)["result"]["mtok"])
            stage.check(
                mtok == station.rule.minted(milli),
                f"{party.name}'s {station.rule.name} balance should be "
                f"{station.rule.minted(milli)} mtok, it is {mtok}",
            )
            shown.append(f"{party.name} {tokens(mtok)}")
        stage.tell(
            f"balances on the ledger ({station.rule.name} pseudonyms, read by the DPO): "
            + ", ".join(shown)
        )


def _redeem(stage: Stage, bakery: Party, citizen: Party, balance_mtok: int) -> None:
    """The bakery's offer, the citizen's coupon, checked offline, spent once, refused twice."""
    offer = f"croissant-{stage.run_id}"
    with stage.doing(f"{bakery.name} publishing an offer"):
        out = bakery.api.publish_offer(
            bakery.key,
            offer=offer,
            title="a croissant of local flour",
            category="food",
            price_mtok=OFFER_PRICE_MTOK,
        )
    stage.tell(
        f"{bakery.name} publishes the offer {offer}: a croissant of local flour for "
        f"{tokens(OFFER_PRICE_MTOK)} {receipt_text(out['receipt'])}"
    )
    with stage.doing(f"{citizen.name} redeeming {offer}"):
        redemption = stage.api.redeem(citizen.key, offer=offer, price_mtok=OFFER_PRICE_MTOK)
    stage.tell(
        f"{citizen.name} redeems {tokens(OFFER_PRICE_MTOK)} of her cycling account for "
        f"{offer}; her wallet keeps the coupon code {redemption['code']} (the ledger holds "
        f"only its hash) {receipt_text(redemption['receipt'])}"
    )
    _scan(stage, bakery, redemption)
    stage.with_key(citizen, "subject")
    with stage.doing(f"{citizen.name} reading her balance"):
        left = int(citizen.api.balance(citizen.id)["result"]["mtok"])
    stage.check(
        left == balance_mtok - OFFER_PRICE_MTOK, f"{citizen.name} should have {left} mtok left"
    )
    stage.tell(f"{citizen.name} reads her own balance: {tokens(left)} left")
    _spend_twice(stage, bakery, redemption["code"])


def _scan(stage: Stage, bakery: Party, redemption: coupons.Redemption) -> None:
    """The partner's scanner checks the QR payload with the operations key from the genesis."""
    issuer = stage.keys.operations_key
    try:
        qr = coupons.verify_qr(
            redemption["qr"],
            chain_id=stage.keys.chain_id,
            issuer=bytes.fromhex(issuer),
            price_mtok=OFFER_PRICE_MTOK,
        )
    except coupons.CouponError as exc:
        raise DemoFailed(f"the coupon's QR payload should verify: {exc}") from None
    stage.check(
        redemption["coupon"]["issuer"] == issuer and qr.height == redemption["coupon"]["height"],
        f"the coupon should be signed by the operations key {issuer}: {redemption['coupon']}",
    )
    stage.tell(
        f"{bakery.name}'s scanner reads the QR payload {redemption['qr']} and checks "
        f"offline, with the cooperative's operations key {issuer[:12]}… from the genesis, that "
        f"it was issued for {qr.offer} at {tokens(OFFER_PRICE_MTOK)} in block {qr.height}: "
        "valid, and it names nobody"
    )


def _spend_twice(stage: Stage, bakery: Party, code: str) -> None:
    with stage.doing(f"{bakery.name} spending the coupon"):
        spent = bakery.api.spend_coupon(bakery.key, code)
    stage.tell(
        f"{bakery.name} spends the coupon and hands over the croissant "
        f"{receipt_text(spent['receipt'])}"
    )
    again = stage.refused_as(
        lambda: bakery.api.spend_coupon(bakery.key, code),
        "coupon_spent",
        "the coupon shown a second time",
    )
    stage.tell(f"the same code shown a second time is refused: {again.detail}")
    with stage.doing(f"{bakery.name} reading its dashboard"):
        board = bakery.api.partner_dashboard()
    stage.check(
        board["count"] == 1 and board["mtok"] == OFFER_PRICE_MTOK,
        f"{bakery.name}'s dashboard should count one coupon: {board}",
    )
    stage.tell(
        f"{bakery.name}'s dashboard counts {board['count']} coupon spent "
        f"({tokens(board['mtok'])}), by day and category, and names no customer"
    )


def _impact(stage: Stage, metropolis: Party, stations: list[Station]) -> None:
    """The metropolis's dashboard over the story's datasets: one access each, k-anonymous."""
    datasets = [s.dataset for s in stations]
    with stage.doing(f"{metropolis.name} reading the impact dashboard"):
        board = metropolis.api.impact_dashboard(datasets)
    k = int(board["k"])
    stage.check(
        k <= len(RIDES),
        f"k_anonymity is {k} on this system: the story's {len(RIDES)} cyclists cannot make a "
        "cell the metropolis may see",
    )
    receipts = " ".join(receipt_text(a["receipt"]) for a in board["accesses"])
    stage.tell(
        f"{metropolis.name} reads the impact dashboard over the {len(datasets)} datasets: one "
        f"access each, under {PURPOSE}, recorded on the ledger {receipts}"
    )
    cells = {c["district"]: c for c in board["cells"]}
    stage.check(
        set(cells) == {s.district for s in stations},
        f"the dashboard should have one cell per district: {board['cells']}",
    )
    for station in stations:
        _cell(stage, station, cells[station.district], k)


def _cell(stage: Stage, station: Station, cell: dict[str, Any], k: int) -> None:
    n = len(station.citizens)
    stage.check(
        cell["suppressed"] == (n < k),
        f"the {station.district} cell ({n} citizens, k = {k}) should be "
        f"{'suppressed' if n < k else 'shown'}: {cell}",
    )
    where = f"{station.district}, week {cell['week']}"
    if cell["suppressed"]:
        stage.tell(f"{where}: suppressed (fewer than k = {k} citizens): no figure at all")
        return
    sums = cell["sums"]
    total = sum(milli for _, milli in station.citizens)
    field_name = QUANTITY_WORDS[station.rule.unit]
    stage.check(
        sums["subjects"] == n and round(sums[field_name] * 1000) == total,
        f"the {station.district} cell should count {n} citizens and {total} milli-units: {sums}",
    )
    stage.tell(
        f"{where}: shown, {sums['subjects']} citizens (k = {k}), "
        f"{quantity(station.rule, total)} in all"
    )


STORY = Story(
    "eco-citizen",
    "Eco-citizen tokens: certified events earn them, a coupon spends them once, "
    "the metropolis sees k-anonymous impact",
    play,
)
