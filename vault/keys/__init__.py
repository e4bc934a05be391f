"""Key management: the key store of destroyable secrets and the providers of KEKs."""

from __future__ import annotations

from vault.keys.local import LocalKeyProvider
from vault.keys.provider import KeyProvider, KeyProviderError
from vault.keys.store import KeyStore, SecretRef, epoch_ref, subject_ref, upload_ref

__all__ = [
    "KeyProvider",
    "KeyProviderError",
    "KeyStore",
    "LocalKeyProvider",
    "SecretRef",
    "epoch_ref",
    "subject_ref",
    "upload_ref",
]
