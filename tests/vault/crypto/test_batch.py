"""The batch sealer of uploads (vault/crypto/batch.py) against the one-record functions.

The uploader seals with `UploadSealer`, readers and consumers open and verify with `unseal`,
`DataKey.leaf_salt`, `record_leaf` and `leaf_hash`: the two must agree byte for byte, with the
same nonce, for any payload, any mix of keys, and more keys than the sealer caches.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vault.crypto import DataKey, derive_dek, record_leaf, seal, unseal
from vault.crypto import batch as batch_module
from vault.crypto.batch import UploadSealer
from vault.crypto.merkle import leaf_hash

DATASET = bytes.fromhex("ffeeddccbbaa99887766554433221100")
UPLOAD = bytes.fromhex("00112233445566778899aabbccddeeff")


def _key(i: int) -> DataKey:
    return derive_dek(
        upload_secret=bytes([i % 256]) * 32,
        subject_secret=bytes(range(32)),
        epoch_secret=bytes(range(32, 64)),
        upload_id=UPLOAD,
        subject_id=f"subject-{i}".encode(),
    )


def _one_by_one(
    keys: list[DataKey], ids: list[bytes], payloads: list[bytes], nonces: bytes
) -> tuple[list[bytes], list[bytes]]:
    envelopes, leaves = [], []
    for i, (key, rid, payload) in enumerate(zip(keys, ids, payloads, strict=True)):
        nonce = nonces[12 * i : 12 * i + 12]
        envelopes.append(
            seal(key, payload, record_id=rid, dataset_id=DATASET, upload_id=UPLOAD, nonce=nonce)
        )
        leaves.append(leaf_hash(record_leaf(rid, key.leaf_salt(rid), payload)))
    return envelopes, leaves


@settings(max_examples=60, deadline=None)
@given(
    records=st.lists(
        st.tuples(st.integers(0, 5), st.binary(min_size=16, max_size=16), st.binary(max_size=3000)),
        max_size=40,
    ),
    nonce_seed=st.binary(min_size=12, max_size=12),
)
def test_the_batch_seals_and_hashes_as_seal_and_leaf_hash(
    records: list[tuple[int, bytes, bytes]], nonce_seed: bytes
) -> None:
    keys = [_key(k) for k in range(6)]
    batch_keys = [keys[k] for k, _, _ in records]
    ids = [rid for _, rid, _ in records]
    payloads = [p for _, _, p in records]
    nonces = nonce_seed * len(records)
    sealer = UploadSealer(dataset_id=DATASET, upload_id=UPLOAD)
    got = sealer.seal_batch(batch_keys, ids, payloads, nonces=nonces)
    assert got == _one_by_one(batch_keys, ids, payloads, nonces)


def test_random_nonces_open_with_unseal_and_differ() -> None:
    key = _key(1)
    ids = [os.urandom(16) for _ in range(50)]
    payloads = [b'{"n":%d}' % i for i in range(50)]
    envelopes, _ = UploadSealer(dataset_id=DATASET, upload_id=UPLOAD).seal_batch(
        [key] * 50, ids, payloads
    )
    opened = [
        unseal(key, e, record_id=rid, dataset_id=DATASET, upload_id=UPLOAD)
        for e, rid in zip(envelopes, ids, strict=True)
    ]
    assert opened == payloads
    assert len({e[3:15] for e in envelopes}) == 50


def test_more_keys_than_the_cache_holds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(batch_module, "_CACHE_MAX", 3)
    sealer = UploadSealer(dataset_id=DATASET, upload_id=UPLOAD)
    keys = [_key(i) for i in range(8)]
    ids = [bytes([i]) * 16 for i in range(8)]
    payloads = [b"{}"] * 8
    nonces = bytes(12 * 8)
    for order in (keys, keys[::-1], keys):
        got = sealer.seal_batch(order, ids, payloads, nonces=nonces)
        assert got == _one_by_one(order, ids, payloads, nonces)
    assert len(sealer._keyed) <= 3


def test_malformed_batches_are_refused() -> None:
    sealer = UploadSealer(dataset_id=DATASET, upload_id=UPLOAD)
    key = _key(0)
    with pytest.raises(ValueError, match="16 bytes"):
        sealer.seal_batch([key], [b"short"], [b"{}"])
    with pytest.raises(ValueError, match="one key"):
        sealer.seal_batch([key, key], [bytes(16)], [b"{}"])
    with pytest.raises(ValueError, match="12 bytes"):
        sealer.seal_batch([key], [bytes(16)], [b"{}"], nonces=bytes(11))
