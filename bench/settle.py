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


def _local_postmaster(backend_pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(backend_pid).parent()
    except psutil.Error:
        return None


def _server_cpu_s(postmaster: psutil.Process) -> float:
    """The server's CPU so far: the postmaster, its processes alive now, and those it reaped
    (a backend or autovacuum worker that ends keeps its CPU in the total)."""
    t = postmaster.cpu_times()
    total = float(t.user + t.system + t.children_user + t.children_system)
    for proc in postmaster.children():
        try:
            c = proc.cpu_times()
        except psutil.Error:
            continue
        total += float(c.user + c.system)
    return total


def _wait_idle(postmaster: psutil.Process, timeout_s: float) -> bool:
    """Two quiet polls in a row: one could fall where a process ended between the readings
    of its parent and of its siblings, its CPU then counted in neither."""
    deadline = time.monotonic() + timeout_s
    last = _server_cpu_s(postmaster)
    quiet = 0
    while time.monotonic() < deadline:
        time.sleep(_POLL_S)
        now = _server_cpu_s(postmaster)
        quiet = quiet + 1 if now - last < _IDLE_CPU_S else 0
        if quiet >= 2:
            return True
        last = now
    return False
