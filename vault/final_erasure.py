"""Final erasure: rotate the KEK, retire the old ones, VACUUM, and say which erasures are final.

Why: destroying a secret deletes its row, but its wrapped bytes stay in the key_secrets heap
(the dead row versions) until VACUUM, and in the WAL until its segments are recycled, and the
ciphertext likewise in the records heap and WAL. With the KEK those bytes were wrapped under,
anyone holding the host's master key decrypts the erased record from the files. Once every
KEK that existed when the secret was destroyed is retired (destroyed in the provider, and
held by no running process), no copy of that secret anywhere in the database or its WAL
unwraps under any key the host holds: the erasure is final. Backups follow the same rule
(docs/KEYS.md).

A cycle, each step resumable (its time is stored in `final_erasure_cycles` when done):

1. start: the erasure facts committed by now are the cycle's (`outbox.final_cycle`); any
   later erasure may have been rewrapped under the new KEK, so it waits for the next cycle;
2. rotated: the provider makes a new current KEK;
3. adopted: every live instance reports it as its current KEK (heartbeats, vault/keys/
   registry.py), so from now on no instance wraps anything new under an old one;
4. rewrapped: every live secret is rewrapped under the new KEK (batches, own transactions);
5. retired: each old KEK is marked retiring, then taken with an exclusive advisory lock once
   no transaction that wrapped under it is still open (they hold it shared), what such
   transactions wrote is rewrapped, and only after that commits is the KEK destroyed;
6. dropped: no live instance still holds any KEK but the new one;
7. vacuumed: subject secrets left with no live record are destroyed (an expiry under way
   beside an upload leaves them to the cycle), then VACUUM (ANALYZE) of the tables that held
   destroyed secrets, ciphertexts and forgotten subject ids (the statistics too: they sample
   column values), and a VACUUM FULL of key_secrets while it is small (64 MiB) and its lock
   comes at once (the old heap file goes; otherwise its dead rows wait for VACUUM's reuse);
8. finished: the cycle's erasure facts get `final_at`.

A blocked step (an instance that has not adopted the new KEK, a transaction still wrapping
under the old one) is recorded in `blocked` and tried again at the next call. One process at a
time runs the job (a PostgreSQL advisory lock): the service's instances on their schedule
(`final_erasure_interval`, from the age of the newest KEK), or `civis-vault keys rotate` now.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import CursorResult, Engine, delete, exists, func, select, text, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from ledger_bridge.facts import ERASURE_KINDS
from vault.crypto import DecryptionFailed
from vault.keys import KeyStore
from vault.keys.registry import live_instances, note_keks, try_hold_exclusive
from vault.models import FinalErasureCycle, Kek, KeySecret, OutboxFact, VaultInstance

_log = logging.getLogger(__name__)

_JOB_LOCK_KEY = 0x46494E41  # "FINA": one final-erasure job at a time per database
# What VACUUM (ANALYZE) goes over: every table whose rows an erasure overwrites or deletes to
# forget a subject (destroyed secrets, ciphertexts, subject ids replaced): their dead versions
# still hold what was forgotten until VACUUM. A table that names subjects is added here.
VACUUMED_TABLES = (
    "key_secrets",
    "records",
    "key_commitments",
    "outbox",
    "api_keys",
    "subject_sessions",
    "decryptions",
    "subject_requests",
    "recipient_notices",
)
_FULL_VACUUM_LOCK_TIMEOUT = "500ms"
_FULL_VACUUM_MAX_BYTES = 64 * 1024 * 1024  # about 250,000 secrets
_REWRAP_CHUNK = 2000
_FORGET_INSTANCES_AFTER = text("heartbeat_at < now() - interval '1 day'")
# A retired KEK in the cycle's list once, even when a crash made the step run again.
_NOTE_RETIRED = text(
    "UPDATE final_erasure_cycles SET secrets_rewrapped = secrets_rewrapped + :late,"
    " retired_keks = CASE WHEN retired_keks ? :kek THEN retired_keks"
    " ELSE retired_keks || jsonb_build_array(CAST(:kek AS text)) END"
    " WHERE id = :cycle"
)
_STEPS = ("rotated", "adopted", "rewrapped", "retired", "dropped", "vacuumed", "finished")


@dataclass(frozen=True, slots=True)
class CycleReport:
    """Where a cycle stands after a call: finished, or blocked and why."""

    cycle: int
    new_kek: str | None
    finished: bool
    blocked: str | None
    secrets_rewrapped: int
    retired_keks: list[str]
    facts_final: int
    started_at: dt.datetime
    finished_at: dt.datetime | None
    vacuum_full: bool | None = None

    @classmethod
    def of(cls, c: FinalErasureCycle, vacuum_full: bool | None = None) -> CycleReport:
        return cls(
            cycle=c.id,
            new_kek=c.new_kek,
            finished=c.finished_at is not None,
            blocked=c.blocked,
            secrets_rewrapped=c.secrets_rewrapped,
            retired_keks=list(c.retired_keks),
            facts_final=c.facts_final,
            started_at=c.started_at,
            finished_at=c.finished_at,
            vacuum_full=vacuum_full,
        )


class FinalErasure:
    """The final-erasure job over one database and one key provider (see the module)."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        store: KeyStore,
        *,
        interval: dt.timedelta,
        instance_ttl_s: float,
    ) -> None:
        self._sessions = sessions
        self._store = store
        self._provider = store.provider
        self._interval = interval
        self._ttl = instance_ttl_s
        self._vacuum_full: bool | None = None

    def step(self, *, force: bool = False) -> CycleReport | None:
        """Advance the open cycle as far as it can go now, starting one if it is due (or
        `force`). None when nothing is due, or another process is running the job."""
        with self._sessions() as lock:
            if not lock.scalar(text("SELECT pg_try_advisory_lock(:k)"), {"k": _JOB_LOCK_KEY}):
                return None
            try:
                return self._advance(force)
            finally:
                lock.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _JOB_LOCK_KEY})
                lock.commit()

    def report(self, cycle_id: int) -> CycleReport:
        """Where cycle `cycle_id` stands now (another process may have advanced it)."""
        with self._sessions() as session:
            return CycleReport.of(session.get_one(FinalErasureCycle, cycle_id))

    def _advance(self, force: bool) -> CycleReport | None:
        cycle_id = self._open_cycle()
        if cycle_id is None:
            if not (force or self._due()):
                return None
            cycle_id = self._start()
        steps: dict[str, Callable[[int], str | None]] = {
            "rotated": self._rotate,
            "adopted": self._adopt,
            "rewrapped": self._rewrap,
            "retired": self._retire,
            "dropped": self._drop,
            "vacuumed": self._vacuum,
            "finished": self._finish,
        }
        self._vacuum_full = None
        for name in _STEPS:
            if self._cycle(cycle_id, f"{name}_at") is not None:
                continue
            blocked = steps[name](cycle_id)
            if blocked is not None:
                self._set(cycle_id, blocked=blocked)
                _log.info("final erasure cycle %d waits: %s", cycle_id, blocked)
                break
        with self._sessions() as session:
            return CycleReport.of(session.get_one(FinalErasureCycle, cycle_id), self._vacuum_full)

    # -- the cycle row -----------------------------------------------------------------------
    def _open_cycle(self) -> int | None:
        with self._sessions() as session:
            return session.scalar(
                select(FinalErasureCycle.id)
                .where(FinalErasureCycle.finished_at.is_(None))
                .order_by(FinalErasureCycle.id)
                .limit(1)
            )

    def _due(self) -> bool:
        """Due when the newest KEK in use is older than the interval (the database's clock)."""
        with self._sessions() as session:
            newest = (
                select(func.max(Kek.created_at)).where(Kek.retired_at.is_(None)).scalar_subquery()
            )
            due = session.scalar(select(newest < func.now() - self._interval))
            return bool(due)

    def _cycle(self, cycle_id: int, column: str) -> object:
        with self._sessions() as session:
            return session.scalar(
                select(getattr(FinalErasureCycle, column)).where(FinalErasureCycle.id == cycle_id)
            )

    def _set(self, cycle_id: int, **values: object) -> None:
        with self._sessions() as session, session.begin():
            session.execute(
                update(FinalErasureCycle).where(FinalErasureCycle.id == cycle_id).values(**values)
            )

    def _start(self) -> int:
        """A new cycle, covering every erasure fact committed by now and not yet final."""
        with self._sessions() as session, session.begin():
            cycle = FinalErasureCycle()
            session.add(cycle)
            session.flush()
            session.execute(
                update(OutboxFact)
                .where(OutboxFact.kind.in_(ERASURE_KINDS), OutboxFact.final_at.is_(None))
                .values(final_cycle=cycle.id)
                .execution_options(synchronize_session=False)
            )
            return cycle.id

    # -- the steps: None when done, else what the step waits for -----------------------------
    def _rotate(self, cycle_id: int) -> str | None:
        kek = self._provider.rotate()
        with self._sessions() as session, session.begin():
            note_keks(session, [kek])
        self._set(cycle_id, new_kek=kek, rotated_at=func.now(), blocked=None)
        return None

    def _new_kek(self, cycle_id: int) -> str:
        """The cycle's KEK; if the provider's current one is newer (a rotation by another
        means), the cycle follows it: what matters is that everything ends up under it."""
        kek = str(self._cycle(cycle_id, "new_kek"))
        self._provider.refresh()
        current = self._provider.current_kek_id()
        if current != kek:
            with self._sessions() as session, session.begin():
                note_keks(session, [current])
            self._set(cycle_id, new_kek=current)
        return current

    def _adopt(self, cycle_id: int) -> str | None:
        kek = self._new_kek(cycle_id)
        with self._sessions() as session:
            laggards = [i for i in live_instances(session, self._ttl) if i.current_kek != kek]
        if laggards:
            return f"{len(laggards)} instance(s) have not adopted {kek}: " + _names(laggards)
        self._set(cycle_id, adopted_at=func.now(), blocked=None)
        return None

    def _rewrap(self, cycle_id: int) -> str | None:
        kek = self._new_kek(cycle_id)
        total, after = 0, 0
        try:
            while True:
                with self._sessions() as session, session.begin():
                    n, after = self._store.rewrap(
                        session, to_kek=kek, limit=_REWRAP_CHUNK, skip_locked=True, after_id=after
                    )
                total += n
                if n < _REWRAP_CHUNK:
                    break
        except DecryptionFailed:
            return "a secret unwraps under no KEK the key provider holds: rewrap impossible"
        finally:
            self._set(cycle_id, secrets_rewrapped=FinalErasureCycle.secrets_rewrapped + total)
        self._set(cycle_id, rewrapped_at=func.now(), blocked=None)
        return None

    def _retire(self, cycle_id: int) -> str | None:
        """Each old KEK: retiring (no new wraps), then exclusive once no transaction that
        wrapped under it is open, its stragglers rewrapped, retired, and only then destroyed."""
        kek = self._new_kek(cycle_id)
        for old in sorted(set(self._provider.kek_ids()) - {kek}):
            with self._sessions() as session, session.begin():
                note_keks(session, [old])
                session.execute(
                    update(Kek)
                    .where(Kek.id == old)
                    .values(retiring_at=func.coalesce(Kek.retiring_at, func.now()))
                )
            with self._sessions() as session, session.begin():
                if not try_hold_exclusive(session, old):
                    return f"an open transaction still wraps new secrets under {old}"
                try:
                    late = self._store.rewrap(session, to_kek=kek, from_kek=old)[0]
                except DecryptionFailed:
                    return f"a secret under {old} does not unwrap: {old} cannot be retired"
                session.execute(update(Kek).where(Kek.id == old).values(retired_at=func.now()))
                session.execute(_NOTE_RETIRED, {"cycle": cycle_id, "kek": old, "late": late})
            # Committed: no row needs `old` any more, so destroying it loses nothing.
            self._provider.retire(old)
        self._set(cycle_id, retired_at=func.now(), blocked=None)
        return None

    def _drop(self, cycle_id: int) -> str | None:
        kek = self._new_kek(cycle_id)
        with self._sessions() as session:
            holders = [i for i in live_instances(session, self._ttl) if set(i.loaded_keks) - {kek}]
        if holders:
            held = {k for i in holders for k in i.loaded_keks} - {kek}
            return f"instance(s) still hold {', '.join(sorted(held))}: " + _names(holders)
        with self._sessions() as session, session.begin():
            # KEKs the table knows that no provider holds any more (nor any row uses).
            session.execute(
                update(Kek)
                .where(
                    Kek.id != kek,
                    Kek.retired_at.is_(None),
                    ~exists().where(KeySecret.kek_id == Kek.id),
                )
                .values(
                    retiring_at=func.coalesce(Kek.retiring_at, func.now()), retired_at=func.now()
                )
            )
        self._set(cycle_id, dropped_at=func.now(), blocked=None)
        return None

    def _forget_orphans(self) -> int:
        """Subject secrets left with no live record in their dataset (their uploads expired
        or were withdrawn while an upload was under way there): destroyed now, each dataset
        when no upload runs in it (else at the next cycle)."""
        with self._sessions() as session:
            datasets = session.scalars(
                select(KeySecret.dataset_id).where(KeySecret.kind == "subject").distinct()
            ).all()
        destroyed = 0
        for dataset_id in datasets:
            with self._sessions() as session, session.begin():
                destroyed += self._store.destroy_orphaned_subjects(session, dataset_id) or 0
        return destroyed

    def _vacuum(self, cycle_id: int) -> str | None:
        orphans = self._forget_orphans()
        if orphans:
            _log.info("final erasure cycle %d destroyed %d orphaned secret(s)", cycle_id, orphans)
        engine = self._sessions.kw["bind"]
        assert isinstance(engine, Engine)
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text(f"VACUUM (ANALYZE) {', '.join(VACUUMED_TABLES)}"))
            # Rewrites key_secrets into a new file, holding the table to itself meanwhile
            # (about 0.75 s per 100,000 secrets, bench final-erasure): only while it is small,
            # and waiting at most a moment for the lock (reads and uploads queue behind it).
            self._vacuum_full = False
            size = conn.scalar(text("SELECT pg_total_relation_size('key_secrets')"))
            if int(size or 0) <= _FULL_VACUUM_MAX_BYTES:
                conn.execute(text(f"SET lock_timeout = '{_FULL_VACUUM_LOCK_TIMEOUT}'"))
                try:
                    conn.execute(text("VACUUM FULL key_secrets"))
                    self._vacuum_full = True
                except OperationalError:
                    _log.info("VACUUM FULL key_secrets skipped: the table was busy")
                finally:
                    conn.execute(text("RESET lock_timeout"))
        self._set(cycle_id, vacuumed_at=func.now(), blocked=None)
        return None

    def _finish(self, cycle_id: int) -> str | None:
        with self._sessions() as session, session.begin():
            done = session.execute(
                update(OutboxFact)
                .where(OutboxFact.final_cycle == cycle_id, OutboxFact.final_at.is_(None))
                .values(final_at=func.now())
                .execution_options(synchronize_session=False)
            )
            count = cast("CursorResult[Any]", done).rowcount
            session.execute(delete(VaultInstance).where(_FORGET_INSTANCES_AFTER))
            session.execute(
                update(FinalErasureCycle)
                .where(FinalErasureCycle.id == cycle_id)
                .values(facts_final=count, finished_at=func.now(), blocked=None)
            )
        _log.info("final erasure cycle %d finished: %d erasure(s) final", cycle_id, count)
        return None


def _names(instances: list[VaultInstance]) -> str:
    return ", ".join(f"{i.host}:{i.pid} ({i.current_kek})" for i in instances[:5])
