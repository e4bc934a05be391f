"""The contracts' whole state: a key-value map with a Merkle root, indexes and undo.

Why a flat map: a state root must cover everything the contracts decide with, and a
snapshot must be canonical bytes. Keys are tuples `(table, part, ...)`, values canonical
msgpack; both encode canonically, so the same state is the same bytes on every replica.

The root is the Merkle root of `ledger_bridge.merkle.MerkleMap` (a flat tree over 65,536
buckets): a block costs O(its writes), not O(state), and an entry can be proven against it.

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
from ledger_bridge.merkle import MerkleMap, unpack_entries

Key = tuple[Any, ...]

# table -> index name -> key positions (after the table name) the index groups by
INDEXES: dict[str, dict[str, tuple[int, ...]]] = {
    "consent": {"by_consumer_purpose": (1, 3)},
    "dataset_upload": {"dataset": (0,)},
    "nonce_expiry": {"minute": (0,)},
    "member": {"all": ()},
    "purpose": {"all": ()},
    "erasure_request_open": {"all": ()},
    "vote": {"by_voter": (1,)},
    # eco-citizen tokens (rules/tokens.py, rules/devices.py)
    "lots": {"all": ()},
    "lot_expiry": {"day": (0,)},
    "token_statement": {"by_account": (0,)},
    "minted_day": {"by_subject": (1,)},
    "device": {"all": ()},
    "offer": {"all": ()},
    "reward_rule": {"all": ()},
    "redemptions": {"by_partner": (0,)},
    # rectification (rules/rectification.py)
    "rectification_request_open": {"all": ()},
    # restriction and objection (rules/restriction.py): a dataset's, for the vault's reads
    "restriction": {"by_dataset": (1,)},
}

# Tables whose first key part is a subject (the hex of their key) and whose entries say
# nothing once that subject is forgotten: an erasure "everywhere" deletes every entry of each
# (rules.forget), found by the `by_subject` index declared for each below. A table keyed by
# subject joins the forgetting by being listed here; nothing else needs to know of it.
#   consent                (subject, consumer, scope, purpose) -> versions
#   mention                (subject, height, index) -> 0: the batch position of a
#                          transaction the subject authored or that names them
#   erased_subject_dataset (subject, dataset) -> height of the erasure in that dataset
#   questions              (subject, consumer, purpose) -> [period, predicate questions
#                          asked in it] (contracts/disclosure.py)
#   restriction            (subject, dataset) -> versions of the subject's restriction,
#                          objection, and the DPO's exemption and override (with its
#                          grounds) (rules/restriction.py)
SUBJECT_TABLES: tuple[str, ...] = (
    "consent",
    "mention",
    "erased_subject_dataset",
    "questions",
    "restriction",
)
for _table in SUBJECT_TABLES:
    INDEXES.setdefault(_table, {})["by_subject"] = (0,)

# Tables whose entries an access decides with, as they stood at the end of the previous block
# (rules/views.py keeps them as sets): the state remembers which of their keys were written
# since the views last looked (`take_written`), so the views follow the state at the cost of
# its writes, and a state fresh from `restore` hands them every key to build from.
WATCHED_TABLES: tuple[str, ...] = ("consent", "erased_subject_dataset", "restriction")


def _scope_subject(scope: dict[str, Any]) -> tuple[str, ...]:
    subject = scope.get("subject")
    return () if subject is None else (subject,)


def _key_ref(access: dict[str, Any]) -> tuple[str, ...]:
    """An access's `reference` (the consumer's own, free text) when it could be a key in hex,
    lowercased: a consumer may well file an access under the subject's key."""
    ref = access.get("reference")
    return (ref.lower(),) if isinstance(ref, str) and len(ref) == 64 else ()


def _proposal_keys(p: dict[str, Any]) -> tuple[bytes, ...]:
    keys = (p["author"], p["action"].get("member"))
    return tuple(k for k in keys if k is not None)


# table -> index name (not one of the table's INDEXES) -> the values, read off an entry's
# VALUE, it is grouped under. Why: an
# access grants up to hundreds of subjects, and the access log is asked by subject; writing
# one index entry per granted subject into the state cost a hundred hashed writes per access
# (most of the contract's time). The entry's value already names them; grouping by it is as
# derived, and as unhashed, as the key-based indexes above.
VALUE_INDEXES: dict[str, dict[str, Callable[[Any], Iterable[Any]]]] = {
    "access": {
        # every subject the access names, granted or denied (and a consumer's reference that
        # is a subject's key): what forgetting one rewrites
        "subject": lambda a: (*a["granted"], *a.get("denied_subjects", ()), *_key_ref(a)),
        "consumer": lambda a: (a["consumer"],),
        # the accesses to a dataset: the DPO's affected subjects of a dataset (`accesses`)
        "dataset": lambda a: (a["dataset"],),
    },
    # the erasures and requests of a subject still known (forgotten ones name nobody)
    "erasure": {"subject": lambda e: _scope_subject(e["scope"])},
    "erasure_request": {"subject": lambda r: _scope_subject(r["scope"])},
    # the member keys a proposal names: its author, the member its action admits
    "proposal": {"key": _proposal_keys},
    # the subject an event rewarded, until forgetting them (or erasing its record) takes it
    # out; the vault's upload holding its record (rules/tokens.py)
    "event": {
        "subject": lambda e: (e["subject"],) if "subject" in e else (),
        "upload": lambda e: (e["upload"],) if "upload" in e else (),
    },
    # the batch indices to redact in each block (`ConsentApp.redacted_at`)
    "redaction": {"height": lambda r: (r[0],)},
    # the datasets a provider owns: a key rotation moves them (rules.membership)
    "dataset": {"owner": lambda d: (d["owner"],)},
    # active members by role: the cooperative's account is the active vault's (rules.fees)
    "member": {"active_role": lambda m: (m["role"],) if m["status"] == "active" else ()},
    # a subject's rectification requests, until forgetting strips the subject from them; a
    # dataset's requests and rectifications (rules/rectification.py)
    "rectification_request": {
        "subject": lambda r: (r["subject"],) if "subject" in r else (),
        "dataset": lambda r: (r["dataset"],),
    },
    "rectification": {"dataset": lambda r: (r["dataset"],)},
}


class State:
    def __init__(self) -> None:
        self._map = MerkleMap()
        self._data = self._map.data  # read-only alias: every write goes through the map
        self._keys: dict[bytes, Key] = {}
        self._index: dict[tuple[str, str, tuple[Any, ...]], set[Key]] = {}
        # the VALUE_INDEXES: (table, index) -> value -> keys; one level per value read off an
        # entry, so an access naming a hundred subjects files itself under each at one set
        # insertion, not one key tuple built and hashed per subject
        self._by_value: dict[tuple[str, str], dict[Any, set[Key]]] = {
            (table, name): {} for table, names in VALUE_INDEXES.items() for name in names
        }
        self._undo: list[tuple[Key, bytes | None]] | None = None
        # The subjects forgotten in the block being executed (rules.forget), cleared by
        # rules.begin_block. Not state: no entry may name them; a snapshot is only ever taken
        # between blocks, when this is empty in effect (the next block clears it first).
        self.forgotten: set[str] = set()
        # The keys (after the table name) of WATCHED_TABLES written or deleted since the last
        # `take_written`, and what the rules derive from those tables (rules/views.py): both
        # in memory, never hashed, rebuilt from the entries by a state `restore` makes.
        self._written: dict[str, set[Key]] = {t: set() for t in WATCHED_TABLES}
        self.derived: dict[str, object] = {}

    # -- reads ---------------------------------------------------------------------------
    def get(self, *key: Any) -> Any:
        raw = self._data.get(codec.encode_key(key))
        return None if raw is None else msgpack.unpackb(raw, raw=False)

    def has(self, *key: Any) -> bool:
        return codec.encode_key(key) in self._data

    def group(self, table: str, index: str, *values: Any) -> list[Key]:
        """Keys of `table` whose indexed positions equal `values`, in key order."""
        by_value = self._by_value.get((table, index))
        if by_value is not None:
            found = by_value.get(values[0], set())
        else:
            found = self._index.get((table, index, tuple(values)), set())
        return sorted(found, key=codec.encode_key)

    def in_group(self, table: str, index: str, values: tuple[Any, ...], parts: Key) -> bool:
        """Whether `(table, *parts)` is in the group `values` of `index` (one of INDEXES): an
        existence check without encoding a key or decoding a value."""
        found = self._index.get((table, index, values))
        return found is not None and parts in found

    def __len__(self) -> int:
        return len(self._data)

    def take_written(self, table: str) -> set[Key]:
        """The keys of `table` (one of WATCHED_TABLES, without the table name) written or
        deleted since the last call, a rollback's undo included; the memory starts again."""
        written, self._written[table] = self._written[table], set()
        return written

    def rewatch(self, table: str) -> None:
        """Count every key of `table` as written: what a reader of `take_written` that starts
        over builds from. O(state)."""
        self._written[table].update(k[1:] for k in self._keys.values() if k[0] == table)

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
        self._map.set(kb, vb)
        watched = self._written.get(key[0])
        if watched is not None:
            watched.add(key[1:])
        if vb is None:
            del self._keys[kb]
            self._unindex(key)
        elif old is None:
            self._keys[kb] = key
            self._reindex(key)
        by_value = VALUE_INDEXES.get(key[0])
        if by_value is not None:
            if vb is not None and value is None:
                value = msgpack.unpackb(vb, raw=False)
            before = None if old is None else msgpack.unpackb(old, raw=False)
            self._index_value(by_value, key, before, value if vb is not None else None)

    def _index_value(
        self,
        by_value: dict[str, Callable[[Any], Iterable[Any]]],
        key: Key,
        before: Any,
        after: Any,
    ) -> None:
        """Move `key` from the groups its old value (`before`, None if new) was under to
        those of its new value (`after`, None if deleted), touching only the groups that
        differ: rewriting one name out of an access that names hundreds costs one change."""
        table, parts = key[0], key[1:]
        for name, read in by_value.items():
            groups = self._by_value[table, name]
            was = set() if before is None else set(read(before))
            now = set() if after is None else set(read(after))
            for v in now - was if was else now:
                members = groups.get(v)
                if members is None:
                    groups[v] = {parts}
                else:
                    members.add(parts)
            for v in was - now:
                members = groups.get(v)
                if members is not None:
                    members.discard(parts)
                    if not members:
                        del groups[v]

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
        """The Merkle root over all entries (32 bytes); O(dirty buckets) after a change."""
        return self._map.root()

    def snapshot(self) -> bytes:
        """Canonical bytes of the whole state: its entries in key order."""
        return self._map.snapshot()

    def freeze(self) -> Callable[[], bytes]:
        """`snapshot()` as of now, produced later (see `MerkleMap.freeze`)."""
        return self._map.freeze()

    @classmethod
    def restore(cls, raw: bytes) -> State:
        """The state `snapshot()` produced; ValueError if `raw` is not such bytes."""
        state = cls()
        for kb, vb in unpack_entries(raw):
            try:
                key = msgpack.unpackb(kb, raw=False, use_list=False)
            except Exception:  # a malformed snapshot is one error for the caller
                raise ValueError("snapshot key does not parse") from None
            if not isinstance(key, tuple) or not key or codec.encode_key(key) != kb:
                raise ValueError("snapshot key is not canonical")
            state._write(key, vb)
        state.root()  # O(state) once, here, not in the first block after the restore
        return state

    def items(self) -> Iterator[tuple[Key, Any]]:
        for kb in sorted(self._data):
            yield self._keys[kb], msgpack.unpackb(self._data[kb], raw=False)
