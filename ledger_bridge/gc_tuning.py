"""The cyclic garbage collector of a long-running server process: the API's workers and the
replicas, each called once its start-up is done (its app built, its state restored).

Why: both allocate many short-lived container objects per request (an answer's rows, records
and proofs; a block's messages, votes and log records), many of them alive until the request
is done. At CPython's default young-generation threshold of 700 allocations the collector
runs several times per request, each time walking the request's live objects and promoting
them into the older generations, whose collections then walk them again: 5-7 % of an API
worker's CPU under load and ~2 % of a replica's (perf, docs/BENCHMARKS.md "Access"). At
`GC_YOUNG_THRESHOLD` it runs about once every few requests instead, on a young generation of
a few megabytes; `freeze` leaves the objects of start-up (modules, the app and its schemas, a
replica's restored state) out of every later collection. Reference counting still frees at
once everything that is not in a cycle, so memory does not grow with the threshold.
"""

from __future__ import annotations

import gc

GC_YOUNG_THRESHOLD = 10_000  # allocations between young collections; CPython 3.11's: 700


def tune_gc() -> None:
    """Collect, freeze what is left and raise the young generation's threshold (see above).
    The collection first: garbage frozen would never be reclaimed."""
    gc.collect()
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, oldest)
