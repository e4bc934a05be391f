"""The wire format: one canonical encoding per message, and only RemoteProtocolError on any
malformed input (a Byzantine peer's bytes must never crash a replica)."""

from __future__ import annotations

import contextlib
import dataclasses

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger_bridge.pbft import messages as m
from ledger_bridge.pbft.errors import LocalProtocolError, RemoteProtocolError
from tests.ledger_bridge.pbft.harness import key, request


def _samples() -> list[m.Message]:
    req = request(1)
    pp = m.sign(m.PrePrepare(0, 1, m.batch_digest(5, (req,)), 5, (req,), 0), key(0))
    prep = m.sign(m.Prepare(0, 1, pp.batch_digest, 1), key(1))
    cp = m.sign(m.Checkpoint(4, b"d" * 32, b"r" * 32, 2), key(2))
    vc = m.sign(m.ViewChange(1, 0, (), (m.PreparedCert(pp, (prep,)),), 3), key(3))
    nv = m.sign(m.NewView(1, (vc,), (pp,), 1), key(1))
    return [req, pp, prep, cp, vc, nv, m.sign(m.Status(0, True, False, 0, 3, 1), key(1))]


@pytest.mark.parametrize("msg", _samples(), ids=lambda x: type(x).__name__)
def test_round_trip_and_signatures(msg: m.Message) -> None:
    raw = m.encode(msg)
    assert m.decode(raw) == msg
    if isinstance(msg, m.Request):
        assert m.verify_request(msg)
        assert not m.verify_request(dataclasses.replace(msg, request_id=2))
    elif not isinstance(msg, m.PreparedCert):
        keys = [key(i).public_key for i in range(4)]
        assert m.verify_signed(msg, keys)
        flipped = bytes([msg.signature[0] ^ 1]) + msg.signature[1:]  # type: ignore[union-attr]
        assert not m.verify_signed(dataclasses.replace(msg, signature=flipped), keys)  # type: ignore[arg-type]


def test_non_canonical_encodings_are_rejected() -> None:
    req = request(1)
    obj = msgpack.unpackb(m.encode(req))
    # The same integer as a wider msgpack type: equal value, different bytes.
    wide = b"\x95" + msgpack.packb(1) + msgpack.packb(obj[1], use_bin_type=True)
    wide += b"\xcf" + obj[2].to_bytes(8, "big")
    wide += b"".join(msgpack.packb(x, use_bin_type=True) for x in obj[3:])
    with pytest.raises(RemoteProtocolError):
        m.decode(wide)
    with pytest.raises(RemoteProtocolError):
        m.decode(m.encode(req) + b"\x00")  # trailing bytes


@pytest.mark.parametrize(
    "obj",
    [
        [],
        [99, 1],
        [1, b"c", 1, b"tx"],  # a field missing
        [1, b"c", -1, b"tx", b"s"],  # negative integer
        [1, "c", 1, b"tx", b"s"],  # str where bytes
        [1, b"c", True, b"tx", b"s"],  # bool where int
        [3, 0, 1, b"d", 1, b"s", b"extra"],
        [2, 0, 1, b"d", 0, [[3, 0, 1, b"d", 1, b"s"]], 0, b"s"],  # wrong nested type
        {"a": 1},
    ],
)
def test_malformed_structures_are_remote_errors(obj: object) -> None:
    with pytest.raises(RemoteProtocolError):
        m.decode(msgpack.packb(obj, use_bin_type=True))


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_random_bytes_never_raise_anything_else(data: bytes) -> None:
    with contextlib.suppress(RemoteProtocolError):
        m.decode(data)


SAMPLES = [m.encode(x) for x in _samples()]


@settings(max_examples=500)
@given(st.integers(0, len(SAMPLES) - 1), st.integers(0, 10_000), st.integers(0, 255), st.booleans())
def test_mutated_messages_never_raise_anything_else(
    which: int, pos: int, byte: int, truncate: bool
) -> None:
    """Valid messages with one byte changed or cut short: decoded or rejected, nothing else."""
    raw = SAMPLES[which]
    pos %= len(raw)
    bad = raw[:pos] if truncate else raw[:pos] + bytes([byte]) + raw[pos + 1 :]
    with contextlib.suppress(RemoteProtocolError):
        m.decode(bad)


def test_signing_bytes_of_an_unsigned_message_is_our_bug() -> None:
    pp = _samples()[1]
    assert isinstance(pp, m.PrePrepare)
    with pytest.raises(LocalProtocolError):
        m.signing_bytes(m.PreparedCert(pp, ()))


def _reference(value: object) -> object:
    """The wire format by its definition: `[tag, fields...]`, nested messages as arrays."""
    if isinstance(value, tuple):
        return [_reference(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = [_reference(getattr(value, f.name)) for f in dataclasses.fields(value)]
        return [type(value).TAG, *fields]  # type: ignore[attr-defined]
    return value


def test_the_part_by_part_encoder_is_msgpack_of_the_nested_arrays() -> None:
    """`encode` writes array headers itself and reuses cached request encodings: the bytes
    must be exactly msgpack of the nested list, for every message and every list length
    (fixarray up to 15 items, array16 above), or signatures made elsewhere would not verify."""
    reqs = tuple(request(i) for i in range(1, 40))
    block = m.Block(
        7, 1, b"p" * 32, 9, b"d" * 32, reqs, (), b"r" * 32, b"s" * 32, (0, 2, 3), (b"x",)
    )
    data = m.sign(m.StateData(8, (), b"snap", (block,) * 17, 2), key(2))
    reply = m.sign(m.Reply(3, 2**40, b"c" * 32, 1, b"result" * 50, 300), key(1))
    commit = m.sign(m.Commit(1, 70_000, b"d" * 32, 2), key(2))
    odd: list[m.Message] = [block, data, reply, commit, m.PrePrepare(0, 2, b"d", 0, reqs[:16], 0)]
    for msg in [*_samples(), *odd]:
        expected = msgpack.packb(_reference(msg), use_bin_type=True)
        assert m.encode(msg) == expected
        assert m.decode(expected) == msg
        if msg.SIGNED:
            body = _reference(msg)[:-1]  # type: ignore[index]
            assert m.signing_bytes(msg) == m.DOMAIN + msgpack.packb(body, use_bin_type=True)


def test_a_verified_request_does_not_vouch_for_a_tampered_copy() -> None:
    """The per-process memo of verified requests is keyed by the whole request: changing any
    byte of it (signature, tx, id) means a fresh verification, which fails."""
    req = request(5)
    assert m.verify_request(req) and m.verify_request(req)
    bad_sig = bytes([req.signature[0] ^ 1]) + req.signature[1:]
    for tampered in (
        dataclasses.replace(req, signature=bad_sig),
        dataclasses.replace(req, tx=req.tx + b"x"),
        dataclasses.replace(req, request_id=6),
    ):
        assert not m.verify_request(tampered)
        assert not m.verify_request(tampered)  # a failure is not memoised as a success


_ints = st.integers(0, m.INT_MAX)
_digests = st.binary(max_size=40)
_requests = st.builds(m.Request, _digests, _ints, st.binary(max_size=64), _digests)
_votes = st.builds(m.Prepare, _ints, _ints, _digests, _ints, _digests)
_pre_prepares = st.builds(
    m.PrePrepare,
    _ints,
    _ints,
    _digests,
    _ints,
    st.lists(_requests, max_size=18).map(tuple),
    _ints,
    _digests,
)
_checkpoints = st.builds(m.Checkpoint, _ints, _digests, _digests, _ints, _digests)
_certs = st.builds(m.PreparedCert, _pre_prepares, st.lists(_votes, max_size=3).map(tuple))
_view_changes = st.builds(
    m.ViewChange,
    _ints,
    _ints,
    st.lists(_checkpoints, max_size=3).map(tuple),
    st.lists(_certs, max_size=2).map(tuple),
    _ints,
    _digests,
)
_blocks = st.builds(
    m.Block,
    _ints,
    _ints,
    _digests,
    _ints,
    _digests,
    st.lists(_requests, max_size=17).map(tuple),
    st.lists(st.builds(m.Omission, _ints, _digests, _digests), max_size=3).map(tuple),
    _digests,
    _digests,
    st.lists(_ints, max_size=17).map(tuple),
    st.lists(_digests, max_size=17).map(tuple),
)
_messages = st.one_of(
    _requests,
    _votes,
    _pre_prepares,
    _checkpoints,
    _certs,
    _view_changes,
    _blocks,
    st.builds(m.Commit, _ints, _ints, _digests, _ints, _digests),
    st.builds(m.Reply, _ints, _ints, _digests, _ints, st.binary(max_size=64), _ints, _digests),
    st.builds(m.Status, _ints, st.booleans(), st.booleans(), _ints, _ints, _ints, _digests),
    st.builds(
        m.NewView,
        _ints,
        st.lists(_view_changes, max_size=2).map(tuple),
        st.lists(_pre_prepares, max_size=2).map(tuple),
        _ints,
        _digests,
    ),
    st.builds(
        m.StateData,
        _ints,
        st.lists(_checkpoints, max_size=2).map(tuple),
        st.binary(max_size=9),
        st.lists(_blocks, max_size=2).map(tuple),
        _ints,
        _digests,
    ),
)


@settings(max_examples=400, deadline=None)
@given(_messages)
def test_every_message_encodes_and_signs_as_msgpack_of_its_nested_arrays(msg: m.Message) -> None:
    """The encoder's segments (scalar runs packed in one call, nested messages by their own,
    cached, encodings) give msgpack of the nested list for any field values and list lengths,
    and `decode` gives the message back."""
    expected = msgpack.packb(_reference(msg), use_bin_type=True)
    assert m.encode(msg) == expected
    assert m.decode(expected) == msg
    if msg.SIGNED:
        body = _reference(msg)[:-1]  # type: ignore[index]
        assert m.signing_bytes(msg) == m.DOMAIN + msgpack.packb(body, use_bin_type=True)
