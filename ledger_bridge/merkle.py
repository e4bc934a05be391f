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

import hashlib
import weakref
from collections.abc import Callable, Iterator

import msgpack

from ledger_bridge.crypto import digest

BUCKET_BITS = 12
BUCKETS = 1 << BUCKET_BITS
_EMPTY = digest(b"")


def _leaf(kb: bytes, vb: bytes) -> bytes:
    return digest(b"\x00" + len(kb).to_bytes(4, "big") + kb + digest(vb))


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()  # `crypto.digest`, without a call in the hot loop


def _empty_tree() -> list[bytes]:
    """The tree of an empty map (node i at depth i.bit_length() - 1; index 0 unused): one hash
    per level, so a new map need not hash 8,191 empty nodes."""
    by_depth = [_EMPTY]
    for _ in range(BUCKET_BITS):
        by_depth.insert(0, _sha256(b"\x01" + by_depth[0] + by_depth[0]))
    return [b""] + [by_depth[i.bit_length() - 1] for i in range(1, 2 * BUCKETS)]


_EMPTY_TREE = _empty_tree()


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


class _Frozen:
    """The map as of `MerkleMap.freeze()`: copy-on-write. The live map records, for each key
    it changes while this view is alive, the value the key had when frozen (None: absent).
    Serialising applies those to a copy of the live entries. The map holds views weakly: a
    view nobody keeps (a replica dropped its checkpoint) costs no write anything."""

    __slots__ = ("__weakref__", "live", "undo")

    def __init__(self, live: MerkleMap) -> None:
        self.live = live
        self.undo: dict[bytes, bytes | None] = {}

    def __call__(self) -> bytes:
        data = dict(self.live.data)
        for kb, old in self.undo.items():
            if old is None:
                data.pop(kb, None)
            else:
                data[kb] = old
        return pack_entries(data)


class MerkleMap:
    """bytes -> bytes with `root()` (see the module docstring)."""

    def __init__(self) -> None:
        self._views: list[weakref.ref[_Frozen]] = []
        self.data: dict[bytes, bytes] = {}
        self._leaves: dict[bytes, bytes] = {}
        self._buckets: list[set[bytes]] = [set() for _ in range(BUCKETS)]
        self._tree: list[bytes] = list(_EMPTY_TREE)
        self._dirty: set[int] = set()

    def __len__(self) -> int:
        return len(self.data)

    def get(self, kb: bytes) -> bytes | None:
        return self.data.get(kb)

    def set(self, kb: bytes, vb: bytes | None) -> None:
        """Set, or with `vb` None delete, one entry."""
        old = self.data.get(kb)
        if old == vb:
            return
        if self._views:
            self._record_for_views(kb, old)
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
        """The Merkle root over all buckets (32 bytes): re-hashes the dirty buckets and their
        paths to the root, level by level (13 hashes for one dirty bucket)."""
        if not self._dirty:
            return self._tree[1]
        tree, leaves, sha = self._tree, self._leaves, hashlib.sha256
        for b in self._dirty:
            entries = self._buckets[b]
            tree[BUCKETS + b] = (
                _EMPTY
                if not entries
                else sha(b"".join(leaves[k] for k in sorted(entries))).digest()
            )
        if len(self._dirty) == 1:  # one write since the last root: the common, unbatched case
            i = (BUCKETS + next(iter(self._dirty))) >> 1
            while i:
                tree[i] = sha(b"\x01" + tree[2 * i] + tree[2 * i + 1]).digest()
                i >>= 1
        else:
            parents = {(BUCKETS + b) >> 1 for b in self._dirty}
            while parents:
                for i in parents:
                    tree[i] = sha(b"\x01" + tree[2 * i] + tree[2 * i + 1]).digest()
                parents = {i >> 1 for i in parents} - {0}
        self._dirty.clear()
        return tree[1]

    def snapshot(self) -> bytes:
        return pack_entries(self.data)

    def freeze(self) -> Callable[[], bytes]:
        """`snapshot()` of the map as it is now, produced later, whatever is written meanwhile.

        Why copy-on-write, not the bytes nor a copy: a replica freezes its state at every
        checkpoint but serialises it only when a lagging replica asks for it or its node
        writes a durable snapshot; freezing costs O(1), and each later write O(live views)
        (a replica keeps two or three: its stable checkpoint and the ones not yet stable).
        """
        view = _Frozen(self)
        self._views.append(weakref.ref(view))
        return view

    def _record_for_views(self, kb: bytes, old: bytes | None) -> None:
        alive = False
        for ref in self._views:
            view = ref()
            if view is not None:
                alive = True
                if kb not in view.undo:
                    view.undo[kb] = old
        if not alive or len(self._views) > 8:
            self._views = [ref for ref in self._views if ref() is not None]

    @classmethod
    def from_snapshot(cls, raw: bytes) -> MerkleMap:
        """The map `snapshot()` produced; ValueError if `raw` is not such bytes."""
        out = cls()
        for kb, vb in unpack_entries(raw):
            out.set(kb, vb)
        return out
