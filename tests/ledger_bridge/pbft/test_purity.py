"""The consensus core is a pure state machine (STYLE.md): no clock, randomness, sockets,
threads, processes or files in ledger_bridge/pbft/, so the simulator replays any schedule."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
FORBIDDEN = {
    "asyncio",
    "socket",
    "time",
    "random",
    "secrets",
    "threading",
    "multiprocessing",
    "subprocess",
    "os",
    "datetime",
    "selectors",
    "sqlite3",
    "uuid",
    "io",
    "pathlib",
}


def test_pbft_core_imports_nothing_impure() -> None:
    offenders = []
    for path in sorted((ROOT / "ledger_bridge" / "pbft").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in FORBIDDEN]
    assert offenders == []
    assert (ROOT / "ledger_bridge" / "pbft" / "replica.py").exists()
