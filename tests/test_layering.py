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
from dataclasses import dataclass
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


# -- the api rooms ------------------------------------------------------------------------
#
# api/ is four rooms, each importing only from the rooms below it:
# - api/http/routes: a route module imports no other route module. What two of them share is
#   a request dependency (api/http/deps.py), a wire model (api/http/schemas.py) or logic
#   (api/services/), so moving or removing one router never breaks another.
# - api/services: the logic the HTTP edge and the CLI share. Of api.http it may import only
#   `api.http.errors` (the API's error types, so a service says 404 or 409 once, in the type
#   it raises) and `api.http.schemas` (the shared wire models, so a service hands a route the
#   model it answers with). Both are plain definitions importing nothing else of api (checked
#   below), so a service never drags in the app, its dependencies or its routes. Nothing of
#   api.cli: the command line calls services, never the other way round.
# - api/http: the server edge, which the command line starts and never the reverse.
# - api/client: what a member installs beside their wallet; it speaks HTTP to the API and
#   imports none of the server side.


@dataclass(frozen=True)
class Room:
    folder: str  # relative to the repository root
    forbidden: tuple[str, ...]  # modules (and everything under them) the room must not import
    allowed: tuple[str, ...] = ()  # exceptions under a forbidden module


API_ROOMS: dict[str, Room] = {
    "routes": Room("api/http/routes", forbidden=("api.http.routes",)),
    "services": Room(
        "api/services",
        forbidden=("api.http", "api.cli"),
        allowed=("api.http.errors", "api.http.schemas"),
    ),
    "http": Room("api/http", forbidden=("api.cli",)),
    "client": Room("api/client", forbidden=("api.http", "api.services", "api.cli")),
}
# The two api.http modules services may import stay free of the rest of api.
SHARED_WITH_SERVICES = ("api/http/errors.py", "api/http/schemas.py")


def _module_name(root: Path, path: Path) -> tuple[str, bool]:
    """A file's dotted module name, and whether it is a package's `__init__`."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def _bound_imports(root: Path, path: Path) -> Iterator[str]:
    """Every module or name a file imports, relative imports resolved against its package.

    `from a.b import c` yields `a.b.c` (c may be a submodule or a name in a.b: either way it
    lies under a.b), so `from api.http import deps` and `from api.http.deps import Dpo` are
    both seen as importing api.http.deps. Imports under `if TYPE_CHECKING:` count too.
    """
    name, is_package = _module_name(root, path)
    package = name.split(".") if is_package else name.split(".")[:-1]
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            for alias in node.names:
                yield f"{module}.{alias.name}"


def _under(name: str, module: str) -> bool:
    return name == module or name.startswith(module + ".")


def _room_offenders(root: Path, room: Room) -> list[str]:
    """`file imports name` for each forbidden import in the room (a module's own names aside)."""
    offenders = []
    for path in sorted((root / room.folder).rglob("*.py")):
        own, _ = _module_name(root, path)
        for name in _bound_imports(root, path):
            if (
                any(_under(name, f) for f in room.forbidden)
                and not any(_under(name, a) for a in room.allowed)
                and not _under(name, own)
            ):
                offenders.append(f"{path.relative_to(root)} imports {name}")
    return offenders


@pytest.mark.parametrize("room", sorted(API_ROOMS))
def test_api_rooms_import_only_downward(room: str) -> None:
    folder = ROOT / API_ROOMS[room].folder
    assert list(folder.rglob("*.py")), f"{folder} holds no module: the rule checks nothing"
    assert _room_offenders(ROOT, API_ROOMS[room]) == []


@pytest.mark.parametrize("module", SHARED_WITH_SERVICES)
def test_what_services_may_import_of_http_imports_nothing_of_api(module: str) -> None:
    path = ROOT / module
    names = list(_bound_imports(ROOT, path))
    assert names, f"{module} imports nothing: the check reads nothing"
    assert [n for n in names if _under(n, "api")] == []


# room -> (a probe file in it, source breaking the rule with N imports, source within it)
ROOM_CONTROLS: dict[str, tuple[str, str, str]] = {
    "routes": (
        "api/http/routes/probe.py",
        "from . import other\nfrom api.http.routes.other import router\nimport api.http.routes.x\n",
        "from api.http.deps import Dpo\nfrom api.services.gateway import jsonable\n"
        "from .probe import helper\n",
    ),
    "services": (
        "api/services/probe.py",
        "from api.http.deps import Dpo\nfrom api.http import app\nimport api.cli\n"
        "from ..cli.commands import main\n",
        "from api.http.errors import ApiError\nfrom api.http.schemas import LedgerReceipt\n"
        "from api.services.keys import Member\nfrom . import gateway\n",
    ),
    "http": (
        "api/http/probe.py",
        "from api.cli import main\nfrom ..cli import commands\n",
        "from api.services.gateway import LedgerGateway\nfrom .errors import ApiError\n",
    ),
    "client": (
        "api/client/probe.py",
        "import api.services.keys\nfrom api.http.schemas import LedgerReceipt\n"
        "from api.cli import main\n",
        "from api.client.wallet import Wallet\nfrom .types import Answer\nimport httpx\n",
    ),
}


@pytest.mark.parametrize("room", sorted(API_ROOMS))
def test_the_room_checker_catches_a_violation(room: str, tmp_path: Path) -> None:
    """Each rule, run on a probe module, flags every import breaking it and nothing else."""
    probe_path, breaking, within = ROOM_CONTROLS[room]
    probe = tmp_path / probe_path
    probe.parent.mkdir(parents=True)
    probe.write_text(breaking)
    assert len(_room_offenders(tmp_path, API_ROOMS[room])) == breaking.count("\n")
    probe.write_text(within)
    assert _room_offenders(tmp_path, API_ROOMS[room]) == []


def test_the_shared_modules_check_sees_api_imports(tmp_path: Path) -> None:
    probe = tmp_path / "api" / "http" / "schemas.py"
    probe.parent.mkdir(parents=True)
    probe.write_text(
        "from .deps import Dpo\nfrom api.services.keys import Member\nimport pydantic\n"
    )
    names = list(_bound_imports(tmp_path, probe))
    assert [n for n in names if _under(n, "api")] == [
        "api.http.deps.Dpo",
        "api.services.keys.Member",
    ]
