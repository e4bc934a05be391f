"""The vault's safe cryptographic API: seal and open records, derive keys, commit to keys.

What it is for: every record is AES-256-GCM encrypted under a data-encryption key (DEK) that
is derived on demand from three independently destroyable secrets (DESIGN.md, "Keys"), so
destroying any one of them erases its scope (a subject in a dataset, an upload, a retention
day), including copies in backups, dead tuples and WAL.

What it must never do: persist, log or put into an exception a DEK, a secret or a plaintext.
Every failure to open a record raises the same opaque `DecryptionFailed` (as Fernet's
`InvalidToken` does), whatever the cause: wrong or destroyed key, flipped bit, swapped record.

Envelope v1 (bytes):  0x01 | key_version (2, big-endian) | nonce (12) | ciphertext || tag (16)
Associated data:      "civis-vault/record/v1" | len-prefixed record id, dataset id, upload id
                      | key_version (2)
DEK:                  HKDF-SHA256(ikm = S_upload || S_subject || S_epoch, salt = none,
                      info = "civis-vault/dek/v1" | len-prefixed upload id, subject id), 32 bytes
Length prefixes are 2-byte big-endian, so no two different field tuples encode the same bytes.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Callable

from vault.crypto._hazmat import (
    KEY_BYTES,
    NONCE_BYTES,
    TAG_BYTES,
    Aead,
    AuthenticationFailed,
)

__all__ = [
    "ENVELOPE_VERSION",
    "KEY_BYTES",
    "KEY_VERSION",
    "SECRET_BYTES",
    "DataKey",
    "DecryptionFailed",
    "KeyWrapper",
    "derive_dek",
    "envelope_overhead",
    "key_commitment",
    "new_secret",
    "read_leaf",
    "record_leaf",
    "seal",
    "unseal",
]

ENVELOPE_VERSION = 1
KEY_VERSION = 1  # version of the DEK derivation; bumps when derive_dek changes
SECRET_BYTES = 32
_HEADER = struct.Struct(">BH")
# Length-prefixed fields (`_lp`) of UUID ids, packed in one call each: the same bytes, on the
# path every record read and upload takes (the associated data, the DEK's info).
_UUID_AAD = struct.Struct(">H16sH16sH16sH")
_UUID_AND_LENGTH = struct.Struct(">H16sH")
_HEADER_BYTES = _HEADER.size + NONCE_BYTES
_PREFIXED_MAX = 0xFFFF  # the longest field a 2-byte length prefix (`_lp`) counts
_DEK_INFO = b"civis-vault/dek/v1"
_AAD_PREFIX = b"civis-vault/record/v1"
_COMMITMENT_PREFIX = b"civis-vault/key-commitment/v1"
_LEAF_SALT_PREFIX = b"civis-vault/leaf-salt/v1"
_LEAF_PREFIX = b"civis-vault/leaf/v1"
_READ_LEAF_PREFIX = b"civis-vault/decryption/v1"
_WRAP_PREFIX = b"civis-vault/wrap/v1"
# HMAC-SHA256's pads (RFC 2104) as byte translations of a key padded to SHA-256's block.
_HMAC_IPAD = bytes(x ^ 0x36 for x in range(256))
_HMAC_OPAD = bytes(x ^ 0x5C for x in range(256))
_KEY_PAD = bytes(64 - KEY_BYTES)  # a 32-byte HMAC key padded to SHA-256's block


def _hmac_blocks(key: bytes) -> tuple[bytes, bytes]:
    """The inner and outer key blocks of HMAC-SHA256 under a 32-byte `key` (RFC 2104: the key
    padded to SHA-256's block, XORed with each pad): HMAC(key, m) is
    SHA-256(outer | SHA-256(inner | m)). Made once per key where a key signs many messages."""
    padded = key + _KEY_PAD
    return padded.translate(_HMAC_IPAD), padded.translate(_HMAC_OPAD)


_ZERO_KEY_BLOCKS = _hmac_blocks(bytes(KEY_BYTES))  # HKDF's absent salt: HashLen zero bytes


class DecryptionFailed(Exception):
    """A record could not be opened. Deliberately says nothing about why."""

    def __init__(self) -> None:
        super().__init__("decryption failed")


def _lp(*fields: bytes) -> bytes:
    """Length-prefix each field so distinct tuples never encode to the same bytes."""
    out = bytearray()
    for field in fields:
        if len(field) > _PREFIXED_MAX:
            raise ValueError("field too long for a 2-byte length prefix")
        out += struct.pack(">H", len(field))
        out += field
    return bytes(out)


def new_secret(randbytes: Callable[[int], bytes] = os.urandom) -> bytes:
    """A fresh 256-bit secret for the key store (randomness injectable for test vectors)."""
    return randbytes(SECRET_BYTES)


class DataKey:
    """A derived DEK, held only in memory for as long as one upload or read needs it."""

    __slots__ = ("_aead", "_key", "_salt_pads")

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError("a data key is 32 bytes")
        self._key = key
        self._aead = Aead(key)
        # The leaf salt's HMAC key blocks (`_hmac_blocks`, written out: a read makes a key per
        # subject of each upload it opens, most often one per record), the inner one with the
        # salt's prefix.
        padded = key + _KEY_PAD
        self._salt_pads = (
            padded.translate(_HMAC_IPAD) + _LEAF_SALT_PREFIX,
            padded.translate(_HMAC_OPAD),
        )

    def __repr__(self) -> str:
        return "DataKey(***)"

    __str__ = __repr__

    def commitment(self) -> bytes:
        return key_commitment(self)

    def leaf_salt(self, record_id: bytes) -> bytes:
        """Per-record salt for the Merkle leaf, so a leaf hash never reveals a guessable payload.

        Derived from the DEK, it disappears with the key: after erasure nobody can test a
        guess of the payload against the anchored root. It is HMAC-SHA256(DEK, prefix |
        record id), its key blocks made once per key: a read salts every record it answers
        with, and `hmac.digest` pads the key again on each call.
        """
        inner, outer = self._salt_pads
        sha256 = hashlib.sha256
        return sha256(outer + sha256(inner + record_id).digest()).digest()


def derive_dek(
    *,
    upload_secret: bytes,
    subject_secret: bytes,
    epoch_secret: bytes,
    upload_id: bytes,
    subject_id: bytes,
) -> DataKey:
    """The DEK of (upload, subject): needs all three secrets; never stored anywhere."""
    for secret in (upload_secret, subject_secret, epoch_secret):
        if len(secret) != SECRET_BYTES:
            raise ValueError("key-store secrets are 32 bytes")
    ikm = upload_secret + subject_secret + epoch_secret
    if len(upload_id) == 16 and len(subject_id) <= _PREFIXED_MAX:
        # The same bytes as `_lp(upload_id, subject_id)` for a UUID upload id, in one call.
        info = _DEK_INFO + _UUID_AND_LENGTH.pack(16, upload_id, len(subject_id)) + subject_id
    else:
        info = _DEK_INFO + _lp(upload_id, subject_id)
    return DataKey(_hkdf_key(ikm, info))


def _hkdf_key(ikm: bytes, info: bytes) -> bytes:
    """`_hazmat.hkdf_sha256(ikm, salt=None, info=info, length=KEY_BYTES)`, the same bytes,
    with HMAC-SHA256 written out as RFC 2104 defines it.

    Why: a read derives the DEK of every subject it answers for, and `hkdf_sha256` builds a
    KDF object per call that costs twice the hashing itself. With no salt, the extract's key
    is HashLen zero bytes, so its padded blocks are constants; the expand needs one block,
    since a key is one hash long. The tests hold it to RFC 5869's vector and to `hkdf_sha256`."""
    sha256 = hashlib.sha256
    zero_inner, zero_outer = _ZERO_KEY_BLOCKS
    prk = sha256(zero_outer + sha256(zero_inner + ikm).digest()).digest() + _KEY_PAD
    return sha256(
        prk.translate(_HMAC_OPAD) + sha256(prk.translate(_HMAC_IPAD) + info + b"\x01").digest()
    ).digest()


def key_commitment(key: DataKey) -> bytes:
    """SHA-256 commitment to a DEK for the ledger: binds the key, reveals nothing of it."""
    return hashlib.sha256(_COMMITMENT_PREFIX + key._key).digest()


def _aad(record_id: bytes, dataset_id: bytes, upload_id: bytes, key_version: int) -> bytes:
    if len(record_id) == len(dataset_id) == len(upload_id) == 16:
        return _AAD_PREFIX + _UUID_AAD.pack(
            16, record_id, 16, dataset_id, 16, upload_id, key_version
        )
    return _AAD_PREFIX + _lp(record_id, dataset_id, upload_id) + struct.pack(">H", key_version)


def envelope_overhead() -> int:
    return _HEADER_BYTES + TAG_BYTES


def seal(
    key: DataKey,
    plaintext: bytes,
    *,
    record_id: bytes,
    dataset_id: bytes,
    upload_id: bytes,
    key_version: int = KEY_VERSION,
    nonce: bytes | None = None,
) -> bytes:
    """Encrypt one record into a v1 envelope. `nonce` is for known-answer tests only."""
    if nonce is None:
        nonce = os.urandom(NONCE_BYTES)
    elif len(nonce) != NONCE_BYTES:
        raise ValueError("nonce must be 12 bytes")
    aad = _aad(record_id, dataset_id, upload_id, key_version)
    return (
        _HEADER.pack(ENVELOPE_VERSION, key_version)
        + nonce
        + key._aead.encrypt(nonce, plaintext, aad)
    )


def unseal(
    key: DataKey, envelope: bytes, *, record_id: bytes, dataset_id: bytes, upload_id: bytes
) -> bytes:
    """Open a v1 envelope or raise `DecryptionFailed` (for any reason at all)."""
    if len(envelope) < _HEADER_BYTES + TAG_BYTES:
        raise DecryptionFailed
    version, key_version = _HEADER.unpack_from(envelope)
    if version != ENVELOPE_VERSION:
        raise DecryptionFailed
    nonce = envelope[_HEADER.size : _HEADER_BYTES]
    aad = _aad(record_id, dataset_id, upload_id, key_version)
    try:
        return key._aead.decrypt(nonce, envelope[_HEADER_BYTES:], aad)
    except AuthenticationFailed:
        raise DecryptionFailed from None


def record_leaf(record_id: bytes, salt: bytes, payload: bytes) -> bytes:
    """The Merkle leaf data of a record: what a consumer hashes to check an inclusion proof.

    The consumer receives record id, salt and payload; the leaf hash is then
    `merkle.leaf_hash(record_leaf(...))`.
    """
    return _LEAF_PREFIX + _lp(record_id, salt) + payload


def read_leaf(
    *,
    salt: bytes,
    read_id: bytes,
    at_us: int,
    reader: str,
    reader_role: str,
    kind: str,
    subject: str,
    dataset_id: bytes,
    record_count: int,
) -> bytes:
    """The Merkle leaf data of one recorded decryption (vault/decryptions.py): every field of
    the read, length-prefixed, after a random salt. Here rather than beside the table so that
    the client (which imports no database code) recomputes it to check a read's proof.

    `at_us` is the time in microseconds since 1970 (UTC), as PostgreSQL stores it."""
    return _READ_LEAF_PREFIX + _lp(
        salt,
        read_id,
        at_us.to_bytes(8, "big", signed=True),
        reader.encode(),
        reader_role.encode(),
        kind.encode(),
        subject.encode(),
        dataset_id,
        record_count.to_bytes(8, "big"),
    )


class KeyWrapper:
    """AES-256-GCM key wrapping under a KEK, with associated data naming the secret's scope.

    Used by the local key provider; binding the scope means a wrapped secret copied onto
    another key-store row does not unwrap.
    """

    __slots__ = ("_aead",)

    def __init__(self, kek: bytes) -> None:
        self._aead = Aead(kek)

    def __repr__(self) -> str:
        return "KeyWrapper(***)"

    def wrap(self, secret: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, secret, _WRAP_PREFIX + aad)

    def unwrap(self, wrapped: bytes, aad: bytes) -> bytes:
        if len(wrapped) < NONCE_BYTES + TAG_BYTES:
            raise DecryptionFailed
        try:
            return self._aead.decrypt(
                wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], _WRAP_PREFIX + aad
            )
        except AuthenticationFailed:
            raise DecryptionFailed from None
