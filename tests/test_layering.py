"""The layering we care about, enforced (polar `scripts/linters`).

- Only two modules touch `cryptography.hazmat`: the vault's `_hazmat` and the ledger's `crypto`
  (plus `tls`, which builds X.509 certificates for mutual TLS, and the Ed25519 benchmark's
  OpenSSL baseline, which protects nothing). Everything else calls their
  small safe APIs, so a misuse of a primitive has exactly two places to hide.
- `vault/` knows nothing of HTTP or consensus; `ledger_bridge/` knows nothing of the vault or
  HTTP (a replica host installs no web stack in its head); only `api/` sees both. The one
  exception is `ledger_bridge.facts`, the facts the vault asks the ledger to record: the vault
  writes them, so it imports that module, which imports nothing but the standard library.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HAZMAT_ALLOWED = {
    "vault/crypto/_hazmat.py",
    "ledger_bridge/crypto.py",
    "ledger_bridge/tls.py",
    # The OpenSSL baseline of `bench crypto`: it times Ed25519, it protects nothing.
    "bench/crypto.py",
}
# package -> top-level modules it must never import
FORBIDDEN: dict[str, set[str]] = {
    "vault": {"api", "ledger_bridge", "fastapi", "starlette", "uvicorn"},
    "ledger_bridge": {"api", "vault", "fastapi", "starlette", "uvicorn", "sqlalchemy"},
}
# package -> modules it may import despite FORBIDDEN
ALLOWED: dict[str, set[str]] = {"vault": {"ledger_bridge.facts"}}
STDLIB_ONLY = "ledger_bridge/facts.py"


def _modules(package: str) -> Iterator[Path]:
    yield from sorted((ROOT / package).rglob("*.py"))


def _imports(path: Path) -> Iterator[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


@pytest.mark.parametrize("package", ["vault", "api", "ledger_bridge", "bench", "migrations"])
def test_only_the_crypto_modules_import_hazmat(package: str) -> None:
    offenders = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in _modules(package)
        if str(path.relative_to(ROOT)) not in HAZMAT_ALLOWED
        for name in _imports(path)
        if name.startswith("cryptography.hazmat")
    ]
    assert offenders == []


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_packages_import_only_downward(package: str) -> None:
    offenders = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in _modules(package)
        for name in _imports(path)
        if name.split(".")[0] in FORBIDDEN[package] and name not in ALLOWED.get(package, set())
    ]
    assert offenders == []


def _non_stdlib(path: Path) -> list[str]:
    """Imports outside the standard library, relative ones (which `_imports` skips) included."""
    tree = ast.parse(path.read_text(), filename=str(path))
    relative = [
        "." * node.level + (node.module or "")
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.level
    ]
    absolute = [n for n in _imports(path) if n.split(".")[0] not in sys.stdlib_module_names]
    return absolute + relative


def test_the_facts_module_imports_only_the_standard_library() -> None:
    """The vault imports it: anything it imported, the vault would import too."""
    assert _non_stdlib(ROOT / STDLIB_ONLY) == []


def test_the_stdlib_check_sees_a_project_import(tmp_path: Path) -> None:
    probe = tmp_path / "facts.py"
    probe.write_text(
        "from __future__ import annotations\n"
        "import datetime as dt\n"
        "from dataclasses import dataclass\n"
        "from ledger_bridge.contracts import rules\n"
        "import nacl.public\n"
        "from .contracts import rules\n"
    )
    assert _non_stdlib(probe) == ["ledger_bridge.contracts", "nacl.public", ".contracts"]


def test_the_checker_sees_imports(tmp_path: Path) -> None:
    """Guard against a checker that passes because it parses nothing."""
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import cryptography.hazmat.primitives\n"
        "from api.http.app import create_app\n"
        "from . import x\n"
    )
    assert list(_imports(probe)) == ["cryptography.hazmat.primitives", "api.http.app"]
