"""RFC 6962 Merkle trees: roots, audit paths and their verification (vault/crypto/merkle)."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vault.crypto.merkle import (
    MerkleBuilder,
    MerkleTree,
    inclusion_proof,
    leaf_hash,
    merkle_root,
    node_hash,
    verify_inclusion,
)


def _mth(leaves: list[bytes]) -> bytes:
    """RFC 6962 §2.1 MTH, transcribed recursively as the reference."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaves[0]
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return node_hash(_mth(leaves[:k]), _mth(leaves[k:]))


def _leaves(n: int) -> list[bytes]:
    return [leaf_hash(i.to_bytes(4, "big")) for i in range(n)]


def test_domain_separation() -> None:
    a, b = leaf_hash(b"a"), leaf_hash(b"b")
    assert leaf_hash(b"a") == hashlib.sha256(b"\x00a").digest()
    assert node_hash(a, b) == hashlib.sha256(b"\x01" + a + b).digest()
    # An interior node is not a valid leaf of the same data.
    assert leaf_hash(a + b) != node_hash(a, b)


def test_known_root_of_rfc6962_shape() -> None:
    leaves = _leaves(7)
    expected = node_hash(
        node_hash(node_hash(leaves[0], leaves[1]), node_hash(leaves[2], leaves[3])),
        node_hash(node_hash(leaves[4], leaves[5]), leaves[6]),
    )
    assert merkle_root(leaves) == expected == MerkleTree(leaves).root()


@given(st.integers(0, 300))
def test_streaming_and_level_roots_match_reference(n: int) -> None:
    leaves = _leaves(n)
    builder = MerkleBuilder()
    for leaf in leaves:
        builder.push(leaf)
    assert builder.count == n
    assert builder.root() == _mth(leaves) == MerkleTree(leaves).root()


@given(st.integers(0, 300), st.lists(st.integers(0, 70), max_size=8))
def test_extending_by_runs_is_pushing_each(n: int, cuts: list[int]) -> None:
    leaves = _leaves(n)
    builder = MerkleBuilder()
    start = 0
    for cut in cuts:
        builder.extend(leaves[start : start + cut])
        start = min(n, start + cut)
    builder.extend(leaves[start:])
    assert builder.count == n
    assert builder.root() == _mth(leaves)


@given(st.integers(1, 200), st.data())
def test_every_proof_verifies_and_tampering_fails(n: int, data: st.DataObject) -> None:
    leaves = _leaves(n)
    root = _mth(leaves)
    index = data.draw(st.integers(0, n - 1))
    path = inclusion_proof(leaves, index)
    assert verify_inclusion(leaves[index], index, n, path, root)
    assert not verify_inclusion(leaf_hash(b"forged"), index, n, path, root)
    if n > 1:
        other = (index + 1) % n
        assert not verify_inclusion(leaves[index], other, n, path, root)
        # The anchored (size, root) pair is what binds: another tree's root does not verify.
        assert not verify_inclusion(leaves[index], index, n + 1, path, _mth(_leaves(n + 1)))
    if path:
        bad = list(path)
        bad[0] = bytes(32)
        assert not verify_inclusion(leaves[index], index, n, bad, root)
        assert not verify_inclusion(leaves[index], index, n, path[:-1], root)


def test_out_of_range() -> None:
    with pytest.raises(IndexError):
        inclusion_proof(_leaves(3), 3)
    assert not verify_inclusion(leaf_hash(b"x"), 0, 0, [], merkle_root([]))
