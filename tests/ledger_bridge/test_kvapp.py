"""The KV application: deterministic results, incremental state root, snapshot round trip."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger_bridge.app import BlockContext
from ledger_bridge.kvapp import KVApp, encode_del, encode_get, encode_set

CTX = BlockContext(1, 0, b"\0" * 32)


def test_set_get_del_and_rejections() -> None:
    app = KVApp()
    results, _ = app.execute(
        [encode_set(b"a", b"1"), encode_del(b"zz"), b"\xc1garbage", encode_del(b"a")], CTX
    )
    assert results == [b"ok", b"err:absent", b"err:malformed", b"ok"]
    app.execute([encode_set(b"b", b"2")], CTX)
    assert app.query(encode_get(b"b")) == b"2"
    assert app.query(encode_get(b"a")) == b""


ops = st.lists(st.tuples(st.booleans(), st.binary(max_size=3), st.binary(max_size=3)), max_size=30)


@given(ops)
def test_incremental_root_equals_root_of_rebuilt_state(
    script: list[tuple[bool, bytes, bytes]],
) -> None:
    """The Merkle root depends only on the final contents, not on the history."""
    app = KVApp()
    txs = [encode_set(k, v) if is_set else encode_del(k) for is_set, k, v in script]
    _, root = app.execute(txs, CTX)
    fresh = KVApp()
    fresh.restore(app.snapshot())
    assert fresh.state_root() == root
    assert fresh.snapshot() == app.snapshot()


def test_different_states_have_different_roots() -> None:
    a, b = KVApp(), KVApp()
    a.execute([encode_set(b"k", b"1")], CTX)
    b.execute([encode_set(b"k", b"2")], CTX)
    assert a.state_root() != b.state_root()
    b.execute([encode_set(b"k", b"1")], CTX)
    assert a.state_root() == b.state_root()


def test_a_frozen_state_is_the_state_when_frozen() -> None:
    """What a checkpoint relies on: `freeze()` now, serialise later, whatever ran meanwhile."""
    app = KVApp()
    app.execute([encode_set(b"a", b"1")], CTX)
    before = app.snapshot()
    later = app.freeze()
    app.execute([encode_set(b"a", b"2"), encode_set(b"b", b"3"), encode_del(b"a")], CTX)
    assert later() == before != app.snapshot()


@pytest.mark.parametrize("snapshot", [b"\xc1", b"\x91\x92\x01\x02", b"\x91\x92\xc4\x01k"])
def test_restore_refuses_other_bytes_or_another_root_and_keeps_its_state(snapshot: bytes) -> None:
    """A peer's snapshot is trusted only through the root its certificate names."""
    app = KVApp()
    app.execute([encode_set(b"a", b"1")], CTX)
    root, state = app.state_root(), app.snapshot()
    other = KVApp()
    other.execute([encode_set(b"a", b"2")], CTX)
    for raw in (snapshot, other.snapshot()):
        with pytest.raises(ValueError):
            app.restore(raw, expected_root=root)
        assert (app.state_root(), app.snapshot()) == (root, state)
    app.restore(other.snapshot(), expected_root=other.state_root())
    assert app.query(encode_get(b"a")) == b"2"
