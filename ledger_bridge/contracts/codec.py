"""Canonical msgpack: exactly one byte string per value.

Why: a signature covers bytes, and every replica hashes the state as bytes. If two encodings
of one transaction were accepted (a map in another key order, an int in a wider format), a
relayer could change a transaction's id without touching its signature, and two replicas
holding the "same" state could compute different roots. So values are restricted to a small,
float-free data model, maps are written with their keys sorted, and `decode` rejects any
input that does not re-encode to itself.
"""

from __future__ import annotations

from typing import Any

import msgpack

INT_MIN = -(1 << 63)
INT_MAX = (1 << 64) - 1

Value = None | bool | int | str | bytes | list[Any] | dict[str, Any]


class NotCanonical(ValueError):
    """Bytes that are not the canonical encoding of a supported value."""


def _norm(obj: Any, depth: int = 0) -> Any:
    if depth > 16:
        raise NotCanonical("nested too deeply")
    if obj is None or isinstance(obj, bool | str | bytes):
        return obj
    if isinstance(obj, int):
        if not INT_MIN <= obj <= INT_MAX:
            raise NotCanonical("integer out of range")
        return obj
    if isinstance(obj, list | tuple):
        return [_norm(x, depth + 1) for x in obj]
    if isinstance(obj, dict):
        if not all(isinstance(k, str) for k in obj):
            raise NotCanonical("map keys must be strings")
        return {k: _norm(obj[k], depth + 1) for k in sorted(obj)}
    raise NotCanonical(f"unsupported type {type(obj).__name__}")


def encode(obj: Any) -> bytes:
    """The canonical encoding of `obj` (sorted map keys, smallest int formats, no floats)."""
    return bytes(msgpack.packb(_norm(obj), use_bin_type=True))


def decode(raw: bytes, *, max_bytes: int = 1 << 20) -> Any:
    """Decode canonical bytes; anything else (trailing bytes, floats, reordered maps) raises."""
    if len(raw) > max_bytes:
        raise NotCanonical("too large")
    try:
        obj = msgpack.unpackb(
            raw,
            raw=False,
            strict_map_key=True,
            use_list=True,
            max_bin_len=max_bytes,
            max_str_len=max_bytes,
            max_array_len=100_000,
            max_map_len=64,
            max_ext_len=0,
        )
    except Exception as exc:  # malformed peer input is a rejection, never a crash
        raise NotCanonical(f"not msgpack: {type(exc).__name__}") from None
    if encode(obj) != raw:
        raise NotCanonical("not the canonical encoding")
    return obj
