"""The Merkle map's incremental root against a from-scratch reference (RFC 6962 hashing)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from hypothesis import given, settings
from hypothesis import strategies as st

from ledger_bridge.merkle import BUCKETS, MerkleMap, bucket_of


def _h(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def reference_root(data: dict[bytes, bytes]) -> bytes:
    """The whole tree hashed from nothing: leaves per bucket in key order, then pairs."""
    buckets: list[list[bytes]] = [[] for _ in range(BUCKETS)]
    for k in sorted(data):
        leaf = _h(b"\x00" + len(k).to_bytes(4, "big") + k + _h(data[k]))
        buckets[bucket_of(k)].append(leaf)
    level = [_h(b"".join(b)) for b in buckets]
    while len(level) > 1:
        level = [_h(b"\x01" + level[i] + level[i + 1]) for i in range(0, len(level), 2)]
    return level[0]


writes = st.lists(
    st.tuples(st.binary(min_size=1, max_size=4), st.none() | st.binary(max_size=4)), max_size=40
)


@settings(deadline=None, max_examples=60)  # the reference hashes all 8,191 nodes each time
@given(writes, st.integers(min_value=4, max_value=12))
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
