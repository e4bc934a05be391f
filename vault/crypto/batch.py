"""Sealing an upload's records in batches, and opening them for a read: byte for byte the
envelopes of `seal` and the leaves of `merkle.leaf_hash(record_leaf(record_id,
key.leaf_salt(record_id), payload))`; the DEKs of `derive_dek`, the payloads of `unseal` and
the salts of `DataKey.leaf_salt` (`UploadOpener`, whose docstring says why).

Why a second path: an upload seals every record under its (upload, subject) DEK, and most of
what `seal` and the leaf cost per record is the same work again each time: the associated
data's constant fields, the HMAC key blocks of the leaf salt (`DataKey.leaf_salt` hashes them
again on each call, two extra SHA-256 blocks), the leaf's domain prefix, one `os.urandom` call per
nonce. Here that work is done once per upload (associated data, prefixes), once per key (the
HMAC inner and outer states, kept as RFC 2104 defines them) and once per batch (one read of
randomness for all its nonces). Record ids are fixed 16-byte UUIDs, so their length prefixes
are constants too. The known-answer tests check both paths give the same bytes.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Sequence
from typing import Any

from vault.crypto import (
    _AAD_PREFIX,
    _DEK_INFO,
    _HEADER,
    _HEADER_BYTES,
    _LEAF_PREFIX,
    _PREFIXED_MAX,
    ENVELOPE_VERSION,
    KEY_VERSION,
    SECRET_BYTES,
    DataKey,
    DecryptionFailed,
    _hkdf_key,
    _lp,
    derive_dek,
    unseal,
)
from vault.crypto._hazmat import NONCE_BYTES, TAG_BYTES, AuthenticationFailed

RECORD_ID_BYTES = 16
_SALT_BYTES = 32
_ID_PREFIX = struct.pack(">H", RECORD_ID_BYTES)
_SALT_PREFIX = struct.pack(">H", _SALT_BYTES)
# A leaf hash is SHA-256(0x00 | leaf prefix | lp(record id) | lp(salt) | payload).
_LEAF_STATE = hashlib.sha256(b"\x00" + _LEAF_PREFIX + _ID_PREFIX)
_CACHE_MAX = 10_000
# The envelope header and the associated data's head of every record the upload path seals:
# the current versions, a 16-byte record id.
_HEADER_NOW = _HEADER.pack(ENVELOPE_VERSION, KEY_VERSION)
_AAD_HEAD = _AAD_PREFIX + _ID_PREFIX


def _aad_tail(dataset_id: bytes, upload_id: bytes) -> bytes:
    """What follows the record id in its associated data: lp(dataset id) | lp(upload id) | the
    current key version, the upload's constants."""
    return _lp(dataset_id, upload_id) + struct.pack(">H", KEY_VERSION)


class _Keyed:
    """What one DEK seals with: its AEAD and the HMAC-SHA256 states of its leaf salt."""

    __slots__ = ("encrypt", "inner", "outer")

    def __init__(self, key: DataKey) -> None:
        self.encrypt = key._aead.encrypt
        inner, outer = key._salt_pads  # the leaf salt's HMAC key blocks, the prefix in `inner`
        self.inner = hashlib.sha256(inner)
        self.outer = hashlib.sha256(outer)

    def __repr__(self) -> str:
        return "_Keyed(***)"


class UploadSealer:
    """Seals the records of one upload of one dataset (envelope v1, `KEY_VERSION`).

    Holds per-key state for at most `_CACHE_MAX` keys (emptied when full: one dictionary
    lookup per record, no LRU bookkeeping), so memory stays flat whatever the number of
    subjects. Nothing here is ever written anywhere.
    """

    __slots__ = ("_aad_tail", "_keyed")

    def __init__(self, *, dataset_id: bytes, upload_id: bytes) -> None:
        # The associated data is prefix | lp(record id) | lp(dataset id) | lp(upload id) |
        # key version: all but the record id are the upload's constants.
        self._aad_tail = _aad_tail(dataset_id, upload_id)
        self._keyed: dict[DataKey, _Keyed] = {}

    def __repr__(self) -> str:
        return "UploadSealer(***)"

    def _state(self, key: DataKey) -> _Keyed:
        keyed = self._keyed.get(key)
        if keyed is None:
            if len(self._keyed) >= _CACHE_MAX:
                self._keyed.clear()
            keyed = self._keyed[key] = _Keyed(key)
        return keyed

    def seal_batch(
        self,
        keys: Sequence[DataKey],
        record_ids: Sequence[bytes],
        payloads: Sequence[bytes],
        *,
        nonces: bytes | None = None,
    ) -> tuple[list[bytes], list[bytes]]:
        """(envelopes, leaf hashes) of records i = 0..n-1: `payloads[i]` sealed under
        `keys[i]` as record `record_ids[i]` (16 bytes each). `nonces` (12 bytes per record,
        concatenated) is for known-answer tests only; by default they are fresh random."""
        n = len(payloads)
        if not len(keys) == len(record_ids) == n:
            raise ValueError("one key and one record id per payload")
        if nonces is None:
            nonces = os.urandom(NONCE_BYTES * n)
        elif len(nonces) != NONCE_BYTES * n:
            raise ValueError("nonce must be 12 bytes")
        aad_head, aad_tail, header = _AAD_HEAD, self._aad_tail, _HEADER_NOW
        states, state = self._keyed, self._state
        envelopes: list[bytes] = []
        leaves: list[bytes] = []
        for i in range(n):
            key, record_id, payload = keys[i], record_ids[i], payloads[i]
            if len(record_id) != RECORD_ID_BYTES:
                raise ValueError("a record id is 16 bytes")
            keyed = states.get(key) or state(key)
            nonce = nonces[NONCE_BYTES * i : NONCE_BYTES * (i + 1)]
            envelopes.append(
                header + nonce + keyed.encrypt(nonce, payload, aad_head + record_id + aad_tail)
            )
            inner = keyed.inner.copy()
            inner.update(record_id)
            outer = keyed.outer.copy()
            outer.update(inner.digest())
            leaf = _LEAF_STATE.copy()
            leaf.update(record_id + _SALT_PREFIX + outer.digest())
            leaf.update(payload)
            leaves.append(leaf.digest())
        return envelopes, leaves


class UploadOpener:
    """Opens the records of one upload for a read: the DEK of each of its subjects (`dek`),
    then each record's payload and leaf salt (`open`), byte for byte what `derive_dek`,
    `unseal` and `DataKey.leaf_salt` give, and refused where they refuse.

    Why a second path: a consented answer opens every record it carries, each under the DEK
    of its (upload, subject), derived first, and a subject has one record in most uploads.
    Through the one-record functions that is a dozen Python calls around a few C calls (the
    unwrap's and the record's AES-GCM, HKDF's and the salt's hashes), which build the same
    bytes again each time: the DEK's info and the associated data, all but the subject's and
    the record's ids the upload's constants; the upload's and epoch's secrets either side of
    the subject's. Here they are built once per upload; the DEK is one call, the record
    another. What the upload path never writes (an envelope with another header, a record id
    that is not 16 bytes, ids too long to length-prefix, a secret that is not 32 bytes) goes
    to the one-record functions, which open or refuse it. Holds the upload's and epoch's
    secrets for as long as the read keeps it (the reader keeps one upload's at a time);
    nothing here is ever written anywhere, nor pickled.
    """

    __slots__ = (
        "_aad_tail",
        "_dataset_id",
        "_ikm",
        "_info_head",
        "_upload_id",
    )

    def __init__(
        self, *, dataset_id: bytes, upload_id: bytes, upload_secret: bytes, epoch_secret: bytes
    ) -> None:
        self._dataset_id, self._upload_id = dataset_id, upload_id
        self._ikm = (upload_secret, epoch_secret)  # either side of the subject's secret
        # None: every call goes to the one-record functions (see the class's docstring).
        self._info_head: bytes | None = None
        self._aad_tail: bytes | None = None
        if (
            len(upload_secret) == len(epoch_secret) == SECRET_BYTES
            and max(len(dataset_id), len(upload_id)) <= _PREFIXED_MAX
        ):
            self._info_head = _DEK_INFO + _lp(upload_id)
            self._aad_tail = _aad_tail(dataset_id, upload_id)

    def __repr__(self) -> str:
        return "UploadOpener(***)"

    def __reduce__(self) -> Any:
        raise TypeError("an UploadOpener holds key-store secrets: it is not pickled")

    def dek(self, subject_id: bytes, subject_secret: bytes) -> DataKey:
        """`derive_dek` of this upload's subject `subject_id` (the id as bytes)."""
        head = self._info_head
        if head is None or len(subject_secret) != SECRET_BYTES or len(subject_id) > _PREFIXED_MAX:
            upload_secret, epoch_secret = self._ikm
            return derive_dek(
                upload_secret=upload_secret,
                subject_secret=subject_secret,
                epoch_secret=epoch_secret,
                upload_id=self._upload_id,
                subject_id=subject_id,
            )
        before, after = self._ikm
        info = head + len(subject_id).to_bytes(2, "big") + subject_id
        return DataKey(_hkdf_key(before + subject_secret + after, info))

    def open(self, key: DataKey, record_id: bytes, envelope: bytes) -> tuple[bytes, bytes] | None:
        """(payload, leaf salt) of the record `record_id` sealed in `envelope` under `key`;
        None where `unseal` raises `DecryptionFailed` (for any reason at all)."""
        tail = self._aad_tail
        if (
            tail is None
            or len(record_id) != RECORD_ID_BYTES
            or envelope[: _HEADER.size] != _HEADER_NOW
        ):
            return self._open_other(key, record_id, envelope)
        if len(envelope) < _HEADER_BYTES + TAG_BYTES:
            return None  # as `unseal` refuses it: no nonce and tag to open
        try:
            payload = key._aead.decrypt(
                envelope[_HEADER.size : _HEADER_BYTES],
                envelope[_HEADER_BYTES:],
                _AAD_HEAD + record_id + tail,
            )
        except AuthenticationFailed:
            return None
        inner, outer = key._salt_pads  # as `DataKey.leaf_salt` hashes them
        return payload, hashlib.sha256(outer + hashlib.sha256(inner + record_id).digest()).digest()

    def _open_other(
        self, key: DataKey, record_id: bytes, envelope: bytes
    ) -> tuple[bytes, bytes] | None:
        try:
            payload = unseal(
                key,
                envelope,
                record_id=record_id,
                dataset_id=self._dataset_id,
                upload_id=self._upload_id,
            )
        except DecryptionFailed:
            return None
        return payload, key.leaf_salt(record_id)
