"""After an erasure everywhere, the vault's PostgreSQL names the subject nowhere (pg_dump).

What an auditor would do: dump the database with the real `pg_dump` and search it for the
erased pseudonym P (its hex, upper-case hex, base64, and hashes anyone could compute from P),
with a control: a subject not erased, stored the same way, IS found by the same scan. Then the
erasure must not have cost the others anything: every surviving record's inclusion proof
verifies against its upload's anchored Merkle root, and each upload's key-commitments root,
recomputed from the rows, is still the anchored one.

The relay's part (settle_erasure, once the ledger recorded the fact) is called here as the
relay calls it; tests/api/test_erasure_receipt.py runs the same through the real relay and a
real ledger.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import Engine, make_url, select, text, update
from sqlalchemy.orm import Session

from tests.conftest import PgServer, _admin_conninfo
from tests.vault.conftest import make_dataset
from tests.vault.test_forensic import _pg_dump
from vault import db
from vault.audit import retention_audit
from vault.crypto import record_leaf
from vault.crypto.merkle import leaf_hash, merkle_root, verify_inclusion
from vault.erasure import Eraser, forgotten_id, settle_erasure
from vault.final_erasure import FinalErasure
from vault.keys import KeyStore, LocalKeyProvider, subject_ref
from vault.models import ApiKey, KeyCommitment, OutboxFact, Record, SubjectSession, Upload
from vault.reads import Reader, key_commitments_in_order
from vault.uploads import LEDGER_SUBJECT_ID, RecordIn, Uploader


def _pseudonym(first: str = "") -> str:
    return (first + os.urandom(32).hex())[:64]


def _needles(subject: str) -> dict[str, bytes]:
    """What names `subject` without any secret: its own encodings and hashes of them."""
    raw = bytes.fromhex(subject)
    return {
        "hex": subject.encode(),
        "upper hex": subject.upper().encode(),
        "base64": base64.b64encode(raw).rstrip(b"="),
        "base64url": base64.urlsafe_b64encode(raw).rstrip(b"="),
        "sha256(raw)": hashlib.sha256(raw).hexdigest().encode(),
        "sha256(hex)": hashlib.sha256(subject.encode()).hexdigest().encode(),
    }


def _found(dump: bytes, subject: str) -> list[str]:
    return [name for name, needle in _needles(subject).items() if needle in dump]


def _relay_records(session: Session, fact_id: int, sealed: bytes | None = None) -> None:
    """What the relay does once the ledger recorded the fact: mark it, then settle it."""
    session.execute(
        update(OutboxFact)
        .where(OutboxFact.id == fact_id)
        .values(sent_at=dt.datetime.now(dt.UTC), tx_id="ab" * 32, block_height=7)
    )
    settle_erasure(session, fact_id, sealed_receipt=sealed)


def _api_key(session: Session, member: str) -> None:
    session.add(
        ApiKey(id=os.urandom(8).hex(), secret_hash=os.urandom(32), member_id=member, role="subject")
    )


def _signed_in(session: Session, *pseudonyms: str) -> None:
    """A wallet sign-in session proving `pseudonyms` together."""
    expires = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=15)
    session.add(
        SubjectSession(
            id=os.urandom(8).hex(),
            secret_hash=os.urandom(32),
            pseudonyms=list(pseudonyms),
            expires_at=expires,
        )
    )


class World:
    def __init__(self, engine: Engine, tmp_path: Path) -> None:
        self.engine = engine
        self.store = KeyStore(LocalKeyProvider(tmp_path / "master.key"))
        self.uploader = Uploader(self.store, subject_ids=LEDGER_SUBJECT_ID)
        self.reader = Reader(self.store)
        self.eraser = Eraser(self.store)
        # P sorts first in its uploads, so its replacement id sorts elsewhere (with 8 subjects,
        # 7 times in 8): only fixed leaf positions keep the key-commitments root recomputable.
        self.p, self.q = _pseudonym("00"), _pseudonym("ff")
        self.others = [_pseudonym() for _ in range(6)]
        with Session(engine) as s, s.begin():
            self.d1, self.d2 = make_dataset(s).id, make_dataset(s).id
            subjects = [self.p, self.q, *self.others]
            self.uploads = [self._upload(s, self.d1, subjects), self._upload(s, self.d2, subjects)]
            _api_key(s, self.p)
            _api_key(s, self.q)
            # P signed in with a pseudonym of theirs in another dataset, Q alone.
            _signed_in(s, self.p, _pseudonym())
            _signed_in(s, self.q)
            self.secrets = {
                d: self.store.load(s, [subject_ref(d, self.p)])[subject_ref(d, self.p)]
                for d in (self.d1, self.d2)
            }

    def _upload(self, s: Session, dataset: uuid.UUID, subjects: list[str]) -> uuid.UUID:
        records = [RecordIn(x, {"who": x, "i": i}) for x in subjects for i in range(3)]
        return self.uploader.upload(s, dataset, records).upload_id

    def erase(self, dataset: uuid.UUID | None, receipt_to: bytes | None = None) -> int:
        with Session(self.engine) as s, s.begin():
            result = self.eraser.erase_subject(
                s,
                self.p,
                dataset_id=dataset,
                reason="subject_request",
                requester="subject",
                receipt_to=receipt_to,
            )
        assert result.outbox_id is not None
        return result.outbox_id


@pytest.fixture()
def world(committed_engine: Engine, tmp_path: Path) -> Iterator[World]:
    yield World(committed_engine, tmp_path)


# A PostgreSQL built with ICU, for the collation the suite's embedded server lacks (its build
# has no ICU): the machine's own service where it runs one (Debian's packages have ICU).
ICU_SERVER_URL = os.environ.get(
    "CIVIS_TEST_ICU_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


def _icu_database(pg_server: PgServer) -> PgServer:
    """A server on which a new ICU en-US database was just made, named by `base_url`: the
    suite's own if it has ICU, else `ICU_SERVER_URL`'s; skips where neither can."""
    name = f"civis_forget_icu_{uuid.uuid4().hex[:12]}"
    errors = []
    for base in dict.fromkeys((pg_server.base_url, ICU_SERVER_URL)):
        try:
            with psycopg.connect(_admin_conninfo(base), autocommit=True, connect_timeout=5) as c:
                c.execute(
                    f'CREATE DATABASE "{name}" TEMPLATE template0 LOCALE_PROVIDER icu '
                    "ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'"
                )
        except psycopg.Error as exc:
            errors.append(f"{make_url(base).render_as_string()}: {str(exc).strip()}")
            continue
        return PgServer(make_url(base).set(database=name).render_as_string(False))
    pytest.skip("no PostgreSQL here can create an ICU database: " + "; ".join(errors))


@pytest.fixture(params=["server default", "icu en-US"])
def collated_world(
    request: pytest.FixtureRequest, pg_server: PgServer, tmp_path: Path
) -> Iterator[World]:
    """A world in a database of the server's default collation (C here: a replacement id,
    starting with `~`, sorts after every hex id) or of ICU's en-US (where it sorts before
    them): the leaf indexes must come out right whichever way replacements sort."""
    if request.param == "server default":
        server, url = pg_server, pg_server.create_database("civis_forget")
    else:
        server = _icu_database(pg_server)
        url = server.base_url
    engine: Engine | None = None
    try:  # the database is dropped whatever fails, on a server the suite may not own
        db.upgrade(url)
        engine = db.make_engine(url, pool_size=2)
        with engine.connect() as conn:
            tilde_first = conn.execute(text("SELECT '~f' < '0'")).scalar()
        assert tilde_first == (request.param == "icu en-US")
        yield World(engine, tmp_path)
    finally:
        if engine is not None:
            engine.dispose()
        server.drop_database(url)


def test_erasure_everywhere_leaves_nothing_naming_the_subject_in_pg_dump(
    world: World, fresh_database_url: str
) -> None:
    before = _pg_dump(fresh_database_url)
    assert _found(before, world.p) and _found(before, world.q)  # the scan finds what is there

    first = world.erase(world.d1)  # a dataset-scoped erasure first: its fact names P
    with Session(world.engine) as s, s.begin():
        _relay_records(s, first)
    everywhere = world.erase(None, receipt_to=os.urandom(32))
    pending = _pg_dump(fresh_database_url)
    # Until the ledger recorded it, the fact must name P: it is what the relay submits.
    assert "hex" in _found(pending, world.p)

    with Session(world.engine) as s, s.begin():
        _relay_records(s, everywhere, sealed=b"sealed receipt")
    dump = _pg_dump(fresh_database_url)
    assert _found(dump, world.p) == []
    assert "hex" in _found(dump, world.q)  # control: a subject not erased is still found

    with Session(world.engine) as s:
        # P's rows remain (their leaves keep the others' proofs), under ids no one can link.
        for dataset in (world.d1, world.d2):
            ids = set(s.scalars(select(Record.subject_id).where(Record.dataset_id == dataset)))
            assert forgotten_id(world.secrets[dataset]) in ids
        facts = {f.id: f.payload for f in s.scalars(select(OutboxFact))}
        assert facts[first]["scope"] == {"kind": "subject", "dataset": str(world.d1)}
        assert facts[everywhere]["scope"] == {"kind": "subject"}
        assert facts[everywhere]["sealed_receipt"] == b"sealed receipt".hex()
        members = set(s.scalars(select(ApiKey.member_id)))
        assert world.q in members and world.p not in members
        signed_in = {p for ps in s.scalars(select(SubjectSession.pseudonyms)) for p in ps}
        assert world.q in signed_in and world.p not in signed_in


def test_survivors_proofs_and_key_commitment_roots_still_verify(
    collated_world: World,
) -> None:
    """Several subjects of the same uploads forgotten one after the other (everywhere, and
    in one dataset), whose replacement ids sort anywhere: each upload's commitments come back
    in leaf order, and only the forgotten rows were written."""
    world = collated_world
    with Session(world.engine) as s:
        roots = {u.id: bytes(u.commitments_root) for u in s.scalars(select(Upload))}
        before = {u: key_commitments_in_order(s, u) for u in world.uploads}
    for upload in world.uploads:
        assert merkle_root([leaf_hash(c) for c in before[upload]]) == roots[upload]

    world.erase(None)
    gone = {world.d1: 1, world.d2: 1}
    for i, (subject, dataset) in enumerate(
        [(world.others[0], None), (world.others[1], world.d1), (world.others[2], None)]
    ):
        with Session(world.engine) as s, s.begin():
            world.eraser.erase_subject(
                s, subject, dataset_id=dataset, reason=f"r{i}", requester="dpo"
            )
        for d in gone:
            gone[d] += dataset in (None, d)

    with Session(world.engine) as s:
        for upload, dataset in zip(world.uploads, (world.d1, world.d2), strict=True):
            after = key_commitments_in_order(s, upload)
            assert after == before[upload]
            assert merkle_root([leaf_hash(c) for c in after]) == roots[upload]
            positions = s.scalars(
                select(KeyCommitment.position).where(KeyCommitment.upload_id == upload)
            ).all()
            assert len([p for p in positions if p is not None]) == gone[dataset]
        survivors = list(world.reader.by_dataset(s, world.d1)) + list(
            world.reader.by_dataset(s, world.d2)
        )
    kept = {world.q, *world.others[3:]}
    assert {r.subject_id for r in survivors} == kept | {world.others[1]}
    assert len(survivors) == (len(kept) * 2 + 1) * 3
    for out in survivors:
        leaf = leaf_hash(record_leaf(out.record_id.bytes, out.leaf_salt, out.payload))
        assert verify_inclusion(leaf, out.leaf_index, out.record_count, out.proof, out.merkle_root)
        assert json.loads(out.payload)["who"] == out.subject_id


def test_dataset_scoped_erasure_forgets_the_subject_in_that_dataset_only(world: World) -> None:
    """Kept, by design: the subject stays a member elsewhere (API key, other datasets' rows),
    and the fact names them, as the ledger's tombstone for a dataset-scoped erasure does."""
    fact = world.erase(world.d1)
    with Session(world.engine) as s, s.begin():
        _relay_records(s, fact)
    with Session(world.engine) as s:
        in_d1 = set(s.scalars(select(Record.subject_id).where(Record.dataset_id == world.d1)))
        in_d2 = set(s.scalars(select(Record.subject_id).where(Record.dataset_id == world.d2)))
        committed_d1 = set(
            s.scalars(
                select(KeyCommitment.subject_id).where(KeyCommitment.upload_id == world.uploads[0])
            )
        )
        assert world.p not in in_d1 and world.p not in committed_d1
        assert forgotten_id(world.secrets[world.d1]) in in_d1
        assert world.p in in_d2
        assert s.get(OutboxFact, fact).payload["scope"]["subject"] == world.p  # type: ignore[union-attr]
        assert world.p in set(s.scalars(select(ApiKey.member_id)))


def test_a_repeated_erasure_everywhere_finds_nothing_to_name(world: World) -> None:
    """Once forgotten, the vault cannot even tell that P was erased: no fact matches P."""
    fact = world.erase(None)
    with Session(world.engine) as s, s.begin():
        _relay_records(s, fact)
        again = world.eraser.erase_subject(s, world.p, reason="dpo_decision", requester="dpo")
    assert again.outbox_id is None and again.secrets_destroyed == 0


def test_an_erasure_everywhere_after_every_dataset_was_erased_still_forgets(
    world: World, fresh_database_url: str
) -> None:
    """No secret is left to destroy, yet the earlier facts and the API key name P: the
    erasure everywhere is still queued, and once recorded nothing names P."""
    for dataset in (world.d1, world.d2):
        fact = world.erase(dataset)
        with Session(world.engine) as s, s.begin():
            _relay_records(s, fact)
    assert "hex" in _found(_pg_dump(fresh_database_url), world.p)
    with Session(world.engine) as s, s.begin():
        result = world.eraser.erase_subject(s, world.p, reason="dpo_decision", requester="dpo")
    assert result.secrets_destroyed == 0 and result.outbox_id is not None
    with Session(world.engine) as s, s.begin():
        _relay_records(s, result.outbox_id)
    dump = _pg_dump(fresh_database_url)
    assert _found(dump, world.p) == [] and "hex" in _found(dump, world.q)


def test_the_audit_finds_a_forgotten_subject_whose_commitment_was_left_live(
    world: World,
) -> None:
    world.erase(None)
    today = dt.date.today()
    with Session(world.engine) as s:  # rolled back on leaving
        assert "forgotten-commitment-live" not in {
            f.code for f in retention_audit(s, today).findings
        }
        s.execute(
            update(KeyCommitment)
            .where(KeyCommitment.subject_id == forgotten_id(world.secrets[world.d2]))
            .values(destroyed_at=None)
        )
        found = retention_audit(s, today).findings
    assert [(f.code, f.refs) for f in found] == [
        ("forgotten-commitment-live", {"upload_id": str(world.uploads[1])})
    ]


def _statistics(engine: Engine) -> bytes:
    """Every value the planner's statistics sampled from the vault's tables (pg_stats: most
    common values, histogram bounds), as text: copies of column values in the catalog."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT tablename, attname, most_common_vals::text, histogram_bounds::text "
                "FROM pg_stats WHERE schemaname = 'public'"
            )
        ).all()
    return "\n".join(" ".join(str(v) for v in row) for row in rows).encode()


def test_the_statistics_stop_naming_an_erased_subject_once_the_erasure_is_final(
    world: World,
) -> None:
    """pg_dump leaves out the planner's statistics, but they are column values too: ANALYZE
    keeps the most common subject ids of records, key commitments and key secrets in
    pg_statistic, and an erasure does not touch them. The final-erasure cycle's VACUUM
    (ANALYZE) samples the rewritten rows again."""
    with world.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("ANALYZE"))
    fact = world.erase(None)
    with Session(world.engine) as s, s.begin():
        _relay_records(s, fact)
    stale = _statistics(world.engine)
    assert "hex" in _found(stale, world.p), "the scan must see the subject in the statistics"

    cycle = FinalErasure(
        db.make_session_factory(world.engine),
        world.store,
        interval=dt.timedelta(days=1),
        instance_ttl_s=30,
    ).step(force=True)
    assert cycle is not None and cycle.finished
    fresh = _statistics(world.engine)
    assert _found(fresh, world.p) == []
    assert "hex" in _found(fresh, world.q)  # control: a subject not erased is still sampled


def test_an_expiry_leaves_no_key_commitment_naming_the_subjects_of_its_uploads(
    world: World, fresh_database_url: str
) -> None:
    """The records of an expired (or withdrawn) upload are deleted; its key commitments stay
    for the root, each given a random id in place of its subject, with its leaf index (the
    root still recomputes). Naming their subjects, they would say who was in the upload past
    its retention."""
    only_here, kept = _pseudonym(), _pseudonym()
    with Session(world.engine) as s, s.begin():
        expiring = world.uploader.upload(
            s, world.d1, [RecordIn(x, {"who": x}) for x in (only_here, world.q)]
        )
        world.uploader.upload(s, world.d2, [RecordIn(kept, {"who": kept})])
        root = s.get_one(Upload, expiring.upload_id).commitments_root
        before = key_commitments_in_order(s, expiring.upload_id)
    assert _found(_pg_dump(fresh_database_url), only_here)
    with Session(world.engine) as s, s.begin():
        result = world.eraser.expire_epoch(s, world.d1, expiring.retention_day)
    assert result.rows_forgotten >= 2
    dump = _pg_dump(fresh_database_url)
    assert _found(dump, only_here) == []
    assert "hex" in _found(dump, kept)  # control: a subject of a live upload is still named
    with Session(world.engine) as s:
        after = key_commitments_in_order(s, expiring.upload_id)
    assert after == before and merkle_root([leaf_hash(c) for c in after]) == root


def test_an_expiry_keeps_a_subject_secret_an_upload_under_way_is_using(world: World) -> None:
    """The race the dataset lock closes: X's only committed records expire while an upload
    that encrypts new records for X under the same secret has not committed yet. Destroying
    X's secret as orphaned then would leave those new records undecryptable."""
    x = _pseudonym()
    earlier = Uploader(
        world.store,
        subject_ids=LEDGER_SUBJECT_ID,
        clock=lambda: dt.datetime.now(dt.UTC) - dt.timedelta(days=10),
    )
    with Session(world.engine) as s, s.begin():
        old = earlier.upload(s, world.d1, [RecordIn(x, {"old": True})])
    with Session(world.engine) as under_way:
        under_way.begin()
        world.uploader.upload(under_way, world.d1, [RecordIn(x, {"new": True})])
        with Session(world.engine) as s, s.begin():
            world.eraser.expire_epoch(s, world.d1, old.retention_day)
        under_way.commit()
    with Session(world.engine) as s:
        mine = [r for r in world.reader.by_dataset(s, world.d1) if r.subject_id == x]
        assert [json.loads(r.payload) for r in mine] == [{"new": True}]
        # Control: with nothing under way, the secret of a subject whose records all expired
        # goes with them.
        assert world.store.destroy_orphaned_subjects(s, world.d1, [x]) == 0
    y = _pseudonym()
    with Session(world.engine) as s, s.begin():
        gone = earlier.upload(s, world.d2, [RecordIn(y, {"old": True})])
    with Session(world.engine) as s, s.begin():
        world.eraser.expire_epoch(s, world.d2, gone.retention_day)
    with Session(world.engine) as s:
        assert world.store.load(s, [subject_ref(world.d2, y)]) == {}
