"""Seeds run on every core this process may use.

Why: each seed's schedule is deterministic and depends on nothing but its number, so a pool
of processes reaches the same verdicts as a loop, and the seed tests are minutes of one core
while the machine's other core idles (the suite runs its tests one at a time).

The workers are spawned, not forked: the pytest process may hold threads (servers, pools)
that a fork would copy in whatever state they were in. What a worker runs and returns must
pickle: a module-level function (or a `functools.partial` of one) and plain values.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

T = TypeVar("T")
# A host that shows many cores may give this run few of them (a container's CPU quota): past
# this many, more processes only contend.
_WORKERS_MAX = 8
# Tasks per worker: small enough that a slow seed does not leave the others idle at the end,
# large enough that sending each task costs nothing beside the seed it runs.
_CHUNKS_PER_WORKER = 8


def workers() -> int:
    """The cores this process may run on, at most `_WORKERS_MAX`."""
    affinity = getattr(os, "sched_getaffinity", None)
    cores = len(affinity(0)) if affinity is not None else os.cpu_count() or 1
    return max(1, min(cores, _WORKERS_MAX))


def _named(run: Callable[[int], T], seed: int) -> T:
    """`run(seed)`; an exception it raises names the seed (the note crosses the process
    boundary with it), so a seed that crashes can be replayed alone."""
    try:
        return run(seed)
    except Exception as exc:
        exc.add_note(f"seed {seed}")
        raise


def each_seed(run: Callable[[int], T], seeds: Iterable[int]) -> list[T]:
    """`run(seed)` for every seed, in the seeds' order, spread over `workers()` processes."""
    todo = list(seeds)
    n = min(workers(), len(todo))
    named = functools.partial(_named, run)
    if n <= 1:
        return [named(seed) for seed in todo]
    chunk = max(1, len(todo) // (n * _CHUNKS_PER_WORKER))
    with ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(named, todo, chunksize=chunk))
