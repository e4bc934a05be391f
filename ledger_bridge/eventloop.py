"""The event loop the ledger's processes and clients run on: uvloop when it is importable,
asyncio's own otherwise (or when `CIVIS_EVENT_LOOP=asyncio` asks for it).

Why: an unbatched transaction costs each replica seven frames out and seven in, and the loop
with its socket plumbing (selector, transports, handle scheduling) is a large part of a
replica's busy time. uvloop runs the loop in C on libuv: measured (docs/BENCHMARKS.md, "Ledger"),
~4 % less replica CPU per unbatched transaction and ~0.1-0.2 ms off its p50. Nothing else
changes (the same transports, streams, TLS and signal handlers), so the pure replica core and
the simulator do not notice. The stock loop stays one variable away for A/B runs and for a
platform without uvloop (Windows).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def uses_uvloop() -> bool:
    """True when new loops will be uvloop's."""
    if os.environ.get("CIVIS_EVENT_LOOP", "").lower() == "asyncio":
        return False
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A new event loop of the chosen kind (see the module docstring)."""
    if uses_uvloop():
        import uvloop

        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        return loop
    return asyncio.new_event_loop()


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)` on a loop from `new_event_loop()`."""
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(main)
