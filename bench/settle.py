"""PostgreSQL brought to rest before a measured phase of a benchmark.

Why: a bulk load leaves the server work to do after it has answered (dirty buffers written
out by the checkpointer and the background writer, autovacuum on the tables just filled), and
that work runs during whatever is measured next, on the same two cores. Back-to-back uploads
each cost the server more than the one before, most of it that leftover work
(docs/BENCHMARKS.md, "Upload over HTTP"). A comparison of two phases is fair only if each
starts from rest.
"""

from __future__ import annotations

import time
from typing import Any

import psutil
import psycopg
from sqlalchemy import make_url

# The server is at rest when its processes used less than this much CPU over one poll.
_IDLE_CPU_S = 0.01
_POLL_S = 0.25


def _connect(url: str) -> psycopg.Connection[tuple[Any, ...]]:
    """An autocommit connection from the benchmark's SQLAlchemy URL."""
    conninfo = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    return psycopg.connect(conninfo, autocommit=True)


def settle(url: str, *, timeout_s: float = 30.0) -> dict[str, bool]:
    """CHECKPOINT (when the role may), then wait, at most `timeout_s`, until the server's
    processes use no CPU (when the server runs on this machine). `url` is the benchmark's
    SQLAlchemy URL. Says which of the two it could do: a remote server, or a role without
    the right to checkpoint, is measured as it is."""
    with _connect(url) as conn:
        try:
            conn.execute("CHECKPOINT")
            checkpointed = True
        except psycopg.errors.InsufficientPrivilege:
            checkpointed = False
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        postmaster = _local_postmaster(int(row[0])) if row else None
    idle = postmaster is not None and _wait_idle(postmaster, timeout_s)
    return {"checkpointed": checkpointed, "idle": idle}


def prepare_wal(url: str, wal_bytes: int) -> bool:
    """WAL segments for `wal_bytes` of WAL made ahead, and kept through checkpoints. For the
    benchmark's own embedded server only: it changes the server's settings for good (`ALTER
    SYSTEM`), so callers pass no server of their caller's. False when the role may not.

    Why: PostgreSQL writes WAL into 16 MiB segment files, zero-filled when made. A checkpoint
    renames the segments it no longer needs to future names (recycles them), as many as
    `min_wal_size` and its estimate of the next cycle's WAL allow, and deletes the rest. A
    young server has one or two, so without this the first bulk load after start-up makes and
    zero-fills every segment it writes (about 0.25 s of its backend's CPU for 100,000
    records of 1 KiB), and a load measured after it finds them recycled: the order of two
    measured phases, not their code, would decide a tenth of their ratio. Here, as on a
    server in steady state, every measured phase finds its segments: `min_wal_size` twice
    `wal_bytes`, that much WAL written and switched through, and the CHECKPOINT of `settle`
    recycles it."""
    segment = 16 * 1024 * 1024
    segments = max(2, -(-wal_bytes // segment))
    keep_mb = 2 * segments * segment // (1024 * 1024)
    with _connect(url) as conn:
        try:
            conn.execute(f"ALTER SYSTEM SET max_wal_size = '{2 * keep_mb}MB'")
            conn.execute(f"ALTER SYSTEM SET min_wal_size = '{keep_mb}MB'")
        except psycopg.errors.InsufficientPrivilege:
            return False
        conn.execute("SELECT pg_reload_conf()")
        for _ in range(segments):
            conn.execute("SELECT pg_current_xact_id()")  # a commit record: WAL to switch from
            conn.execute("SELECT pg_switch_wal()")
    return True


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
