"""Sealing an upload's records in batches: byte for byte the envelopes of `seal` and the leaves
of `merkle.leaf_hash(record_leaf(record_id, key.leaf_salt(record_id), payload))`.

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

from vault.crypto import (
    _AAD_PREFIX,
    _HEADER,
    _LEAF_PREFIX,
    ENVELOPE_VERSION,
    KEY_VERSION,
    DataKey,
    _lp,
)
from vault.crypto._hazmat import NONCE_BYTES

RECORD_ID_BYTES = 16
_SALT_BYTES = 32
_ID_PREFIX = struct.pack(">H", RECORD_ID_BYTES)
_SALT_PREFIX = struct.pack(">H", _SALT_BYTES)
# A leaf hash is SHA-256(0x00 | leaf prefix | lp(record id) | lp(salt) | payload).
_LEAF_STATE = hashlib.sha256(b"\x00" + _LEAF_PREFIX + _ID_PREFIX)
_CACHE_MAX = 10_000


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

    __slots__ = ("_aad_tail", "_header", "_keyed")

    def __init__(self, *, dataset_id: bytes, upload_id: bytes) -> None:
        # The associated data is prefix | lp(record id) | lp(dataset id) | lp(upload id) |
        # key version: all but the record id are the upload's constants.
        self._aad_tail = _lp(dataset_id, upload_id) + struct.pack(">H", KEY_VERSION)
        self._header = _HEADER.pack(ENVELOPE_VERSION, KEY_VERSION)
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
        aad_head, aad_tail, header = _AAD_PREFIX + _ID_PREFIX, self._aad_tail, self._header
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
