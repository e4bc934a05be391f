"""Engines, sessions and migrations.

Why here: one place builds the engine (in the app's lifespan or a CLI command, never at
import) and one place runs `alembic upgrade head`, so tests, `civis-vault up` and the
sweeper all build the schema the same way. Services take a Session and may `flush()`;
only the caller that owns the transaction commits.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def make_engine(url: str, *, pool_size: int = 10) -> Engine:
    return create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    # Alembic's ini interpolation treats % specially.
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str = "base") -> None:
    command.downgrade(alembic_config(url), revision)


@contextlib.contextmanager
def open_database(database_url: str | None, data_dir: Path) -> Iterator[str]:
    """The configured database, or the embedded one under `data_dir`; migrated to head.

    Why one helper: `civis-vault up`, `civis-vault keys rotate` and the sweeper must agree on
    which database they use when none is configured.
    """
    if database_url:
        upgrade(database_url)
        yield database_url
        return
    from vault.embedded import embedded_postgres

    with embedded_postgres(data_dir) as url:
        upgrade(url)
        yield url
