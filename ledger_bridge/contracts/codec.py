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
_FLAT = frozenset((str, bytes, int))  # leaves that need no normalising (int: a range check)


class NotCanonical(ValueError):
    """Bytes that are not the canonical encoding of a supported value."""


def _norm(obj: Any, depth: int = 0) -> Any:
    if depth > 16:
        raise NotCanonical("nested too deeply")
    t = type(obj)
    if t is str or t is bytes:  # the common leaves first: this runs once per value
        return obj
    if t is int:  # amounts, heights, days: the other common leaf (a bool's type is bool)
        if not INT_MIN <= obj <= INT_MAX:
            raise NotCanonical("integer out of range")
        return obj
    if t is list and all(type(x) is str for x in obj):  # e.g. an access's granted subjects
        return obj
    if t is dict and all(type(k) is str and type(v) in _FLAT for k, v in obj.items()):
        # a flat record (an event, a statement entry, totals): sorted keys, leaves as they are
        for v in obj.values():
            if type(v) is int and not INT_MIN <= v <= INT_MAX:
                raise NotCanonical("integer out of range")
        return {k: obj[k] for k in sorted(obj)}
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


def encode_key(key: tuple[Any, ...]) -> bytes:
    """`encode(list(key))` for a state key, without the general normaliser.

    Why a second path: every state read and write encodes its key, and keys are flat tuples of
    strings, byte strings and integers, for which msgpack's own output is already canonical
    (it always picks the smallest integer format). A key holding anything else (a map, a
    float, an out-of-range integer) falls back to `encode`, so the bytes are always the same
    as `encode`'s or an error is raised exactly where `encode` would raise one."""
    for part in key:
        t = type(part)
        if t is str or t is bytes:
            continue
        if t is int and INT_MIN <= part <= INT_MAX:
            continue
        return encode(list(key))
    return bytes(msgpack.packb(key, use_bin_type=True))


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
