"""A byte map with an incremental Merkle root, shared by the applications the ledger hosts.

Why one structure for both: the replicas' checkpoints certify an application's state by its
root alone (the snapshot is serialised only when a lagging replica asks for it), so the root
must be collision resistant and cheap to keep up to date. A sum of entry hashes (AdHash with a
256-bit modulus) is cheap but falls to Wagner's generalised birthday attack; a Merkle tree
(RFC 6962 hashing) over 4,096 buckets is both: an entry's bucket is given by the hash of its
key, a bucket's hash covers its entries in key order, so a write re-hashes one bucket and 12
tree nodes when the root is next asked for, and an entry can be proven against the root (its
bucket's entries plus 12 siblings).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import msgpack

from ledger_bridge.crypto import digest

BUCKET_BITS = 12
BUCKETS = 1 << BUCKET_BITS
_EMPTY = digest(b"")


def _leaf(kb: bytes, vb: bytes) -> bytes:
    return digest(b"\x00" + len(kb).to_bytes(4, "big") + kb + digest(vb))


def _node(left: bytes, right: bytes) -> bytes:
    return digest(b"\x01" + left + right)


def bucket_of(kb: bytes) -> int:
    return int.from_bytes(digest(kb)[:2], "big") >> (16 - BUCKET_BITS)


def pack_entries(data: dict[bytes, bytes]) -> bytes:
    """Canonical bytes of a map: its entries in key order."""
    return bytes(msgpack.packb(sorted(data.items()), use_bin_type=True))


def unpack_entries(raw: bytes) -> Iterator[tuple[bytes, bytes]]:
    """The entries of `pack_entries` bytes; ValueError for anything else."""
    try:
        items = msgpack.unpackb(raw, raw=False, use_list=True)
    except Exception:  # any malformed snapshot is one error for the caller
        raise ValueError("snapshot does not parse") from None
    if not isinstance(items, list):
        raise ValueError("snapshot is not a list of entries")
    for item in items:
        if not (
            isinstance(item, list)
            and len(item) == 2
            and type(item[0]) is bytes
            and type(item[1]) is bytes
        ):
            raise ValueError("snapshot entry is not [key, value]")
        yield item[0], item[1]


class MerkleMap:
    """bytes -> bytes with `root()` (see the module docstring)."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self._leaves: dict[bytes, bytes] = {}
        self._buckets: list[set[bytes]] = [set() for _ in range(BUCKETS)]
        self._tree: list[bytes] = [b""] * (2 * BUCKETS)
        self._dirty: set[int] = set(range(BUCKETS))

    def __len__(self) -> int:
        return len(self.data)

    def get(self, kb: bytes) -> bytes | None:
        return self.data.get(kb)

    def set(self, kb: bytes, vb: bytes | None) -> None:
        """Set, or with `vb` None delete, one entry."""
        old = self.data.get(kb)
        if old == vb:
            return
        bucket = bucket_of(kb)
        self._dirty.add(bucket)
        if vb is None:
            del self.data[kb], self._leaves[kb]
            self._buckets[bucket].discard(kb)
            return
        if old is None:
            self._buckets[bucket].add(kb)
        self.data[kb] = vb
        self._leaves[kb] = _leaf(kb, vb)

    def root(self) -> bytes:
        """The Merkle root over all buckets (32 bytes); O(dirty buckets) after a change."""
        for b in sorted(self._dirty):
            entries = sorted(self._buckets[b])
            self._tree[BUCKETS + b] = (
                _EMPTY if not entries else digest(b"".join(self._leaves[k] for k in entries))
            )
            i = (BUCKETS + b) // 2
            while i >= 1:
                self._tree[i] = b""
                i //= 2
        self._dirty.clear()
        return self._subtree(1)

    def _subtree(self, i: int) -> bytes:
        if not self._tree[i]:
            self._tree[i] = _node(self._subtree(2 * i), self._subtree(2 * i + 1))
        return self._tree[i]

    def snapshot(self) -> bytes:
        return pack_entries(self.data)

    def freeze(self) -> Callable[[], bytes]:
        """`snapshot()` of the map as it is now, produced later, whatever is written meanwhile.

        Why a copy of the dictionary, not the bytes: a replica freezes its state at every
        checkpoint but serialises it only when a lagging replica asks for it or its node
        writes a durable snapshot; a shallow copy (keys and values are shared immutable
        bytes) costs a small fraction of sorting and packing every entry.
        """
        frozen = dict(self.data)
        return lambda: pack_entries(frozen)

    @classmethod
    def from_snapshot(cls, raw: bytes) -> MerkleMap:
        """The map `snapshot()` produced; ValueError if `raw` is not such bytes."""
        out = cls()
        for kb, vb in unpack_entries(raw):
            out.set(kb, vb)
        return out
