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


# One packer for every encoding, as `msgpack.packb(obj, use_bin_type=True)` builds one per
# call (its set-up was most of the cost of a small key or value). Its bytes are packb's: the
# same options, and autoreset. Shared by threads (the API encodes on several): what it packs
# here is exact lists, tuples and dicts of None, bools, strings, bytes and ints (subclasses of
# the last three included: the normaliser's output, a checked key), all packed in C under the
# GIL with no call back into Python, so no other thread can run inside a call; a failed call
# resets its buffer.
pack = msgpack.Packer(use_bin_type=True).pack


class NotCanonical(ValueError):
    """Bytes that are not the canonical encoding of a supported value."""


def _norm(obj: Any, depth: int = 0) -> Any:
    """`_norm_general(obj, depth)`, with the maps and lists a replica meets taken in one loop.

    Why a second path: every state write, result and transaction check normalises a value,
    and the general definition pays a function call per leaf, plus a scan for its flat-value
    shortcuts. Here an exact `dict` or `list` less than 16 deep is walked once, its leaves
    checked inline; the output is the same value, and an error the same error raised at the
    same point (map keys are all checked before any value, values in sorted key order, as
    there). Anything else goes to `_norm_general`."""
    t = type(obj)
    if t is str or t is bytes:
        return obj
    if t is int:
        if not INT_MIN <= obj <= INT_MAX:
            raise NotCanonical("integer out of range")
        return obj
    if depth >= 16 or (t is not dict and t is not list):
        return _norm_general(obj, depth)
    if t is dict:
        for k in obj:
            if type(k) is not str and not isinstance(k, str):
                raise NotCanonical("map keys must be strings")
        out: dict[str, Any] = {}
        for k in sorted(obj):
            v = obj[k]
            tv = type(v)
            if tv is int:
                if not INT_MIN <= v <= INT_MAX:
                    raise NotCanonical("integer out of range")
            elif not (tv is str or tv is bytes or v is None or tv is bool):
                v = _norm(v, depth + 1)
            out[k] = v
        return out
    items: list[Any] = []
    for v in obj:
        tv = type(v)
        if tv is int:
            if not INT_MIN <= v <= INT_MAX:
                raise NotCanonical("integer out of range")
        elif not (tv is str or tv is bytes or v is None or tv is bool):
            v = _norm(v, depth + 1)
        items.append(v)
    return items


def _norm_general(obj: Any, depth: int = 0) -> Any:
    """The normaliser's definition: every value `_norm` does not take its own path for (below
    depth 16: subclasses, tuples, anything unsupported; from depth 16 on: everything, so the
    depth limit falls exactly where it is defined here)."""
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
        return [_norm_general(x, depth + 1) for x in obj]
    if isinstance(obj, dict):
        if not all(isinstance(k, str) for k in obj):
            raise NotCanonical("map keys must be strings")
        return {k: _norm_general(obj[k], depth + 1) for k in sorted(obj)}
    raise NotCanonical(f"unsupported type {type(obj).__name__}")


def encode(obj: Any) -> bytes:
    """The canonical encoding of `obj` (sorted map keys, smallest int formats, no floats)."""
    out: bytes = pack(_norm(obj))
    return out


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
    out: bytes = pack(key)
    return out


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
