"""The service's background work: the outbox relay, the retention sweeper and the purge of
expired sign-ins, on one thread.

Why inside the API process: `civis-vault up` is one command, and every API instance can run
them all safely at once: the relay takes a PostgreSQL advisory lock (one relay ships at a time,
facts in order), and the sweeper and the purge take their rows with `FOR UPDATE SKIP LOCKED`. A
route that wrote a fact calls `kick()` so its anchor reaches the ledger at once instead of at
the next tick. The purge (api/services/subject_sessions.py) deletes expired sign-in challenges
and sessions: a session names pseudonyms of one person together, so its row should not outlive
its expiry by long even when nobody signs in.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from api.services.outbox import OutboxRelay
from vault.retention import RetentionSweeper

_log = logging.getLogger(__name__)


class BackgroundJobs:
    def __init__(
        self,
        relay: OutboxRelay | None,
        sweeper: RetentionSweeper | None,
        *,
        relay_interval_s: float = 1.0,
        sweep_interval_s: float = 3600.0,
        purge: Callable[[], int] | None = None,
        purge_interval_s: float = 60.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._relay = relay
        self._sweeper = sweeper
        self._purge = purge
        self._relay_interval_s = relay_interval_s
        self._sweep_interval_s = sweep_interval_s
        self._purge_interval_s = purge_interval_s
        self._next_purge = 0.0
        self._monotonic = monotonic
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="civis-jobs", daemon=True)
        self._next_sweep = 0.0  # sweep once at start: a service down over midnight catches up

    def start(self) -> None:
        self._thread.start()

    def kick(self) -> None:
        """Ship the outbox now (a route just wrote a fact)."""
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(30)

    def _main(self) -> None:
        while not self._stop.is_set():
            self._purge_due()
            if self._sweeper is not None and self._monotonic() >= self._next_sweep:
                self._next_sweep = self._monotonic() + self._sweep_interval_s
                try:
                    report = self._sweeper.sweep()
                    if report.expired:
                        _log.info("retention sweep expired %d epoch(s)", len(report.expired))
                except Exception as exc:  # the type only: a message may quote SQL parameters
                    _log.error("retention sweep failed (%s); retrying later", type(exc).__name__)
            if self._relay is not None:
                try:
                    while not self._stop.is_set() and self._relay.run_once() > 0:
                        pass
                except Exception as exc:
                    _log.error("outbox relay failed (%s); retrying", type(exc).__name__)
            self._wake.wait(self._relay_interval_s)
            self._wake.clear()

    def _purge_due(self) -> None:
        if self._purge is None or self._monotonic() < self._next_purge:
            return
        self._next_purge = self._monotonic() + self._purge_interval_s
        try:
            purged = self._purge()
            if purged:
                _log.info("purged %d expired sign-in challenge(s) and session(s)", purged)
        except Exception as exc:  # the type only: a message may quote SQL parameters
            _log.error("sign-in purge failed (%s); retrying later", type(exc).__name__)
