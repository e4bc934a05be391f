"""Key management: the key store of destroyable secrets and the providers of KEKs."""

from __future__ import annotations

import os
import stat
from typing import TYPE_CHECKING

from vault.keys.local import LocalKeyProvider
from vault.keys.provider import KeyProvider, KeyProviderError
from vault.keys.store import KeyStore, SecretRef, epoch_ref, subject_ref, upload_ref

if TYPE_CHECKING:
    from vault.config import VaultSettings

_PIN_FILE_MAX_BYTES = 1024
PIN_ENV = "CIVIS_PKCS11_PIN"


def _read_pin(settings: VaultSettings) -> str:
    """The token PIN from a 0600 file (same rules as the master key file) or the environment."""
    path = settings.pkcs11_pin_file
    if path is None:
        pin = os.environ.get(PIN_ENV)
        if not pin:
            raise KeyProviderError(
                f"set CIVIS_PKCS11_PIN_FILE or {PIN_ENV} for the PKCS#11 provider"
            )
        return pin
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise KeyProviderError(f"PKCS#11 PIN file {path} is missing") from None
    if not stat.S_ISREG(st.st_mode):
        raise KeyProviderError(f"PKCS#11 PIN file {path} is not a regular file (or is a symlink)")
    if st.st_mode & 0o077:
        raise KeyProviderError(f"PKCS#11 PIN file {path} is readable by group or others; chmod 600")
    if st.st_size > _PIN_FILE_MAX_BYTES:
        raise KeyProviderError(f"PKCS#11 PIN file {path} is too large")
    pin = path.read_text().strip()
    if not pin:
        raise KeyProviderError(f"PKCS#11 PIN file {path} is empty")
    return pin


def make_provider(settings: VaultSettings, *, create: bool = True) -> KeyProvider:
    """The configured KEK provider. `create=False` refuses to start a new local master key
    (maintenance commands must not invent a vault); a PKCS#11 token always keeps its KEKs."""
    if settings.key_provider == "local":
        return LocalKeyProvider(settings.resolved_master_key_path, create=create)
    if not settings.pkcs11_module or not settings.pkcs11_token_label:
        raise KeyProviderError(
            "key_provider=pkcs11 needs CIVIS_PKCS11_MODULE and CIVIS_PKCS11_TOKEN_LABEL"
        )
    from vault.keys.pkcs11 import Pkcs11KeyProvider  # loads python-pkcs11 only when used

    return Pkcs11KeyProvider(
        settings.pkcs11_module,
        settings.pkcs11_token_label,
        _read_pin(settings),
        key_label_prefix=settings.pkcs11_key_label_prefix,
    )


__all__ = [
    "KeyProvider",
    "KeyProviderError",
    "KeyStore",
    "LocalKeyProvider",
    "SecretRef",
    "epoch_ref",
    "make_provider",
    "subject_ref",
    "upload_ref",
]
