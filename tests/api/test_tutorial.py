"""docs/TUTORIAL.md, run: every `bash` and `python` block in order against a real `up`.

Why: a tutorial that nobody runs rots as the API moves, and a newcomer meets the rot first.
Here its blocks are the test. `bash` blocks run in one shell session as a reader's terminal
would hold it: each starts from the variables and functions the earlier ones exported (kept
in a state file between blocks), under `set -euo pipefail`, so a failing command fails the
test. `python` blocks run in one shared namespace, like a REPL started in that terminal,
with the shell's exported variables in `os.environ`. `console` blocks (starting `up` itself)
are shown, not run: the test starts `up` the way tests/api/test_e2e_up.py does.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from api.client.wallet import Wallet
from tests.api.test_e2e_up import _start_up, _stop_and_reap
from tests.api.test_up import Up, _clean_env
from tests.conftest import PgServer

pytestmark = pytest.mark.e2e

TUTORIAL = Path(__file__).resolve().parents[2] / "docs" / "TUTORIAL.md"
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.MULTILINE | re.DOTALL)
BLOCK_TIMEOUT_S = 300
# What the tutorial must at least hold, so that a broken extraction cannot pass by running
# nothing: founding, admissions and the curl story in bash; the client's story in python.
BASH_BLOCKS_MIN = 10
PYTHON_BLOCKS_MIN = 5


@dataclass
class Running:
    up: Up
    data_dir: Path
    database_url: str


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory, pg_server: PgServer) -> Iterator[Running]:
    database_url = pg_server.create_database("civis_tutorial")
    try:
        up, data_dir = _start_up(tmp_path_factory, database_url)
        try:
            yield Running(up, data_dir, database_url)
        finally:
            _stop_and_reap(up, data_dir)
    finally:
        pg_server.drop_database(database_url)


def blocks(text: str) -> list[tuple[str, str]]:
    """(language, code) of every fenced block, in the order a reader meets them."""
    return [(m.group(1), m.group(2)) for m in BLOCK.finditer(text)]


def _shell_env(running: Running) -> dict[str, str]:
    env = _clean_env()
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["API"] = running.up.url
    env["DATA"] = str(running.data_dir)
    # The tutorial's `apikey create --data-dir` reaches the database `up` runs with.
    env["CIVIS_DATABASE_URL"] = running.database_url
    return env


def _run_bash(code: str, n: int, workdir: Path, state: Path, env: dict[str, str]) -> None:
    script = f"set -euo pipefail\nsource {state}\n{code}\n{{ export -p; declare -f; }} > {state}\n"
    done = subprocess.run(
        ["bash", "-c", script],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=BLOCK_TIMEOUT_S,
    )
    assert done.returncode == 0, (
        f"TUTORIAL.md block {n} (bash) exited {done.returncode}:\n{code}\n"
        f"--- stdout\n{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-3000:]}"
    )


def _exported(state: Path, env: dict[str, str]) -> dict[str, str]:
    """The variables the shell blocks exported so far, as a python block's environment."""
    done = subprocess.run(
        ["bash", "-c", f"source {state}; env -0"],
        env=env,
        capture_output=True,
        check=True,
        timeout=60,
    )
    pairs = (item.split("=", 1) for item in done.stdout.decode().split("\0") if "=" in item)
    return dict(pairs)


def test_every_block_of_the_tutorial_runs_in_order(
    running: Running, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = _shell_env(running)
    state = tmp_path / "shell-state.sh"
    state.write_text("")
    workdir = tmp_path / "reader"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    namespace: dict[str, Any] = {"__name__": "__tutorial__"}
    ran = {"bash": 0, "python": 0}
    for n, (language, code) in enumerate(blocks(TUTORIAL.read_text()), start=1):
        if language == "bash":
            _run_bash(code, n, workdir, state, env)
        elif language == "python":
            for name, value in _exported(state, env).items():
                monkeypatch.setenv(name, value)
            exec(compile(code, f"TUTORIAL.md block {n}", "exec"), namespace)  # noqa: S102
        else:
            continue
        ran[language] += 1
    assert ran["bash"] >= BASH_BLOCKS_MIN and ran["python"] >= PYTHON_BLOCKS_MIN, ran
    # The citizens acted under pseudonyms, never under their wallets' own keys: Alice's id is
    # her pseudonym for the addresses, and each erased wallet moved its dataset on.
    alice = Wallet.open(workdir / "alice.key")
    shell = _exported(state, env)
    assert shell["ALICE_ID"] != alice.master.public_key.hex()
    driver = Wallet.open(workdir / "driver-0.key")
    for wallet, pseudonym in ((alice, shell["ALICE_ID"]), (driver, namespace["ids"][0])):
        assert [r.generation for r in wallet.datasets.values()] == [1]
        assert [e["pseudonym"] for r in wallet.datasets.values() for e in r.erasures] == [pseudonym]


def test_the_extraction_sees_every_kind_of_block() -> None:
    """Guard against a pattern that silently matches nothing (then nothing would run)."""
    text = "intro\n```bash\necho one\n```\n\n```python\nx = 1\n```\n```console\nup\n```\n"
    assert blocks(text) == [("bash", "echo one\n"), ("python", "x = 1\n"), ("console", "up\n")]
