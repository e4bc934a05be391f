"""The Merkle map's incremental root against a from-scratch reference of the same tree."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from hypothesis import given, settings
from hypothesis import strategies as st

from ledger_bridge.merkle import BUCKETS, GROUP_SIZE, MerkleMap, bucket_of


def _h(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def reference_root(data: dict[bytes, bytes]) -> bytes:
    """The whole tree hashed from nothing: leaves per bucket in key order, buckets in groups
    of 64, groups into the root."""
    buckets: list[list[bytes]] = [[] for _ in range(BUCKETS)]
    for k in sorted(data):
        leaf = _h(b"\x00" + len(k).to_bytes(4, "big") + k + _h(data[k]))
        buckets[bucket_of(k)].append(leaf)
    level = [_h(b"".join(b)) for b in buckets]
    groups = [
        _h(b"\x01" + b"".join(level[i : i + GROUP_SIZE])) for i in range(0, BUCKETS, GROUP_SIZE)
    ]
    return _h(b"\x02" + b"".join(groups))


writes = st.lists(
    st.tuples(st.binary(min_size=1, max_size=4), st.none() | st.binary(max_size=4)), max_size=40
)


@settings(deadline=None)  # the reference hashes all 4,096 buckets each time
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
