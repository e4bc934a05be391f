"""The API process's settings: the vault's, and what only an HTTP server needs.

Why a subclass and not a second object: `civis-vault up`, the app factory and the tests pass
one settings object around, and the vault reads its own fields from it unchanged.
"""

from __future__ import annotations

from pydantic import Field

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
    # How long an API process trusts an API key it verified before asking the database again
    # (api/services/keys.py `VerifiedKeys`): a revoked key stops working within this bound in
    # every process; an expiry is exact. 0 asks on every request; at most a minute.
    api_key_cache_s: float = Field(default=5.0, ge=0, le=60)
    # How long a starting API process waits for an unreachable database before it gives up
    # (api/http/app.py `_bind_when_reachable`): a worker the supervisor restarts while
    # PostgreSQL restarts waits it out instead of stopping every worker.
    database_start_wait_s: float = Field(default=60.0, ge=0)
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
    # A subject's wallet sign-in (POST /v1/subjects/sessions): how long its token works. Short,
    # because while it lives the vault knows which pseudonyms are one person; at most a day.
    subject_session_ttl_s: int = Field(default=15 * 60, ge=60, le=24 * 3600)
    # How often the background jobs delete expired sign-in challenges and sessions (each
    # challenge and sign-in also purges what has expired).
    session_purge_interval_s: float = 60.0
    # The Data Protection Officer's name and contact details, as a breach notification gives
    # them (GDPR Art. 33(3)(b)); empty: the draft leaves a placeholder for the DPO to fill.
    dpo_contact: str = ""
    # Recorded reads (api/services/decryptions.py): how often the reads no read.record covers
    # yet are committed to the ledger, and the most reads one read.record covers.
    read_batch_interval_s: float = 60.0
    read_batch_max: int = 10_000
    # Recipient notices (api/services/recipient_notices.py): how often undelivered notices are
    # sent to their consumers' webhooks; the attempts per notice, the retry delay (doubling
    # from `notice_retry_base_s` up to `notice_retry_max_s`), and how long a notice may stay
    # undelivered before the DPO's audit shows it as a finding.
    notice_delivery_interval_s: float = 30.0
    notice_attempts_max: int = 8
    notice_retry_base_s: float = 30.0
    notice_retry_max_s: float = 3600.0
    notice_undelivered_hours: float = 72.0
    webhook_timeout_s: float = 10.0
    # Webhooks over plain http:// and to loopback or private addresses: for tests and a
    # development machine only, refused in production (an SSRF door into the vault's network).
    webhook_allow_local: bool = False

    def enforce_production_safety(self) -> None:
        super().enforce_production_safety()
        if self.environment == "production" and self.webhook_allow_local:
            raise RuntimeError(
                "CIVIS_WEBHOOK_ALLOW_LOCAL lets consumers point webhooks into the vault's own "
                "network; it is for tests only, never in production"
            )
