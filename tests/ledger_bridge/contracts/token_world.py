"""The eco-citizen token economy on the contracts' test bench: a provider operating one device
of each kind (admitted by governance), the white paper's three reward rules, a partner and its
offer, and helpers to sign claims as a device does."""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass, field
from typing import Any

from ledger_bridge.contracts import events
from ledger_bridge.crypto import SigningKey
from tests.ledger_bridge.contracts.harness import CHAIN, DAY, Chain, Member, key, standard

# The white paper's rules: (rule, unit, rate_mtok, device kinds)
RULES = {
    "cycling": ("km", 1000, ["bike_reader"]),
    "water-saving": ("litre", 3000, ["water_meter"]),
    "local-produce": ("euro", 1000, ["shop_scanner"]),
}
KIND_OF_RULE = {rule: kinds[0] for rule, (_, _, kinds) in RULES.items()}
DATASET = "eco-events"


def decide(chain: Chain, action: dict[str, Any], *voters: Member) -> None:
    """Propose `action` and have the founders, then `voters`, approve it until it passes."""
    pid = chain.ok(
        chain.vault, "governance.propose", {"action": action, "voting_ends": chain.time_ms + DAY}
    )["proposal"]
    for voter in [chain.vault, chain.dpo, *chain.validators, *voters]:
        r = chain.one(voter, "governance.vote", {"proposal": pid, "approve": True})
        if r.get("status") == "passed":
            return
    raise AssertionError(f"proposal {pid} did not pass: {chain.query(q='proposal', proposal=pid)}")


def rule_action(rule: str, rate: int | None = None, cap: int = 0, **kw: Any) -> dict[str, Any]:
    unit, default_rate, kinds = RULES[rule]
    return {
        "kind": "set_reward_rule",
        "rule": rule,
        "unit": kw.get("unit", unit),
        "rate_mtok": default_rate if rate is None else rate,
        "device_kinds": kw.get("device_kinds", kinds),
        "cap_mtok_per_day": cap,
    }


@dataclass
class Eco:
    chain: Chain
    provider: Member
    partner: Member
    devices: dict[str, SigningKey]  # by device kind
    _events: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def claim(
        self,
        subject: Member | str,
        rule: str = "cycling",
        quantity_milli: int = 1000,
        *,
        device: SigningKey | None = None,
        at: int | None = None,
        event: bytes | None = None,
    ) -> dict[str, Any]:
        """A claim signed by `device` (by default, the device of the rule's kind)."""
        device = device or self.devices[KIND_OF_RULE.get(rule, "bike_reader")]
        n = next(self._events)
        claim: dict[str, Any] = {
            "device": bytes(device.public_key),
            "event": event or hashlib.sha256(b"event %d" % n).digest(),
            "commitment": hashlib.sha256(b"detail %d" % n).digest(),
            "rule": rule,
            "quantity_milli": quantity_milli,
            "subject": subject if isinstance(subject, str) else subject.subject,
            "at": self.chain.time_ms if at is None else at,
        }
        claim["signature"] = events.sign_claim(device, CHAIN, claim)
        return claim

    def reward(self, *claims: dict[str, Any]) -> bytes:
        return self.chain.sign(self.chain.vault, "event.reward", {"claims": list(claims)})

    def balance(self, who: Member | bytes) -> int:
        account = who.pub if isinstance(who, Member) else who
        mtok: int = self.chain.query(q="balance", account=account)["mtok"]
        return mtok

    def offer(self, name: str = "bread", price: int = 2000, **kw: Any) -> dict[str, Any]:
        body = {"offer": name, "title": "a loaf", "category": "food", "price_mtok": price}
        return self.chain.ok(self.partner, "offer.publish", {**body, "active": True, **kw})

    def supply_holds(self) -> dict[str, int]:
        s: dict[str, int] = self.chain.query(q="supply")
        assert s["minted"] == s["balances"] + s["redeemed"] + s["expired"] + s["forfeited"], s
        return s


def register_device(chain: Chain, operator: Member, device: SigningKey, kind: str) -> None:
    body = {"device": bytes(device.public_key), "kind": kind, "dataset": DATASET}
    chain.ok(operator, "device.register", {**body, "district": "centre"})


def eco(*, cap: int = 0, admit: bool = True) -> Eco:
    chain, provider, _ = standard()
    chain.dataset(provider, DATASET, category="eco", purposes=["impact-statistics"])
    devices = {
        kind: key(900 + i) for i, kind in enumerate(["bike_reader", "water_meter", "shop_scanner"])
    }
    for kind, device in devices.items():
        register_device(chain, provider, device, kind)
        if admit:
            decide(chain, {"kind": "admit_device", "device": bytes(device.public_key)})
    for rule in RULES:
        decide(chain, rule_action(rule, cap=cap))
    partner = chain.fresh("partner", "providers")
    chain.admit_by_vote(partner)
    return Eco(chain, provider, partner, devices)
