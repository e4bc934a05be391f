"""The KV application: deterministic results, incremental state root, snapshot round trip."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger_bridge.app import BlockContext, Redaction
from ledger_bridge.kvapp import KVApp, encode_del, encode_forget, encode_get, encode_set

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
    """The state is the values and, per key, the positions that wrote them (what "forget"
    redacts): the same writes at the same positions give the same root, nothing else."""
    a, b = KVApp(), KVApp()
    a.execute([encode_set(b"k", b"1")], CTX)
    b.execute([encode_set(b"k", b"2")], CTX)
    assert a.state_root() != b.state_root()
    later = BlockContext(2, 0, b"\0" * 32)
    b.execute([encode_set(b"k", b"1")], later)
    assert a.state_root() != b.state_root()  # same value, written at other positions
    a.execute([encode_set(b"k", b"1")], later)
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


def test_forget_lists_every_write_of_the_key_and_its_own_position() -> None:
    """What the simulator and the process tests drive redaction with: "forget" deletes the
    key and lists the batch positions (from `BlockContext.positions`, not the list index)
    of every set or del of it, and its own, as redaction entries decided at its height."""
    app = KVApp()
    app.execute([encode_set(b"x", b"1"), encode_set(b"y", b"1")], CTX)
    # The replica skipped batch index 0 (a duplicate): the txs are batch indices 1 and 2.
    app.execute([encode_del(b"x"), encode_set(b"x", b"2")], BlockContext(2, 0, b"\0" * 32, (1, 2)))
    assert app.redactions(0, 10) == []
    results, _ = app.execute([encode_forget(b"x")], BlockContext(3, 0, b"\0" * 32, (4,)))
    assert results == [b"ok"]
    assert app.redactions(0, 10) == [
        Redaction(1, 1, 0, 3),
        Redaction(2, 2, 1, 3),
        Redaction(3, 2, 2, 3),
        Redaction(4, 3, 4, 3),
    ]
    assert app.redactions(2, 1) == [Redaction(3, 2, 2, 3)]
    assert app.redactions(4, 10) == []
    assert app.redacted_at(2) == frozenset({1, 2})
    assert app.redacted_at(1) == frozenset({0})  # "y" at index 1 stays
    assert app.query(encode_get(b"x")) == b""
    assert app.query(encode_get(b"y")) == b"1"
    # The entries are state: a snapshot carries them, and a forgotten key is gone from it.
    copy = KVApp()
    copy.restore(app.snapshot(), expected_root=app.state_root())
    assert copy.redactions(0, 10) == app.redactions(0, 10)
    assert b"x" not in [k[1:] for k in copy._data if k.startswith(b"k")]
    # Forgetting it again, or a key never written, is refused (its body is left out).
    again, _ = app.execute([encode_forget(b"x"), encode_forget(b"z")], CTX)
    assert again == [b"err:absent", b"err:absent"]
