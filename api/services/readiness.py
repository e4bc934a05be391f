"""Readiness probes: what `/readyz` asks before saying the instance can take traffic.

Why pluggable: the database is always checked; the ledger's quorum is checked once the app is
given a ledger client (`create_app(..., probes=[LedgerQuorumProbe(client.status, n)])`
with `ledger_bridge.client.LedgerClient`). A probe returns a
short reason when not ready, never an exception message (it may hold addresses or secrets).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Protocol

_log = logging.getLogger(__name__)


class ReadinessProbe(Protocol):
    name: str

    def check(self) -> str | None:
        """None when ready, else a short reason fit for a public answer."""
        ...


class LedgerQuorumProbe:
    """Ready when at least 2f+1 of the n = 3f+1 replicas answer a status call.

    Why 2f+1 and not f+1: with fewer than 2f+1 live replicas PBFT cannot commit, so an upload
    would stay pending; the load balancer should send traffic elsewhere.
    """

    name = "ledger"

    def __init__(self, status: Callable[[int], object], replicas: int) -> None:
        if replicas < 4 or (replicas - 1) % 3:
            raise ValueError("a PBFT cluster has n = 3f+1 >= 4 replicas")
        self._status = status
        self._replicas = replicas
        self.quorum = 2 * ((replicas - 1) // 3) + 1

    def check(self) -> str | None:
        """Every replica asked at once, ready as soon as a quorum answered: a silently dead
        replica costs its call the whole timeout, and asked in turn it would hold /readyz
        that long, past what a load balancer's probe waits. Calls still out when the
        quorum is reached finish in the background."""
        pool = ThreadPoolExecutor(max_workers=self._replicas, thread_name_prefix="readyz")
        try:
            asked = {pool.submit(self._status, r): r for r in range(self._replicas)}
            live = 0
            for done in as_completed(asked):
                try:
                    answer = done.result()
                except Exception as exc:  # any failure means "not answering"; log its type only
                    _log.info("replica %d not ready: %s", asked[done], type(exc).__name__)
                    continue
                if answer is None:  # LedgerGateway.status: None is "did not answer"
                    continue
                live += 1
                if live >= self.quorum:
                    return None
            return f"{live} of {self._replicas} replicas answer, {self.quorum} needed"
        finally:
            pool.shutdown(wait=False)
