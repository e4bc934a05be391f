"""The one module of `vault/` that imports `cryptography.hazmat`.

Why confined: hazmat primitives are easy to misuse (nonce reuse, unauthenticated modes, key
confusion). Everything else in the vault calls the small safe API in `vault.crypto`, and a
layering test keeps it that way. Nothing here logs, and no exception raised from here carries
key material or plaintext.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16


class AuthenticationFailed(Exception):
    """The AEAD tag did not verify: wrong key, tampered bytes or wrong associated data."""


class Aead:
    """AES-256-GCM bound to one key; building the cipher once per key keeps the hot path cheap."""

    __slots__ = ("_cipher",)

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError("AES-256-GCM needs a 32-byte key")
        self._cipher = AESGCM(key)

    def encrypt(self, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
        return self._cipher.encrypt(nonce, plaintext, aad)

    def decrypt(self, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes:
        try:
            return self._cipher.decrypt(nonce, ciphertext, aad)
        except InvalidTag:
            raise AuthenticationFailed from None

    def __repr__(self) -> str:
        return "Aead(***)"


_SHA256 = hashes.SHA256()  # stateless: one instance serves every derivation


def hkdf_sha256(ikm: bytes, *, salt: bytes | None, info: bytes, length: int) -> bytes:
    """RFC 5869 HKDF with SHA-256."""
    return HKDF(algorithm=_SHA256, length=length, salt=salt, info=info).derive(ikm)
