"""The service's background work: the outbox relay, the retention sweeper (with the datasets'
retention periods read from the ledger before each sweep) and the periodic jobs (`Periodic`:
the batcher of recorded reads, the purge of expired sign-ins, the register's sync with the
ledger), on one thread; a job that waits on servers outside the cooperative (the delivery of
recipient notices to consumers' webhooks) on a thread of its own (`alone`), so that no
consumer's endpoint, slow or hostile, ever holds the relay, the sweeper or the other jobs; the
instance's heartbeat and the final-erasure job (`KeyMaintenance`), on two more.

Why inside the API process: `civis-vault up` is one command, and every API instance can run
them all safely at once: the relay takes a PostgreSQL advisory lock (one relay ships at a time,
facts in order), the sweeper and the periodic jobs take their rows with `FOR UPDATE SKIP
LOCKED` (the register's sync writes under the register's lock, registering each ledger request
once). A route that wrote a fact calls `kick()` so its anchor reaches the ledger at once
instead of at the next tick; if another process's relay holds the lock then, it may have
looked for facts just before this one committed, so a kicked relay tries again every
`RELAY_RETRY_S` until it ships itself (the route waits for the receipt: a missed kick would
cost it a whole `relay_interval_s`). The periodic jobs run before the relay in a tick, so a fact one
of them queues ships in the same tick. The purge (api/services/subject_sessions.py) deletes
expired sign-in challenges and sessions: a session names pseudonyms of one person together, so
its row should not outlive its expiry by long even when nobody signs in.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from api.services.outbox import OutboxRelay
from vault.final_erasure import FinalErasure
from vault.keys.registry import InstanceRegistry
from vault.retention import RetentionSweeper

_log = logging.getLogger(__name__)

# How soon a kicked relay tries again while another process's relay holds the lock.
RELAY_RETRY_S = 0.05


@dataclass(frozen=True, slots=True)
class Periodic:
    """A job run every `interval_s` (at the loop's pace at most), and once at start; `alone`:
    on a thread of its own (see the module docstring)."""

    name: str
    interval_s: float
    run: Callable[[], object]
    alone: bool = False


class BackgroundJobs:
    def __init__(
        self,
        relay: OutboxRelay | None,
        sweeper: RetentionSweeper | None,
        *,
        relay_interval_s: float = 1.0,
        sweep_interval_s: float = 3600.0,
        periodic: Sequence[Periodic] = (),
        monotonic: Callable[[], float] = time.monotonic,
        retention_sync: Callable[[], int] | None = None,
    ) -> None:
        self._relay = relay
        self._sweeper = sweeper
        self._periodic = tuple(p for p in periodic if not p.alone)
        self._alone = [
            threading.Thread(target=self._loop, args=(p,), name=f"civis-{p.name}", daemon=True)
            for p in periodic
            if p.alone
        ]
        self._next_run = [0.0] * len(self._periodic)
        self._retention_sync = retention_sync
        self._relay_interval_s = relay_interval_s
        self._sweep_interval_s = sweep_interval_s
        self._monotonic = monotonic
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="civis-jobs", daemon=True)
        self._next_sweep = 0.0  # sweep once at start: a service down over midnight catches up

    def start(self) -> None:
        self._thread.start()
        for thread in self._alone:
            thread.start()

    def kick(self) -> None:
        """Ship the outbox now (a route just wrote a fact)."""
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        for thread in (self._thread, *self._alone):
            if thread.is_alive():
                thread.join(30)

    def _loop(self, job: Periodic) -> None:
        """A job `alone`: run, then wait its interval, until stopped."""
        while not self._stop.is_set():
            try:
                job.run()
            except Exception as exc:  # the type only, as below
                _log.error("%s failed (%s); retrying later", job.name, type(exc).__name__)
            self._stop.wait(job.interval_s)

    def _sync_retention(self) -> None:
        """The datasets' retention periods from the ledger, before each sweep."""
        if self._retention_sync is None:
            return
        try:
            self._retention_sync()
        except Exception as exc:
            _log.error("retention sync failed (%s); retrying later", type(exc).__name__)

    def _main(self) -> None:
        kicked = False
        while not self._stop.is_set():
            if self._sweeper is not None and self._monotonic() >= self._next_sweep:
                self._next_sweep = self._monotonic() + self._sweep_interval_s
                self._sync_retention()
                try:
                    report = self._sweeper.sweep()
                    if report.expired:
                        _log.info("retention sweep expired %d epoch(s)", len(report.expired))
                except Exception as exc:  # the type only: a message may quote SQL parameters
                    _log.error("retention sweep failed (%s); retrying later", type(exc).__name__)
            self._run_periodic()
            # Still kicked while another process's relay held the lock: retry soon.
            kicked = self._ship() and kicked
            kicked = self._wake.wait(RELAY_RETRY_S if kicked else self._relay_interval_s) or kicked
            self._wake.clear()

    def _ship(self) -> bool:
        """Run the relay until the outbox is empty; whether another process held its lock."""
        if self._relay is None:
            return False
        try:
            while not self._stop.is_set() and self._relay.run_once() > 0:
                pass
        except Exception as exc:
            _log.error("outbox relay failed (%s); retrying", type(exc).__name__)
            return False
        return self._relay.held_elsewhere

    def _run_periodic(self) -> None:
        for i, job in enumerate(self._periodic):
            if self._monotonic() < self._next_run[i]:
                continue
            self._next_run[i] = self._monotonic() + job.interval_s
            try:
                job.run()
            except Exception as exc:  # the type only, as above
                _log.error("%s failed (%s); retrying later", job.name, type(exc).__name__)


class KeyMaintenance:
    """The instance's heartbeat and the final-erasure job, each on its own thread.

    Why apart from the relay: a heartbeat must never wait behind a ledger submission or a
    VACUUM (an instance that looks gone stops counting for a KEK's retirement), and the job's
    VACUUM must not hold up the relay. Why in every instance, with or without a ledger: every
    instance wraps secrets, so every one must report the KEKs it holds; the job takes a
    database lock, so only one instance at a time runs it (vault/final_erasure.py).
    """

    def __init__(
        self,
        registry: InstanceRegistry,
        final: FinalErasure | None,
        *,
        heartbeat_s: float,
    ) -> None:
        self._registry = registry
        self._final = final
        self._heartbeat_s = heartbeat_s
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._beating, name="civis-heartbeat", daemon=True)
        ]
        if final is not None:
            self._threads.append(
                threading.Thread(target=self._finalising, name="civis-final-erasure", daemon=True)
            )

    def start(self) -> None:
        """Report this instance before it serves (a rotation already under way then waits
        for it), then keep reporting. A database out of reach does not stop the start (the
        readiness probe says so); the heartbeat thread reports once it answers."""
        try:
            self._registry.beat()
        except Exception as exc:
            _log.error("first heartbeat failed (%s); retrying", type(exc).__name__)
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            if thread.is_alive():
                thread.join(30)
        try:
            self._registry.leave()
        except Exception as exc:  # a database gone at shutdown: the row goes stale instead
            _log.warning("instance not deregistered (%s)", type(exc).__name__)

    def _beating(self) -> None:
        while not self._stop.wait(self._heartbeat_s):
            try:
                self._registry.beat()
            except Exception as exc:
                _log.error("heartbeat failed (%s); retrying", type(exc).__name__)

    def _finalising(self) -> None:
        assert self._final is not None
        while not self._stop.wait(self._heartbeat_s):
            try:
                self._final.step()
            except Exception as exc:
                _log.error("final erasure step failed (%s); retrying", type(exc).__name__)
