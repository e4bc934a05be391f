"""The Merkle map's incremental root against a from-scratch reference of the same tree."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from hypothesis import given, settings
from hypothesis import strategies as st

from ledger_bridge.merkle import MerkleMap


def _h(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def reference_root(data: dict[bytes, bytes]) -> bytes:
    """The whole tree hashed from nothing, written out from the module docstring rather than
    the module's constants: leaves in 65,536 buckets by the first 16 bits of H(key), in key
    order; groups of 64 buckets (0x01), supergroups of 32 groups (0x02), the root (0x03)."""
    buckets: dict[int, list[bytes]] = {}
    for k in sorted(data):
        leaf = _h(b"\x00" + len(k).to_bytes(4, "big") + k + _h(data[k]))
        buckets.setdefault(int.from_bytes(_h(k)[:2], "big"), []).append(leaf)
    level = [_h(b"")] * 65_536
    for i, leaves in buckets.items():
        level[i] = _h(b"".join(leaves))
    for prefix, fan in ((b"\x01", 64), (b"\x02", 32), (b"\x03", 32)):
        level = [_h(prefix + b"".join(level[i : i + fan])) for i in range(0, len(level), fan)]
    assert len(level) == 1
    return level[0]


writes = st.lists(
    st.tuples(st.binary(min_size=1, max_size=4), st.none() | st.binary(max_size=4)), max_size=40
)


@settings(deadline=None)  # the reference hashes the whole tree each time
@given(writes, st.integers(min_value=1, max_value=8))
def test_incremental_root_is_the_root_of_the_whole_tree(
    script: list[tuple[bytes, bytes | None]], every: int
) -> None:
    """Roots asked for after every few writes (so paths are re-hashed from partly dirty trees)
    equal the reference root of the same contents; so does a map restored from a snapshot."""
    kv, model = MerkleMap(), dict[bytes, bytes]()
    for i, (k, v) in enumerate(script):
        kv.set(k, v)
        if v is None:
            model.pop(k, None)
        else:
            model[k] = v
        if i % every == 0:
            assert kv.root() == reference_root(model)
    assert kv.root() == reference_root(model)
    assert MerkleMap.from_snapshot(kv.snapshot()).root() == kv.root()


def test_an_empty_map_has_the_reference_root() -> None:
    assert MerkleMap().root() == reference_root({})


@given(st.lists(st.one_of(st.just("freeze"), st.just("drop"), writes), max_size=12))
def test_every_frozen_view_serialises_the_map_as_it_was_when_frozen(
    script: list[object],
) -> None:
    """Copy-on-write views, several alive at once, some dropped: each one's bytes are the
    snapshot taken at its freeze, whatever was written after."""
    kv = MerkleMap()
    views: list[tuple[Callable[[], bytes], bytes]] = []
    for step in script:
        if step == "freeze":
            views.append((kv.freeze(), kv.snapshot()))
        elif step == "drop":
            views = views[1:]
        else:
            for k, v in step:  # type: ignore[attr-defined]
                kv.set(k, v)
        for view, expected in views:
            assert view() == expected


def test_a_restored_map_has_hashed_its_tree_already() -> None:
    """Restoring hashes the whole tree once, so the first block after a state transfer pays
    only for its own writes: a lazily hashed restore would make it pay O(state), which looks
    like a per-transaction cost growing with the state in `bench checkpoint`."""
    kv = MerkleMap()
    for i in range(2_000):
        kv.set(b"k%d" % i, b"v%d" % i)
    restored = MerkleMap.from_snapshot(kv.snapshot())
    assert not restored._dirty  # nothing left for the next root() to re-hash
    assert restored.root() == kv.root() == reference_root(kv.data)
