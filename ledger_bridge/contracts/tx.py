"""Signed contract transactions.

A transaction is the canonical encoding of the map

    {"v": 1, "type": ..., "author": <32-byte Ed25519 key>, "nonce": <16 bytes>,
     "valid_until": <ms since epoch>, "body": {...}, "sig": <64 bytes>}

and `sig` is the author's Ed25519 signature of `DOMAIN || canonical([chain_id, map without sig])`.

Why these fields:
- the chain id in the signed bytes stops a transaction signed for one cooperative's ledger
  from being replayed on another's (a test chain, a fork);
- replay on the same chain is stopped by the nonce: the contracts remember every
  (author, nonce) until `valid_until` has passed, and refuse a transaction whose
  `valid_until` is already past or further ahead than `TTL_MAX_MS`, so the memory of nonces
  is bounded by the traffic of one TTL, yet no transaction can ever execute twice. A random
  nonce (rather than a per-author counter) lets several API instances, or a subject's wallet
  and the vault, sign for the same author concurrently without racing for the next number;
- the subject's will (consent, revocation, erasure request) is expressed by a transaction
  whose author IS the subject's key: the vault relays it but cannot produce it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from ledger_bridge import facts
from ledger_bridge.contracts import codec
from ledger_bridge.crypto import SIGNATURE_BYTES, SigningKey, digest, verify

VERSION = 1
DOMAIN = b"civis-vault/contract-tx/v1\x00"
NONCE_BYTES = 16
TTL_MAX_MS = 60 * 60 * 1000  # a signed transaction is usable for at most one hour
TX_BYTES_MAX = 512 * 1024

# The type names are shared with the vault's outbox facts: one definition (ledger_bridge/facts.py).
TX_TYPES = facts.TX_TYPES


class MalformedTx(ValueError):
    """Bytes that are not a well-formed transaction (the result code is `malformed`)."""


@dataclass(frozen=True, slots=True)
class SignedTx:
    type: str
    author: bytes
    nonce: bytes
    valid_until: int
    body: dict[str, Any]
    sig: bytes
    # The canonical bytes `decode` read this from (None for a transaction built any other way,
    # `dataclasses.replace` included, as it is not an init field): the id and the signed bytes
    # are read off them rather than normalised and encoded again, once per use, on every
    # replica. Valid because nothing mutates a decoded transaction's body.
    raw: bytes | None = field(default=None, init=False, compare=False, repr=False)

    def unsigned(self) -> dict[str, Any]:
        return {
            "v": VERSION,
            "type": self.type,
            "author": self.author,
            "nonce": self.nonce,
            "valid_until": self.valid_until,
            "body": self.body,
        }

    def encode(self) -> bytes:
        if self.raw is not None:
            return self.raw
        return codec.encode({**self.unsigned(), "sig": self.sig})

    @property
    def tx_id(self) -> bytes:
        """SHA-256 of the canonical bytes: the transaction's name in blocks and results."""
        return digest(self.encode())

    def signing_bytes(self, chain_id: str) -> bytes:
        """What `sig` signs. For a decoded transaction every value is already canonical (its
        maps hold their keys sorted, as `codec.decode` checked), so msgpack of the unsigned
        map built in key order is the canonical encoding without the normaliser."""
        if self.raw is None:
            return signing_bytes(chain_id, self.unsigned())
        unsigned = {
            "author": self.author,
            "body": self.body,
            "nonce": self.nonce,
            "type": self.type,
            "v": VERSION,
            "valid_until": self.valid_until,
        }
        packed: bytes = codec.pack([chain_id, unsigned])
        return DOMAIN + packed

    def verify(self, chain_id: str) -> bool:
        return _verify_once(self.author, self.signing_bytes(chain_id), self.sig)


# Memo of successful verifications, keyed by the exact (key, bytes, signature): a pure
# function's cache. The primary checks a transaction at admission and again at execution;
# the second check is a lookup. Bounded: cleared when full, which costs only recomputation.
_VERIFIED: dict[tuple[bytes, bytes, bytes], None] = {}
VERIFIED_CACHE_MAX = 4096


def _verify_once(author: bytes, message: bytes, sig: bytes) -> bool:
    memo = (author, message, sig)
    if memo in _VERIFIED:
        return True
    if not verify(author, message, sig):
        return False
    if len(_VERIFIED) >= VERIFIED_CACHE_MAX:
        _VERIFIED.clear()
    _VERIFIED[memo] = None
    return True


def signing_bytes(chain_id: str, unsigned: dict[str, Any]) -> bytes:
    return DOMAIN + codec.encode([chain_id, unsigned])


def sign(
    key: SigningKey,
    chain_id: str,
    tx_type: str,
    body: dict[str, Any],
    *,
    valid_until: int,
    nonce: bytes | None = None,
) -> SignedTx:
    """Build and sign a transaction (client side: wallets, the vault, tests)."""
    if tx_type not in TX_TYPES:
        raise ValueError(f"unknown transaction type {tx_type!r}")
    nonce = os.urandom(NONCE_BYTES) if nonce is None else nonce
    if len(nonce) != NONCE_BYTES:
        raise ValueError(f"a nonce is {NONCE_BYTES} bytes")
    unsigned = {
        "v": VERSION,
        "type": tx_type,
        "author": bytes(key.public_key),
        "nonce": nonce,
        "valid_until": valid_until,
        "body": codec.decode(codec.encode(body)),  # normalised: what the ledger will see
    }
    sig = key.sign(signing_bytes(chain_id, unsigned))
    return SignedTx(tx_type, bytes(key.public_key), nonce, valid_until, unsigned["body"], sig)


def decode(raw: bytes) -> SignedTx:
    """Parse a transaction's bytes; raise MalformedTx with a reason that holds no payload."""
    try:
        obj = codec.decode(raw, max_bytes=TX_BYTES_MAX)
    except codec.NotCanonical as exc:
        raise MalformedTx(str(exc)) from None
    if not isinstance(obj, dict) or set(obj) != {
        "v",
        "type",
        "author",
        "nonce",
        "valid_until",
        "body",
        "sig",
    }:
        raise MalformedTx(
            "a transaction is a map of v, type, author, nonce, valid_until, body, sig"
        )
    if obj["v"] != VERSION:
        raise MalformedTx(f"unsupported version {obj['v']!r}")
    if obj["type"] not in TX_TYPES:
        raise MalformedTx("unknown transaction type")
    if not isinstance(obj["author"], bytes) or len(obj["author"]) != 32:
        raise MalformedTx("author is a 32-byte Ed25519 public key")
    if not isinstance(obj["nonce"], bytes) or len(obj["nonce"]) != NONCE_BYTES:
        raise MalformedTx(f"nonce is {NONCE_BYTES} bytes")
    if type(obj["valid_until"]) is not int or obj["valid_until"] < 0:
        raise MalformedTx("valid_until is a non-negative integer (ms since epoch)")
    if not isinstance(obj["body"], dict):
        raise MalformedTx("body is a map")
    if not isinstance(obj["sig"], bytes) or len(obj["sig"]) != SIGNATURE_BYTES:
        raise MalformedTx("sig is a 64-byte Ed25519 signature")
    decoded = SignedTx(
        obj["type"], obj["author"], obj["nonce"], obj["valid_until"], obj["body"], obj["sig"]
    )
    object.__setattr__(decoded, "raw", bytes(raw))  # frozen: set once, here
    return decoded
