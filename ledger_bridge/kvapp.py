"""A key-value application for tests and benchmarks; production runs the consent contracts.

Transactions are msgpack arrays: ["set", key, value], ["del", key] or ["forget", key].
Results: b"ok", or b"err:<reason>" for a transaction the application rejects (the replica
still commits it: all replicas must agree on every result).

"forget" stands in for a subject's erasure (the consent contracts' `erasure.record`), so the
replicas' redaction can be driven without the contracts: it deletes the key and lists, as
redaction entries (`ledger_bridge.app.Redaction`), the batch position of every set or del of
that key that executed, and its own. For that the state keeps, per key, the positions that
wrote it. State layout (one Merkle map): b"k" + key -> msgpack [value or nil after a del,
[[height, index], ...]]; b"r" + n (8 bytes, big-endian) -> [height, index, since];
b"h" + height (8 bytes) -> [index, ...] redacted at that height; b"#" -> the entry count.

The state root is the incremental Merkle root of `ledger_bridge.merkle.MerkleMap`, the one the
consent contracts use: a block costs O(its txs), not O(state), and the root is collision
resistant, which the replicas' checkpoints rely on (they certify the state by its root).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import msgpack

from ledger_bridge.app import BlockContext, Redaction
from ledger_bridge.merkle import MerkleMap

KEY_BYTES_MAX = 1024
VALUE_BYTES_MAX = 64 * 1024
KEYS_MAX = 10_000_000
WRITES_PER_KEY_MAX = 10_000  # positions kept per key (each write re-packs the list)


def encode_set(key: bytes, value: bytes) -> bytes:
    return bytes(msgpack.packb(["set", key, value], use_bin_type=True))


def encode_set_sized(key: bytes, size: int) -> bytes:
    """A `set` transaction of exactly `size` bytes (floods of maximal requests in tests and
    the simulator). The value's length header grows with it, so the value is sized against a
    full-size one."""
    overhead = len(encode_set(key, b"v" * size)) - size
    tx = encode_set(key, b"v" * (size - overhead))
    if len(tx) != size:
        raise ValueError(f"no set transaction of exactly {size} bytes for this key")
    return tx


def encode_del(key: bytes) -> bytes:
    return bytes(msgpack.packb(["del", key], use_bin_type=True))


def encode_forget(key: bytes) -> bytes:
    return bytes(msgpack.packb(["forget", key], use_bin_type=True))


def encode_get(key: bytes) -> bytes:
    return bytes(msgpack.packb(["get", key], use_bin_type=True))


def _parse(raw: bytes) -> list[Any] | None:
    try:
        obj = msgpack.unpackb(raw, raw=False, max_bin_len=VALUE_BYTES_MAX, max_str_len=16)
    except Exception:  # any malformed tx is a rejected tx, never a crash
        return None
    return obj if isinstance(obj, list) else None


def _pack(obj: Any) -> bytes:
    return bytes(msgpack.packb(obj, use_bin_type=True))


def _n_key(n: int) -> bytes:
    return b"r" + n.to_bytes(8, "big")


def _height_key(height: int) -> bytes:
    return b"h" + height.to_bytes(8, "big")


_COUNT_KEY = b"#"


class KVApp:
    """Implements `ledger_bridge.app.Application`."""

    def __init__(self) -> None:
        self._map = MerkleMap()
        self._data = self._map.data  # read-only alias: every write goes through the map
        self.last_height = 0

    def _entry(self, key: bytes) -> tuple[bytes | None, list[list[int]]]:
        raw = self._data.get(b"k" + key)
        if raw is None:
            return None, []
        value, positions = msgpack.unpackb(raw, raw=False)
        return value, positions

    def _write(self, key: bytes, value: bytes | None, pos: tuple[int, int]) -> bytes:
        old, positions = self._entry(key)
        if len(positions) >= WRITES_PER_KEY_MAX:
            return b"err:too many writes"
        if old is None and value is None:
            return b"err:absent"
        if old is None and not positions and len(self._data) >= KEYS_MAX:
            return b"err:full"
        self._map.set(b"k" + key, _pack([value, [*positions, list(pos)]]))
        return b"ok"

    def _forget(self, key: bytes, pos: tuple[int, int]) -> bytes:
        """Delete `key` and list its writers' positions and this one as redaction entries."""
        _, positions = self._entry(key)
        if not positions:
            return b"err:absent"
        self._map.set(b"k" + key, None)
        raw = self._data.get(_COUNT_KEY)
        last = 0 if raw is None else int(msgpack.unpackb(raw))
        for height, index in [*positions, list(pos)]:
            last += 1
            self._map.set(_n_key(last), _pack([height, index, pos[0]]))
            at = self._data.get(_height_key(height))
            indices = [] if at is None else list(msgpack.unpackb(at))
            self._map.set(_height_key(height), _pack(sorted({*indices, index})))
        self._map.set(_COUNT_KEY, _pack(last))
        return b"ok"

    def _apply(self, raw: bytes, pos: tuple[int, int]) -> bytes:
        tx = _parse(raw)
        if tx is None or not tx:
            return b"err:malformed"
        op, args = tx[0], tx[1:]
        if not (args and all(type(a) is bytes for a in args)):
            return b"err:unknown op"
        if len(args[0]) > KEY_BYTES_MAX:
            return b"err:key too long"
        if op == "set" and len(args) == 2:
            return self._write(args[0], args[1], pos)
        if op == "del" and len(args) == 1:
            return self._write(args[0], None, pos)
        if op == "forget" and len(args) == 1:
            return self._forget(args[0], pos)
        return b"err:unknown op"

    def execute(self, txs: Sequence[bytes], block: BlockContext) -> tuple[list[bytes], bytes]:
        h = block.height
        results = [self._apply(tx, (h, block.position(i))) for i, tx in enumerate(txs)]
        self.last_height = h
        return results, self.state_root()

    def check(self, raw: bytes) -> bytes | None:
        """Admission: refuse what can never apply (see `Application.check`)."""
        tx = _parse(raw)
        if tx is None or not tx:
            return b"err:malformed"
        if tx[0] not in ("set", "del", "forget") or not all(type(a) is bytes for a in tx[1:]):
            return b"err:unknown op"
        if tx[0] == "set" and (len(tx) != 3 or len(tx[1]) > KEY_BYTES_MAX):
            return b"err:malformed"
        return None

    def refusal_code(self, result: bytes) -> bytes | None:
        return result[4:] if result.startswith(b"err:") else None

    def query(self, request: bytes) -> bytes:
        q = _parse(request)
        if q is None or len(q) != 2 or q[0] != "get" or type(q[1]) is not bytes:
            raise ValueError("query is ['get', key]")
        value = self._entry(q[1])[0]
        return b"" if value is None else value

    def may_read(self, reader: bytes, request: bytes | None) -> bool:
        """No member roles here: validators and the operator's listed readers read."""
        return False

    def redactions(self, after: int, limit: int) -> list[Redaction]:
        raw = self._data.get(_COUNT_KEY)
        last = min(0 if raw is None else int(msgpack.unpackb(raw)), after + limit)
        out = []
        for n in range(after + 1, last + 1):
            height, index, since = msgpack.unpackb(self._data[_n_key(n)])
            out.append(Redaction(n, height, index, since))
        return out

    def redacted_at(self, height: int) -> frozenset[int]:
        raw = self._data.get(_height_key(height))
        return frozenset() if raw is None else frozenset(msgpack.unpackb(raw))

    def state_root(self) -> bytes:
        return self._map.root()

    def snapshot(self) -> bytes:
        return self._map.snapshot()

    def freeze(self) -> Callable[[], bytes]:
        return self._map.freeze()

    def restore(self, snapshot: bytes, expected_root: bytes | None = None) -> None:
        restored = MerkleMap.from_snapshot(snapshot)
        if expected_root is not None and restored.root() != expected_root:
            raise ValueError("snapshot does not have the expected state root")
        self._map, self._data = restored, restored.data
