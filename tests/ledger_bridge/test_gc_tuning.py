"""`tune_gc`, which every API worker and every replica calls once its start-up is done."""

from __future__ import annotations

import json
import subprocess
import sys


def test_a_server_process_collects_cycles_less_often_and_never_walks_its_start_up_objects() -> None:
    """A young generation of `GC_YOUNG_THRESHOLD` allocations, the older generations' as they
    were, and the objects of start-up frozen out of every collection. In a process of its own:
    the collector's settings are the whole interpreter's."""
    code = (
        "import gc, json\n"
        "import ledger_bridge.node\n"
        "from ledger_bridge.gc_tuning import GC_YOUNG_THRESHOLD, tune_gc\n"
        "before = gc.get_threshold()\n"
        "tune_gc()\n"
        "print(json.dumps([before, gc.get_threshold(), gc.get_freeze_count(), GC_YOUNG_THRESHOLD]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    before, after, frozen, young = json.loads(done.stdout)
    assert young > before[0]
    assert after == [young, before[1], before[2]]
    assert frozen > 10_000  # the modules and what they built at import
