"""make_provider: the configured provider, and the PIN file held to the master key's rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.softhsm import SoftHsmToken
from vault.config import VaultSettings
from vault.keys import KeyProviderError, LocalKeyProvider, make_provider
from vault.keys.pkcs11 import Pkcs11KeyProvider


def test_local_is_the_default(tmp_path: Path) -> None:
    provider = make_provider(VaultSettings(data_dir=tmp_path))
    assert isinstance(provider, LocalKeyProvider)
    assert (tmp_path / "master.key").stat().st_mode & 0o777 == 0o600
    with pytest.raises(KeyProviderError, match="missing"):
        make_provider(VaultSettings(data_dir=tmp_path / "other"), create=False)


def test_pkcs11_from_pin_file_and_env(
    tmp_path: Path, softhsm_token: SoftHsmToken, monkeypatch: pytest.MonkeyPatch
) -> None:
    pin_file = tmp_path / "pin"
    pin_file.write_text(softhsm_token.pin + "\n")
    pin_file.chmod(0o600)
    base = VaultSettings(
        data_dir=tmp_path,
        key_provider="pkcs11",
        pkcs11_module=softhsm_token.module_path,
        pkcs11_token_label=softhsm_token.label,
        pkcs11_key_label_prefix="factory-",
    )
    monkeypatch.delenv("CIVIS_PKCS11_PIN", raising=False)
    provider = make_provider(base.model_copy(update={"pkcs11_pin_file": pin_file}))
    assert isinstance(provider, Pkcs11KeyProvider)
    kid, wrapped = provider.wrap(b"s" * 32, aad=b"a")
    pin_file.chmod(0o640)
    with pytest.raises(KeyProviderError, match="group or others"):
        make_provider(base.model_copy(update={"pkcs11_pin_file": pin_file}))
    with pytest.raises(KeyProviderError, match="CIVIS_PKCS11_PIN"):
        make_provider(base)
    monkeypatch.setenv("CIVIS_PKCS11_PIN", softhsm_token.pin)
    again = make_provider(base)
    assert again.unwrap(kid, wrapped, aad=b"a") == b"s" * 32
    assert isinstance(again, Pkcs11KeyProvider)
    again.close()
    provider.close()


def test_pkcs11_needs_module_and_token(tmp_path: Path) -> None:
    with pytest.raises(KeyProviderError, match="CIVIS_PKCS11_MODULE"):
        make_provider(VaultSettings(data_dir=tmp_path, key_provider="pkcs11"))
