"""`civis-vault bench final-erasure`: one final-erasure cycle over N live secrets.

What a daily cycle costs the service (vault/final_erasure.py): N subjects with one record each
(N subject secrets, plus the upload's and the epoch's), 1 % of them erased, two API instances'
heartbeats registered; then one cycle, forced, the instances beating as the service's threads
do: rotate, adoption, rewrap of every live secret, retirement of the old KEK, VACUUM (ANALYZE)
and VACUUM FULL of key_secrets, the erasures marked final. Reported per step, from the
cycle's own timestamps (the database's clock), and the rewrap rate. `--records` sets N
(default 100,000); the database is CIVIS_DATABASE_URL or `--database-url`, else embedded.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from vault import db
from vault.datasets import register_dataset
from vault.erasure import Eraser
from vault.final_erasure import FinalErasure
from vault.keys import KeyStore, LocalKeyProvider
from vault.keys.registry import InstanceRegistry
from vault.models import FinalErasureCycle
from vault.uploads import RecordIn, Uploader

_STEPS = ("rotated", "adopted", "rewrapped", "retired", "dropped", "vacuumed", "finished")
_BATCH = 50_000
_HEARTBEAT_S = 0.2


def _load(engine: Engine, store: KeyStore, n: int) -> tuple[float, list[str]]:
    """N subjects with one record each, in uploads of at most _BATCH; the seconds it took."""
    start = time.perf_counter()
    with Session(engine) as s, s.begin():
        dataset = register_dataset(
            s,
            owner_id="bench",
            name="final-erasure",
            category="energy",
            purposes=["billing"],
            retention_days=365,
            legal_basis="contract",
        ).id
    subjects = [f"subject-{i:07d}" for i in range(n)]
    for i in range(0, n, _BATCH):
        with Session(engine) as s, s.begin():
            Uploader(store, batch_rows=5000).upload(
                s, dataset, (RecordIn(x, b'{"kwh": 3}') for x in subjects[i : i + _BATCH])
            )
    return time.perf_counter() - start, subjects


def _erase(engine: Engine, store: KeyStore, subjects: list[str]) -> float:
    start = time.perf_counter()
    for x in subjects:
        with Session(engine) as s, s.begin():
            Eraser(store).erase_subject(s, x, reason="dpo_decision", requester="dpo")
    return time.perf_counter() - start


def _beating(registries: list[InstanceRegistry], stop: threading.Event) -> None:
    while not stop.wait(_HEARTBEAT_S):
        for r in registries:
            r.beat()


def _cycle(engine: Engine, key_file: Path) -> dict[str, Any]:
    """One forced cycle, two instances beating meanwhile; seconds per step."""
    sessions = db.make_session_factory(engine)
    instances = [InstanceRegistry(sessions, LocalKeyProvider(key_file)) for _ in range(2)]
    for r in instances:
        r.beat()
    stop = threading.Event()
    beater = threading.Thread(target=_beating, args=(instances, stop), daemon=True)
    beater.start()
    store = KeyStore(LocalKeyProvider(key_file))
    job = FinalErasure(sessions, store, interval=dt.timedelta(days=1), instance_ttl_s=5)
    start = time.perf_counter()
    report = job.step(force=True)
    while report is None or not report.finished:
        time.sleep(_HEARTBEAT_S / 2)
        report = job.step() or report
    wall = time.perf_counter() - start
    stop.set()
    beater.join(5)
    with Session(engine) as s:
        cycle = s.scalars(select(FinalErasureCycle).order_by(FinalErasureCycle.id.desc())).first()
    assert cycle is not None
    steps: dict[str, float] = {}
    previous = cycle.started_at
    for name in _STEPS:
        at = getattr(cycle, f"{name}_at")
        steps[name] = round((at - previous).total_seconds(), 3)
        previous = at
    return {
        "cycle_seconds": round(wall, 2),
        "steps_seconds": steps,
        "secrets_rewrapped": cycle.secrets_rewrapped,
        "rewrap_per_s": round(cycle.secrets_rewrapped / max(steps["rewrapped"], 1e-6)),
        "erasures_final": cycle.facts_final,
        "vacuum_full": report.vacuum_full,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    n = int(args.records or 100_000)
    with ExitStack() as stack:
        url = args.database_url or os.environ.get("CIVIS_DATABASE_URL")
        if not url:
            from vault.embedded import embedded_postgres

            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="civis-bench-")))
            url = stack.enter_context(embedded_postgres(tmp, "bench", delete_on_exit=True))
        key_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="civis-keys-")))
        db.upgrade(url)
        engine = db.make_engine(url, pool_size=4)
        stack.callback(engine.dispose)
        key_file = key_dir / "master.key"
        store = KeyStore(LocalKeyProvider(key_file))
        load_s, subjects = _load(engine, store, n)
        erase_s = _erase(engine, store, subjects[::100])
        cycle = _cycle(engine, key_file)
    return {
        "benchmark": "final-erasure",
        "subjects": n,
        "live_secrets": n - len(subjects[::100]) + 2,
        "erased": len(subjects[::100]),
        "load_seconds": round(load_s, 1),
        "erase_seconds": round(erase_s, 1),
        **cycle,
    }
