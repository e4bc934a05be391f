"""PostgreSQL brought to rest before a measured phase of a benchmark.

Why: a bulk load leaves the server work to do after it has answered (dirty buffers written
out by the checkpointer and the background writer, autovacuum on the tables just filled), and
that work runs during whatever is measured next, on the same two cores. Back-to-back uploads
each cost the server more than the one before, most of it that leftover work
(docs/BENCHMARKS.md, "2026-12-06, second session: the HTTP upload against a library upload
before and after it"). A comparison of two phases is fair only if each starts from rest.
"""

from __future__ import annotations

import time

import psutil
import psycopg
from sqlalchemy import make_url

# The server is at rest when its processes used less than this much CPU over one poll.
_IDLE_CPU_S = 0.01
_POLL_S = 0.25


def settle(url: str, *, timeout_s: float = 30.0) -> dict[str, bool]:
    """CHECKPOINT (when the role may), then wait, at most `timeout_s`, until the server's
    processes use no CPU (when the server runs on this machine). `url` is the benchmark's
    SQLAlchemy URL. Says which of the two it could do: a remote server, or a role without
    the right to checkpoint, is measured as it is."""
    conninfo = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        try:
            conn.execute("CHECKPOINT")
            checkpointed = True
        except psycopg.errors.InsufficientPrivilege:
            checkpointed = False
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        postmaster = _local_postmaster(int(row[0])) if row else None
    idle = postmaster is not None and _wait_idle(postmaster, timeout_s)
    return {"checkpointed": checkpointed, "idle": idle}


def _local_postmaster(backend_pid: int) -> int | None:
    try:
        parent = psutil.Process(backend_pid).parent()
    except psutil.Error:
        return None
    return None if parent is None else parent.pid


def server_cpu_s(postmaster: int) -> float | None:
    """A local PostgreSQL's CPU seconds (user + system) so far: the postmaster, every process
    below it alive now, and every one it reaped (a backend or autovacuum worker that ended
    keeps its CPU in the total); None once the postmaster is gone."""
    try:
        root = psutil.Process(postmaster)
        t = root.cpu_times()
        below = root.children(recursive=True)
    except psutil.NoSuchProcess:
        return None
    total = float(t.user + t.system + t.children_user + t.children_system)
    for proc in below:
        try:
            c = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += float(c.user + c.system)
    return total


def _wait_idle(postmaster: int, timeout_s: float) -> bool:
    """Two quiet polls in a row: one could fall where a process ended between the readings
    of its parent and of its siblings, its CPU then counted in neither."""
    deadline = time.monotonic() + timeout_s
    last = server_cpu_s(postmaster)
    quiet = 0
    while last is not None and time.monotonic() < deadline:
        time.sleep(_POLL_S)
        now = server_cpu_s(postmaster)
        if now is None:
            return False
        quiet = quiet + 1 if now - last < _IDLE_CPU_S else 0
        if quiet >= 2:
            return True
        last = now
    return False
