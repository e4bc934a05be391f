"""The layering we care about, enforced (polar `scripts/linters`).

- Only two modules touch `cryptography.hazmat`: the vault's `_hazmat` and the ledger's `crypto`
  (plus `tls`, which builds X.509 certificates for mutual TLS, and the Ed25519 benchmark's
  OpenSSL baseline, which protects nothing). Everything else calls their
  small safe APIs, so a misuse of a primitive has exactly two places to hide.
- `vault/` knows nothing of HTTP or consensus; `ledger_bridge/` knows nothing of the vault or
  HTTP (a replica host installs no web stack in its head); only `api/` sees both.
"""

from __future__ import annotations

import ast
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
        if name.split(".")[0] in FORBIDDEN[package]
    ]
    assert offenders == []


def test_the_checker_sees_imports(tmp_path: Path) -> None:
    """Guard against a checker that passes because it parses nothing."""
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import cryptography.hazmat.primitives\n"
        "from api.http.app import create_app\n"
        "from . import x\n"
    )
    assert list(_imports(probe)) == ["cryptography.hazmat.primitives", "api.http.app"]
