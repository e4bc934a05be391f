"""Eco-citizen event claims: what a device signs, and the commitment to an event's record.

One definition for every side that builds or checks a claim (the contract `event.reward`, the
API receiving a device's events, the device simulator, the demo and the benchmark), so they
cannot disagree on a byte.

- The commitment binds the claim to the event's personal record kept in the vault, without
  the ledger learning it: SHA-256(domain || canonical JSON of the record || salt), where the
  salt (16 random bytes, kept in the vault record) stops anyone guessing a record from its
  commitment by trying the few likely ones.
- The claim message is what the device's Ed25519 key signs: a domain, the chain id (a claim
  for one cooperative's ledger is worthless on another's) and the canonical encoding of the
  claim's fields, with keys and hashes as bytes.

Pure functions: no I/O, no clock; deterministic, as the contracts need.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from ledger_bridge.contracts import codec
from ledger_bridge.crypto import SigningKey, verify

CLAIM_DOMAIN = b"civis-vault/event-claim/v1"
COMMITMENT_DOMAIN = b"civis-vault/event/v1"
SALT_BYTES = 16
# The claim's fields in the order they are signed (the claim carries `signature` besides).
CLAIM_FIELDS = ("device", "event", "commitment", "rule", "quantity_milli", "subject", "at")


def canonical_detail(detail: Mapping[str, Any]) -> bytes:
    """The record as the commitment covers it: canonical JSON (sorted keys, no spaces, UTF-8),
    without its `salt`."""
    bare = {k: v for k, v in detail.items() if k != "salt"}
    return json.dumps(bare, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def commitment(detail: Mapping[str, Any], salt: bytes) -> bytes:
    """SHA-256(b"civis-vault/event/v1" || canonical(detail) || salt): 32 bytes."""
    if len(salt) != SALT_BYTES:
        raise ValueError(f"a salt is {SALT_BYTES} bytes")
    return hashlib.sha256(COMMITMENT_DOMAIN + canonical_detail(detail) + salt).digest()


def _raw(value: Any, size: int) -> bytes:
    """A key or hash as bytes, whether given as bytes (the ledger's form) or hex (JSON's)."""
    if type(value) is bytes and len(value) == size:  # the ledger's form: nothing to convert
        return value
    raw = bytes.fromhex(value) if isinstance(value, str) else bytes(value)
    if len(raw) != size:
        raise ValueError(f"expected {size} bytes")
    return raw


def claim_message(chain_id: str, claim: Mapping[str, Any]) -> bytes:
    """The bytes a device signs for `claim` (the ledger's form or JSON's: keys, hashes and the
    subject may be bytes or hex): CLAIM_DOMAIN || chain_id (UTF-8) || codec.encode([device,
    event, commitment, rule, quantity_milli, subject, at]), with device, event, commitment and
    subject as 32 raw bytes each. ValueError if a field is missing or of the wrong size."""
    try:
        fields = [
            _raw(claim["device"], 32),
            _raw(claim["event"], 32),
            _raw(claim["commitment"], 32),
            str(claim["rule"]),
            int(claim["quantity_milli"]),
            _raw(claim["subject"], 32),
            int(claim["at"]),
        ]
    except (KeyError, TypeError) as exc:
        raise ValueError(f"a claim needs {', '.join(CLAIM_FIELDS)}") from exc
    # encode_key: the same bytes as codec.encode for a flat list of bytes, str and int, without
    # the general normaliser (a contract checks up to 256 claims per transaction).
    return CLAIM_DOMAIN + chain_id.encode() + codec.encode_key(tuple(fields))


def sign_claim(device: SigningKey, chain_id: str, claim: Mapping[str, Any]) -> bytes:
    """The device's signature of `claim` (its `device` field must be this key)."""
    if _raw(claim["device"], 32) != bytes(device.public_key):
        raise ValueError("the claim names another device")
    return device.sign(claim_message(chain_id, claim))


def verify_claim(chain_id: str, claim: Mapping[str, Any]) -> bool:
    """Whether the claim's `signature` is its device's over its fields; never raises."""
    try:
        message = claim_message(chain_id, claim)
        signature = _raw(claim["signature"], 64)
    except (KeyError, ValueError):
        return False
    return verify(_raw(claim["device"], 32), message, signature)
