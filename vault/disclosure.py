"""Minimal disclosure ("services sobres"): give a consumer only the fields, or only the yes/no
answer, that the consent allows.

Why in the vault: the decision of WHO may see WHAT is the contract's, but cutting a record down
to the granted fields, or reducing it to a boolean, must happen before anything leaves the
data side. A predicate answer reveals one bit per request and nothing else: no count, no
matching value, no hint of which record matched.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from vault.errors import VaultError

OPERATORS = ("eq", "ne", "lt", "le", "gt", "ge", "in")
FIELD_PATH_MAX = 8


class InvalidPredicate(VaultError):
    status = 422
    title = "Invalid predicate"


@dataclass(frozen=True, slots=True)
class Predicate:
    """`field` is a dotted path into the payload object (e.g. "address.city")."""

    field: str
    op: str
    value: Any

    def __post_init__(self) -> None:
        if self.op not in OPERATORS:
            raise InvalidPredicate(f"operator must be one of {', '.join(OPERATORS)}")
        parts = self.field.split(".")
        if not self.field or len(parts) > FIELD_PATH_MAX or any(not p for p in parts):
            raise InvalidPredicate("field must be a dotted path of 1..8 non-empty names")
        if self.op == "in" and not isinstance(self.value, list):
            raise InvalidPredicate("'in' takes a list of values")
        if self.op in ("lt", "le", "gt", "ge") and not _is_number_or_str(self.value):
            raise InvalidPredicate("ordering operators take a number or a string")


def _is_number_or_str(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, float) and not math.isfinite(value):
        return False
    return isinstance(value, int | float | str)


_MISSING = object()


def _lookup(obj: Any, path: Sequence[str]) -> Any:
    for name in path:
        if not isinstance(obj, dict) or name not in obj:
            return _MISSING
        obj = obj[name]
    return obj


def _same_kind(a: Any, b: Any) -> bool:
    """Strict comparisons: 0 is not false, "1" is not 1 (no coercion, as in the API models)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool)
    if isinstance(a, int | float) and isinstance(b, int | float):
        return True
    return type(a) is type(b)


def _holds(actual: Any, op: str, expected: Any) -> bool:
    if actual is _MISSING:
        return False
    if op == "in":
        return any(_same_kind(actual, e) and actual == e for e in expected)
    if op == "ne":
        return not (_same_kind(actual, expected) and actual == expected)
    if not _same_kind(actual, expected):
        return False
    if op == "eq":
        return bool(actual == expected)
    if not _is_number_or_str(actual):
        return False
    if op == "lt":
        return bool(actual < expected)
    if op == "le":
        return bool(actual <= expected)
    if op == "gt":
        return bool(actual > expected)
    return bool(actual >= expected)


def evaluate(payloads: Iterable[bytes], predicate: Predicate) -> bool:
    """True when at least one of the subject's records satisfies the predicate."""
    path = predicate.field.split(".")
    for raw in payloads:
        if _holds(_lookup(json.loads(raw), path), predicate.op, predicate.value):
            return True
    return False


def project(payload: bytes, fields: Sequence[str] | None) -> bytes:
    """The payload cut down to the granted top-level/dotted fields (all when `fields` is None).

    The Merkle proof of a projected record cannot be checked (it covers the whole payload);
    the API says so by sending projected records without a proof.
    """
    if fields is None:
        return payload
    source = json.loads(payload)
    out: dict[str, Any] = {}
    for field in fields:
        path = field.split(".")
        value = _lookup(source, path)
        if value is _MISSING:
            continue
        node = out
        for name in path[:-1]:
            node = node.setdefault(name, {})
        node[path[-1]] = value
    return json.dumps(out, separators=(",", ":"), ensure_ascii=False).encode()
