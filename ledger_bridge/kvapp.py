"""A key-value application for tests and benchmarks (the consent contracts come later).

Transactions are msgpack arrays: ["set", key, value] or ["del", key]. Results: b"ok", or
b"err:<reason>" for a transaction the application rejects (the replica still commits it: all
replicas must agree on every result).

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


def encode_get(key: bytes) -> bytes:
    return bytes(msgpack.packb(["get", key], use_bin_type=True))


def _parse(raw: bytes) -> list[Any] | None:
    try:
        obj = msgpack.unpackb(raw, raw=False, max_bin_len=VALUE_BYTES_MAX, max_str_len=16)
    except Exception:  # any malformed tx is a rejected tx, never a crash
        return None
    return obj if isinstance(obj, list) else None


class KVApp:
    """Implements `ledger_bridge.app.Application`."""

    def __init__(self) -> None:
        self._map = MerkleMap()
        self._data = self._map.data  # read-only alias: every write goes through the map
        self.last_height = 0

    def _apply(self, raw: bytes) -> bytes:
        tx = _parse(raw)
        if tx is None or not tx:
            return b"err:malformed"
        op, args = tx[0], tx[1:]
        if op == "set" and len(args) == 2 and all(type(a) is bytes for a in args):
            key, value = args
            if len(key) > KEY_BYTES_MAX:
                return b"err:key too long"
            if key not in self._data and len(self._data) >= KEYS_MAX:
                return b"err:full"
            self._map.set(key, value)
            return b"ok"
        if op == "del" and len(args) == 1 and type(args[0]) is bytes:
            if args[0] not in self._data:
                return b"err:absent"
            self._map.set(args[0], None)
            return b"ok"
        return b"err:unknown op"

    def execute(self, txs: Sequence[bytes], block: BlockContext) -> tuple[list[bytes], bytes]:
        results = [self._apply(tx) for tx in txs]
        self.last_height = block.height
        return results, self.state_root()

    def check(self, raw: bytes) -> bytes | None:
        """Admission: refuse what can never apply (see `Application.check`)."""
        tx = _parse(raw)
        if tx is None or not tx:
            return b"err:malformed"
        if tx[0] not in ("set", "del") or not all(type(a) is bytes for a in tx[1:]):
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
        return self._data.get(q[1], b"")

    def redactions(self, after: int, limit: int) -> list[Redaction]:
        return []

    def redacted_at(self, height: int) -> frozenset[int]:
        return frozenset()

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
