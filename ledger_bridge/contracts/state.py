"""The contracts' whole state: a key-value map with a Merkle root, indexes and undo.

Why a flat map: a state root must cover everything the contracts decide with, and a
snapshot must be canonical bytes. Keys are tuples `(table, part, ...)`, values canonical
msgpack; both encode canonically, so the same state is the same bytes on every replica.

The root is a Merkle tree (RFC 6962 hashing) over 4,096 buckets; an entry's bucket is given by
the hash of its key, and a bucket's hash covers its entries in key order. Updating an entry
re-hashes one bucket and 12 tree nodes, so a block costs O(its writes), not O(state), and
an entry can still be proven against the root (its bucket's entries plus 12 siblings).

Indexes (entries of a table grouped by some key positions, e.g. consents by consumer and
purpose, or by what their values name, e.g. accesses by granted subject) are derived from the
entries alone, kept in memory, rebuilt by `restore`, and never hashed: they change nothing a
replica agrees on. `mark()`/`rollback()` undo a failed transaction's writes, indexes
included, so a rejected transaction leaves no trace.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import msgpack

from ledger_bridge.contracts import codec
from ledger_bridge.crypto import digest

BUCKET_BITS = 12
BUCKETS = 1 << BUCKET_BITS
_EMPTY = digest(b"")

Key = tuple[Any, ...]

# table -> index name -> key positions (after the table name) the index groups by
INDEXES: dict[str, dict[str, tuple[int, ...]]] = {
    "consent": {"by_subject": (0,), "by_consumer_purpose": (1, 3)},
    "dataset_upload": {"dataset": (0,)},
    "nonce_expiry": {"minute": (0,)},
    "member": {"all": ()},
    "purpose": {"all": ()},
    "erasure_request_open": {"all": ()},
    # membership only: lets an access skip a lookup per subject when nothing is erased
    "erased_subject": {"all": ()},
    "erased_subject_dataset": {"subject": (0,)},
}

# table -> index name -> the values, read off an entry's VALUE, it is grouped under. Why: an
# access grants up to hundreds of subjects, and the access log is asked by subject; writing
# one index entry per granted subject into the state cost a hundred hashed writes per access
# (most of the contract's time). The entry's value already names them; grouping by it is as
# derived, and as unhashed, as the key-based indexes above.
VALUE_INDEXES: dict[str, dict[str, Callable[[Any], Iterable[Any]]]] = {
    "access": {
        "subject": lambda a: a["granted"],
        "consumer": lambda a: (a["consumer"],),
    },
}


def _leaf(kb: bytes, vb: bytes) -> bytes:
    return digest(b"\x00" + len(kb).to_bytes(4, "big") + kb + digest(vb))


def _node(left: bytes, right: bytes) -> bytes:
    return digest(b"\x01" + left + right)


class State:
    def __init__(self) -> None:
        self._data: dict[bytes, bytes] = {}
        self._keys: dict[bytes, Key] = {}
        self._leaves: dict[bytes, bytes] = {}
        self._buckets: list[set[bytes]] = [set() for _ in range(BUCKETS)]
        self._tree: list[bytes] = [b""] * (2 * BUCKETS)
        self._dirty: set[int] = set(range(BUCKETS))
        self._index: dict[tuple[str, str, tuple[Any, ...]], set[Key]] = {}
        self._undo: list[tuple[Key, bytes | None]] | None = None

    # -- reads ---------------------------------------------------------------------------
    def get(self, *key: Any) -> Any:
        raw = self._data.get(codec.encode_key(key))
        return None if raw is None else msgpack.unpackb(raw, raw=False)

    def has(self, *key: Any) -> bool:
        return codec.encode_key(key) in self._data

    def group(self, table: str, index: str, *values: Any) -> list[Key]:
        """Keys of `table` whose indexed positions equal `values`, in key order."""
        found = self._index.get((table, index, tuple(values)), set())
        return sorted(found, key=codec.encode_key)

    def in_group(self, table: str, index: str, values: tuple[Any, ...], parts: Key) -> bool:
        """Whether `(table, *parts)` is in the group `values` of `index`: an existence check
        without encoding a key or decoding a value (the hot loop of an access)."""
        found = self._index.get((table, index, values))
        return found is not None and parts in found

    def __len__(self) -> int:
        return len(self._data)

    # -- writes --------------------------------------------------------------------------
    def put(self, *key_and_value: Any) -> None:
        *key, value = key_and_value
        self._write(tuple(key), codec.encode(value), value)

    def delete(self, *key: Any) -> None:
        self._write(tuple(key), None)

    def _write(self, key: Key, vb: bytes | None, value: Any = None) -> None:
        """Set (or with `vb` None, delete) one entry; `value` is `vb` decoded, when the caller
        has it, so a value-indexed write need not decode what it just encoded."""
        kb = codec.encode_key(key)
        old = self._data.get(kb)
        if old == vb:
            return
        if self._undo is not None:
            self._undo.append((key, old))
        bucket = int.from_bytes(digest(kb)[:2], "big") >> (16 - BUCKET_BITS)
        self._dirty.add(bucket)
        by_value = VALUE_INDEXES.get(key[0])
        if by_value is not None and old is not None:
            self._index_value(by_value, key, msgpack.unpackb(old, raw=False), add=False)
        if vb is None:
            del self._data[kb], self._leaves[kb], self._keys[kb]
            self._buckets[bucket].discard(kb)
            self._unindex(key)
            return
        if old is None:
            self._buckets[bucket].add(kb)
            self._keys[kb] = key
            self._reindex(key)
        self._data[kb] = vb
        self._leaves[kb] = _leaf(kb, vb)
        if by_value is not None:
            if value is None:
                value = msgpack.unpackb(vb, raw=False)
            self._index_value(by_value, key, value, add=True)

    def _index_value(
        self,
        by_value: dict[str, Callable[[Any], Iterable[Any]]],
        key: Key,
        value: Any,
        *,
        add: bool,
    ) -> None:
        table, parts = key[0], key[1:]
        for name, read in by_value.items():
            for v in read(value):
                ix = (table, name, (v,))
                if add:
                    self._index.setdefault(ix, set()).add(parts)
                    continue
                members = self._index.get(ix)
                if members is not None:
                    members.discard(parts)
                    if not members:
                        del self._index[ix]

    def _specs(self, key: Key) -> Iterator[tuple[tuple[str, str, tuple[Any, ...]], Key]]:
        table, parts = key[0], key[1:]
        for name, positions in INDEXES.get(table, {}).items():
            yield (table, name, tuple(parts[p] for p in positions)), parts

    def _reindex(self, key: Key) -> None:
        for ix, parts in self._specs(key):
            self._index.setdefault(ix, set()).add(parts)

    def _unindex(self, key: Key) -> None:
        for ix, parts in self._specs(key):
            members = self._index.get(ix)
            if members is not None:
                members.discard(parts)
                if not members:
                    del self._index[ix]

    # -- transactions --------------------------------------------------------------------
    def mark(self) -> None:
        """Start recording undo information for one transaction."""
        self._undo = []

    def commit(self) -> None:
        self._undo = None

    def rollback(self) -> None:
        """Undo every write since `mark()`, newest first."""
        undo, self._undo = self._undo or [], None
        for key, old in reversed(undo):
            self._write(key, old)

    # -- root and snapshot ---------------------------------------------------------------
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
        """Canonical bytes of the whole state: its entries in key order."""
        return bytes(msgpack.packb(sorted(self._data.items()), use_bin_type=True))

    @classmethod
    def restore(cls, raw: bytes) -> State:
        state = cls()
        for kb, vb in msgpack.unpackb(raw, raw=False, use_list=True):
            key = msgpack.unpackb(kb, raw=False, use_list=False)
            state._write(tuple(key), bytes(vb))
        return state

    def items(self) -> Iterator[tuple[Key, Any]]:
        for kb in sorted(self._data):
            yield self._keys[kb], msgpack.unpackb(self._data[kb], raw=False)
