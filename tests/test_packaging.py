"""The wheel: what it installs at the top of site-packages, and that the installed copy works.

Why: a wheel that ships a top-level `bench` or `migrations` silently overwrites (or is
overwritten by) any other distribution's package of that name; and code that finds its files
relative to the repository works in the editable dev install yet breaks once installed.

How, without downloading anything:
- the wheel is built from a copy of the working tree (setuptools writes `build/` and an
  egg-info where it builds, and a stale `build/lib` would leak into the next wheel), with the
  running interpreter's setuptools (`pip wheel --no-build-isolation --no-index`; the dev extras
  pin setuptools>=77, which the project's metadata needs);
- it is installed with `--no-deps --no-index` into a fresh venv (no pip of its own: the running
  pip installs into it with `--python`);
- the product's dependencies are those already installed for the running interpreter: once the
  wheel is in, a `.pth` file in the new venv appends the running interpreter's site-packages
  directories to its path. A `.pth` line only adds a directory: the `.pth` files inside it (the
  editable install's import hook among them) are not run, so the checkout stays out of reach,
  and the venv's own site-packages, where the wheel went, comes first. The `.pth` is written
  after the install so that pip sees no civis-vault already installed;
- every command runs from a directory outside the repository, without PYTHONPATH, and the test
  checks that the modules it ran came from the new venv.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text

ROOT = Path(__file__).resolve().parent.parent
PRODUCT = {"vault", "api", "ledger_bridge"}
# The repository's migrations/ folder ships inside the vault.
PACKAGED_AS = {"migrations": "vault/_migrations"}
_NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", ".civis", "build", "dist", "*.egg-info", "__pycache__", ".*_cache"
)

pytestmark = pytest.mark.e2e


def _run(cmd: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run outside the repository with the checkout off the path."""
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYTHONHOME"}}
    return subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    shutil.copytree(ROOT, source, ignore=_NOT_SOURCE)
    built = _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--no-index", "--quiet", "--wheel-dir", str(work / "dist"), str(source)],
        cwd=work,
    )  # fmt: skip
    assert built.returncode == 0, (
        f"building the wheel failed (setuptools>=77 comes with `make install`):\n{built.stderr}"
    )
    (found,) = (work / "dist").glob("civis_vault-*.whl")
    return found


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("venv") / "venv"
    made = _run([sys.executable, "-m", "venv", "--without-pip", str(home)], cwd=home.parent)
    assert made.returncode == 0, made.stderr
    python = home / "bin" / "python"
    installed = _run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
         "--no-deps", "--no-index", str(wheel)],
        cwd=home.parent,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stderr
    purelib = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                   cwd=home.parent).stdout.strip()  # fmt: skip
    dependencies = [
        p
        for p in sys.path
        if Path(p).name in {"site-packages", "dist-packages"} and Path(p).is_dir()
    ]
    assert dependencies, sys.path
    (Path(purelib) / "zz_civis_test_dependencies.pth").write_text("\n".join(dependencies) + "\n")
    return home


def test_the_wheel_installs_the_product_and_nothing_else(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names}
    dist_info = {t for t in top if t.endswith(".dist-info")}
    assert top - dist_info == PRODUCT  # no bench, migrations, tests
    (info,) = dist_info
    top_level = zipfile.ZipFile(wheel).read(f"{info}/top_level.txt").decode().split()
    assert set(top_level) == PRODUCT
    # Every source file of the product is in it, the alembic scripts inside the vault:
    # a subpackage or a data file the packaging forgot would fail only once installed.
    expected = set()
    for folder in [*PRODUCT, *PACKAGED_AS]:
        for path in (ROOT / folder).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts:
                relative = path.relative_to(ROOT).as_posix()
                expected.add(PACKAGED_AS.get(folder, folder) + relative[len(folder) :])
    assert "vault/_migrations/env.py" in expected and "vault/_migrations/script.py.mako" in expected
    assert expected - set(names) == set()
    # the DPO console works offline: its chart library, with its licence, is in the wheel
    assert {"api/http/static/chart.umd.min.js", "api/http/static/chart.js-LICENSE.md"} <= set(names)


def test_the_installed_cli_runs_from_the_installed_copy(venv: Path, tmp_path: Path) -> None:
    where = _run(
        [str(venv / "bin" / "python"), "-c",
         "import json, api, vault, ledger_bridge;"
         "print(json.dumps([m.__file__ for m in (api, vault, ledger_bridge)]))"],
        cwd=tmp_path,
    )  # fmt: skip
    assert where.returncode == 0, where.stderr
    for module_file in json.loads(where.stdout):
        assert Path(module_file).is_relative_to(venv), module_file
    cli = str(venv / "bin" / "civis-vault")
    for argv in ([cli, "--help"], [cli, "up", "--help"]):
        done = _run(argv, cwd=tmp_path)
        assert done.returncode == 0, (argv, done.stderr)
        assert done.stdout.startswith("usage: civis-vault"), done.stdout


@pytest.mark.parametrize("argv", [["upload", "--json"], ["--json", "access"], ["--help"], []])
def test_bench_from_an_installed_copy_points_to_a_source_checkout(
    venv: Path, tmp_path: Path, argv: list[str]
) -> None:
    done = _run([str(venv / "bin" / "civis-vault"), "bench", *argv], cwd=tmp_path)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "run from a source checkout" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_installed_copy_migrates_with_its_own_scripts(
    venv: Path, tmp_path: Path, fresh_database_url: str
) -> None:
    migrated = _run(
        [str(venv / "bin" / "python"), "-c",
         "import json, sys; from vault import db; db.upgrade(sys.argv[1]);"
         "print(json.dumps([db.__file__, str(db.MIGRATIONS_DIR)]))",
         fresh_database_url],
        cwd=tmp_path,
    )  # fmt: skip
    assert migrated.returncode == 0, migrated.stderr
    db_file, scripts = json.loads(migrated.stdout)
    assert Path(db_file).is_relative_to(venv) and Path(scripts).is_relative_to(venv), scripts
    assert Path(scripts).name == "_migrations"
    config = Config()
    config.set_main_option("script_location", str(ROOT / "migrations"))
    head = ScriptDirectory.from_config(config).get_current_head()
    engine = create_engine(fresh_database_url)
    try:
        with engine.connect() as conn:
            version = conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
            assert version == head
            assert {"datasets", "uploads", "records", "outbox"} <= set(
                inspect(conn).get_table_names()
            )
    finally:
        engine.dispose()


def test_bench_from_the_checkout_runs_the_checkout_benchmarks(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The dev side of the same command: options before the name reach bench/cli.py too."""
    from api.cli import main
    from api.cli.bench import source_checkout

    monkeypatch.setenv("PYTHONPATH", "")  # bench.cli puts the checkout there for its children
    assert source_checkout() == ROOT
    assert main(["bench", "--json", "crypto", "--records", "20"]) == 0
    assert json.loads(capsys.readouterr().out)["operations"] == 20
    assert os.environ["PYTHONPATH"] == str(ROOT)
