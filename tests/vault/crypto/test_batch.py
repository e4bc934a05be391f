"""The batch paths of vault/crypto/batch.py against the one-record functions.

The uploader seals with `UploadSealer`, consumers open and verify with `unseal`,
`DataKey.leaf_salt`, `record_leaf` and `leaf_hash`: the two must agree byte for byte, with the
same nonce, for any payload, any mix of keys, and more keys than the sealer caches. The reader
opens with `UploadOpener`, which must derive, open and salt as `derive_dek`, `unseal` and
`leaf_salt` do, and fail where they fail.
"""

from __future__ import annotations

import os
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vault.crypto import DataKey, DecryptionFailed, derive_dek, record_leaf, seal, unseal
from vault.crypto import batch as batch_module
from vault.crypto.batch import UploadOpener, UploadSealer
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


# -- the read's opener -----------------------------------------------------------------------

UPLOAD_SECRET = bytes(range(100, 132))
EPOCH_SECRET = bytes(range(200, 232))


def _opener(dataset: bytes = DATASET, upload: bytes = UPLOAD) -> UploadOpener:
    return UploadOpener(
        dataset_id=dataset, upload_id=upload, upload_secret=UPLOAD_SECRET, epoch_secret=EPOCH_SECRET
    )


def _reference_key(subject_id: bytes, subject_secret: bytes, upload: bytes) -> DataKey:
    return derive_dek(
        upload_secret=UPLOAD_SECRET,
        subject_secret=subject_secret,
        epoch_secret=EPOCH_SECRET,
        upload_id=upload,
        subject_id=subject_id,
    )


def _reference(
    subject_id: bytes,
    subject_secret: bytes,
    record_id: bytes,
    envelope: bytes,
    ids: tuple[bytes, bytes],
) -> tuple[bytes, bytes] | None:
    """What a read got from the one-record functions: `derive_dek`, `unseal`, `leaf_salt`."""
    dataset, upload = ids
    key = _reference_key(subject_id, subject_secret, upload)
    try:
        payload = unseal(key, envelope, record_id=record_id, dataset_id=dataset, upload_id=upload)
    except DecryptionFailed:
        return None
    return payload, key.leaf_salt(record_id)


@settings(max_examples=80, deadline=None)
@given(
    subject_id=st.binary(max_size=80),
    subject_secret=st.binary(min_size=32, max_size=32),
    record_id=st.one_of(st.binary(min_size=16, max_size=16), st.binary(max_size=40)),
    payload=st.binary(max_size=2000),
    upload=st.one_of(st.just(UPLOAD), st.binary(max_size=20)),
    dataset=st.one_of(st.just(DATASET), st.binary(max_size=20)),
    key_version=st.sampled_from([1, 1, 2]),
    tamper=st.one_of(st.none(), st.integers(min_value=0)),
)
def test_the_opener_derives_opens_and_salts_as_the_one_record_functions(
    subject_id: bytes,
    subject_secret: bytes,
    record_id: bytes,
    payload: bytes,
    upload: bytes,
    dataset: bytes,
    key_version: int,
    tamper: int | None,
) -> None:
    """Any subject, record id, upload id and envelope (another key version, a flipped byte,
    cut short): the same DEK, and the same payload and salt, or None where `unseal` fails."""
    opener = _opener(dataset=dataset, upload=upload)
    key = opener.dek(subject_id, subject_secret)
    assert key._key == _reference_key(subject_id, subject_secret, upload)._key
    envelope = seal(
        key,
        payload,
        record_id=record_id,
        dataset_id=dataset,
        upload_id=upload,
        key_version=key_version,
    )
    if tamper is not None:
        at = tamper % (len(envelope) + 1)
        envelope = (
            envelope[:at] + bytes([envelope[at] ^ 1]) + envelope[at + 1 :]
            if at < len(envelope)
            else envelope[: at // 2]
        )
    got = opener.open(key, record_id, envelope)
    assert got == _reference(subject_id, subject_secret, record_id, envelope, (dataset, upload))
    if tamper is None:
        assert got is not None and got[0] == payload


def test_the_opener_refuses_what_derive_dek_refuses() -> None:
    """What `derive_dek` refuses, the opener refuses when it derives, with the same error;
    ids too long to length-prefix derive and open through the one-record functions."""
    short = UploadOpener(
        dataset_id=DATASET, upload_id=UPLOAD, upload_secret=bytes(31), epoch_secret=EPOCH_SECRET
    )
    with pytest.raises(ValueError, match="32 bytes"):
        short.dek(b"s", bytes(32))
    with pytest.raises(ValueError, match="32 bytes"):
        _opener().dek(b"s", bytes(33))
    with pytest.raises(ValueError, match="too long"):
        _opener().dek(b"s" * 0x10000, bytes(32))
    with pytest.raises(ValueError, match="too long"):
        _opener(upload=bytes(0x10000)).dek(b"s", bytes(32))
    long_dataset = _opener(dataset=bytes(0x10000))
    key = long_dataset.dek(b"s", bytes(32))
    assert key._key == _opener().dek(b"s", bytes(32))._key  # the dataset is not in the DEK
    assert long_dataset.open(key, bytes(16), b"\x02" + bytes(40)) is None
    assert "***" in repr(_opener())
    with pytest.raises(TypeError, match="not pickled"):
        pickle.dumps(_opener())


def test_a_record_of_another_upload_or_dataset_does_not_open() -> None:
    """The associated data binds the record to its dataset and upload, on the opener's path
    as in `unseal`: an envelope moved to another upload's rows opens to None."""
    key = _opener().dek(b"subject-1", bytes(32))
    rid = bytes(range(16))
    envelope = seal(key, b'{"a":1}', record_id=rid, dataset_id=DATASET, upload_id=UPLOAD)
    assert _opener().open(key, rid, envelope) is not None
    assert _opener(dataset=UPLOAD).open(key, rid, envelope) is None
    assert _opener(upload=DATASET).open(key, rid, envelope) is None
    assert _opener().open(key, bytes(16), envelope) is None


def test_an_envelope_cut_anywhere_opens_to_none() -> None:
    """Every prefix of a sealed envelope, down to its header alone and less: None, as
    `unseal` refuses it, never an exception from the cipher (a nonce cut short is one)."""
    key = _opener().dek(b"subject-1", bytes(32))
    rid = bytes(range(16))
    envelope = seal(key, b"{}", record_id=rid, dataset_id=DATASET, upload_id=UPLOAD)
    for length in range(len(envelope)):
        assert _opener().open(key, rid, envelope[:length]) is None
