"""Signatures and MACs for the ledger: the only ledger-side module that imports `hazmat`.

Why a wrapper: replicas, clients, contracts and wallets must all sign the same bytes the same
way, and a verification failure must be a plain `False` (peer input is expected to be bad
sometimes) rather than an exception that a handler might forget to catch.

Ed25519 signatures are deterministic (RFC 8032), so signing stays a pure function and the
replica core can sign without breaking its no-randomness rule. Private keys never print:
`repr()` shows the public key only.

Why libsodium (PyNaCl) for Ed25519 and not `cryptography`'s OpenSSL: signature checks are the
largest CPU cost of the PBFT normal case and of every consent transaction, and on the
benchmark machine libsodium verifies in about half OpenSSL's time and signs in about 60 %
(`civis-vault bench crypto --json`, figures in docs/BENCHMARKS.md). libsodium's verification
is also the strict one (it refuses non-canonical S, non-canonical or small-order keys), so no
signature OpenSSL would refuse gets through. X25519 and HKDF stay on `cryptography`.
"""

from __future__ import annotations

import hashlib
import hmac
import os

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from nacl import bindings as sodium
from nacl.exceptions import BadSignatureError

PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64
MAC_BYTES = 32


class SigningKey:
    """An Ed25519 private key. Construct with `generate()` or from its 32-byte seed."""

    __slots__ = ("_secret", "_seed", "public_key")

    def __init__(self, seed: bytes) -> None:
        if len(seed) != 32:
            raise ValueError("an Ed25519 seed is 32 bytes")
        public, self._secret = sodium.crypto_sign_seed_keypair(bytes(seed))
        self._seed = bytes(seed)
        self.public_key = VerifyKey(public)

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(os.urandom(32))

    def seed(self) -> bytes:
        """The 32-byte private seed: write it only to a 0600 key file."""
        return self._seed

    def sign(self, message: bytes) -> bytes:
        # crypto_sign returns signature || message; the detached signature is its head.
        return sodium.crypto_sign(message, self._secret)[:SIGNATURE_BYTES]

    def __repr__(self) -> str:
        return f"SigningKey(public={self.public_key.hex()[:16]}…, private=***)"


class VerifyKey:
    """An Ed25519 public key (32 raw bytes), hashable so it can key dictionaries."""

    __slots__ = ("_bytes",)

    def __init__(self, raw: bytes) -> None:
        if len(raw) != PUBLIC_KEY_BYTES:
            raise ValueError("an Ed25519 public key is 32 bytes")
        self._bytes = bytes(raw)

    def __bytes__(self) -> bytes:
        return self._bytes

    def hex(self) -> str:
        return self._bytes.hex()

    def verify(self, message: bytes, signature: bytes) -> bool:
        """True when `signature` is this key's signature of `message`; never raises on bad input."""
        if len(signature) != SIGNATURE_BYTES:
            return False
        try:
            sodium.crypto_sign_open(bytes(signature) + bytes(message), self._bytes)
        except BadSignatureError:
            return False
        return True

    def __eq__(self, other: object) -> bool:
        return isinstance(other, VerifyKey) and hmac.compare_digest(self._bytes, other._bytes)

    def __hash__(self) -> int:
        return hash(self._bytes)

    def __repr__(self) -> str:
        return f"VerifyKey({self._bytes.hex()[:16]}…)"


def verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """Verify with a raw public key; a malformed key is a failed verification, not an error."""
    try:
        key = VerifyKey(public_key)
    except ValueError:
        return False
    return key.verify(message, signature)


def mac(key: bytes, message: bytes) -> bytes:
    """HMAC-SHA256, for MAC authenticators on the normal path where signatures cost too much."""
    return hmac.new(key, message, hashlib.sha256).digest()


def mac_ok(key: bytes, message: bytes, tag: bytes) -> bool:
    return hmac.compare_digest(mac(key, message), tag)


# -- reply sessions: MAC authenticators between one client connection and one replica -------
#
# Why: a client needs f+1 authentic REPLYs per transaction; checking two Ed25519 signatures
# costs it ~0.1-0.3 ms, an HMAC ~2 us (PBFT's authenticators, TOCS 2002). Each end of a
# client connection draws an ephemeral X25519 key; the replica signs the transcript (replica
# id, both public keys) with its validator key, so the client knows whom it shares the MAC
# key with; both derive the key with HKDF-SHA256 over the transcript. Ephemeral keys: a
# replica's stolen validator key does not reveal past session keys.

SESSION_DOMAIN = b"civis-pbft-v1:reply-session:"
X25519_PUBLIC_BYTES = 32


def session_transcript(replica_id: int, client_public: bytes, replica_public: bytes) -> bytes:
    """What the replica signs and both ends bind the MAC key to."""
    return SESSION_DOMAIN + replica_id.to_bytes(4, "big") + client_public + replica_public


class SessionKey:
    """An ephemeral X25519 key for one connection. `repr()` shows the public half only."""

    __slots__ = ("_key", "public")

    def __init__(self) -> None:
        self._key = X25519PrivateKey.generate()
        self.public = self._key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    def mac_key(self, peer_public: bytes, transcript: bytes) -> bytes | None:
        """The shared MAC key, or None for a malformed or small-order peer key."""
        if len(peer_public) != X25519_PUBLIC_BYTES:
            return None
        try:
            shared = self._key.exchange(X25519PublicKey.from_public_bytes(peer_public))
        except ValueError:
            return None
        hkdf = HKDF(algorithm=hashes.SHA256(), length=MAC_BYTES, salt=None, info=transcript)
        return hkdf.derive(shared)

    def __repr__(self) -> str:
        return f"SessionKey(public={self.public.hex()[:16]}…, private=***)"


def digest(data: bytes) -> bytes:
    """SHA-256, the one hash of the ledger (block hashes, batch digests, state roots)."""
    return hashlib.sha256(data).digest()
