"""Devices and reward rules: who certifies eco-citizen events, and what an event earns.

A device (a bike counter's reader, a water meter, a shop's till scanner) is registered by the
active provider operating it, for one of that provider's datasets (where the events' records
go), and waits, pending, for governance to admit it (`admit_device`); governance may suspend it
(`suspend_device`): its later claims are refused, the rewards it already certified stand. A
device never signs a transaction, only event claims (`contracts/events.py`), with its own key.

Why governance admits devices: a device mints tokens. A provider alone registering a device
that certifies whatever it likes would let one member print money.

A reward rule (`set_reward_rule`) is versioned like a consent: each enactment writes a new
version tagged with its height, and an event at height h is rewarded by the newest version
written before h (`version_at`), so the primary's order inside a block cannot decide whether
an event lands before or after a change of rate. A rate of 0 retires the rule.
"""

from __future__ import annotations

from typing import Any

from ledger_bridge.contracts.rules.common import Ctx, Reject, dataset_of
from ledger_bridge.contracts.rules.consent import version_at
from ledger_bridge.contracts.state import State


def device_register(c: Ctx) -> dict[str, Any]:
    body = c.tx.body
    c.active(c.tx.author, "provider")
    dataset = dataset_of(c, body["dataset"])
    if dataset["owner"] != c.tx.author:
        raise Reject("unauthorized", "a device is registered by its dataset's owner")
    device: bytes = body["device"]
    if c.state.has("device", device):
        raise Reject("exists", "this device is already registered")
    c.state.put(
        "device",
        device,
        {
            "operator": c.tx.author,
            "kind": body["kind"],
            "dataset": body["dataset"],
            "district": body["district"],
            "status": "pending",
            "height": c.height,
        },
    )
    return {"ok": True, "status": "pending"}


# -- governance actions -----------------------------------------------------------------------


def _device(c: Ctx, device: bytes) -> dict[str, Any]:
    d: dict[str, Any] | None = c.state.get("device", device)
    if d is None:
        raise Reject("not_found", "no device registered with this key")
    return d


def validate_admit_device(c: Ctx, action: dict[str, Any]) -> dict[str, Any]:
    """A pending device, or a suspended one governance reinstates."""
    if _device(c, action["device"])["status"] == "active":
        raise Reject("exists", "this device is already admitted")
    return {"device": action["device"]}


def enact_admit_device(c: Ctx, action: dict[str, Any]) -> None:
    d = _device(c, action["device"])
    d["status"] = "active"
    c.state.put("device", action["device"], d)


def validate_suspend_device(c: Ctx, action: dict[str, Any]) -> dict[str, Any]:
    if _device(c, action["device"])["status"] == "suspended":
        raise Reject("exists", "this device is already suspended")
    return {"device": action["device"]}


def enact_suspend_device(c: Ctx, action: dict[str, Any]) -> None:
    d = _device(c, action["device"])
    d["status"] = "suspended"
    c.state.put("device", action["device"], d)


RULE_FIELDS = ("unit", "rate_mtok", "device_kinds", "cap_mtok_per_day")


def validate_set_reward_rule(c: Ctx, action: dict[str, Any]) -> dict[str, Any]:
    return {"rule": action["rule"], **{k: action[k] for k in RULE_FIELDS}}


def enact_set_reward_rule(c: Ctx, action: dict[str, Any]) -> None:
    """A new version of ("reward_rule", rule): {"cur": [height, terms], "prev": ...}; two
    enacted in one block, the block's last word counts."""
    terms = {k: action[k] for k in RULE_FIELDS}
    version = [c.height, terms]
    entry = c.state.get("reward_rule", action["rule"])
    if entry is None:
        new = {"cur": version, "prev": None}
    elif entry["cur"][0] == c.height:
        new = {"cur": version, "prev": entry["prev"]}
    else:
        new = {"cur": version, "prev": entry["cur"]}
    c.state.put("reward_rule", action["rule"], new)


def rule_at(state: State, rule: str, height: int) -> dict[str, Any] | None:
    """The terms of `rule` in force for an event at `height`, or None (unknown or retired)."""
    version = version_at(state.get("reward_rule", rule), height)
    if version is None or version[1]["rate_mtok"] == 0:
        return None
    terms: dict[str, Any] = version[1]
    return terms
