"""The vault's ledger facts: payloads round-trip, and every body is one the contracts take."""

from __future__ import annotations

import datetime as dt
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from ledger_bridge import facts
from ledger_bridge.contracts import bodies, codec, rules, tx, vocabulary
from ledger_bridge.facts import (
    EpochScope,
    ErasureCertificate,
    ErasureRecord,
    KeyRef,
    ReadRecord,
    RecordRectify,
    RetentionExpire,
    SubjectScope,
    UploadAnchor,
    UploadRef,
    UploadScope,
)

IDS = st.from_regex(r"\A[A-Za-z0-9._:-]{1,64}\Z")
SUBJECTS = st.binary(min_size=32, max_size=32).map(bytes.hex)
HASHES = st.binary(min_size=32, max_size=32)
COUNTS = st.integers(0, bodies.COUNT_MAX)
DAYS = st.dates(min_value=facts.LEDGER_EPOCH, max_value=dt.date(9999, 12, 31))
TIMES = st.datetimes(timezones=st.just(dt.UTC))
# Reasons and requesters the contracts know, and wordings they do not (mapped by to_body).
REASONS = st.sampled_from([*vocabulary.ERASURE_REASONS, "retention period ended", "other"])
REQUESTERS = st.sampled_from([*vocabulary.REQUESTERS, "retention-sweeper", "someone"])

ANCHORS = st.builds(
    UploadAnchor,
    upload=IDS,
    dataset=IDS,
    record_count=COUNTS,
    merkle_root=HASHES,
    key_commitments_root=HASHES,
    key_commitment_count=COUNTS,
    retention_day=DAYS,
)
UPLOAD_REFS = st.builds(UploadRef, IDS, HASHES, COUNTS)


def _certificates(scopes: st.SearchStrategy[Any]) -> st.SearchStrategy[ErasureCertificate]:
    return st.builds(
        ErasureCertificate,
        scope=scopes,
        key_commitments=st.lists(HASHES, max_size=4, unique=True).map(tuple),
        uploads=st.lists(UPLOAD_REFS, max_size=4).map(tuple),
        secrets_destroyed=st.integers(0, 1000),
        reason=REASONS,
        requester=REQUESTERS,
        at=TIMES,
        request=st.none() | st.integers(1, bodies.ID_MAX),
    )


SUBJECT_SCOPES = st.builds(SubjectScope, SUBJECTS, st.none() | IDS)
RECORDS = st.builds(
    ErasureRecord,
    certificate=_certificates(SUBJECT_SCOPES | st.builds(UploadScope, IDS)),
    forget=st.booleans(),
    receipt_to=st.none() | HASHES,
    sealed_receipt=st.none() | st.binary(max_size=200),
)
EXPIRIES = st.builds(RetentionExpire, _certificates(st.builds(EpochScope, IDS, DAYS)))
READS = st.builds(ReadRecord, HASHES, st.integers(1, bodies.READS_MAX))
KEY_REFS = st.builds(KeyRef, IDS, HASHES)
RECTIFICATIONS = st.builds(
    RecordRectify,
    dataset=IDS,
    superseded=st.lists(KEY_REFS, min_size=1, max_size=4).map(tuple),
    replacement=st.lists(KEY_REFS, min_size=1, max_size=4).map(tuple),
    requester=REQUESTERS,
    at=TIMES,
    request=st.none() | st.integers(1, bodies.ID_MAX),
)


def _body(fact: facts.Fact) -> dict[str, Any]:
    if isinstance(fact, ErasureRecord):
        return fact.to_body(reasons=rules.ERASURE_REASONS, requesters=rules.REQUESTERS)
    return fact.to_body()


@given(ANCHORS | RECORDS | EXPIRIES | READS | RECTIFICATIONS)
def test_a_fact_round_trips_and_its_body_is_valid(fact: facts.Fact) -> None:
    payload = fact.to_payload()
    assert type(fact).from_payload(payload) == fact
    assert facts.fact_from_payload(fact.kind, payload) == fact
    body = _body(fact)
    bodies.check(fact.kind, body)  # raises BodyError on a body the contracts would refuse
    assert codec.decode(codec.encode(body)) == body  # what the ledger sees is what was built
    assert fact.kind in tx.TX_TYPES


@given(RECORDS)
def test_a_forgotten_record_round_trips_and_cannot_be_sent(record: ErasureRecord) -> None:
    forgotten = record.forgetting()
    assert forgotten.subject is None and forgotten.forgotten
    assert ErasureRecord.from_payload(forgotten.to_payload()) == forgotten
    if isinstance(record.certificate.scope, SubjectScope):
        try:
            _body(forgotten)
        except ValueError:
            pass
        else:
            raise AssertionError("a forgotten subject erasure produced a body")


def test_the_bodies_are_the_contracts_wire_form() -> None:
    """One fact of each kind against its body written out by hand: hex becomes bytes, ISO days
    become day numbers since LEDGER_EPOCH, the vault-only fields stay behind."""
    root, commitment = b"\x01" * 32, b"\x02" * 32
    anchor = UploadAnchor("u-1", "d-1", 3, root, root, 2, dt.date(1970, 1, 31))
    assert anchor.to_body() == {
        "upload": "u-1",
        "dataset": "d-1",
        "record_count": 3,
        "merkle_root": root,
        "key_commitments_root": root,
        "key_commitment_count": 2,
        "retention_day": 30,
    }
    at = dt.datetime(2026, 12, 5, tzinfo=dt.UTC)
    record = ErasureRecord(
        ErasureCertificate(SubjectScope("ab" * 32, "d-1"), (commitment,), (), 1, "x", "dpo", at, 9),
        forget=True,
        receipt_to=root,
    )
    assert _body(record) == {
        "scope": {"kind": "subject", "subject": "ab" * 32, "dataset": "d-1"},
        "key_commitments": [commitment],
        "uploads": [],
        "reason": "dpo_decision",  # an unknown reason of the DPO's
        "requester": "dpo",
        "request": 9,
    }
    withdrawal = ErasureRecord(
        ErasureCertificate(
            UploadScope("u-1"), (), (UploadRef("u-1", root, 2),), 1, "x", "provider", at
        )
    )
    assert _body(withdrawal)["reason"] == "provider_withdrawal"
    expiry = RetentionExpire(
        ErasureCertificate(
            EpochScope("d-1", dt.date(1970, 1, 2)),
            (),
            (UploadRef("u-1", root, 2),),
            1,
            "retention period ended",
            "retention-sweeper",
            at,
        )
    )
    assert expiry.to_body() == {
        "dataset": "d-1",
        "day": 1,
        "uploads": [{"upload": "u-1", "key_commitments_root": root, "key_commitment_count": 2}],
    }
    assert expiry.to_payload()["scope"] == {"kind": "epoch", "dataset": "d-1", "day": "1970-01-02"}
    assert expiry.certificate.public_scope() == {
        "type": "epoch",
        "dataset_id": "d-1",
        "day": "1970-01-02",
    }


def test_a_fact_refuses_a_scope_of_another_kind() -> None:
    at = dt.datetime(2026, 12, 5, tzinfo=dt.UTC)
    epoch = ErasureCertificate(EpochScope("d-1", dt.date(2027, 1, 1)), (), (), 1, "r", "dpo", at)
    upload = ErasureCertificate(UploadScope("u-1"), (), (), 1, "r", "dpo", at)
    for build in (lambda: ErasureRecord(epoch), lambda: RetentionExpire(upload)):
        try:
            build()
        except ValueError:
            continue
        raise AssertionError("a fact took a scope of another kind")
    assert RetentionExpire(epoch).scope == epoch.scope


@given(DAYS)
def test_ledger_days_are_the_contracts_days(day: dt.date) -> None:
    """The contracts turn a day number into time as day * DAY_MS since the Unix epoch (the rules
    has no date of its own): LEDGER_EPOCH must be that epoch."""
    midnight = dt.datetime.combine(day, dt.time(), dt.UTC)
    assert facts.ledger_day(day) * rules.DAY_MS == int(midnight.timestamp()) * 1000
    assert facts.from_ledger_day(facts.ledger_day(day)) == day
