"""The KV application: deterministic results, incremental state root, snapshot round trip."""

from __future__ import annotations

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
    """The AdHash root depends only on the final contents, not on the history."""
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
