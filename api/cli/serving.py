"""The API under uvicorn, in one process or in several worker processes sharing one socket.

Why several: one Python process runs the API's CPU work on one core at a time (the GIL), and
a consented answer is CPU work (decryption, proofs, JSON); with N workers the kernel spreads
the connections of one listening socket over N processes, hence N cores. `civis-vault up`
runs one per core (`default_workers`), `--workers N` asks for N.

Why an instance stays whole: a worker started while PostgreSQL restarts waits for it
(api/http/app.py `_bind_when_reachable`) instead of failing its start, which would stop every
worker; and a worker dies with its supervisor (`_die_with`), so killing `up` kills the
instance, not just the process that holds no socket.

Why each worker builds its own app (`ApiSpec`, called in the worker): an app holds threads,
a connection pool and TCP connections to the replicas, none of which crosses a process
boundary. uvicorn starts the workers with `spawn` and hands each the pickled spec, whose
call builds the app there: the same app `up` serves in one process, with a ledger gateway of
its own that the app closes when its lifespan ends.

What stays right with N processes (docs/LEDGER-OPERATIONS.md, "Worker processes"): each
worker runs the background jobs, and each job is single-runner through the database (the
relay's and the final erasure's advisory locks, `FOR UPDATE SKIP LOCKED` for the others);
each worker's transactions carry random nonces and its pool clients random keys, so two
workers never collide on the ledger's replay protection; the relay's fixed client key is
used only under the relay's lock; a worker's ledger reads never come from below a block
another worker saw committed (the height floor they share, made here for each run); and what
a worker remembers (verified API keys, members' standing, inclusion trees) is bounded in time
or never goes stale.
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import math
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from api.http.head_deadline import HeadDeadlineProtocol
from api.http.settings import Settings
from ledger_bridge.gc_tuning import tune_gc

if TYPE_CHECKING:
    from fastapi import FastAPI

    from api.services.gateway import LedgerGateway

# An explicit `--workers` beyond this is refused: 8 x 20 connections already exceed a
# default PostgreSQL's limit, so more would need a tuned server.
WORKERS_MAX = 16
# `up` runs one worker per core up to this many (`default_workers`).
DEFAULT_WORKERS_MAX = 4
# Where cgroup v2 is mounted, and where a process's cgroup is named.
CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_SELF_CGROUP = Path("/proc/self/cgroup")

_log = logging.getLogger(__name__)


PR_SET_PDEATHSIG = 1  # linux/prctl.h
# In the data directory: the block height below which no worker reads the ledger.
HEIGHT_FLOOR_FILE = "ledger-height-floor"


def default_workers() -> int:
    """One worker per core this process may run on, at most `DEFAULT_WORKERS_MAX`; on one
    core, the API in `up`'s own process. `--workers` overrides it.

    Why at most four: each worker holds a pool of up to 20 PostgreSQL connections, and four
    stay under a default server's 100. Why several stay one service: a read never comes from
    below a block any worker of the instance saw committed (the shared height floor,
    ledger_bridge/height_floor.py), so a request that follows a write reads it back whichever
    worker serves each."""
    affinity = getattr(os, "sched_getaffinity", None)
    cores = len(affinity(0)) if affinity is not None else os.cpu_count() or 1
    quota = cgroup_cores(_own_cpu_max())
    if quota is not None:
        cores = min(cores, quota)
    return max(1, min(cores, DEFAULT_WORKERS_MAX))


def _own_cpu_max() -> Path:
    """This process's cgroup v2 `cpu.max` (its "0::<path>" line in /proc/self/cgroup)."""
    try:
        for line in PROC_SELF_CGROUP.read_text().splitlines():
            if line.startswith("0::"):
                return CGROUP_ROOT / line[3:].strip().lstrip("/") / "cpu.max"
    except OSError:
        pass
    return CGROUP_ROOT / "cpu.max"


def cgroup_cores(cpu_max: Path) -> int | None:
    """The cores a CPU quota allows this process's cgroup (v2 `cpu.max`: "quota period",
    rounded up), or None without a quota. Why: a container limited to one CPU on a large
    host sees every host core in its affinity mask, and would start a worker, with its pool
    of connections, for each."""
    try:
        quota, period = cpu_max.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    try:
        return max(1, math.ceil(int(quota) / int(period)))
    except (ValueError, ZeroDivisionError):
        return None


def _die_with(supervisor: int) -> None:
    """Have the kernel SIGKILL this worker when its supervisor dies (Linux's parent-death
    signal), and exit now if it already has: a supervisor killed outright must not leave
    workers that hold the listening socket and run the jobs of an instance that is gone."""
    from api.services.outbox import INSTANCE_PID_ENV

    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != supervisor:
        os._exit(0)
    os.environ[INSTANCE_PID_ENV] = str(supervisor)


@dataclass(frozen=True)
class ApiSpec:
    """What builds the app of `civis-vault up`; picklable, so that each worker builds its own.

    `ledger_dir`/`keys_dir`: the genesis directory of the replicas and the vault's ledger
    keys; None: an app without a ledger.
    """

    settings: Settings
    database_url: str
    ledger_dir: Path | None = None
    keys_dir: Path | None = None
    # The supervisor's pid when the app runs in worker processes (`serve` sets it).
    supervisor: int | None = None
    # The workers' shared ledger height floor (ledger_bridge/height_floor.py; `serve` makes it).
    height_floor: Path | None = None
    # False for an API that serves requests beside another that runs the background jobs (a
    # benchmark's measured worker): its count is then the requests' alone.
    background_jobs: bool = True

    def app(self, ledger: LedgerGateway | None, *, owns_ledger: bool = False) -> FastAPI:
        from api.cli.bootstrap import quorum_probe
        from api.http.app import create_app

        return create_app(
            self.settings,
            database_url=self.database_url,
            probes=[] if ledger is None else [quorum_probe(ledger)],
            ledger=ledger,
            background_jobs=self.background_jobs,
            owns_ledger=owns_ledger,
        )

    def __call__(self) -> FastAPI:
        """In a worker (uvicorn's app factory): the app with a gateway of its own.

        A failure here is a failure to start: uvicorn's supervisor then stops every worker
        rather than restarting this one forever.
        """
        from uvicorn.config import STARTUP_FAILURE

        from api.services.gateway import LedgerGateway
        from ledger_bridge.height_floor import HeightFloor

        if self.supervisor is not None:
            _die_with(self.supervisor)
        try:
            gateway = (
                None
                if self.ledger_dir is None or self.keys_dir is None
                else LedgerGateway.from_directory(
                    self.ledger_dir,
                    self.keys_dir,
                    height_floor=None
                    if self.height_floor is None
                    else HeightFloor.shared(self.height_floor),
                )
            )
            app = self.app(gateway, owns_ledger=gateway is not None)
        except Exception as exc:
            _log.error("the API worker could not start: %s: %s", type(exc).__name__, exc)
            sys.exit(STARTUP_FAILURE)
        tune_gc()
        return app


def _height_floor(spec: ApiSpec, ledger: LedgerGateway | None) -> Path | None:
    """The ledger height floor the workers share, made afresh for this run at the height
    `up`'s own gateway saw committed (its founding transactions, when it founded the chain): a
    worker's first read must not come from a replica that has not executed them yet. Without
    that gateway (`bench access` serves from a child of the process that founded) it starts at
    0 and rises with the workers' first receipts."""
    from ledger_bridge.height_floor import HeightFloor

    if spec.ledger_dir is None:
        return None
    path = spec.settings.data_dir / HEIGHT_FLOOR_FILE
    HeightFloor.create(path, 0 if ledger is None else ledger.height_seen)
    return path


def serve(
    spec: ApiSpec,
    *,
    workers: int,
    host: str,
    port: int,
    ledger: LedgerGateway | None = None,
    log_level: str = "info",
) -> bool:
    """Serve until SIGINT or SIGTERM; False if the workers could not start.

    One worker: the app runs in this process (with `ledger` if given, else a gateway of its
    own); uvicorn shuts it down gracefully, then raises the signal again for the caller's
    handler. Several: uvicorn's supervisor binds the socket here, starts the workers, restarts
    one that dies, and on the signal stops them all (each shuts down gracefully: requests in
    flight, then its lifespan: jobs, pool, gateway) before it returns.
    """
    import uvicorn
    from uvicorn.config import STARTUP_FAILURE
    from uvicorn.supervisors import Multiprocess

    if not 1 <= workers <= WORKERS_MAX:
        raise ValueError(f"workers must be between 1 and {WORKERS_MAX}")
    if workers == 1:
        if ledger is None:
            app = spec()
        else:
            app = spec.app(ledger)
            tune_gc()
        uvicorn.run(app, host=host, port=port, log_level=log_level, http=HeadDeadlineProtocol)
        return True
    config = uvicorn.Config(
        dataclasses.replace(spec, supervisor=os.getpid(), height_floor=_height_floor(spec, ledger)),
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        http=HeadDeadlineProtocol,
    )
    supervisor = Multiprocess(config, sockets=[config.bind_socket()])
    supervisor.run()
    return not any(p.exitcode == STARTUP_FAILURE for p in supervisor.processes)
