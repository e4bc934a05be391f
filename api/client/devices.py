"""A certified device in software: builds event records, commits to them and signs claims.

What a bike counter, a water meter or a shop scanner does for each event, with the same
functions the contract verifies with (`ledger_bridge/contracts/events.py`): pick a salt,
commit to the record without it, sign the claim with the device's own Ed25519 key. Used by
the tests, the demo and the bench; a real device runs the same three steps in its firmware.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass, field
from typing import Any, TypedDict

from ledger_bridge.contracts import events
from ledger_bridge.crypto import SigningKey

# The detail field each rule's unit fills; the others are null.
UNIT_FIELDS = {"km": "km", "litre": "litres", "euro": "euros"}


def iso_week(at_ms: int) -> str:
    """`2026-W49`: the ISO week an event falls in (UTC), the unit of impact statistics."""
    year, week, _ = dt.datetime.fromtimestamp(at_ms / 1000, dt.UTC).isocalendar()
    return f"{year}-W{week:02d}"


def detail_record(
    *,
    event: str,
    device: str,
    rule: str,
    unit: str,
    quantity_milli: int,
    at_ms: int,
    district: str,
    salt: bytes,
) -> dict[str, Any]:
    """The event record the vault keeps (docs/API.md "The event record"), salt included."""
    record: dict[str, Any] = {
        "event": event,
        "device": device,
        "rule": rule,
        "at": dt.datetime.fromtimestamp(at_ms / 1000, dt.UTC).isoformat(timespec="milliseconds"),
        "district": district,
        "week": iso_week(at_ms),
        "km": None,
        "litres": None,
        "euros": None,
        "salt": salt.hex(),
    }
    record[UNIT_FIELDS[unit]] = quantity_milli / 1000
    return record


@dataclass
class Device:
    """A device's key and where it reports: the chain its claims are for, its district."""

    chain_id: str
    district: str
    key: SigningKey = field(default_factory=SigningKey.generate)

    @property
    def id(self) -> str:
        return bytes(self.key.public_key).hex()

    def event(
        self,
        *,
        subject: str,
        rule: str,
        unit: str,
        quantity_milli: int,
        at_ms: int | None = None,
        event: bytes | None = None,
    ) -> dict[str, Any]:
        """One signed event as `POST /v1/devices/{device}/events` takes it: the claim's
        fields, its device signature, and the detail (with its salt) the claim commits to."""
        at = at_ms if at_ms is not None else int(dt.datetime.now(dt.UTC).timestamp() * 1000)
        event_id = event if event is not None else os.urandom(32)
        salt = os.urandom(events.SALT_BYTES)
        detail = detail_record(
            event=event_id.hex(),
            device=self.id,
            rule=rule,
            unit=unit,
            quantity_milli=quantity_milli,
            at_ms=at,
            district=self.district,
            salt=salt,
        )
        claim: dict[str, Any] = {
            "device": self.id,
            "event": event_id.hex(),
            "commitment": events.commitment(detail, salt).hex(),
            "rule": rule,
            "quantity_milli": quantity_milli,
            "subject": subject,
            "at": at,
        }
        signature = events.sign_claim(self.key, self.chain_id, claim)
        return {**claim, "signature": signature.hex(), "detail": detail}


class EventsAnswer(TypedDict):
    """`POST /v1/devices/{device}/events`: the reward's receipt, [subject, mtok] credited, and
    the vault upload holding the details."""

    receipt: dict[str, Any]
    credited: list[list[Any]]
    upload_id: str
    dataset_id: str
    record_count: int
