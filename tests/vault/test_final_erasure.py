"""The final-erasure protocol on a real PostgreSQL, with several processes' key providers.

Each "instance" here is what an API process holds: its own `LocalKeyProvider` over the shared
master key file (loaded into its memory at start) and its heartbeat row. The job runs as
`civis-vault keys rotate` would, with a provider of its own. What must hold:

- no old KEK is retired before every live instance has adopted the new one, nor while a
  transaction that wrapped a secret under it is still open (that secret is rewrapped first);
- an instance that has not adopted the rotation never wraps anything new under a retiring KEK;
- a cycle is final only once no live instance still holds a retired KEK, and it makes final
  exactly the erasures committed before it started;
- every secret stays readable by every instance throughout, and after a restart.
"""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path

from sqlalchemy import Engine, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from tests.vault.conftest import make_dataset
from vault import db
from vault.audit import FinalErasureSchedule, final_erasure_findings
from vault.erasure import Eraser, certificate_status
from vault.final_erasure import CycleReport, FinalErasure
from vault.keys import KeyStore, LocalKeyProvider, subject_ref
from vault.keys.registry import InstanceRegistry
from vault.models import FinalErasureCycle, Kek, KeySecret, OutboxFact
from vault.reads import Reader
from vault.uploads import RecordIn, Uploader

DAY = dt.timedelta(days=1)
SCHEDULE = FinalErasureSchedule(interval=DAY, grace=dt.timedelta(hours=1))


class Instance:
    """An API process: its own copy of the KEKs, its heartbeat, its key store."""

    def __init__(self, sessions: sessionmaker[Session], key_file: Path) -> None:
        self.provider = LocalKeyProvider(key_file)
        self.store = KeyStore(self.provider)
        self.registry = InstanceRegistry(sessions, self.provider)
        self.registry.beat()


class World:
    def __init__(self, engine: Engine, tmp_path: Path) -> None:
        self.engine = engine
        self.sessions = db.make_session_factory(engine)
        self.key_file = tmp_path / "master.key"
        self.a = Instance(self.sessions, self.key_file)
        self.b = Instance(self.sessions, self.key_file)
        self.job_store = KeyStore(LocalKeyProvider(self.key_file, create=False))
        self.job = FinalErasure(self.sessions, self.job_store, interval=DAY, instance_ttl_s=30)
        with Session(engine) as s, s.begin():
            self.dataset = make_dataset(s).id

    def upload(self, instance: Instance, subjects: list[str]) -> None:
        with Session(self.engine) as s, s.begin():
            Uploader(instance.store).upload(
                s, self.dataset, [RecordIn(x, {"who": x}) for x in subjects]
            )

    def readable(self, store: KeyStore) -> set[str]:
        with Session(self.engine) as s:
            return {r.subject_id for r in Reader(store).by_dataset(s, self.dataset)}

    def erase(self, subject: str) -> int:
        with Session(self.engine) as s, s.begin():
            result = Eraser(self.a.store).erase_subject(
                s, subject, reason="dpo_decision", requester="dpo"
            )
            s.execute(  # as the relay marks it once the ledger recorded it
                update(OutboxFact)
                .where(OutboxFact.id == result.outbox_id)
                .values(sent_at=dt.datetime.now(dt.UTC), tx_id="ab" * 32, block_height=1)
            )
        assert result.outbox_id is not None
        return result.outbox_id

    def cycle(self, *, force: bool) -> CycleReport:
        """Step the job until its cycle finishes, the instances beating in between."""
        report = self.job.step(force=force)
        for _ in range(5):
            if report is not None and report.finished:
                return report
            self.a.registry.beat()
            self.b.registry.beat()
            report = self.job.step()
        raise AssertionError(f"the cycle did not finish: {report}")

    def keks_of_rows(self) -> set[str]:
        with Session(self.engine) as s:
            return set(s.scalars(select(KeySecret.kek_id)))

    def fact(self, fact_id: int) -> OutboxFact:
        with Session(self.engine) as s:
            return s.get_one(OutboxFact, fact_id)


def test_retirement_waits_for_adoption_and_finality_for_every_instance_to_drop_the_kek(
    committed_engine: Engine, tmp_path: Path
) -> None:
    w = World(committed_engine, tmp_path)
    w.upload(w.a, ["alice", "bob"])
    erased = w.erase("alice")

    first = w.job.step(force=True)
    assert first is not None and first.new_kek == "k2" and not first.finished
    assert first.blocked is not None and "have not adopted k2" in first.blocked
    assert w.job_store.provider.kek_ids() == ["k1", "k2"]  # k1 is not retired yet
    # B, not yet adopted, uploads: k1 is not retiring yet, so B wraps under it, correctly.
    w.upload(w.b, ["carol"])
    assert w.keks_of_rows() == {"k1"}
    # A and B read everything meanwhile, whatever KEK a row is under.
    assert w.readable(w.a.store) == w.readable(w.b.store) == {"bob", "carol"}

    w.a.registry.beat()
    still = w.job.step()
    assert still is not None and still.blocked is not None and "1 instance(s)" in still.blocked
    # Another process (the other instance's job, `keys rotate`) takes the cycle on from here.
    w.job = FinalErasure(
        w.sessions,
        KeyStore(LocalKeyProvider(w.key_file, create=False)),
        interval=DAY,
        instance_ttl_s=30,
    )
    w.b.registry.beat()
    retired = w.job.step()
    assert retired is not None and retired.retired_keks == ["k1"] and not retired.finished
    assert w.keks_of_rows() == {"k2"} and LocalKeyProvider(w.key_file).kek_ids() == ["k2"]
    # Retired, but A and B still hold k1 in memory: the erasure is not final yet.
    assert retired.blocked is not None and "still hold k1" in retired.blocked
    assert certificate_status(w.fact(erased)).state == "recorded"

    for instance in (w.a, w.b):
        instance.registry.beat()
        assert instance.provider.kek_ids() == ["k2"]
    done = w.job.step()
    assert done is not None and done.finished and done.facts_final >= 1
    status = certificate_status(w.fact(erased))
    assert status.state == "final" and status.final_at is not None
    assert status.recorded_at is not None and status.final_at >= status.recorded_at
    # Everything readable by the running instances and by a restarted one.
    restarted = KeyStore(LocalKeyProvider(w.key_file))
    assert w.readable(w.a.store) == w.readable(restarted) == {"bob", "carol"}


def test_a_transaction_still_wrapping_under_the_old_kek_blocks_its_retirement(
    committed_engine: Engine, tmp_path: Path
) -> None:
    """The race the advisory lock closes: B wrapped a new secret under k1 before it adopted
    k2, and its transaction is still open when every heartbeat says k2. Retiring k1 then
    would leave B's secret, once committed, under a destroyed KEK: unreadable forever."""
    w = World(committed_engine, tmp_path)
    w.upload(w.a, ["alice"])
    with Session(committed_engine) as open_tx:
        open_tx.begin()
        late = subject_ref(w.dataset, "late")
        secret = w.b.store.ensure(open_tx, [late])[late]  # under k1, lock held
        first = w.job.step(force=True)
        assert first is not None
        w.a.registry.beat()
        w.b.registry.beat()  # B adopts k2 while its transaction is still open
        blocked = w.job.step()
        assert blocked is not None and not blocked.retired_keks
        assert blocked.blocked == "an open transaction still wraps new secrets under k1"
        assert LocalKeyProvider(w.key_file).kek_ids() == ["k1", "k2"]
        open_tx.commit()
    assert "k1" in w.keks_of_rows()  # what B committed is under k1

    retired = w.job.step()
    assert retired is not None and retired.retired_keks == ["k1"]
    assert w.keks_of_rows() == {"k2"}  # the straggler was rewrapped before k1 went
    with Session(committed_engine) as s:
        restarted = KeyStore(LocalKeyProvider(w.key_file))
        assert restarted.load(s, [late]) == {late: secret}


def test_an_instance_that_has_not_adopted_never_wraps_under_a_retiring_kek(
    committed_engine: Engine, tmp_path: Path
) -> None:
    w = World(committed_engine, tmp_path)
    w.job_store.provider.rotate()  # k2 in the file; A and B have not refreshed
    with Session(committed_engine) as s, s.begin():
        s.execute(update(Kek).where(Kek.id == "k1").values(retiring_at=dt.datetime.now(dt.UTC)))
    assert w.b.provider.current_kek_id() == "k1"
    w.upload(w.b, ["dave"])
    assert w.keks_of_rows() == {"k2"}
    assert w.b.provider.current_kek_id() == "k2"  # it refreshed instead


def test_a_cycle_makes_final_only_the_erasures_committed_before_it_started(
    committed_engine: Engine, tmp_path: Path
) -> None:
    w = World(committed_engine, tmp_path)
    w.upload(w.a, ["alice", "bob", "carol"])
    before = w.erase("alice")
    first = w.job.step(force=True)  # starts the cycle, then waits for A and B
    assert first is not None and not first.finished
    during = w.erase("bob")  # after the cycle started: its secret may be under k2
    w.cycle(force=False)
    assert certificate_status(w.fact(before)).state == "final"
    assert certificate_status(w.fact(during)).state == "recorded"
    # The next cycle takes it.
    assert w.job.step() is None  # not due: the newest KEK is a moment old
    w.cycle(force=True)
    assert certificate_status(w.fact(during)).state == "final"
    assert w.readable(w.a.store) == {"carol"}


def test_the_schedule_is_due_from_the_newest_keks_age(
    committed_engine: Engine, tmp_path: Path
) -> None:
    w = World(committed_engine, tmp_path)
    assert w.job.step() is None
    with Session(committed_engine) as s, s.begin():
        s.execute(update(Kek).values(created_at=text("now() - interval '25 hours'")))
    report = w.job.step()
    assert report is not None and report.new_kek == "k2"


def test_the_audit_reports_an_old_kek_and_an_erasure_recorded_but_not_final(
    committed_engine: Engine, tmp_path: Path
) -> None:
    w = World(committed_engine, tmp_path)
    w.upload(w.a, ["alice", "bob"])
    erased = w.erase("alice")
    with Session(committed_engine) as s:
        assert final_erasure_findings(s, SCHEDULE) == []  # control: all within the schedule
    with Session(committed_engine) as s, s.begin():
        s.execute(update(Kek).values(created_at=text("now() - interval '26 hours'")))
        s.execute(
            update(OutboxFact)
            .where(OutboxFact.id == erased)
            .values(created_at=text("now() - interval '26 hours'"))
        )
    with Session(committed_engine) as s:
        found = {
            (f.code, tuple(sorted(f.refs.items()))) for f in final_erasure_findings(s, SCHEDULE)
        }
        other = final_erasure_findings(s, SCHEDULE, dataset_id=uuid.uuid4())
    assert ("erasure-not-final", (("fact_id", str(erased)),)) in found
    assert "kek-older-than-schedule" in {code for code, _ in found}
    # Another dataset has no erasure of its own to report, but the KEK is everyone's.
    assert {f.code for f in other} == {"kek-older-than-schedule"}

    w.cycle(force=True)
    with Session(committed_engine) as s:
        assert final_erasure_findings(s, SCHEDULE) == []
        cycles = s.scalars(select(FinalErasureCycle)).all()
    assert len(cycles) == 1 and cycles[0].vacuumed_at is not None
