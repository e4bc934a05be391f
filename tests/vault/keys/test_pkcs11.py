"""The PKCS#11 provider against a real SoftHSM2 token: wrapping in the token, KEKs that never
leave it, rotation and retirement, and a reopen of the same token."""

from __future__ import annotations

import threading

import pkcs11
import pytest
from pkcs11 import Attribute, ObjectClass
from pkcs11.exceptions import PKCS11Error

from tests.softhsm import SoftHsmToken
from vault.crypto import DecryptionFailed
from vault.keys import KeyProviderError
from vault.keys.pkcs11 import Pkcs11KeyProvider

SECRET = bytes(range(32))
AAD = b"subject|dataset|alice"


def test_round_trip_and_fresh_iv(hsm_provider: Pkcs11KeyProvider) -> None:
    kid, wrapped = hsm_provider.wrap(SECRET, aad=AAD)
    kid2, wrapped2 = hsm_provider.wrap(SECRET, aad=AAD)
    assert kid == kid2 == hsm_provider.current_kek_id() == "k1"
    assert wrapped != wrapped2  # a random IV per wrap
    assert SECRET not in wrapped
    assert hsm_provider.unwrap(kid, wrapped, aad=AAD) == SECRET


def test_wrong_aad_tamper_and_unknown_kek_fail_opaquely(hsm_provider: Pkcs11KeyProvider) -> None:
    kid, wrapped = hsm_provider.wrap(SECRET, aad=AAD)
    with pytest.raises(DecryptionFailed):
        hsm_provider.unwrap(kid, wrapped, aad=b"subject|dataset|bob")
    for i in range(len(wrapped)):
        tampered = bytearray(wrapped)
        tampered[i] ^= 0x01
        with pytest.raises(DecryptionFailed):
            hsm_provider.unwrap(kid, bytes(tampered), aad=AAD)
    for bad in (wrapped[:-1], b"", wrapped + b"\x00" * 2000):
        with pytest.raises(DecryptionFailed):
            hsm_provider.unwrap(kid, bad, aad=AAD)
    for unknown in ("k2", "k0", "x1", "k1 "):
        with pytest.raises(DecryptionFailed):
            hsm_provider.unwrap(unknown, wrapped, aad=AAD)


def test_kek_is_not_extractable(
    softhsm_token: SoftHsmToken, hsm_provider: Pkcs11KeyProvider, key_label_prefix: str
) -> None:
    token = pkcs11.lib(softhsm_token.module_path).get_token(token_label=softhsm_token.label)
    with token.open() as session:  # shares the provider's login (PKCS#11 logins are per process)
        (key,) = list(
            session.get_objects(
                {Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.LABEL: f"{key_label_prefix}k1"}
            )
        )
        assert key[Attribute.SENSITIVE] is True
        assert key[Attribute.EXTRACTABLE] is False
        assert key[Attribute.NEVER_EXTRACTABLE] is True
        assert key[Attribute.TOKEN] is True
        with pytest.raises(PKCS11Error):  # AttributeSensitive: the token refuses to read it
            key[Attribute.VALUE]


def test_rotate_then_retire_makes_old_wraps_useless(hsm_provider: Pkcs11KeyProvider) -> None:
    old_kid, old = hsm_provider.wrap(SECRET, aad=AAD)
    assert hsm_provider.rotate() == "k2"
    assert hsm_provider.kek_ids() == ["k1", "k2"]
    new_kid, new = hsm_provider.wrap(SECRET, aad=AAD)
    assert new_kid == "k2"
    assert hsm_provider.unwrap(old_kid, old, aad=AAD) == SECRET  # still readable until retired
    with pytest.raises(KeyProviderError, match="current"):
        hsm_provider.retire("k2")
    hsm_provider.retire("k1")
    hsm_provider.retire("k1")  # idempotent
    assert hsm_provider.kek_ids() == ["k2"]
    for kek in ("k1", "k2"):
        with pytest.raises(DecryptionFailed):
            hsm_provider.unwrap(kek, old, aad=AAD)
    assert hsm_provider.unwrap(new_kid, new, aad=AAD) == SECRET


def test_survives_reopen_and_sees_another_instances_rotation(
    softhsm_token: SoftHsmToken, hsm_provider: Pkcs11KeyProvider, key_label_prefix: str
) -> None:
    kid, wrapped = hsm_provider.wrap(SECRET, aad=AAD)
    other = Pkcs11KeyProvider(
        softhsm_token.module_path,
        softhsm_token.label,
        softhsm_token.pin,
        key_label_prefix=key_label_prefix,
    )
    try:
        assert other.kek_ids() == ["k1"]  # found on the token, not generated again
        assert other.unwrap(kid, wrapped, aad=AAD) == SECRET
        new_kid, new = other.wrap(SECRET, aad=AAD) if other.rotate() else ("", b"")
        assert hsm_provider.unwrap(new_kid, new, aad=AAD) == SECRET  # reloads the unknown k2
    finally:
        other.close()


def test_wrong_pin_and_missing_token_say_so_without_the_pin(softhsm_token: SoftHsmToken) -> None:
    with pytest.raises(KeyProviderError, match="log in") as info:
        Pkcs11KeyProvider(softhsm_token.module_path, softhsm_token.label, "999777")
    assert "999777" not in str(info.value)
    with pytest.raises(KeyProviderError, match="not found"):
        Pkcs11KeyProvider(softhsm_token.module_path, "no-such-token", softhsm_token.pin)
    with pytest.raises(KeyProviderError, match="cannot load"):
        Pkcs11KeyProvider("/nonexistent/libnothing.so", softhsm_token.label, softhsm_token.pin)


def test_threads_share_the_provider(hsm_provider: Pkcs11KeyProvider) -> None:
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for i in range(50):
                aad = AAD + bytes([i])
                kid, wrapped = hsm_provider.wrap(SECRET, aad=aad)
                assert hsm_provider.unwrap(kid, wrapped, aad=aad) == SECRET
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert errors == []


def test_wrong_pin_refused_while_another_instance_is_logged_in(
    softhsm_token: SoftHsmToken, hsm_provider: Pkcs11KeyProvider
) -> None:
    # The token does not re-check a PIN while this process is logged in; the provider must.
    assert hsm_provider.kek_ids() == ["k1"]
    with pytest.raises(KeyProviderError, match="log in") as info:
        Pkcs11KeyProvider(softhsm_token.module_path, softhsm_token.label, "999777")
    assert "999777" not in str(info.value)
