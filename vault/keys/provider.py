"""The `KeyProvider` protocol: where key-encryption keys (KEKs) live and how secrets are wrapped.

Why a protocol: the local provider keeps KEKs in a master key file; an HSM provider (PKCS#11)
keeps them inside a token and wraps secrets there, so the KEK never reaches this process. The
key store only ever sees `(kek_id, wrapped)` pairs.

Rotation and retirement are what make erasure final against old copies: a destroyed secret's
wrapped bytes may survive in a backup, a dead tuple or WAL, but once every live secret has been
rewrapped under a new KEK and the old KEK is retired (destroyed), those bytes unwrap under no key.
"""

from __future__ import annotations

from typing import Protocol


class KeyProviderError(Exception):
    """The provider cannot serve: missing or unsafe master key file, unknown or retired KEK."""


class KeyProvider(Protocol):
    # Whether `unwrap` may wait on something outside this process's memory (a token, a lock
    # other threads hold): if so, an event loop must not unwrap inline (vault/reads.py,
    # `Reader.by_dataset_async`).
    unwrap_waits: bool

    def current_kek_id(self) -> str:
        """The KEK new secrets are wrapped under."""
        ...

    def kek_ids(self) -> list[str]:
        """Every KEK still able to unwrap, current one included."""
        ...

    def wrap(self, secret: bytes, *, aad: bytes) -> tuple[str, bytes]:
        """Wrap under the current KEK; `aad` binds the secret's scope. Returns (kek_id, wrapped)."""
        ...

    def unwrap(self, kek_id: str, wrapped: bytes, *, aad: bytes) -> bytes:
        """Unwrap or raise `vault.crypto.DecryptionFailed` (retired KEK, tampering, wrong aad)."""
        ...

    def refresh(self) -> None:
        """Adopt what another process sharing the KEKs did: a KEK it created becomes usable
        (and current, if newer), a KEK it retired is dropped from this process's memory. The
        heartbeat calls it (vault/keys/registry.py), so every instance follows a rotation."""
        ...

    def rotate(self) -> str:
        """Create a new current KEK and return its id; older KEKs keep unwrapping until retired."""
        ...

    def retire(self, kek_id: str) -> None:
        """Destroy a KEK that is no longer current. Nothing wrapped under it unwraps afterwards."""
        ...
