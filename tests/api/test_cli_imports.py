"""A command imports the module that registers it and nothing of the rest of the system.

Why it matters: a replica host runs `civis-vault node` and should not need (or load) the API's
web framework or its database driver; founders vote and citizens sign with short commands that
should not pay for importing the whole API first. Each check runs in a fresh interpreter, since
this process has imported everything already.
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from api.cli import COMMAND_MODULES, COMMANDS, command_named, main

SERVER_MODULES = ("fastapi", "starlette", "uvicorn", "sqlalchemy", "alembic", "psycopg")


def _imported_by(command: str, *words: str) -> list[str]:
    """Which of the server's top-level packages `civis-vault COMMAND WORDS...` imports
    (`--help` without words)."""
    argv = [command, *(words or ("--help",))]
    probe = (
        "import json, sys\n"
        "from api.cli import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})), file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    loaded = set(json.loads(done.stderr.strip().splitlines()[-1]))
    return sorted(loaded.intersection((*SERVER_MODULES, "pydantic", "httpx")))


def test_each_command_is_registered_by_the_module_the_table_names() -> None:
    for module in COMMAND_MODULES:
        sub = argparse.ArgumentParser().add_subparsers()
        importlib.import_module(module).register(sub)
        named = {command for command, owner in COMMANDS.items() if owner == module}
        assert set(sub.choices) == named, module


@pytest.mark.parametrize("command", ["node", "ledger"])
def test_a_replica_host_imports_neither_the_api_nor_its_database(command: str) -> None:
    assert _imported_by(command) == []


@pytest.mark.parametrize("command", ["governance", "wallet", "verify-export", "bench"])
def test_members_commands_import_no_web_server_and_no_database(command: str) -> None:
    loaded = _imported_by(command)
    assert not set(loaded).intersection(SERVER_MODULES), loaded


@pytest.mark.parametrize("words", [("list",), ("vote", "1", "--yes", "--key", "dpo.key")])
def test_a_governance_command_run_to_its_end_imports_no_web_server(
    words: tuple[str, ...], tmp_path: Path
) -> None:
    """Past its parser, to where it looks for the ledger's directory under `--data-dir` (no
    genesis there, so it stops with its one-line refusal before loading a key or dialling
    anyone: what comes after is the ledger client's, which the `--help` probes import)."""
    loaded = _imported_by("governance", *words, "--data-dir", str(tmp_path))
    assert not set(loaded).intersection(SERVER_MODULES), loaded


def test_the_command_is_the_first_word_that_is_not_an_option() -> None:
    assert command_named(["-v", "governance", "vote", "up"]) == "governance"
    assert command_named(["--verbose", "node", "--id", "0"]) == "node"
    assert command_named(["--help"]) is None
    assert command_named(["nope", "up"]) is None
    assert command_named(["--", "up"]) is None


def test_a_line_without_a_known_command_lists_every_command(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    listed = capsys.readouterr().out
    assert all(command in listed for command in COMMANDS)
    with pytest.raises(SystemExit) as exited:
        main(["nope"])
    assert exited.value.code == 2
    refused = capsys.readouterr().err
    assert "invalid choice: 'nope'" in refused and "governance" in refused
