"""Canonical encoding and the transaction envelope: one encoding, signatures bound to it."""

from __future__ import annotations

import dataclasses

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger_bridge.contracts import codec, tx
from tests.ledger_bridge.contracts.harness import CHAIN, key

values = st.recursive(
    st.none() | st.booleans() | st.integers(codec.INT_MIN, codec.INT_MAX) | st.text() | st.binary(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@given(values)
def test_decode_inverts_encode(value: object) -> None:
    raw = codec.encode(value)
    assert codec.encode(codec.decode(raw)) == raw


def test_map_in_another_key_order_is_rejected() -> None:
    raw = msgpack.packb({"b": 1, "a": 2})
    with pytest.raises(codec.NotCanonical):
        codec.decode(raw)
    assert codec.decode(msgpack.packb({"a": 2, "b": 1})) == {"a": 2, "b": 1}


@pytest.mark.parametrize(
    "raw",
    [
        msgpack.packb(1.5),
        msgpack.packb(1) + b"\x00",  # trailing bytes
        b"\xcd\x00\x01",  # 1 as uint16: a wider format than needed
        msgpack.packb({1: 2}),  # non-string key
        b"\xc1",  # never-used byte
        b"",
    ],
)
def test_non_canonical_bytes_are_rejected(raw: bytes) -> None:
    with pytest.raises(codec.NotCanonical):
        codec.decode(raw)


def test_a_signed_transaction_round_trips_and_verifies() -> None:
    signed = tx.sign(
        key(1), CHAIN, "member.register", {"role": "subject", "college": "citizens"}, valid_until=5
    )
    back = tx.decode(signed.encode())
    assert back == signed and back.verify(CHAIN)
    assert back.tx_id == signed.tx_id and len(back.tx_id) == 32


@given(st.dictionaries(st.text(max_size=8), values, max_size=6), st.text(max_size=12))
def test_a_decoded_transaction_signs_and_names_the_bytes_the_normaliser_gives(
    body: dict[str, object], chain: str
) -> None:
    """A decoded transaction reads its id and signed bytes off its canonical bytes instead of
    normalising again: the same bytes, whatever the body holds."""
    signed = tx.sign(key(1), chain, "member.register", body, valid_until=5)
    back = tx.decode(signed.encode())
    assert back.raw == signed.encode()
    assert back.signing_bytes(chain) == tx.signing_bytes(chain, signed.unsigned())
    assert back.tx_id == signed.tx_id and back.verify(chain)
    assert not back.verify(chain + "x")


def test_a_decoded_transaction_changed_by_replace_is_encoded_and_checked_afresh() -> None:
    signed = tx.sign(key(1), CHAIN, "member.register", {"role": "subject"}, valid_until=5)
    forged = dataclasses.replace(tx.decode(signed.encode()), sig=b"\x00" * 64)
    assert forged.raw is None and forged.encode() != signed.encode()
    assert not forged.verify(CHAIN)
    later = dataclasses.replace(tx.decode(signed.encode()), valid_until=6)
    assert later.tx_id != signed.tx_id and not later.verify(CHAIN)


def test_signature_binds_chain_and_every_field() -> None:
    signed = tx.sign(
        key(1), CHAIN, "member.register", {"role": "subject", "college": "citizens"}, valid_until=5
    )
    assert not signed.verify("another-chain")
    for changed in (
        tx.SignedTx(signed.type, signed.author, signed.nonce, 6, signed.body, signed.sig),
        tx.SignedTx(signed.type, signed.author, b"\x01" * 16, 5, signed.body, signed.sig),
        tx.SignedTx(
            signed.type,
            signed.author,
            signed.nonce,
            5,
            {**signed.body, "role": "vault"},
            signed.sig,
        ),
        tx.SignedTx("dataset.register", signed.author, signed.nonce, 5, signed.body, signed.sig),
        tx.SignedTx(
            signed.type, bytes(key(2).public_key), signed.nonce, 5, signed.body, signed.sig
        ),
    ):
        assert not changed.verify(CHAIN)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda m: m.pop("sig"),
        lambda m: m.update(v=2),
        lambda m: m.update(type="money.print"),
        lambda m: m.update(author=b"short"),
        lambda m: m.update(nonce=b"\x00" * 8),
        lambda m: m.update(valid_until=-1),
        lambda m: m.update(body=[1]),
        lambda m: m.update(sig=b"\x00"),
        lambda m: m.update(extra=1),
    ],
)
def test_malformed_envelopes_raise(mutate: object) -> None:
    signed = tx.sign(
        key(1), CHAIN, "member.register", {"role": "subject", "college": "citizens"}, valid_until=5
    )
    m = {**signed.unsigned(), "sig": signed.sig}
    mutate(m)  # type: ignore[operator]
    with pytest.raises(tx.MalformedTx):
        tx.decode(codec.encode(m))
