"""The API process's settings: the vault's, and what only an HTTP server needs.

Why a subclass and not a second object: `civis-vault up`, the app factory and the tests pass
one settings object around, and the vault reads its own fields from it unchanged.
"""

from __future__ import annotations

from vault.config import VaultSettings


class Settings(VaultSettings):
    """Process settings of an API instance. Never holds a secret's value."""

    api_host: str = "127.0.0.1"
    api_port: int = 8000
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
    # Background jobs (api/services/jobs.py): how often the outbox relay looks for facts to ship
    # when no route woke it, and how often the retention sweeper runs (it also runs at start).
    relay_interval_s: float = 1.0
    sweep_interval_s: float = 3600.0
    # How often the subject-request register pulls the subjects' signed requests from the
    # ledger (api/services/requests.py): a request the vault did not see through its route
    # shows up in the register, and counts against its deadline, within this delay.
    request_sync_interval_s: float = 60.0
    # How long a route that wrote a ledger fact waits for its receipt before answering with
    # the fact still pending (the relay keeps trying; the status endpoint tells the outcome).
    receipt_wait_s: float = 10.0
