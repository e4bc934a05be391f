"""A key-value application for tests and benchmarks (the consent contracts come later).

Transactions are msgpack arrays: ["set", key, value] or ["del", key]. Results: b"ok", or
b"err:<reason>" for a transaction the application rejects (the replica still commits it: all
replicas must agree on every result).

The state root is incremental (AdHash, Bellare-Micciancio 1997: the sum mod 2**256 of
H(key, value) over all entries, hashed with the entry count) so a block costs O(its txs), not
O(state). AdHash is fine for a test application; the consent contracts use a Merkle root.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgpack

from ledger_bridge.app import BlockContext
from ledger_bridge.crypto import digest

KEY_BYTES_MAX = 1024
VALUE_BYTES_MAX = 64 * 1024
KEYS_MAX = 10_000_000
_MOD = 1 << 256


def encode_set(key: bytes, value: bytes) -> bytes:
    return bytes(msgpack.packb(["set", key, value], use_bin_type=True))


def encode_del(key: bytes) -> bytes:
    return bytes(msgpack.packb(["del", key], use_bin_type=True))


def encode_get(key: bytes) -> bytes:
    return bytes(msgpack.packb(["get", key], use_bin_type=True))


def _entry_hash(key: bytes, value: bytes) -> int:
    return int.from_bytes(digest(msgpack.packb([key, value], use_bin_type=True)), "big")


def _parse(raw: bytes) -> list[Any] | None:
    try:
        obj = msgpack.unpackb(raw, raw=False, max_bin_len=VALUE_BYTES_MAX, max_str_len=16)
    except Exception:  # any malformed tx is a rejected tx, never a crash
        return None
    return obj if isinstance(obj, list) else None


class KVApp:
    """Implements `ledger_bridge.app.Application`."""

    def __init__(self) -> None:
        self._data: dict[bytes, bytes] = {}
        self._sum = 0
        self.last_height = 0

    def _set(self, key: bytes, value: bytes) -> None:
        old = self._data.get(key)
        if old is not None:
            self._sum = (self._sum - _entry_hash(key, old)) % _MOD
        self._data[key] = value
        self._sum = (self._sum + _entry_hash(key, value)) % _MOD

    def _del(self, key: bytes) -> bool:
        old = self._data.pop(key, None)
        if old is None:
            return False
        self._sum = (self._sum - _entry_hash(key, old)) % _MOD
        return True

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
            self._set(key, value)
            return b"ok"
        if op == "del" and len(args) == 1 and type(args[0]) is bytes:
            return b"ok" if self._del(args[0]) else b"err:absent"
        return b"err:unknown op"

    def execute(self, txs: Sequence[bytes], block: BlockContext) -> tuple[list[bytes], bytes]:
        results = [self._apply(tx) for tx in txs]
        self.last_height = block.height
        return results, self.state_root()

    def query(self, request: bytes) -> bytes:
        q = _parse(request)
        if q is None or len(q) != 2 or q[0] != "get" or type(q[1]) is not bytes:
            raise ValueError("query is ['get', key]")
        return self._data.get(q[1], b"")

    def state_root(self) -> bytes:
        return digest(len(self._data).to_bytes(8, "big") + self._sum.to_bytes(32, "big"))

    def snapshot(self) -> bytes:
        return bytes(msgpack.packb(sorted(self._data.items()), use_bin_type=True))

    def restore(self, snapshot: bytes) -> None:
        items = msgpack.unpackb(snapshot, raw=False, use_list=True)
        self._data, self._sum = {}, 0
        for key, value in items:
            self._set(bytes(key), bytes(value))
