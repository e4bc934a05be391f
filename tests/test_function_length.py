"""No function over 70 lines (STYLE: a function longer than a screen hides its steps).

Every `def` and `async def` counts, methods and nested functions included, measured from the
`def` line (decorators excluded) to its last line, docstring and comments included. The
functions over the limit today are listed in ALLOWLIST; the list may only shrink: a second
test fails once a listed function is gone or fits, so whoever shortens it deletes its entry.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("vault", "api", "ledger_bridge", "bench", "migrations", "tests")
MAX_LINES = 70

# "path:qualname" of the functions over MAX_LINES that are still to be split.
ALLOWLIST = frozenset(
    {
        "migrations/versions/0001_initial.py:upgrade",
    }
)


def function_lengths(source: str) -> Iterator[tuple[str, int]]:
    """(qualname, lines) of every function in `source`, nested ones as `outer.<locals>.inner`
    (Python's own `__qualname__`)."""

    def walk(node: ast.AST, prefix: str) -> Iterator[tuple[str, int]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                name = prefix + child.name
                assert child.end_lineno is not None
                yield name, child.end_lineno - child.lineno + 1
                yield from walk(child, name + ".<locals>.")
            elif isinstance(child, ast.ClassDef):
                yield from walk(child, prefix + child.name + ".")
            else:
                yield from walk(child, prefix)

    yield from walk(ast.parse(source), "")


@functools.cache
def all_lengths() -> dict[str, int]:
    """Every function of the tree, measured once per test session (callers do not mutate)."""
    out: dict[str, int] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            for qualname, lines in function_lengths(path.read_text()):
                out[f"{rel}:{qualname}"] = lines
    return out


def too_long(lengths: dict[str, int]) -> dict[str, int]:
    return {name: n for name, n in lengths.items() if n > MAX_LINES}


def test_no_function_is_over_the_limit() -> None:
    over = {name: n for name, n in too_long(all_lengths()).items() if name not in ALLOWLIST}
    assert over == {}, f"functions over {MAX_LINES} lines (split them): {over}"


def test_the_allowlist_lists_only_functions_still_over_the_limit() -> None:
    lengths = all_lengths()
    stale = sorted(name for name in ALLOWLIST if lengths.get(name, 0) <= MAX_LINES)
    assert stale == [], f"gone or short enough now, remove them from ALLOWLIST: {stale}"


def test_the_measurement_catches_long_functions_methods_and_nested_ones() -> None:
    def body(n: int) -> str:
        return "".join(f"    x{k} = {k}\n" for k in range(n))

    source = (
        f"def fits():\n{body(MAX_LINES - 1)}"
        f"async def too_long():\n{body(MAX_LINES)}"
        "class C:\n"
        "    @staticmethod\n"
        f"    def method():\n{body(MAX_LINES).replace('    ', '        ')}"
        "def outer():\n"
        f"    def inner():\n{body(MAX_LINES).replace('    ', '        ')}"
    )
    lengths = dict(function_lengths(source))
    assert lengths["fits"] == MAX_LINES
    assert too_long(lengths) == {
        "too_long": MAX_LINES + 1,
        "C.method": MAX_LINES + 1,
        "outer": MAX_LINES + 2,
        "outer.<locals>.inner": MAX_LINES + 1,
    }
    # The tree walk reaches this very file, nested functions included.
    here = "tests/test_function_length.py:" + body.__qualname__
    assert all_lengths()[here] == 2
