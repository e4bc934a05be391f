"""DPO audits on the data side: retention, destroyed keys, Art. 30 records of processing, and
the subjects' requests answered in time (Art. 12(3)).

Why audits re-derive instead of trusting flags: a finding must come from the state that would
leak, not from a status column that says all is well. The retention audit therefore looks for
ciphertext of expired uploads that is still present AND whose three secrets still exist (so it
would decrypt), for epoch secrets that outlived their day, and for key commitments marked
destroyed whose secrets are in fact still in the key store. The ledger-side checks (every expiry
recorded on chain, every destroyed commitment matched, both ways: `ledger_cross_check`) take
the ledger's erasure records as data read by the caller: this module never imports the ledger.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import String, and_, cast, exists, func, select, true
from sqlalchemy.orm import Session

from ledger_bridge.facts import (
    ERASURE_KINDS,
    RECORD_RECTIFY,
    RETENTION_EXPIRE,
    EpochScope,
    ErasureCertificate,
    ErasureFact,
    RecordRectify,
    RetentionExpire,
    SubjectScope,
    UploadScope,
    erasure_from_payload,
    from_ledger_day,
)
from vault.erasure import FORGOTTEN_PREFIX, certificate_status
from vault.keyring import KeyRing
from vault.keys import KeyStore
from vault.models import (
    OUTBOX_PENDING,
    REQUEST_PENDING_STATES,
    ControllerRecord,
    Dataset,
    Kek,
    KeyCommitment,
    KeySecret,
    OutboxFact,
    Record,
    SubjectRequest,
    Upload,
)


@dataclass(frozen=True, slots=True)
class Finding:
    code: str  # stable identifier, e.g. "decryptable-past-retention"
    detail: str
    refs: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RetentionAudit:
    today: dt.date
    findings: list[Finding]
    uploads_checked: int
    epochs_expired: int

    @property
    def ok(self) -> bool:
        return not self.findings


def _key_exists(kind: str, dataset: Any, scope: Any) -> Any:
    return exists().where(
        KeySecret.kind == kind, KeySecret.dataset_id == dataset, KeySecret.scope == scope
    )


DatasetFilter = Callable[[Any], Any]


def _dataset_filter(only: uuid.UUID | None) -> DatasetFilter:
    """A condition on a dataset id column: every dataset, or `only`."""

    def of_dataset(column: Any) -> Any:
        return true() if only is None else column == only

    return of_dataset


@dataclass(frozen=True, slots=True)
class FinalErasureSchedule:
    """The promise the final-erasure job keeps: a new KEK every `interval`, so an erasure is
    final within about one interval; `grace` is how late a cycle may finish before the audit
    says so (a cycle waits for instances and open transactions, then VACUUMs)."""

    interval: dt.timedelta
    grace: dt.timedelta

    @property
    def deadline(self) -> dt.timedelta:
        return self.interval + self.grace


def retention_audit(
    session: Session,
    today: dt.date,
    *,
    dataset_id: uuid.UUID | None = None,
    store: KeyStore | None = None,
    schedule: FinalErasureSchedule | None = None,
) -> RetentionAudit:
    """The data-side retention audit, over every dataset or over `dataset_id` only; with a
    `schedule`, also whether KEK rotation and final erasure keep it.

    With the key store, a commitment marked destroyed whose three secrets' scopes all exist is
    re-derived and compared: a rectification (or a subject's new records after an erasure in
    a dataset) puts a fresh secret under a destroyed one's scope, which derives other keys.
    Without it, such a commitment is reported: the audit cannot tell the two apart."""
    of_dataset = _dataset_filter(dataset_id)
    findings = [
        *_epoch_keys_past_retention(session, today, of_dataset),
        *_decryptable_past_retention(session, today, of_dataset),
        *_destroyed_but_derivable(session, of_dataset, store),
        *_forgotten_but_live(session, of_dataset),
        *_beyond_registered_retention(session, of_dataset),
    ]
    if schedule is not None:
        findings += final_erasure_findings(session, schedule, dataset_id=dataset_id)
    unrecorded, epochs_expired = _expiries_not_recorded(session, today, of_dataset)
    findings += unrecorded
    uploads_checked = (
        session.scalar(
            select(func.count()).select_from(Upload).where(of_dataset(Upload.dataset_id))
        )
        or 0
    )
    return RetentionAudit(today, findings, uploads_checked, epochs_expired)


def _epoch_keys_past_retention(
    session: Session, today: dt.date, of_dataset: DatasetFilter
) -> list[Finding]:
    """An epoch secret that outlived its last day: everything under it still decrypts."""
    rows = session.execute(
        select(KeySecret.dataset_id, KeySecret.scope).where(
            KeySecret.kind == "epoch",
            KeySecret.scope < today.isoformat(),
            of_dataset(KeySecret.dataset_id),
        )
    )
    return [
        Finding(
            "epoch-key-past-retention",
            f"the retention key of dataset {dataset_id} for {scope} still exists",
            {"dataset_id": str(dataset_id), "day": scope},
        )
        for dataset_id, scope in rows
    ]


def _decryptable_past_retention(
    session: Session, today: dt.date, of_dataset: DatasetFilter
) -> list[Finding]:
    """Ciphertext of an expired upload whose secrets all exist: still decryptable."""
    findings = []
    expired = select(Upload.id, Upload.dataset_id, Upload.retention_day).where(
        Upload.retention_day < today, of_dataset(Upload.dataset_id)
    )
    for upload_id, dataset_id, day in session.execute(expired):
        live = session.scalar(
            select(func.count())
            .select_from(Record)
            .where(Record.upload_id == upload_id, Record.envelope.is_not(None))
        )
        if not live:
            continue
        decryptable = session.scalar(
            select(
                and_(
                    _key_exists("epoch", dataset_id, day.isoformat()),
                    _key_exists("upload", dataset_id, str(upload_id)),
                )
            )
        )
        if decryptable:
            findings.append(
                Finding(
                    "decryptable-past-retention",
                    f"{live} record(s) of upload {upload_id} are still decryptable after "
                    f"their retention ended on {day.isoformat()}",
                    {"upload_id": str(upload_id), "day": day.isoformat()},
                )
            )
    return findings


def _beyond_registered_retention(session: Session, of_dataset: DatasetFilter) -> list[Finding]:
    """Uploads kept past what their dataset's registered retention now allows from their
    upload day (a `set_retention` vote shortened it after they were anchored), while their
    records can still be decrypted: the DPO decides whether to withdraw them early."""
    rows = session.execute(
        select(Upload.id, Upload.dataset_id, Upload.retention_day, Dataset.retention_days)
        .join(Dataset, Dataset.id == Upload.dataset_id)
        .where(
            of_dataset(Upload.dataset_id),
            Upload.state.in_(("pending", "anchored")),
            Upload.retention_day
            > func.date(func.timezone("UTC", Upload.created_at)) + Dataset.retention_days,
            _key_exists(
                "epoch", Upload.dataset_id, func.to_char(Upload.retention_day, "YYYY-MM-DD")
            ),
        )
        .order_by(Upload.retention_day, Upload.id)
    )
    return [
        Finding(
            "retention-beyond-registered",
            f"upload {upload_id} is kept until {day.isoformat()}, past the {days} days its "
            f"dataset {dataset_id} is now registered for",
            {"upload_id": str(upload_id), "dataset_id": str(dataset_id), "day": day.isoformat()},
        )
        for upload_id, dataset_id, day, days in rows
    ]


def _destroyed_but_derivable(
    session: Session, of_dataset: DatasetFilter, store: KeyStore | None
) -> list[Finding]:
    """A commitment marked destroyed while its subject secret still exists (and the upload
    and epoch keys too): the certificate would lie. With `store`, only when the secrets that
    exist derive that very commitment (see `retention_audit`)."""
    candidates = session.execute(
        select(
            KeyCommitment.upload_id,
            KeyCommitment.subject_id,
            KeyCommitment.commitment,
            Upload.dataset_id,
            Upload.retention_day,
        )
        .join(Upload, Upload.id == KeyCommitment.upload_id)
        .where(
            KeyCommitment.destroyed_at.is_not(None),
            of_dataset(Upload.dataset_id),
            _key_exists("subject", Upload.dataset_id, KeyCommitment.subject_id),
            _key_exists("upload", Upload.dataset_id, cast(Upload.id, String)),
            _key_exists(
                "epoch",
                Upload.dataset_id,
                func.to_char(Upload.retention_day, "YYYY-MM-DD"),
            ),
        )
    ).all()
    rings: dict[uuid.UUID, KeyRing] = {}
    lying = []
    for upload_id, subject_id, commitment, dataset, day in candidates:
        if store is not None:
            ring = rings.setdefault(dataset, KeyRing(store, session, dataset, create=False))
            dek = ring.dek(upload_id, day.isoformat(), subject_id)
            if dek is None or dek.commitment() != bytes(commitment):
                continue  # a secret of the same scope, not the destroyed one
        lying.append((upload_id, subject_id))
    return [
        Finding(
            "destroyed-commitment-key-alive",
            f"a key commitment of upload {upload_id} is marked destroyed but its key "
            "can still be derived",
            {"upload_id": str(upload_id), "subject_id": subject_id},
        )
        for upload_id, subject_id in lying
    ]


def _expired_epochs(
    session: Session, today: dt.date, of_dataset: DatasetFilter
) -> Iterator[tuple[uuid.UUID, dt.date]]:
    """The (dataset, day) retention epochs that ended before `today` and whose key is gone
    (an epoch past its day with its key alive is `epoch-key-past-retention`)."""
    for dataset_id, day in session.execute(
        select(Upload.dataset_id, Upload.retention_day)
        .where(Upload.retention_day < today, of_dataset(Upload.dataset_id))
        .distinct()
        .order_by(Upload.retention_day, Upload.dataset_id)
    ):
        if not session.scalar(select(_key_exists("epoch", dataset_id, day.isoformat()))):
            yield dataset_id, day


def _erasure_facts(session: Session, *conditions: Any) -> Iterator[tuple[OutboxFact, ErasureFact]]:
    """The erasure and expiry facts of the outbox (those matching `conditions`), typed."""
    for fact in session.scalars(
        select(OutboxFact)
        .where(OutboxFact.kind.in_(ERASURE_KINDS), *conditions)
        .order_by(OutboxFact.id)
    ):
        yield fact, erasure_from_payload(fact.kind, fact.payload)


def _expiries_not_recorded(
    session: Session, today: dt.date, of_dataset: DatasetFilter
) -> tuple[list[Finding], int]:
    """Every expiry must have its ledger fact queued (the service checks it reached the chain);
    returns the findings and how many epochs expired."""
    recorded = {
        (typed.scope.dataset, typed.scope.day)
        for _, typed in _erasure_facts(session, OutboxFact.kind == RETENTION_EXPIRE)
        if isinstance(typed, RetentionExpire)
    }
    findings, expired = [], 0
    for dataset_id, day in _expired_epochs(session, today, of_dataset):
        expired += 1
        if (str(dataset_id), day) not in recorded:
            findings.append(
                Finding(
                    "expiry-not-recorded",
                    f"the expiry of dataset {dataset_id} on {day.isoformat()} has no "
                    "retention.expire fact",
                    {"dataset_id": str(dataset_id), "day": day.isoformat()},
                )
            )
    return findings, expired


def _forgotten_but_live(session: Session, of_dataset: DatasetFilter) -> list[Finding]:
    """Key commitments under a forgotten subject id (vault/erasure.py) not marked destroyed.

    An erasure replaces the subject id in the same transaction as it destroys the subject's
    secret and marks its commitments, so a forgotten id on a live commitment means the rows
    were rewritten by something else than an erasure, or an erasure half done.
    """
    rows = session.execute(
        select(KeyCommitment.upload_id, func.count())
        .join(Upload, Upload.id == KeyCommitment.upload_id)
        .where(
            KeyCommitment.subject_id.startswith(FORGOTTEN_PREFIX, autoescape=True),
            KeyCommitment.destroyed_at.is_(None),
            of_dataset(Upload.dataset_id),
        )
        .group_by(KeyCommitment.upload_id)
    )
    return [
        Finding(
            "forgotten-commitment-live",
            f"{n} key commitment(s) of upload {upload_id} name a forgotten subject but are "
            "not marked destroyed",
            {"upload_id": str(upload_id)},
        )
        for upload_id, n in rows
    ]


def final_erasure_findings(
    session: Session, schedule: FinalErasureSchedule, *, dataset_id: uuid.UUID | None = None
) -> list[Finding]:
    """Whether the final-erasure job keeps its schedule (vault/final_erasure.py), by the
    database's clock:

    - `kek-older-than-schedule`: a KEK not retired, first seen longer ago than the interval
      plus the grace: every erasure since it appeared can still be decrypted from the
      database's files and WAL with it (the KEK is global, whatever `dataset_id`);
    - `erasure-not-final`: an erasure or expiry recorded on the ledger more than the interval
      plus the grace ago whose certificate is still not final.
    """
    limit = func.now() - schedule.deadline
    findings = [
        Finding(
            "kek-older-than-schedule",
            f"KEK {kek} has been in use since {created.isoformat()}, longer than the rotation "
            f"schedule ({schedule.interval}) allows: erasures since then are not final",
            {"kek": kek, "since": created.isoformat()},
        )
        for kek, created in session.execute(
            select(Kek.id, Kek.created_at)
            .where(Kek.retired_at.is_(None), Kek.created_at < limit)
            .order_by(Kek.created_at)
        )
    ]
    uploads, commitments = _dataset_destructions(session, dataset_id)
    for fact, typed in _erasure_facts(
        session,
        OutboxFact.sent_at.is_not(None),
        OutboxFact.final_at.is_(None),
        OutboxFact.created_at < limit,
    ):
        if dataset_id is not None and not _touches(
            typed.certificate, str(dataset_id), uploads, commitments
        ):
            continue
        findings.append(
            Finding(
                "erasure-not-final",
                f"erasure {fact.id} ({fact.kind}) of {fact.created_at.isoformat()} is recorded "
                "but not final: a retired KEK is overdue (see final_erasure_cycles.blocked)",
                {"fact_id": str(fact.id)},
            )
        )
    return findings


def _dataset_destructions(
    session: Session, dataset_id: uuid.UUID | None
) -> tuple[set[str], set[bytes]]:
    """The uploads of `dataset_id` and its destroyed key commitments (for `_touches`)."""
    if dataset_id is None:
        return set(), set()
    uploads = {
        str(u) for u in session.scalars(select(Upload.id).where(Upload.dataset_id == dataset_id))
    }
    commitments = set(
        session.scalars(
            select(KeyCommitment.commitment)
            .join(Upload, Upload.id == KeyCommitment.upload_id)
            .where(Upload.dataset_id == dataset_id, KeyCommitment.destroyed_at.is_not(None))
        )
    )
    return uploads, commitments


# -- the ledger cross-check: the vault's destructions against the ledger's erasure records ---

_IN_CHUNK = 1000


@dataclass(frozen=True, slots=True)
class LedgerCrossCheck:
    findings: list[Finding]
    ledger_erasures: int  # erasure and expiry records read from the ledger
    epochs_matched: int
    commitments_matched: int
    # Destroyed in the vault, with the fact still queued in the outbox: the relay records it
    # exactly once (api/services/outbox.py), so this is a delay, not a finding.
    commitments_pending: int
    epochs_pending: int


@dataclass
class _LedgerErasures:
    epochs: set[tuple[str, str]] = field(default_factory=set)  # (dataset id, ISO day)
    upload_roots: dict[str, str] = field(default_factory=dict)  # upload id -> commitments root
    commitments: set[str] = field(default_factory=set)  # hex
    txs: set[str] = field(default_factory=set)  # hex
    count: int = 0
    rectification_txs: set[str] = field(default_factory=set)  # hex


def _read_ledger(
    erasures: Iterable[Mapping[str, Any]], rectifications: Iterable[Mapping[str, Any]]
) -> _LedgerErasures:
    seen = _LedgerErasures()
    # A rectification destroys the keys it supersedes (vault/rectification.py): the ledger
    # names them in its record.rectify, not in an erasure.
    for r in rectifications:
        seen.rectification_txs.add(str(r.get("tx")))
        seen.commitments.update(str(k["key_commitment"]) for k in r.get("superseded") or [])
    for e in erasures:
        seen.count += 1
        seen.txs.add(str(e.get("tx")))
        scope = e.get("scope") or {}
        if scope.get("kind") == "epoch":
            day = from_ledger_day(int(scope["day"]))
            seen.epochs.add((str(scope["dataset"]), day.isoformat()))
        for u in e.get("uploads") or []:
            seen.upload_roots[str(u["upload"])] = str(u["key_commitments_root"])
        seen.commitments.update(str(c) for c in e.get("key_commitments") or [])
    return seen


@dataclass
class _Pending:
    epochs: set[tuple[str, str]] = field(default_factory=set)
    uploads: set[str] = field(default_factory=set)
    commitments: set[str] = field(default_factory=set)


def _pending_facts(session: Session) -> _Pending:
    pending = _Pending()
    # A refused fact is not on its way: what it should have recorded is a finding.
    for _, typed in _erasure_facts(session, OUTBOX_PENDING):
        c = typed.certificate
        if isinstance(c.scope, EpochScope):
            pending.epochs.add((c.scope.dataset, c.scope.day.isoformat()))
        pending.uploads.update(u.upload for u in c.uploads)
        pending.commitments.update(k.hex() for k in c.key_commitments)
    for fact in session.scalars(
        select(OutboxFact).where(OutboxFact.kind == RECORD_RECTIFY, OUTBOX_PENDING)
    ):
        rectified = RecordRectify.from_payload(fact.payload)
        pending.commitments.update(k.key_commitment.hex() for k in rectified.superseded)
    return pending


def _chunks(items: list[Any]) -> Iterator[list[Any]]:
    for i in range(0, len(items), _IN_CHUNK):
        yield items[i : i + _IN_CHUNK]


@dataclass
class _Tally:
    """Findings of one part of the cross-check, with what it matched and what is on its way."""

    findings: list[Finding] = field(default_factory=list)
    matched: int = 0
    pending: int = 0


def ledger_cross_check(
    session: Session,
    today: dt.date,
    ledger_erasures: Iterable[Mapping[str, Any]],
    *,
    dataset_id: uuid.UUID | None = None,
    ledger_rectifications: Iterable[Mapping[str, Any]] = (),
) -> LedgerCrossCheck:
    """Match what the vault destroyed against what the ledger says was destroyed, both ways.

    `ledger_erasures` are the contracts' erasure records (query `erasures`) with bytes as hex,
    `ledger_rectifications` their rectification records (query `rectifications`), whose
    superseded keys count as destroyed: the caller reads the ledger, this function never
    does. Findings:

    - `expiry-not-on-ledger`: an expired retention epoch (its key is gone) with no
      `retention.expire` record on the ledger and no fact waiting in the outbox;
    - `destroyed-commitment-not-on-ledger`: key commitments the vault marked destroyed that
      no ledger erasure names (neither one by one nor through their upload's root);
    - `commitments-root-mismatch`: a ledger erasure names an upload under a key-commitments
      root other than the one the vault holds for it;
    - `ledger-record-missing`: an outbox fact the vault marked recorded (with a transaction id)
      whose transaction is not among the ledger's erasure records;
    - `ledger-erasure-not-applied`: the ledger records the destruction of key commitments the
      vault still holds as live (the certificate would lie).
    """
    seen = _read_ledger(ledger_erasures, ledger_rectifications)
    pending = _pending_facts(session)
    of_dataset = _dataset_filter(dataset_id)
    epochs = _match_epochs(session, today, of_dataset, seen, pending)
    commitments = _match_commitments(session, of_dataset, seen, pending)
    findings = [
        *epochs.findings,
        *commitments.findings,
        *_missing_records(session, seen, dataset_id),
        *_missing_rectifications(session, seen, dataset_id),
        *_not_applied(session, seen, dataset_id),
    ]
    return LedgerCrossCheck(
        findings,
        seen.count,
        epochs.matched,
        commitments.matched,
        commitments.pending,
        epochs.pending,
    )


def _match_epochs(
    session: Session,
    today: dt.date,
    of_dataset: DatasetFilter,
    seen: _LedgerErasures,
    pending: _Pending,
) -> _Tally:
    """Expired epochs: the epoch key is gone, so the ledger must say so (or the outbox soon)."""
    tally = _Tally()
    for ds, day in _expired_epochs(session, today, of_dataset):
        key = (str(ds), day.isoformat())
        if key in seen.epochs:
            tally.matched += 1
        elif key in pending.epochs:
            tally.pending += 1
        else:
            tally.findings.append(
                Finding(
                    "expiry-not-on-ledger",
                    f"the retention epoch of dataset {ds} ending {day.isoformat()} was "
                    "destroyed but the ledger has no retention.expire record of it",
                    {"dataset_id": key[0], "day": key[1]},
                )
            )
    return tally


def _match_commitments(
    session: Session, of_dataset: DatasetFilter, seen: _LedgerErasures, pending: _Pending
) -> _Tally:
    """Destroyed commitments, upload by upload: a whole-upload record covers all of them."""
    tally = _Tally()
    destroyed = session.execute(
        select(Upload.id, Upload.commitments_root, func.count())
        .join(KeyCommitment, KeyCommitment.upload_id == Upload.id)
        .where(KeyCommitment.destroyed_at.is_not(None), of_dataset(Upload.dataset_id))
        .group_by(Upload.id, Upload.commitments_root)
        .order_by(Upload.id)
    ).all()
    for upload_id, root, count in destroyed:
        uid = str(upload_id)
        if uid in seen.upload_roots:
            if seen.upload_roots[uid] != root.hex():
                tally.findings.append(
                    Finding(
                        "commitments-root-mismatch",
                        f"the ledger erased upload {uid} under another key-commitments root "
                        "than the vault's",
                        {"upload_id": uid},
                    )
                )
            tally.matched += count
        else:
            _match_upload_commitments(session, upload_id, seen, pending, tally)
    return tally


def _match_upload_commitments(
    session: Session, upload_id: uuid.UUID, seen: _LedgerErasures, pending: _Pending, tally: _Tally
) -> None:
    """The destroyed commitments of an upload no ledger record erased whole, one by one."""
    uid = str(upload_id)
    missing = 0
    for (commitment,) in session.execute(
        select(KeyCommitment.commitment).where(
            KeyCommitment.upload_id == upload_id, KeyCommitment.destroyed_at.is_not(None)
        )
    ):
        c = commitment.hex()
        if c in seen.commitments:
            tally.matched += 1
        elif c in pending.commitments or uid in pending.uploads:
            tally.pending += 1
        else:
            missing += 1
    if missing:
        tally.findings.append(
            Finding(
                "destroyed-commitment-not-on-ledger",
                f"{missing} key commitment(s) of upload {uid} are destroyed in the vault "
                "but recorded by no ledger erasure",
                {"upload_id": uid, "count": str(missing)},
            )
        )


def _missing_records(
    session: Session, seen: _LedgerErasures, only: uuid.UUID | None
) -> list[Finding]:
    """Facts the vault marked as recorded whose transaction the ledger does not hold."""
    mine, commitments = _dataset_destructions(session, only)
    out = []
    for fact, typed in _erasure_facts(session, OutboxFact.sent_at.is_not(None)):
        if only is not None and not _touches(typed.certificate, str(only), mine, commitments):
            continue
        if fact.tx_id not in seen.txs:
            out.append(
                Finding(
                    "ledger-record-missing",
                    f"outbox fact {fact.id} ({fact.kind}) is marked recorded in transaction "
                    f"{fact.tx_id} but the ledger holds no such erasure record",
                    {"fact_id": str(fact.id), "tx_id": str(fact.tx_id)},
                )
            )
    return out


def _missing_rectifications(
    session: Session, seen: _LedgerErasures, only: uuid.UUID | None
) -> list[Finding]:
    """record.rectify facts the vault marked as recorded whose transaction the ledger does
    not hold."""
    out = []
    for fact in session.scalars(
        select(OutboxFact)
        .where(OutboxFact.kind == RECORD_RECTIFY, OutboxFact.sent_at.is_not(None))
        .order_by(OutboxFact.id)
    ):
        if only is not None and fact.payload.get("dataset") != str(only):
            continue
        if fact.tx_id not in seen.rectification_txs:
            out.append(
                Finding(
                    "ledger-record-missing",
                    f"outbox fact {fact.id} ({fact.kind}) is marked recorded in transaction "
                    f"{fact.tx_id} but the ledger holds no such rectification record",
                    {"fact_id": str(fact.id), "tx_id": str(fact.tx_id)},
                )
            )
    return out


def _touches(
    certificate: ErasureCertificate, dataset: str, uploads: set[str], commitments: set[bytes]
) -> bool:
    """Whether an erasure destroyed anything of `dataset` (given its uploads and destroyed
    commitments): by its scope, a whole upload it names, or a commitment it names."""
    scope = certificate.scope
    return (
        (isinstance(scope, SubjectScope | EpochScope) and scope.dataset == dataset)
        or (isinstance(scope, UploadScope) and scope.upload in uploads)
        or any(u.upload in uploads for u in certificate.uploads)
        or not commitments.isdisjoint(certificate.key_commitments)
    )


def _not_applied(session: Session, seen: _LedgerErasures, only: uuid.UUID | None) -> list[Finding]:
    """Commitments the ledger says were destroyed that the vault still holds as live."""
    live = select(KeyCommitment.upload_id, func.count()).where(KeyCommitment.destroyed_at.is_(None))
    if only is not None:
        live = live.join(Upload, Upload.id == KeyCommitment.upload_id).where(
            Upload.dataset_id == only
        )
    counts: dict[str, int] = {}
    uploads = [uuid.UUID(u) for u in seen.upload_roots if _is_uuid(u)]
    for chunk in _chunks(uploads):
        for upload_id, n in session.execute(
            live.where(KeyCommitment.upload_id.in_(chunk)).group_by(KeyCommitment.upload_id)
        ):
            counts[str(upload_id)] = counts.get(str(upload_id), 0) + n
    hashes = [bytes.fromhex(c) for c in seen.commitments]
    for chunk in _chunks(hashes):
        for upload_id, n in session.execute(
            live.where(KeyCommitment.commitment.in_(chunk)).group_by(KeyCommitment.upload_id)
        ):
            counts[str(upload_id)] = counts.get(str(upload_id), 0) + n
    return [
        Finding(
            "ledger-erasure-not-applied",
            f"the ledger records {n} key commitment(s) of upload {u} as destroyed but the vault "
            "still holds them as live",
            {"upload_id": u, "count": str(n)},
        )
        for u, n in sorted(counts.items())
    ]


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def records_of_processing(session: Session) -> list[dict[str, Any]]:
    """GDPR Art. 30(1): one entry per dataset, generated from the registry, never hand-kept.

    Recipients (the consumers who accessed each dataset, per purpose) come from the ledger's
    access log and are merged in by the service.
    """
    out = []
    for ds in session.scalars(select(Dataset).order_by(Dataset.created_at, Dataset.id)):
        counts = session.execute(
            select(func.count(Upload.id), func.coalesce(func.sum(Upload.record_count), 0)).where(
                Upload.dataset_id == ds.id
            )
        ).one()
        out.append(
            {
                "dataset_id": str(ds.id),
                "name": ds.name,
                "provider": ds.owner_id,
                "category_of_data": ds.category,
                "purposes": list(ds.purposes),
                "legal_basis": ds.legal_basis,
                "retention": f"{ds.retention_days} days from upload, then erased by key "
                "destruction (retention epoch)",
                "retention_days": ds.retention_days,
                "security_measures": "AES-256-GCM per (upload, subject) key derived from three "
                "destroyable secrets wrapped by a KEK; ledger-anchored Merkle roots",
                "uploads": counts[0],
                "records": int(counts[1]),
            }
        )
    return out


def retention_timeline(
    session: Session, today: dt.date, *, days_ahead: int | None = 90
) -> list[dict[str, Any]]:
    """What expires when: per (day, dataset), the uploads and records still held, up to
    `days_ahead` days from `today` (None: everything held, however far its deadline).

    Rows with a day before `today` are overdue (the sweeper has not run): the page shows them
    in red and the retention audit reports them.
    """
    horizon = dt.date.max if days_ahead is None else today + dt.timedelta(days=days_ahead)
    rows = session.execute(
        select(
            Upload.retention_day,
            Dataset.id,
            Dataset.name,
            func.count(Upload.id),
            func.coalesce(func.sum(Upload.record_count), 0),
        )
        .join(Dataset, Dataset.id == Upload.dataset_id)
        .where(
            Upload.retention_day <= horizon,
            Upload.state != "withdrawn",
            _key_exists(
                "epoch", Upload.dataset_id, func.to_char(Upload.retention_day, "YYYY-MM-DD")
            ),
        )
        .group_by(Upload.retention_day, Dataset.id, Dataset.name)
        .order_by(Upload.retention_day, Dataset.name)
    )
    return [
        {
            "day": day.isoformat(),
            "dataset_id": str(dataset_id),
            "dataset": name,
            "uploads": uploads,
            "records": int(records),
            "overdue": day < today,
        }
        for day, dataset_id, name, uploads, records in rows
    ]


def erasure_log(session: Session, *, limit: int = 200) -> list[dict[str, Any]]:
    """Erasures and expiries, newest first, with their ledger status (pending until recorded)
    and when they became final (vault/final_erasure.py).

    The scope is in the API's names (`type`, `subject_id`, ...), as the DPO's page reads it.
    """
    facts = session.scalars(
        select(OutboxFact)
        .where(OutboxFact.kind.in_(ERASURE_KINDS))
        .order_by(OutboxFact.id.desc())
        .limit(limit)
    )
    out = []
    for f in facts:
        c = erasure_from_payload(f.kind, f.payload).certificate
        final_at = certificate_status(f).final_at
        out.append(
            {
                "id": f.id,
                "kind": f.kind,
                "scope": c.public_scope(),
                "requester": c.requester,
                "reason": c.reason,
                "at": c.at.isoformat(),
                "secrets_destroyed": c.secrets_destroyed,
                "commitments": c.commitment_count,
                "status": f.ledger_state,
                "final_at": None if final_at is None else final_at.isoformat(),
                "tx_id": f.tx_id,
                "block_height": f.block_height,
            }
        )
    return out


# -- accountability: requests answered in time, the Art. 30 record complete ------------------


def request_findings(
    session: Session, now: dt.datetime, *, dataset_id: uuid.UUID | None = None
) -> list[Finding]:
    """Art. 12(3): every subject request answered by its deadline. Findings:

    - `request-overdue`: a request still open (or extended) past its deadline;
    - `request-answered-late`: a request answered (done or refused) after its deadline. It
      stays a finding: the register proves what happened, and so does the audit.
    """
    of_dataset = _dataset_filter(dataset_id)
    late = session.scalars(
        select(SubjectRequest)
        .where(
            of_dataset(SubjectRequest.dataset_id),
            (SubjectRequest.state.in_(REQUEST_PENDING_STATES) & (SubjectRequest.due_at < now))
            | (SubjectRequest.done_at > SubjectRequest.due_at),
        )
        .order_by(SubjectRequest.due_at, SubjectRequest.id)
    )
    out = []
    for r in late:
        refs = {"request_id": str(r.id), "kind": r.kind, "due_at": r.due_at.isoformat()}
        if r.done_at is None:
            out.append(
                Finding(
                    "request-overdue",
                    f"the {r.kind} request {r.id} received {r.received_at:%Y-%m-%d} was due "
                    f"{r.due_at:%Y-%m-%d %H:%M} UTC and is still {r.state}",
                    refs,
                )
            )
        else:
            out.append(
                Finding(
                    "request-answered-late",
                    f"the {r.kind} request {r.id} due {r.due_at:%Y-%m-%d %H:%M} UTC was "
                    f"{r.state} on {r.done_at:%Y-%m-%d %H:%M} UTC, after its deadline",
                    {**refs, "done_at": r.done_at.isoformat()},
                )
            )
    return out


# Art. 30(1)(a): who answers for the processing, and how to reach them and their DPO.
CONTROLLER_FIELDS_REQUIRED = {
    "name": "the controller's name",
    "address": "the controller's postal address",
    "email": "the controller's contact email",
    "dpo_name": "the DPO's name (or function)",
    "dpo_email": "the DPO's contact email",
}
# Art. 30(1)(e): a transfer outside the EU/EEA names where to and under which safeguard.
TRANSFER_FIELDS_REQUIRED = ("recipient", "country", "safeguard")


def processing_record_gaps(session: Session) -> list[str]:
    """The Art. 30(1) fields the vault cannot fill from what it runs: the controller's and the
    DPO's contact details (`ControllerRecord`), and each configured transfer's destination and
    safeguard. Named as the record's JSON names them (`controller.email`, `transfers[0].country`).
    The rest (purposes, categories, recipients, retention, measures) the registry, the ledger
    and the running system always give."""
    row = session.get(ControllerRecord, 1)
    if row is None:
        return ["controller"]
    gaps = []
    for column in CONTROLLER_FIELDS_REQUIRED:
        if not str(getattr(row, column) or "").strip():
            party, _, name = column.rpartition("_")
            gaps.append(f"{party or 'controller'}.{name}")
    for i, transfer in enumerate(row.transfers):
        gaps += [
            f"transfers[{i}].{k}"
            for k in TRANSFER_FIELDS_REQUIRED
            if not str(transfer.get(k) or "").strip()
        ]
    return gaps


def processing_record_findings(session: Session) -> list[Finding]:
    """`processing-record-incomplete`: an Art. 30(1) field the controller must give is empty."""
    return [
        Finding(
            "processing-record-incomplete",
            f"the records of processing lack {gap}: set it with `civis-vault controller set`",
            {"field": gap},
        )
        for gap in processing_record_gaps(session)
    ]


def accountability_findings(
    session: Session, now: dt.datetime, *, dataset_id: uuid.UUID | None = None
) -> list[Finding]:
    """The register's and the Art. 30 record's findings, which the DPO's audit adds to the
    retention findings; over one dataset, its requests only (the record is the vault's)."""
    findings = request_findings(session, now, dataset_id=dataset_id)
    if dataset_id is None:
        findings += processing_record_findings(session)
    return findings
