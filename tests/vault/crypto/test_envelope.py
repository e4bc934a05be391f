"""Record envelope, DEK derivation and key commitments (vault/crypto).

Known-answer vectors pin the formats documented in vault/crypto/__init__.py so that another
implementation (a consumer's verifier, a future version) can be checked against them; the
hypothesis properties check what a user relies on: round trip, tamper detection, no swapping,
and that destroying any one of the three secrets kills exactly its scope.
"""

from __future__ import annotations

import hashlib
import hmac
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vault.crypto import (
    DataKey,
    DecryptionFailed,
    _hkdf_key,
    derive_dek,
    key_commitment,
    new_secret,
    seal,
    unseal,
)
from vault.crypto._hazmat import Aead, hkdf_sha256

UPLOAD = bytes.fromhex("00112233445566778899aabbccddeeff")
SECRETS = {
    "upload_secret": bytes(range(32)),
    "subject_secret": bytes(range(32, 64)),
    "epoch_secret": bytes(range(64, 96)),
}


def _unseal(key: DataKey, envelope: bytes, ids: dict[str, bytes]) -> bytes:
    return unseal(
        key,
        envelope,
        record_id=ids["record_id"],
        dataset_id=ids["dataset_id"],
        upload_id=ids["upload_id"],
    )


def _seal(key: DataKey, payload: bytes, ids: dict[str, bytes], nonce: bytes | None = None) -> bytes:
    return seal(
        key,
        payload,
        record_id=ids["record_id"],
        dataset_id=ids["dataset_id"],
        upload_id=ids["upload_id"],
        nonce=nonce,
    )


def _hkdf_reference(ikm: bytes, info: bytes, length: int) -> bytes:
    """RFC 5869 written out with hmac, independent of the `cryptography` implementation."""
    prk = hmac.digest(b"\x00" * 32, ikm, "sha256")
    okm, block = b"", b""
    for counter in range(1, -(-length // 32) + 1):
        block = hmac.digest(prk, block + info + bytes([counter]), "sha256")
        okm += block
    return okm[:length]


def test_hkdf_matches_rfc5869_case_1() -> None:
    okm = hkdf_sha256(
        b"\x0b" * 22,
        salt=bytes(range(13)),
        info=bytes(range(0xF0, 0xFA)),
        length=42,
    )
    assert okm.hex() == (
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
    )


def test_dek_hkdf_matches_rfc5869_case_3() -> None:
    """Case 3 has a zero-length salt, which HMAC pads to the same key as no salt (HashLen zero
    bytes), and empty info: the DEK's HKDF gives the first 32 bytes of its OKM."""
    okm = "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d"
    assert _hkdf_key(b"\x0b" * 22, b"").hex() == okm
    assert hkdf_sha256(b"\x0b" * 22, salt=None, info=b"", length=32).hex() == okm


@settings(max_examples=300, deadline=None)
@given(ikm=st.binary(max_size=200), info=st.binary(max_size=300))
def test_dek_hkdf_is_the_library_hkdf(ikm: bytes, info: bytes) -> None:
    assert _hkdf_key(ikm, info) == hkdf_sha256(ikm, salt=None, info=info, length=32)
    assert _hkdf_key(ikm, info) == _hkdf_reference(ikm, info, 32)


@settings(max_examples=200, deadline=None)
@given(key=st.binary(min_size=32, max_size=32), record_id=st.binary(max_size=40))
def test_leaf_salt_is_hmac_sha256_of_the_prefixed_record_id(key: bytes, record_id: bytes) -> None:
    expected = hmac.digest(key, b"civis-vault/leaf-salt/v1" + record_id, "sha256")
    assert DataKey(key).leaf_salt(record_id) == expected


def test_aes_gcm_matches_nist_test_case_16() -> None:
    key = bytes.fromhex("feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308")
    iv = bytes.fromhex("cafebabefacedbaddecaf888")
    aad = bytes.fromhex("feedfacedeadbeeffeedfacedeadbeefabaddad2")
    pt = bytes.fromhex(
        "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
        "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39"
    )
    ct = Aead(key).encrypt(iv, pt, aad)
    assert ct.hex() == (
        "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa"
        "8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662"
        "76fc6ece0f4e1768cddf8853bb2d551b"
    )


def test_dek_derivation_vector_and_independent_reference() -> None:
    dek = derive_dek(**SECRETS, upload_id=UPLOAD, subject_id=b"subject-1")
    info = b"civis-vault/dek/v1" + struct.pack(">H", 16) + UPLOAD + struct.pack(">H", 9)
    info += b"subject-1"
    ikm = SECRETS["upload_secret"] + SECRETS["subject_secret"] + SECRETS["epoch_secret"]
    expected = "507dc3f6fd5702a51ddbc11c6d72a9d0b96ce46f049d962d40d7ce90398684d5"
    assert _hkdf_reference(ikm, info, 32).hex() == expected
    assert (
        key_commitment(dek)
        == hashlib.sha256(b"civis-vault/key-commitment/v1" + bytes.fromhex(expected)).digest()
    )
    assert key_commitment(dek).hex() == (
        "cab4a15c971948d0a4aef547c4675df8d0d8c489e6843807e4a69ed8f24fa421"
    )


def test_envelope_vector() -> None:
    dek = derive_dek(**SECRETS, upload_id=UPLOAD, subject_id=b"subject-1")
    ids = {"record_id": b"\x01" * 16, "dataset_id": b"\x02" * 16, "upload_id": UPLOAD}
    envelope = _seal(dek, b'{"address":"1 rue de la Paix"}', ids, nonce=bytes(12))
    assert envelope.hex() == (
        "010001000000000000000000000000964e0a35a68e5aa0e4c7fd18daf2257e200b5a14e82b1c1db482b0"
        "bc51984058d4aa9ad1273ecf7d15291e0fd38b"
    )
    assert envelope[:3] == b"\x01\x00\x01"  # envelope v1, key version 1
    assert _unseal(dek, envelope, ids) == b'{"address":"1 rue de la Paix"}'


def test_secrets_never_print() -> None:
    dek = derive_dek(**SECRETS, upload_id=UPLOAD, subject_id=b"s")
    assert repr(dek) == str(dek) == "DataKey(***)"
    assert "***" in repr(Aead(bytes(32)))
    assert str(DecryptionFailed()) == "decryption failed"


ids_st = st.fixed_dictionaries(
    {
        "record_id": st.binary(min_size=16, max_size=16),
        "dataset_id": st.binary(min_size=16, max_size=16),
        "upload_id": st.binary(min_size=16, max_size=16),
    }
)
_KEY = DataKey(bytes(range(32)))


@settings(max_examples=200)
@given(payload=st.binary(max_size=4096), ids=ids_st)
def test_round_trip_for_any_payload(payload: bytes, ids: dict[str, bytes]) -> None:
    assert _unseal(_KEY, _seal(_KEY, payload, ids), ids) == payload


@settings(max_examples=300)
@given(payload=st.binary(max_size=256), ids=ids_st, data=st.data())
def test_any_flipped_bit_fails(payload: bytes, ids: dict[str, bytes], data: st.DataObject) -> None:
    envelope = bytearray(_seal(_KEY, payload, ids))
    bit = data.draw(st.integers(0, len(envelope) * 8 - 1))
    envelope[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(DecryptionFailed):
        _unseal(_KEY, bytes(envelope), ids)


@settings(max_examples=200)
@given(payload=st.binary(max_size=256), ids=ids_st, data=st.data())
def test_any_flipped_bit_in_associated_data_fails(
    payload: bytes, ids: dict[str, bytes], data: st.DataObject
) -> None:
    envelope = _seal(_KEY, payload, ids)
    field = data.draw(st.sampled_from(sorted(ids)))
    bit = data.draw(st.integers(0, 127))
    changed = bytearray(ids[field])
    changed[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(DecryptionFailed):
        _unseal(_KEY, envelope, {**ids, field: bytes(changed)})


@given(a=ids_st, b=ids_st, payload=st.binary(max_size=64))
def test_ciphertext_moved_to_another_record_fails(
    a: dict[str, bytes], b: dict[str, bytes], payload: bytes
) -> None:
    if a == b:
        return
    with pytest.raises(DecryptionFailed):
        _unseal(_KEY, _seal(_KEY, payload, a), b)


def test_truncated_or_foreign_envelopes_fail_the_same_way() -> None:
    ids = {"record_id": b"r" * 16, "dataset_id": b"d" * 16, "upload_id": b"u" * 16}
    envelope = _seal(_KEY, b"{}", ids)
    for bad in (b"", envelope[:10], b"\x02" + envelope[1:], envelope + b"\x00"):
        with pytest.raises(DecryptionFailed) as info:
            _unseal(_KEY, bad, ids)
        assert str(info.value) == "decryption failed"


@settings(max_examples=100)
@given(which=st.sampled_from(sorted(SECRETS)), payload=st.binary(max_size=128))
def test_destroying_any_one_secret_kills_exactly_its_scope(which: str, payload: bytes) -> None:
    """Two records share two of the three secrets and differ in `which`. Replacing `which` of the
    first (destroy, then someone creates a new one) kills the first record and not the second."""
    ids = {"record_id": b"r" * 16, "dataset_id": b"d" * 16, "upload_id": UPLOAD}
    first = dict(SECRETS)
    second = {**SECRETS, which: new_secret()}
    k1 = derive_dek(**first, upload_id=UPLOAD, subject_id=b"s")
    k2 = derive_dek(**second, upload_id=UPLOAD, subject_id=b"s")
    e1, e2 = _seal(k1, payload, ids), _seal(k2, payload, ids)
    after = {**first, which: new_secret()}  # the destroyed secret can only be guessed
    k1_after = derive_dek(**after, upload_id=UPLOAD, subject_id=b"s")
    with pytest.raises(DecryptionFailed):
        _unseal(k1_after, e1, ids)
    assert _unseal(derive_dek(**second, upload_id=UPLOAD, subject_id=b"s"), e2, ids) == payload
    assert k1_after.commitment() != k1.commitment()
