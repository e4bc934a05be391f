"""A byte map with an incremental Merkle root, shared by the applications the ledger hosts.

Why one structure for both: the replicas' checkpoints certify an application's state by its
root alone (the snapshot is serialised only when a lagging replica asks for it), so the root
must be collision resistant and cheap to keep up to date after every block. A sum of entry
hashes (AdHash with a 256-bit modulus) is cheap but falls to Wagner's generalised birthday
attack. This is a flat hash tree: an entry's leaf H(0x00 || len(key) || key || H(value)) goes
into one of 65,536 buckets chosen by the first 16 bits of the hash of its key; a bucket's hash
covers its leaves in key order; 1,024 groups of 64 bucket hashes are hashed (prefix 0x01), 32
supergroups of 32 group hashes (prefix 0x02), and the root is the hash of the 32 supergroup
hashes (prefix 0x03).

Why this shape. Flat rather than binary: a single write costs four hash calls (its bucket, 2 KB
for its group, 1 KB each for its supergroup and the root) instead of seventeen, which in Python
is what a one-transaction block pays (the calls' overhead, not their bytes, is the cost); a
batch of 100 writes re-hashes at most 100 groups and the 32 supergroups once. Many buckets: a
write re-hashes its whole bucket, so the bucket must stay small as the state grows (with 4,096
buckets, a quarter of a million entries would put 61 leaves in each, and sorting and hashing
them would be most of what a transaction costs on a large state; with 65,536 it is 4). Empty buckets
cost one shared hash object each, their sets exist only once a key lands in them. An entry is
still provable against the root: its bucket's leaves, then 63, 31 and 31 sibling hashes.
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Callable, Iterator

import msgpack

from ledger_bridge.crypto import digest

BUCKET_BITS = 16
BUCKETS = 1 << BUCKET_BITS
# Fan-out of each level above the buckets: groups of 64 buckets, supergroups of 32 groups, and
# the root over the 32 supergroups. A level-i node hashes bytes([i]) + its children's hashes.
FANOUTS = (64, 32, 32)
_EMPTY = digest(b"")
# `crypto.digest` itself, called without its wrapper where a block calls it dozens of times
# (each key's bucket and leaf, each dirty bucket and node); the same SHA-256.
_sha256 = hashlib.sha256
_LEVEL_PREFIX = [bytes((level,)) for level in range(len(FANOUTS) + 1)]


def _leaf(kb: bytes, vb: bytes) -> bytes:
    return _sha256(
        b"".join((b"\x00", len(kb).to_bytes(4, "big"), kb, _sha256(vb).digest()))
    ).digest()


def _node_hash(level: int, children: list[bytes]) -> bytes:
    return _sha256(_LEVEL_PREFIX[level] + b"".join(children)).digest()


def _empty_levels() -> list[list[bytes]]:
    """Every level's node hashes for the empty map: the buckets, then each level above."""
    levels = [[_EMPTY] * BUCKETS]
    for i, fan in enumerate(FANOUTS, start=1):
        below = levels[-1]
        empty = _node_hash(i, below[:fan])
        levels.append([empty] * (len(below) // fan))
    assert len(levels[-1]) == 1, "the fan-outs must multiply to the bucket count"
    return levels


_EMPTY_LEVELS = _empty_levels()
_EMPTY_ROOT = _EMPTY_LEVELS[-1][0]


def bucket_of(kb: bytes) -> int:
    """The first BUCKET_BITS bits of H(key)."""
    return int.from_bytes(_sha256(kb).digest()[:2], "big") >> (16 - BUCKET_BITS)


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
        self._buckets: dict[int, set[bytes]] = {}  # only buckets that ever held a key
        self._levels: list[list[bytes]] = [list(level) for level in _EMPTY_LEVELS[:-1]]
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
            entries = self._buckets.get(bucket)
            if entries is None:
                entries = self._buckets[bucket] = set()
            entries.add(kb)
        self.data[kb] = vb
        self._leaves[kb] = _leaf(kb, vb)

    def root(self) -> bytes:
        """The root (32 bytes): re-hashes the dirty buckets and their ancestors."""
        if not self._dirty:
            return self._root
        buckets, leaves, hashes = self._buckets, self._leaves, self._levels[0]
        for b in self._dirty:
            entries = buckets.get(b)
            hashes[b] = (
                _sha256(b"".join([leaves[k] for k in sorted(entries)])).digest()
                if entries
                else _EMPTY
            )
        dirty: set[int] = self._dirty
        self._dirty = set()
        for i, fan in enumerate(FANOUTS, start=1):
            below = self._levels[i - 1]
            if i == len(FANOUTS):
                self._root = _node_hash(i, below)
                break
            level = self._levels[i]
            parents = {d // fan for d in dirty}
            for p in parents:
                level[p] = _node_hash(i, below[p * fan : (p + 1) * fan])
            dirty = parents
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
        """The map `snapshot()` produced; ValueError if `raw` is not such bytes.

        The root is computed here, not at the first block after a restore: hashing the whole
        tree is O(state), a cost for the state transfer that brought the snapshot, not for
        the next transaction (it looked like a transaction cost growing with the state)."""
        out = cls()
        for kb, vb in unpack_entries(raw):
            out.set(kb, vb)
        out.root()
        return out
