"""A byte map with an incremental Merkle root, shared by the applications the ledger hosts.

Why one structure for both: the replicas' checkpoints certify an application's state by its
root alone (the snapshot is serialised only when a lagging replica asks for it), so the root
must be collision resistant and cheap to keep up to date after every block. A sum of entry
hashes (AdHash with a 256-bit modulus) is cheap but falls to Wagner's generalised birthday
attack. This is a three-level hash tree: an entry's leaf H(0x00 || len(key) || key || H(value))
goes into one of 4,096 buckets chosen by the hash of its key; a bucket's hash covers its
leaves in key order; 64 groups of 64 bucket hashes are hashed (prefix 0x01), and the root is
the hash of the 64 group hashes (prefix 0x02). Why so flat rather than binary: a single write
costs three hash calls (its bucket, 2 KB for its group, 2 KB for the root) instead of
thirteen, which in Python is what a one-transaction block pays (the hash calls' overhead, not
their bytes, is the cost); a batch of 100 writes re-hashes at most the 64 groups once. An entry
is still provable against the root: its bucket's leaves, 63 bucket hashes and 63 group hashes.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator

import msgpack

from ledger_bridge.crypto import digest

BUCKET_BITS = 12
BUCKETS = 1 << BUCKET_BITS
GROUP_BITS = 6
GROUP_SIZE = 1 << GROUP_BITS  # buckets per group
GROUPS = BUCKETS // GROUP_SIZE
_EMPTY = digest(b"")


def _leaf(kb: bytes, vb: bytes) -> bytes:
    return digest(b"\x00" + len(kb).to_bytes(4, "big") + kb + digest(vb))


def _group_hash(bucket_hashes: list[bytes]) -> bytes:
    return digest(b"\x01" + b"".join(bucket_hashes))


def _root_hash(group_hashes: list[bytes]) -> bytes:
    return digest(b"\x02" + b"".join(group_hashes))


_EMPTY_GROUP = _group_hash([_EMPTY] * GROUP_SIZE)
_EMPTY_ROOT = _root_hash([_EMPTY_GROUP] * GROUPS)


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
        self._bucket_hashes: list[bytes] = [_EMPTY] * BUCKETS
        self._group_hashes: list[bytes] = [_EMPTY_GROUP] * GROUPS
        self._root = _EMPTY_ROOT
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
        """The root (32 bytes): re-hashes the dirty buckets, their groups, and the root."""
        if not self._dirty:
            return self._root
        hashes, leaves = self._bucket_hashes, self._leaves
        groups = set()
        for b in self._dirty:
            entries = self._buckets[b]
            hashes[b] = (
                digest(b"".join([leaves[k] for k in sorted(entries)])) if entries else _EMPTY
            )
            groups.add(b >> GROUP_BITS)
        self._dirty.clear()
        for g in groups:
            self._group_hashes[g] = _group_hash(hashes[g * GROUP_SIZE : (g + 1) * GROUP_SIZE])
        self._root = _root_hash(self._group_hashes)
        return self._root

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
