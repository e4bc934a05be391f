"""The reads' cache of inclusion trees and of the audit paths they proved (vault/reads.py).

Why: a path kept by the cache is shared by every later read of its leaf, so what it holds
must be exactly the tree's proof, and the cache must stay within its bounds, giving back what
an evicted tree held."""

from __future__ import annotations

import hashlib
import uuid

from vault import reads
from vault.crypto.merkle import MerkleTree


def _tree(size: int) -> MerkleTree:
    return MerkleTree([hashlib.sha256(bytes([i])).digest() for i in range(size)])


def test_a_leaf_proved_again_gets_the_path_the_first_read_made() -> None:
    cache = reads._TreeCache(max_leaves=100, max_paths=10)
    tree = _tree(10)
    proved = cache.put(uuid.uuid4(), tree)
    first = proved.path(3)
    assert first == tree.proof(3) and len(first) == 4
    assert proved.path(3) is first
    assert proved.path(4) is not first and proved.path(4) == tree.proof(4)


def test_paths_beyond_the_bound_are_made_for_each_read_and_not_kept() -> None:
    cache = reads._TreeCache(max_leaves=100, max_paths=2)
    tree = _tree(10)
    proved = cache.put(uuid.uuid4(), tree)
    kept = [proved.path(0), proved.path(1)]
    assert proved.path(0) is kept[0] and proved.path(1) is kept[1]
    third = proved.path(2)
    assert third == tree.proof(2) and proved.path(2) is not third


def test_an_evicted_tree_gives_its_paths_back_and_keeps_none_after() -> None:
    cache = reads._TreeCache(max_leaves=8, max_paths=2)
    old = cache.put(uuid.uuid4(), _tree(8))
    old.path(0), old.path(1)
    new_id = uuid.uuid4()
    new = cache.put(new_id, _tree(8))  # over the leaves' bound: the old tree leaves
    assert cache.get(new_id, 8) is new
    assert old.path(2) is not old.path(2) and old.path(0) is not old.path(0)
    both = [new.path(0), new.path(1)]  # the bound the old tree held is free again
    assert new.path(0) is both[0] and new.path(1) is both[1]


def test_a_tree_too_large_for_the_cache_keeps_no_path() -> None:
    cache = reads._TreeCache(max_leaves=4, max_paths=10)
    upload = uuid.uuid4()
    proved = cache.put(upload, _tree(5))
    assert cache.get(upload, 5) is None
    assert proved.path(1) == proved.tree.proof(1) and proved.path(1) is not proved.path(1)
