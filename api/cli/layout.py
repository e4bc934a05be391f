"""Where `civis-vault up` keeps things under its data directory.

Why a module of its own: commands that only need a path (`governance`, `dpo`) would
otherwise import `api.cli.bootstrap`, and with it the API, SQLAlchemy and alembic: over a
second of a command that then spends a fraction of that on the ledger.
"""

from __future__ import annotations

from pathlib import Path


def ledger_dir(data_dir: Path) -> Path:
    return data_dir / "ledger"


def keys_dir(data_dir: Path) -> Path:
    return data_dir / "keys"
