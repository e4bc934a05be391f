"""Merkle trees over an upload's records, RFC 6962 (Certificate Transparency) style.

Why RFC 6962: leaves and interior nodes are domain-separated (0x00 / 0x01 prefixes), so no
interior node can be passed off as a leaf (second-preimage attack on unbalanced trees), the
tree shape for any leaf count is fixed by the RFC, and a consumer can verify an inclusion
proof with a dozen lines of code in any language (see `verify_inclusion`).

`MerkleBuilder` computes the root of a stream in O(log n) memory, so an upload of any size
never holds its leaves in memory.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

HASH_BYTES = 32
_EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


class MerkleBuilder:
    """Streaming RFC 6962 root: push leaf hashes in order, read `root()` at the end.

    Keeps one pending subtree root per set bit of the count (a binary counter), so memory is
    O(log n). The final fold combines pending subtrees right to left, which yields exactly the
    RFC's MTH for a non-power-of-two count (the left subtree is the largest power of two).
    """

    __slots__ = ("_count", "_stack")

    def __init__(self) -> None:
        self._stack: list[tuple[int, bytes]] = []  # (height, subtree root), heights decreasing
        self._count = 0

    @property
    def count(self) -> int:
        return self._count

    def push(self, leaf: bytes) -> None:
        height, node = 0, leaf
        stack = self._stack
        while stack and stack[-1][0] == height:
            _, left = stack.pop()
            node = node_hash(left, node)
            height += 1
        stack.append((height, node))
        self._count += 1

    def extend(self, leaves: Sequence[bytes]) -> None:
        """`push` each of `leaves` in order: the same loop with its lookups hoisted, for an
        upload's chunks of hundreds of leaves."""
        stack, sha256 = self._stack, hashlib.sha256
        for leaf in leaves:
            height, node = 0, leaf
            while stack and stack[-1][0] == height:
                node = sha256(b"\x01" + stack.pop()[1] + node).digest()
                height += 1
            stack.append((height, node))
        self._count += len(leaves)

    def root(self) -> bytes:
        if not self._stack:
            return _EMPTY_ROOT
        node = self._stack[-1][1]
        for _, left in reversed(self._stack[:-1]):
            node = node_hash(left, node)
        return node


def merkle_root(leaves: Sequence[bytes]) -> bytes:
    builder = MerkleBuilder()
    for leaf in leaves:
        builder.push(leaf)
    return builder.root()


class MerkleTree:
    """All levels of a tree, for serving many inclusion proofs of one upload cheaply.

    RFC 6962's tree equals the level-by-level tree in which an unpaired last node is promoted
    unchanged to the next level; building levels is O(n) once, then each proof is O(log n).
    """

    __slots__ = ("_levels",)

    def __init__(self, leaves: Sequence[bytes]) -> None:
        levels = [list(leaves)]
        while len(levels[-1]) > 1:
            below = levels[-1]
            above = [node_hash(below[i], below[i + 1]) for i in range(0, len(below) - 1, 2)]
            if len(below) % 2:
                above.append(below[-1])
            levels.append(above)
        self._levels = levels

    @property
    def size(self) -> int:
        return len(self._levels[0])

    def root(self) -> bytes:
        return self._levels[-1][0] if self._levels[0] else _EMPTY_ROOT

    def proof(self, index: int) -> list[bytes]:
        """RFC 6962 §2.1.1 PATH(m, D[n]): the audit path for leaf `index`, bottom-up."""
        if not 0 <= index < self.size:
            raise IndexError("leaf index outside the tree")
        path: list[bytes] = []
        for level in self._levels[:-1]:
            sibling = index ^ 1
            if sibling < len(level):
                path.append(level[sibling])
            index >>= 1
        return path


class AuditPath(list[bytes]):
    """An audit path (`MerkleTree.proof`) made once for a leaf of a cached tree and shared by
    every read that proves that leaf (vault/reads.py): never to be changed. `text` is a memo
    for its encoder (api/http/records_json.py): a leaf's path never changes, so a leaf proved
    again need not be walked or encoded again: walking and encoding the paths is about a
    seventh of the work of reading and encoding a 100-record answer (docs/BENCHMARKS.md,
    "Access")."""

    __slots__ = ("text",)

    def __init__(self, hashes: Iterable[bytes]) -> None:
        super().__init__(hashes)
        self.text: str | None = None


def inclusion_proof(leaves: Sequence[bytes], index: int) -> list[bytes]:
    return MerkleTree(leaves).proof(index)


def verify_inclusion(
    leaf: bytes, index: int, size: int, path: Sequence[bytes], root: bytes
) -> bool:
    """RFC 9162 §2.1.3.2: check that `leaf` is at `index` in a tree of `size` with `root`."""
    if not 0 <= index < size:
        return False
    fn, sn, node = index, size - 1, leaf
    for sibling in path:
        if len(sibling) != HASH_BYTES or sn == 0:
            return False
        if fn & 1 or fn == sn:
            node = node_hash(sibling, node)
            if not fn & 1:
                while fn & 1 == 0 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            node = node_hash(node, sibling)
        fn >>= 1
        sn >>= 1
    return sn == 0 and node == root
