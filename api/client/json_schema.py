"""A JSON Schema validator for the subset the export package's schema uses.

Why our own: the verifier of an export runs wherever another controller installs the client,
and the subset the schema needs is small: `type` (one or several), `const`, `enum`,
`properties`, `required`, `additionalProperties` (true, false or a schema), `items`,
`pattern`, `minimum`, `anyOf` and local `$ref`s (`#/$defs/...`). A schema keyword outside
that subset is an error rather than silently ignored, so the schema cannot grow a rule this
validator does not check. Annotations (`$schema`, `$id`, `title`, `description`) are read past.
"""

from __future__ import annotations

import json
import re
from importlib import resources
from typing import Any

ANNOTATIONS = frozenset({"$schema", "$id", "$defs", "title", "description"})
KEYWORDS = frozenset(
    {
        "type",
        "const",
        "enum",
        "properties",
        "required",
        "additionalProperties",
        "items",
        "pattern",
        "minimum",
        "anyOf",
        "$ref",
    }
)
ERRORS_MAX = 20  # a broken package lists its first problems, not a million of them
_TYPES: dict[str, Any] = {
    "object": dict,
    "array": list,
    "string": str,
    "boolean": bool,
    "null": type(None),
}


class SchemaError(ValueError):
    """The schema uses a keyword this validator does not check."""


def export_schema() -> dict[str, Any]:
    """The export package's schema, as shipped with the client (api/client/export_schema.json)."""
    text = resources.files("api.client").joinpath("export_schema.json").read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def _is(value: Any, kind: str) -> bool:
    if kind == "integer":
        return type(value) is int
    if kind == "number":
        return type(value) in (int, float)
    return type(value) is _TYPES[kind]


def _matches(pattern: str, value: str) -> bool:
    """ECMA-262 `pattern` semantics (found anywhere), except that an anchored `^...$` matches
    the whole string: Python's `$` would also accept a trailing newline."""
    if pattern.startswith("^") and pattern.endswith("$"):
        return re.fullmatch(pattern[1:-1], value) is not None
    return re.search(pattern, value) is not None


class Validator:
    def __init__(self, schema: dict[str, Any]) -> None:
        self.root = schema
        self.errors: list[str] = []

    def validate(self, value: Any) -> list[str]:
        """Every place (`$.records[3].proof.tree_size: ...`) where `value` breaks the schema."""
        self.errors = []
        self._check(self.root, value, "$")
        return self.errors[:ERRORS_MAX]

    def _fail(self, path: str, problem: str) -> None:
        self.errors.append(f"{path}: {problem}")

    def _resolve(self, ref: str) -> dict[str, Any]:
        if not ref.startswith("#/$defs/"):
            raise SchemaError(f"only local $refs under #/$defs are supported, not {ref}")
        found: dict[str, Any] = self.root["$defs"][ref.removeprefix("#/$defs/")]
        return found

    def _check(self, schema: dict[str, Any], value: Any, path: str) -> None:
        unknown = set(schema) - KEYWORDS - ANNOTATIONS
        if unknown:
            raise SchemaError(f"unsupported keywords {sorted(unknown)} at {path}")
        if "$ref" in schema:
            self._check(self._resolve(schema["$ref"]), value, path)
        if "anyOf" in schema and not any(
            not Validator(self.root).errors_of(s, value) for s in schema["anyOf"]
        ):
            self._fail(path, "matches none of the allowed shapes")
        kinds = schema.get("type")
        if kinds is not None:
            kinds = [kinds] if isinstance(kinds, str) else kinds
            if not any(_is(value, k) for k in kinds):
                self._fail(path, f"must be {' or '.join(kinds)}")
                return
        self._leaf(schema, value, path)
        if isinstance(value, dict):
            self._object(schema, value, path)
        elif isinstance(value, list) and "items" in schema:
            for i, item in enumerate(value):
                self._check(schema["items"], item, f"{path}[{i}]")

    def errors_of(self, schema: dict[str, Any], value: Any) -> list[str]:
        self._check(schema, value, "$")
        return self.errors

    def _leaf(self, schema: dict[str, Any], value: Any, path: str) -> None:
        if "const" in schema and value != schema["const"]:
            self._fail(path, f"must be {schema['const']!r}")
        if "enum" in schema and value not in schema["enum"]:
            self._fail(path, f"must be one of {schema['enum']}")
        if (
            "pattern" in schema
            and isinstance(value, str)
            and not _matches(schema["pattern"], value)
        ):
            self._fail(path, f"does not match {schema['pattern']}")
        if "minimum" in schema and type(value) in (int, float) and value < schema["minimum"]:
            self._fail(path, f"must be at least {schema['minimum']}")

    def _object(self, schema: dict[str, Any], value: dict[str, Any], path: str) -> None:
        props: dict[str, Any] = schema.get("properties", {})
        for name in schema.get("required", []):
            if name not in value:
                self._fail(f"{path}.{name}", "is required")
        extra = schema.get("additionalProperties", True)
        for name, item in value.items():
            where = f"{path}.{str(name)[:40]}"
            if name in props:
                self._check(props[name], item, where)
            elif extra is False:
                self._fail(where, "is not a field of this object")
            elif isinstance(extra, dict):
                self._check(extra, item, where)


def validate(value: Any, schema: dict[str, Any] | None = None) -> list[str]:
    """The schema errors of `value` (the export schema unless another is given); [] if none."""
    return Validator(schema if schema is not None else export_schema()).validate(value)
