"""The error tree in `api/http/errors.py`'s module docstring is what a reader (and a client
author) trusts to know every refusal the service makes: it must list every subclass of
`VaultError` and `ApiError` that vault/ and api/ define, under its documented base, with its
status, in its module.

Tree syntax read here: a line `├── Name` or `└── Name`, nested four columns per level; then
`→ ...` (a root: its subclasses carry the status), one status (`404`: the class's `status`)
or several (`422/413`: each instance sets its own, so the class defines `__init__`); then an
optional module in parentheses (`(vault/datasets.py)`; `(here)` is api/http/errors.py).
Without one, a class lives in the module of the root it descends from.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from api.http import errors
from api.http.errors import ApiError
from vault.errors import VaultError

ROOT = Path(__file__).resolve().parents[1]
ROOTS: tuple[type[Exception], ...] = (VaultError, ApiError)
_ENTRY = re.compile(r"^(?P<indent>[│ ]*)[├└]── (?P<name>\w+)\s*(?P<rest>.*)$")
_STATUSES = re.compile(r"^(\d{3}(?:/\d{3})*)\b")
_MODULE = re.compile(r"\((here|[\w/]+\.py)\)")


@dataclass(frozen=True)
class Entry:
    parent: str
    statuses: tuple[int, ...] | None  # None: a root, `→ its .status`
    module: str | None  # a path relative to the repository, when the entry names one


def documented(doc: str) -> dict[str, Entry]:
    """The tree's entries by class name (a name listed twice is an error of its own)."""
    out: dict[str, Entry] = {}
    stack: list[str] = ["Exception"]
    for line in doc.splitlines():
        match = _ENTRY.match(line.removeprefix("    "))
        if match is None:
            continue
        depth = len(match["indent"]) // 4 + 1
        name, rest = match["name"], match["rest"]
        del stack[depth:]
        assert name not in out, f"{name} is listed twice in the error tree"
        statuses = _STATUSES.match(rest)
        module = _MODULE.search(rest)
        out[name] = Entry(
            parent=stack[depth - 1],
            statuses=tuple(int(s) for s in statuses[1].split("/")) if statuses else None,
            module=None
            if module is None
            else "api/http/errors.py"
            if module[1] == "here"
            else module[1],
        )
        stack.append(name)
    return out


def import_everything() -> None:
    """Every module under vault/ and api/ (a subclass exists only once its module ran); the
    `__main__` modules run a command when imported, and define no error."""
    for package in ("vault", "api"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if path.name == "__main__.py":
                continue
            parts = path.relative_to(ROOT).with_suffix("").parts
            importlib.import_module(".".join(parts[:-1] if parts[-1] == "__init__" else parts))


def subclasses(cls: type[Exception]) -> Iterator[type[Exception]]:
    for sub in cls.__subclasses__():
        yield sub
        yield from subclasses(sub)


def _module_path(cls: type) -> str:
    return Path(inspect.getfile(cls)).resolve().relative_to(ROOT).as_posix()


def problems(classes: Iterable[type[Exception]], doc: str) -> list[str]:
    """How the tree in `doc` misdescribes `classes` (each a subclass of one of ROOTS)."""
    tree = documented(doc)
    out: list[str] = []
    for cls in classes:
        name = cls.__name__
        entry = tree.get(name)
        if entry is None:
            out.append(f"{name} ({_module_path(cls)}) is missing from the error tree")
            continue
        if entry.parent != cls.__bases__[0].__name__:
            out.append(f"{name} is under {entry.parent}, its base is {cls.__bases__[0].__name__}")
        if entry.statuses is None:
            out.append(f"{name} is documented as a root")
        elif len(entry.statuses) == 1 and entry.statuses[0] != getattr(cls, "status", None):
            status = getattr(cls, "status", None)
            out.append(f"{name} is documented {entry.statuses[0]}, its status is {status}")
        elif len(entry.statuses) > 1 and "__init__" not in vars(cls):
            out.append(f"{name} is documented with several statuses but does not set its own")
        root = next(r for r in ROOTS if issubclass(cls, r))
        module = entry.module or tree[root.__name__].module
        if module != _module_path(cls):
            out.append(f"{name} is documented in {module}, it is in {_module_path(cls)}")
    return out


def service_errors() -> list[type[Exception]]:
    import_everything()
    found = [cls for root in ROOTS for cls in subclasses(root)]
    return [cls for cls in found if cls.__module__.split(".")[0] in {"vault", "api"}]


def test_the_error_tree_documents_every_vault_and_api_error() -> None:
    assert errors.__doc__ is not None
    classes = service_errors()
    assert len(classes) > 20  # the walk found the errors (an empty walk would pass anything)
    assert problems(classes, errors.__doc__) == []


def test_the_roots_are_documented_where_they_live() -> None:
    assert errors.__doc__ is not None
    tree = documented(errors.__doc__)
    for root in ROOTS:
        assert tree[root.__name__] == Entry("Exception", None, _module_path(root))


def test_the_checker_reports_an_undocumented_or_misdescribed_subclass() -> None:
    assert errors.__doc__ is not None

    class Undocumented(ApiError):
        status = 418

    class Forbidden(ApiError):  # documented as 403
        status = 404

    class NotReady(VaultError):  # documented under ApiError, in api/http/routes/health.py
        status = 503

    found = problems([Undocumented, Forbidden, NotReady], errors.__doc__)
    assert sorted(found) == [
        "Forbidden is documented 403, its status is 404",
        "Forbidden is documented in api/http/errors.py, it is in tests/test_error_tree.py",
        "NotReady is documented in api/http/routes/health.py, it is in tests/test_error_tree.py",
        "NotReady is under ApiError, its base is VaultError",
        "Undocumented (tests/test_error_tree.py) is missing from the error tree",
    ]
