"""Uploads as a library: encrypt, store in batches, Merkle root; bad input stores nothing."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from tests.vault.conftest import VaultServices, make_dataset
from vault import uploads
from vault.crypto import record_leaf
from vault.crypto.merkle import leaf_hash, verify_inclusion
from vault.errors import (
    DatasetNotFound,
    DuplicateRecord,
    InvalidRecord,
    RecordNotFound,
    RecordTooLarge,
    VaultError,
)
from vault.keys import SecretRef, subject_ref
from vault.models import KeyCommitment, KeySecret, OutboxFact, Record, Upload
from vault.uploads import RecordIn


def _counts(session: Session) -> dict[str, int]:
    return {
        model.__tablename__: session.scalar(select(func.count()).select_from(model)) or 0
        for model in (Upload, Record, KeySecret, KeyCommitment, OutboxFact)
    }


def _stream(n: int, *, subjects: int = 7) -> Iterator[RecordIn]:
    for i in range(n):
        yield RecordIn(f"subject-{i % subjects}", json.dumps({"i": i, "road": "A7"}).encode())


def test_round_trip_with_verifiable_proofs(session: Session, services: VaultServices) -> None:
    dataset = make_dataset(session)
    result = services.uploader.upload(session, dataset.id, _stream(200))
    assert result.record_count == 200 and result.commitment_count == 7
    # Batches of 64: 200 records span four COPY batches; the root still covers all of them.
    records = list(services.reader.by_dataset(session, dataset.id))
    assert len(records) == 200
    for out in records:
        assert json.loads(out.payload)["road"] == "A7"
        leaf = leaf_hash(record_leaf(out.record_id.bytes, out.leaf_salt, out.payload))
        assert out.merkle_root == result.merkle_root
        assert verify_inclusion(
            leaf, out.leaf_index, out.record_count, out.proof, result.merkle_root
        )
        assert not verify_inclusion(
            leaf_hash(record_leaf(out.record_id.bytes, out.leaf_salt, b'{"i":-1}')),
            out.leaf_index,
            out.record_count,
            out.proof,
            result.merkle_root,
        )
    by_subject = list(services.reader.by_subject(session, "subject-3", dataset_id=dataset.id))
    assert {r.subject_id for r in by_subject} == {"subject-3"} and len(by_subject) == 29
    one = services.reader.record(session, records[5].record_id)
    assert one.payload == records[5].payload
    fact = session.get(OutboxFact, result.outbox_id)
    assert fact is not None and fact.kind == "upload.anchor"
    assert fact.payload["merkle_root"] == result.merkle_root.hex()
    assert fact.payload["record_count"] == 200


def test_payload_bytes_are_kept_exactly_and_dicts_are_compact(
    session: Session, services: VaultServices
) -> None:
    dataset = make_dataset(session)
    rid = uuid.uuid4()
    services.uploader.upload(
        session,
        dataset.id,
        [
            RecordIn("alice", b'{ "address" : "3 rue Garibaldi" }', record_id=rid),
            {"subject_id": "bob", "payload": {"address": "é"}},
        ],
    )
    assert services.reader.record(session, rid).payload == b'{ "address" : "3 rue Garibaldi" }'
    bob = list(services.reader.by_subject(session, "bob"))
    assert bob[0].payload == '{"address":"é"}'.encode()


def test_no_plaintext_in_the_tables(session: Session, services: VaultServices) -> None:
    dataset = make_dataset(session)
    marker = "MARKER-" + uuid.uuid4().hex
    services.uploader.upload(session, dataset.id, [RecordIn("alice", {"note": marker})])
    blobs = session.scalars(select(Record.envelope)).all()
    assert blobs and all(b is not None and marker.encode() not in b for b in blobs)


BAD_INPUTS: list[tuple[str, list[Any], type[VaultError], int | None]] = [
    ("not JSON", [b'{"a": 1}', b"{not json"], InvalidRecord, 2),
    ("JSON but not an object", [b'{"a": 1}', b"[1, 2]"], InvalidRecord, 2),
    ("NaN is not JSON", [b'{"a": NaN}'], InvalidRecord, 1),
    ("invalid UTF-8", [b'{"a": "\xff"}'], InvalidRecord, 1),
    ("oversized", [b'{"a": 1}', json.dumps({"a": "x" * 5000}).encode()], RecordTooLarge, 2),
    # Neither is an object alone, though the two joined would be one.
    ("an object only joined", [b'{"a":"', b'"}', b"{}"], InvalidRecord, 1),
    ("a second object after one", [b"{}", b'{"a":1}{"b":2}'], InvalidRecord, 2),
]


@pytest.mark.parametrize(("label", "payloads", "error", "position"), BAD_INPUTS)
def test_bad_input_raises_typed_error_and_stores_nothing(
    session: Session,
    services: VaultServices,
    label: str,
    payloads: list[Any],
    error: type[VaultError],
    position: int | None,
) -> None:
    dataset = make_dataset(session)
    before = _counts(session)
    # 100 good records first (two COPY batches already written) then the bad one.
    good = [RecordIn("alice", b'{"ok": true}') for _ in range(100)]
    records = good + [RecordIn("bob", p) for p in payloads]
    with pytest.raises(error) as info:
        services.uploader.upload(session, dataset.id, records)
    assert info.value.position == 100 + (position or 0)  # type: ignore[attr-defined]
    assert _counts(session) == before, label
    # The session is still usable: the failed upload was only a savepoint.
    services.uploader.upload(session, dataset.id, good[:3])


def test_bad_subject_and_shape(session: Session, services: VaultServices) -> None:
    dataset = make_dataset(session)
    before = _counts(session)
    cases: list[Any] = [
        RecordIn("Jean Dupont", b"{}"),  # a name, not a pseudonym
        RecordIn("", b"{}"),
        {"subject_id": "a", "payload": {}, "extra": 1},
        {"subject_id": "a", "payload": {}, "record_id": "not-a-uuid"},
        {"subject_id": "a", "payload": "a string"},
        {"subject_id": "a", "payload": {"lone": "\ud800"}},  # not encodable as UTF-8
        {"subject_id": "a", "payload": {"n": float("nan")}},
        "not a record",
    ]
    for case in cases:
        with pytest.raises(InvalidRecord):
            services.uploader.upload(session, dataset.id, [case])
    assert _counts(session) == before


def test_unknown_dataset(session: Session, services: VaultServices) -> None:
    before = _counts(session)
    with pytest.raises(DatasetNotFound):
        services.uploader.upload(session, uuid.uuid4(), _stream(3))
    assert _counts(session) == before
    with pytest.raises(RecordNotFound):
        services.reader.record(session, uuid.uuid4())


def test_duplicate_record_ids(session: Session, services: VaultServices) -> None:
    dataset = make_dataset(session)
    rid = uuid.uuid4()
    services.uploader.upload(session, dataset.id, [RecordIn("alice", b"{}", record_id=rid)])
    before = _counts(session)
    with pytest.raises(DuplicateRecord, match=rf"{rid} already exists \(record 11\)"):
        services.uploader.upload(
            session, dataset.id, [*_stream(10), RecordIn("bob", b"{}", record_id=rid)]
        )
    # In a later COPY of the upload (one subject per record: one COPY per window read ahead).
    n = uploads._AHEAD_RECORDS + 300
    late = [*_stream(n - 1, subjects=n), RecordIn("zed", b"{}", record_id=rid)]
    with pytest.raises(DuplicateRecord, match=rf"{rid} already exists \(record {n}\)"):
        services.uploader.upload(session, dataset.id, late)
    same = uuid.uuid4()
    with pytest.raises(DuplicateRecord, match=str(same)):
        services.uploader.upload(
            session,
            dataset.id,
            [RecordIn("bob", b"{}", record_id=same), RecordIn("carol", b"{}", record_id=same)],
        )
    assert _counts(session) == before


def test_empty_upload_has_the_empty_root(session: Session, services: VaultServices) -> None:
    dataset = make_dataset(session)
    result = services.uploader.upload(session, dataset.id, [])
    assert result.record_count == 0
    assert result.merkle_root.hex().startswith("e3b0c442")  # SHA-256 of the empty string


def test_assigned_record_ids_are_distinct_version_4_uuids(
    session: Session, services: VaultServices
) -> None:
    dataset = make_dataset(session)
    given = uuid.uuid4()
    result = services.uploader.upload(
        session, dataset.id, [*_stream(300), RecordIn("bob", b"{}", record_id=given)]
    )
    ids = session.scalars(select(Record.id).where(Record.upload_id == result.upload_id)).all()
    assert len(set(ids)) == 301
    assert given in ids
    assert all(i.version == 4 and i.variant == uuid.RFC_4122 for i in ids)


def test_dict_payloads_are_stored_as_json_dumps_compact_and_circular_ones_refused(
    session: Session, services: VaultServices
) -> None:
    dataset = make_dataset(session)
    payload: dict[str, Any] = {"é": "ü\n\u2028", "n": [1, 2.5, None, True], "d": {"x": -0.0}}
    checked = services.uploader.checked(RecordIn("alice", payload))
    assert (
        checked.payload
        == json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    )
    circular: dict[str, Any] = {}
    circular["self"] = circular
    before = _counts(session)
    for _ in range(2):  # the encoder keeps nothing of a failed call
        with pytest.raises(InvalidRecord, match="not JSON-serialisable"):
            services.uploader.upload(session, dataset.id, [RecordIn("alice", circular)])
    assert _counts(session) == before
    services.uploader.upload(session, dataset.id, [RecordIn("alice", payload)])


def test_more_subjects_than_the_key_caches_hold(
    session: Session, services: VaultServices, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Subjects evicted from the upload's and the ring's caches come back with the same DEK:
    every record opens, every proof verifies, and each subject has one key commitment."""
    import vault.keyring
    import vault.uploads

    monkeypatch.setattr(vault.keyring, "CACHE_MAX", 5)
    monkeypatch.setattr(vault.uploads, "CACHE_MAX", 5)
    dataset = make_dataset(session)
    result = services.uploader.upload(session, dataset.id, _stream(300, subjects=97))
    assert result.commitment_count == 97
    records = list(services.reader.by_dataset(session, dataset.id))
    assert len(records) == 300
    for out in records:
        leaf = leaf_hash(record_leaf(out.record_id.bytes, out.leaf_salt, out.payload))
        assert verify_inclusion(
            leaf, out.leaf_index, out.record_count, out.proof, result.merkle_root
        )


class _CountingLoads:
    """The uploader's `Loads`, counting the chunks it checks at once."""

    def __init__(self, real: Any) -> None:
        self.real, self.chunks = real, 0

    def __call__(self, data: bytes | str) -> Any:
        return self.real(data)

    def all_objects(self, payloads: list[bytes]) -> bool:
        self.chunks += 1
        return bool(self.real.all_objects(payloads))


@pytest.mark.parametrize(("payload", "chunk_checks"), [(b'{"a":1}', 10), (b'{"a":1}\n', 1)])
def test_payloads_the_chunk_check_does_not_take_go_record_by_record(
    session: Session,
    services: VaultServices,
    monkeypatch: pytest.MonkeyPatch,
    payload: bytes,
    chunk_checks: int,
) -> None:
    """Ten chunks (the fixture's 64 records; the last, 24): each checked at once when the
    payloads are compact, and after the first only record by record when they are not (a
    newline ends each), so that no chunk is parsed twice."""
    counting = _CountingLoads(uploads._loads)
    monkeypatch.setattr(uploads, "_loads", counting)
    dataset = make_dataset(session)
    result = services.uploader.upload(
        session, dataset.id, [RecordIn(f"s{i % 7}", payload) for i in range(600)]
    )
    assert result.record_count == 600
    assert counting.chunks == chunk_checks
    stored = session.scalars(select(Record.id).where(Record.upload_id == result.upload_id)).all()
    assert len(stored) == 600


def test_an_upload_that_loses_the_race_for_a_subject_secret_seals_under_the_winners(
    committed_engine: Engine, services: VaultServices, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another transaction creates a subject's secret after the upload looked for it and
    before the upload's own insert: the upload must seal under the stored secret, the other
    transaction's, or that subject's records would never open."""
    with Session(committed_engine) as s, s.begin():
        dataset_id = make_dataset(s).id
    rival_ref = subject_ref(dataset_id, "subject-1")
    rival_secrets: dict[SecretRef, bytes] = {}
    wrap = services.store._wrap_guarded
    rivals = 0

    def wrap_after_a_rival(session: Session, refs: Any) -> Any:
        nonlocal rivals
        if rival_ref in refs and not rivals:
            rivals += 1
            with Session(committed_engine) as rival, rival.begin():
                rival_secrets.update(services.store.ensure(rival, [rival_ref]))
        return wrap(session, refs)

    monkeypatch.setattr(services.store, "_wrap_guarded", wrap_after_a_rival)
    with Session(committed_engine) as s, s.begin():
        result = services.uploader.upload(s, dataset_id, _stream(30, subjects=3))
    assert rival_secrets, "the rival transaction did not create its secret"
    with Session(committed_engine) as s:
        assert services.store.load(s, [rival_ref]) == rival_secrets
        records = list(services.reader.by_dataset(s, dataset_id))
    assert len(records) == 30 and result.commitment_count == 3
    assert {r.subject_id for r in records} == {"subject-0", "subject-1", "subject-2"}


def test_a_secret_won_by_another_transaction_then_erased_is_created_again(
    committed_engine: Engine, services: VaultServices, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race above, and an erasure that destroys the winner's secret before the upload
    reads it back: the upload must create the secret again and seal under it, not under the
    one it generated first, which was never stored."""
    with Session(committed_engine) as s, s.begin():
        dataset_id = make_dataset(s).id
    ref = subject_ref(dataset_id, "subject-1")
    wrap, load = services.store._wrap_guarded, services.store.load
    steps: list[str] = []

    def wrap_after_a_rival(session: Session, refs: Any) -> Any:
        if ref in refs and not steps:
            steps.append("rival running")
            with Session(committed_engine) as rival, rival.begin():
                services.store.ensure(rival, [ref])
            steps[-1] = "rival"
        return wrap(session, refs)

    def load_after_an_erasure(session: Session, refs: Any) -> Any:
        refs = list(refs)
        if ref in refs and steps == ["rival"]:
            steps.append("erasure")
            with Session(committed_engine) as erasure, erasure.begin():
                assert services.store.destroy(erasure, [ref]) == [ref]
        return load(session, refs)

    monkeypatch.setattr(services.store, "_wrap_guarded", wrap_after_a_rival)
    monkeypatch.setattr(services.store, "load", load_after_an_erasure)
    with Session(committed_engine) as s, s.begin():
        services.uploader.upload(s, dataset_id, _stream(30, subjects=3))
    assert steps == ["rival", "erasure"]
    monkeypatch.undo()
    with Session(committed_engine) as s:
        assert services.store.load(s, [ref])
        records = list(services.reader.by_dataset(s, dataset_id))
    assert sum(r.subject_id == "subject-1" for r in records) == 10 and len(records) == 30


def test_one_record_per_subject_goes_in_few_copies(
    session: Session, services: VaultServices, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Subjects are derived for the chunks read ahead, all at once: an upload naming a new
    subject in every record ends a COPY every `_AHEAD_RECORDS` records, not every chunk."""
    copies = 0
    copy = uploads._Copier._copy

    def counted(self: Any, *args: Any) -> Any:
        nonlocal copies
        copies += 1
        return copy(self, *args)

    monkeypatch.setattr(uploads._Copier, "_copy", counted)
    dataset = make_dataset(session)
    n = uploads._AHEAD_RECORDS + 500
    result = services.uploader.upload(session, dataset.id, _stream(n, subjects=n))
    assert copies == 2  # one per chunk of 64 records would be 72
    assert result.record_count == result.commitment_count == n
    assert len(list(services.reader.by_dataset(session, dataset.id))) == n


def test_subjects_read_ahead_are_derived_without_a_statement_each(
    session: Session, services: VaultServices, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Subjects drawn at random from more than the key caches hold: each window's secrets
    are fetched in one statement, and its DEKs derived from them with no further look-up,
    even for subjects whose DEK an earlier window cached and the caches evicted since."""
    import random

    import vault.keyring

    monkeypatch.setattr(vault.keyring, "CACHE_MAX", 600)
    monkeypatch.setattr(uploads, "CACHE_MAX", 600)
    monkeypatch.setattr(uploads, "_AHEAD_RECORDS", 128)
    calls = {"prefetch": 0, "prefetch_subjects": 0}
    for name in calls:
        real = getattr(vault.keyring.KeyRing, name)

        def counted(self: Any, *args: Any, _real: Any = real, _name: str = name) -> Any:
            calls[_name] += 1
            return _real(self, *args)

        monkeypatch.setattr(vault.keyring.KeyRing, name, counted)
    picks = random.Random(7)
    stream = [RecordIn(f"s-{picks.randrange(1500)}", b"{}") for _ in range(3000)]
    dataset = make_dataset(session)
    services.uploader.upload(session, dataset.id, stream)
    assert calls["prefetch"] == calls["prefetch_subjects"] > 10
    assert len(list(services.reader.by_dataset(session, dataset.id))) == 3000


def test_reading_ahead_holds_a_bounded_number_of_records(
    session: Session, services: VaultServices, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tiny payloads from one subject: the bytes bound alone would let millions of records
    be read ahead; the records bound keeps it to `_AHEAD_RECORDS` and one chunk."""
    held: list[int] = []
    read_ahead = uploads._Copier._read_ahead

    def measured(self: Any, *args: Any) -> Any:
        subjects = read_ahead(self, *args)
        held.append(sum(len(chunk) for _, chunk in self._ahead))
        return subjects

    monkeypatch.setattr(uploads._Copier, "_read_ahead", measured)
    dataset = make_dataset(session)
    records = (RecordIn("alice", b"{}") for _ in range(3 * uploads._AHEAD_RECORDS))
    result = services.uploader.upload(session, dataset.id, records)
    assert result.record_count == 3 * uploads._AHEAD_RECORDS
    assert held and max(held) <= uploads._AHEAD_RECORDS + 64


def test_the_first_refused_record_is_the_one_named(
    session: Session, services: VaultServices
) -> None:
    """A bad payload early and a bad subject or a failing stream later, in chunks read ahead
    together: the refusal names the first bad record, as a record-by-record upload would."""
    dataset = make_dataset(session)
    before = _counts(session)

    def records(later: str) -> Iterator[RecordIn]:
        for i in range(1, 400):
            if i == 70:
                yield RecordIn("alice", b'{"broken"')
            elif i == 300 and later == "subject":
                yield RecordIn("Jean Dupont", b"{}")
            elif i == 300:
                raise OSError("the stream broke")
            else:
                yield RecordIn(f"subject-{i}", b"{}")

    for later in ("subject", "stream"):
        with pytest.raises(InvalidRecord) as info:
            services.uploader.upload(session, dataset.id, records(later))
        assert info.value.position == 70
    assert _counts(session) == before


class _StreamBroke(Exception):
    pass


def _then_broken(*records: Any) -> Iterator[Any]:
    yield from records
    raise _StreamBroke


@pytest.mark.parametrize(
    "bad",
    [
        RecordIn("Jane Doe", b"{}"),
        RecordIn(7, b"{}"),  # type: ignore[arg-type]
        {"subject_id": "s2", "payload": {}, "extra": 1},
    ],
)
def test_a_record_refused_before_the_stream_fails_is_refused_first(bad: Any) -> None:
    """Runs of records are checked whole once taken: a record the upload refuses is still
    refused, by its position, before an error the stream raises later in the same run."""
    with pytest.raises(InvalidRecord) as refused:
        list(uploads._chunks(_then_broken(RecordIn("s1", b"{}"), bad), 256, uploads.SUBJECT_ID))
    assert refused.value.position == 2
    with pytest.raises(InvalidRecord) as refused:
        list(uploads._chunks(iter([RecordIn("s1", b"{}"), bad]), 256, uploads.SUBJECT_ID))
    assert refused.value.position == 2
    with pytest.raises(_StreamBroke):
        list(uploads._chunks(_then_broken(RecordIn("s1", b"{}")), 256, uploads.SUBJECT_ID))


def test_runs_keep_their_positions_and_take_mappings() -> None:
    items: list[Any] = [RecordIn(f"s{i}", b"{}") for i in range(5)]
    items[3] = {"subject_id": "s3", "payload": {"a": 1}}
    runs = list(uploads._chunks(iter(items), 2, uploads.SUBJECT_ID))
    assert [(first, [r.subject_id for r in run]) for first, run in runs] == [
        (1, ["s0", "s1"]),
        (3, ["s2", "s3"]),
        (5, ["s4"]),
    ]
    assert all(type(r) is RecordIn for _, run in runs for r in run)


@pytest.mark.parametrize(
    ("subject", "pattern"),
    [("s1\n", uploads.SUBJECT_ID), ("a" * 64 + "\n", uploads.LEDGER_SUBJECT_ID)],
)
def test_a_subject_id_ending_in_a_newline_is_refused_by_the_library(
    subject: str, pattern: Any
) -> None:
    """A pseudonym is all of the text: "s1\\n" is not "s1" (see `SUBJECT_ID`)."""
    with pytest.raises(InvalidRecord):
        list(uploads._chunks(iter([RecordIn(subject, b"{}")]), 256, pattern))
    with pytest.raises(InvalidRecord):
        list(uploads._chunks(iter([{"subject_id": subject, "payload": {}}]), 256, pattern))


def test_a_batch_of_no_rows_is_refused_where_it_is_set(tmp_path: Path) -> None:
    """A run of 0 rows would read nothing of the stream and store an empty upload."""
    from pydantic import ValidationError

    from vault.config import VaultSettings
    from vault.keys import KeyStore, LocalKeyProvider

    store = KeyStore(LocalKeyProvider(tmp_path / "master.key"))
    with pytest.raises(ValueError, match="batch_rows"):
        uploads.Uploader(store, batch_rows=0)
    with pytest.raises(ValidationError):
        VaultSettings(upload_batch_rows=0)
