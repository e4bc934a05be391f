"""Key provider fixtures: a SoftHSM2 token for the PKCS#11 provider, and both providers by name.

One token per test session (SoftHSM reads its config once per process); each test gets its own
KEK label prefix on it, so tests never see each other's KEKs.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.softhsm import SoftHsmToken, SoftHsmUnavailable, configure, ensure_module, init_token
from vault.keys import KeyProvider, LocalKeyProvider
from vault.keys.pkcs11 import Pkcs11KeyProvider


@pytest.fixture(scope="session")
def softhsm_token(tmp_path_factory: pytest.TempPathFactory) -> SoftHsmToken:
    try:
        module = ensure_module()
    except SoftHsmUnavailable as exc:
        pytest.skip(str(exc))
    configure(tmp_path_factory.mktemp("softhsm"))
    return init_token(module, "civis-test")


@pytest.fixture()
def key_label_prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}-"


@pytest.fixture()
def hsm_provider(softhsm_token: SoftHsmToken, key_label_prefix: str) -> Iterator[Pkcs11KeyProvider]:
    provider = Pkcs11KeyProvider(
        softhsm_token.module_path,
        softhsm_token.label,
        softhsm_token.pin,
        key_label_prefix=key_label_prefix,
    )
    yield provider
    provider.close()


@pytest.fixture(params=["local", "pkcs11"])
def any_provider(request: pytest.FixtureRequest, tmp_path: Path) -> KeyProvider:
    """Each provider in turn, for the tests whose claim holds on both."""
    if request.param == "local":
        return LocalKeyProvider(tmp_path / "master.key")
    provider: Pkcs11KeyProvider = request.getfixturevalue("hsm_provider")
    return provider
