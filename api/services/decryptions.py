"""Every decryption recorded (GDPR Art. 5(2), invariant 10): what the routes call around a
read, the subject's list of the reads of their data, a read's proof, and the batcher.

A read is recorded in the transaction that answers it: for a page, the route's own session
(committed before the response is sent); for a stream, `recorded_snapshot` counts what the
stream will decrypt in the snapshot the stream then reads, and commits the record BEFORE the
stream's first byte, so no decrypted byte ever leaves without its record. Consumers' accesses
are not recorded here: their `access.request` on the ledger is their record.

The batcher (`ReadBatcher`, a background job) commits the rows to the ledger in `read.record`
facts (vault/decryptions.py); `proof` gives a row's inclusion proof and the fact's receipt to
the reader, to the subject whose data it was, and to the DPO.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Literal

from pydantic import BaseModel, Field
from sqlalchemy import select, text, tuple_
from sqlalchemy.orm import Session, sessionmaker

from api.http.errors import Forbidden
from api.http.schemas import LedgerReceipt
from api.services.keys import Member
from api.services.subject_sessions import SESSION_MEMBER_PREFIX
from vault import decryptions
from vault.errors import NotFound
from vault.models import Decryption, OutboxFact
from vault.reads import RecordOut

Kind = Literal["provider_read", "subject_export", "dpo_read"]
# Who may ask for a read's proof: the reader, the subject whose data it was, the DPO.
PROOF_ROLES = ("provider", "subject", "dpo")


def record_decryptions(
    session: Session,
    reader: Member,
    kind: Kind,
    rows: Iterable[tuple[str, uuid.UUID, int]],
) -> list[uuid.UUID]:
    """Record that `reader` decrypted, for each (subject, dataset_id, record_count) of `rows`,
    that many of the subject's records, in the caller's transaction."""
    return _record(session, reader, kind, [decryptions.Read(s, d, n) for s, d, n in rows])


def _record(
    session: Session, reader: Member, kind: str, reads: list[decryptions.Read]
) -> list[uuid.UUID]:
    """The rows of `reads`, each naming its reader. A subject signed in with their wallet reads
    as each pseudonym read, not as the session: the session's id, shared by the rows of one
    sign-in, would link the pseudonyms for good (docs/KEYS.md: only the session's own row,
    which goes with it, may), and an erasure forgets a reader that is the subject."""
    if not reader.member_id.startswith(SESSION_MEMBER_PREFIX):
        return decryptions.record(
            session, reader=reader.member_id, reader_role=reader.role, kind=kind, reads=reads
        )
    ids: list[uuid.UUID] = []
    for read in reads:
        ids += decryptions.record(
            session, reader=read.subject, reader_role=reader.role, kind=kind, reads=[read]
        )
    return ids


def counted(records: Iterable[RecordOut]) -> list[tuple[str, uuid.UUID, int]]:
    """(subject, dataset, how many) of decrypted records, for `record_decryptions`."""
    counts = Counter((r.subject_id, r.dataset_id) for r in records)
    return [(s, d, n) for (s, d), n in counts.items()]


def export_kind(member: Member) -> Kind:
    """An export read by the subject is theirs; read by the DPO, it is the DPO's read."""
    return "dpo_read" if member.role == "dpo" else "subject_export"


@contextmanager
def recorded_snapshot(
    sessions: sessionmaker[Session],
    reader: Member,
    kind: Kind,
    reads: Callable[[Session], list[decryptions.Read]],
) -> Iterator[Session]:
    """A read-only REPEATABLE READ session for a stream, whose reads are recorded first.

    `reads` counts, in the snapshot, what the stream will decrypt; the rows are committed in
    another transaction before this yields, so the stream (which reads the same snapshot)
    sends nothing its record does not cover, whatever is uploaded meanwhile."""
    session = sessions()
    try:
        session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        session.execute(text("SET TRANSACTION READ ONLY"))
        planned = reads(session)  # the first query takes the snapshot
        with sessions() as writer, writer.begin():
            _record(writer, reader, kind, planned)
        yield session
    finally:
        session.rollback()
        session.close()


def primed(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """`chunks` with its first item already produced: a stream's set-up (recording its reads)
    runs in the route, so a failure there is a problem answer, not a 200 cut short."""
    first = next(chunks, None)
    if first is None:
        return iter(())

    def rest() -> Iterator[bytes]:
        yield first
        yield from chunks

    return rest()


def record_export_reads(session: Session, member: Member, records: list[dict[str, Any]]) -> None:
    """An export's decrypted records (export.record_json items), recorded in the request's
    own transaction, so an answer never leaves without its record (invariant 10)."""
    counts = Counter((r["subject_id"], uuid.UUID(r["dataset_id"])) for r in records)
    record_decryptions(
        session, member, export_kind(member), [(s, d, n) for (s, d), n in counts.items()]
    )


# A read's place in the export's order: its time, then its id.
ReadPosition = tuple[dt.datetime, uuid.UUID]


def decryptions_page(
    session: Session, subject: str, *, after: ReadPosition | None, limit: int
) -> tuple[list[dict[str, object]], ReadPosition | None]:
    """One page of the reads of `subject`'s data, oldest first, each with its ledger receipt
    once its batch is recorded: what the subject's export lists (GDPR Art. 15), and the
    position to continue from (None: the list ends here)."""
    query = (
        select(Decryption, OutboxFact)
        .outerjoin(OutboxFact, OutboxFact.id == Decryption.batch_id)
        .where(Decryption.subject == subject)
    )
    if after is not None:
        query = query.where(tuple_(Decryption.at, Decryption.id) > tuple_(*after))
    rows = session.execute(query.order_by(Decryption.at, Decryption.id).limit(limit + 1)).all()
    out: list[dict[str, object]] = []
    for row, fact in rows[:limit]:
        receipt = None if fact is None else LedgerReceipt.of_fact(fact)
        out.append(
            {
                **_public(row).model_dump(mode="json"),
                "receipt": None if receipt is None else receipt.model_dump(),
            }
        )
    last = rows[min(limit, len(rows)) - 1][0] if rows else None
    following = (last.at, last.id) if last is not None and len(rows) > limit else None
    return out, following


def decryptions_of(session: Session, subjects: Iterable[str]) -> list[dict[str, object]]:
    """The reads of `subjects`' data, oldest first, each with its ledger receipt once its
    batch is recorded: every page of `decryptions_page`, for a view that shows them all."""
    found: list[dict[str, object]] = []
    for subject in sorted(set(subjects)):
        after: ReadPosition | None = None
        while True:
            page, after = decryptions_page(session, subject, after=after, limit=1000)
            found += page
            if after is None:
                break
    return sorted(found, key=lambda r: (str(r["at"]), str(r["id"])))


class DecryptionOut(BaseModel):
    id: uuid.UUID
    at: dt.datetime
    reader: str = Field(description="the member id of the key that read")
    reader_role: str
    kind: str = Field(description="provider_read | subject_export | dpo_read")
    subject: str = Field(description="the subject's pseudonym; a `~` id once forgotten")
    dataset_id: uuid.UUID
    record_count: int


class ReadProof(BaseModel):
    leaf_index: int
    tree_size: int
    audit_path: list[str] = Field(description="hex, RFC 6962 audit path, bottom-up")
    reads_root: str = Field(description="hex, the root the read.record fact carries")


class DecryptionProofOut(BaseModel):
    decryption: DecryptionOut
    leaf_salt: str | None = Field(
        description="hex; with the fields above it makes the leaf (vault.crypto.read_leaf); "
        "null once the subject was erased"
    )
    leaf_hash: str
    state: Literal["unbatched", "pending", "recorded", "refused"] = Field(
        description="unbatched: no read.record covers it yet; then its fact's ledger state"
    )
    proof: ReadProof | None
    receipt: LedgerReceipt | None = Field(description="the read.record, once recorded")


def _public(row: Decryption) -> DecryptionOut:
    return DecryptionOut(
        id=row.id,
        at=row.at,
        reader=row.reader,
        reader_role=row.reader_role,
        kind=row.kind,
        subject=row.subject,
        dataset_id=row.dataset_id,
        record_count=row.record_count,
    )


def proof(session: Session, member: Member, decryption_id: uuid.UUID) -> DecryptionProofOut:
    """A read's inclusion proof, for its reader, its subject or the DPO; 404 for anyone else
    with a role that reads (they do not learn that the read exists)."""
    if member.role not in PROOF_ROLES:
        raise Forbidden("only a read's reader, its subject or the DPO may see its proof")
    row = session.get(Decryption, decryption_id)
    if row is None or not (
        member.role == "dpo"
        or row.reader == member.member_id
        or (member.role == "subject" and row.subject in member.pseudonyms)
    ):
        raise NotFound(f"decryption {decryption_id} does not exist")
    found = decryptions.inclusion(session, row)
    return DecryptionProofOut(
        decryption=_public(row),
        leaf_salt=None if row.salt is None else bytes(row.salt).hex(),
        leaf_hash=bytes(row.leaf_hash).hex(),
        state="unbatched" if found is None else found.fact.ledger_state,
        proof=None
        if found is None
        else ReadProof(
            leaf_index=found.leaf_index,
            tree_size=found.tree_size,
            audit_path=[h.hex() for h in found.audit_path],
            reads_root=found.reads_root.hex(),
        ),
        receipt=None if found is None else LedgerReceipt.of_fact(found.fact),
    )


class ReadBatcher:
    """The background job that commits unbatched reads to the ledger: one `read.record` per
    `batch_max` rows, queued in the outbox (the relay ships it). Safe on several instances at
    once: each takes rows the others have not locked."""

    def __init__(
        self, sessions: sessionmaker[Session], *, batch_max: int = decryptions.BATCH_MAX
    ) -> None:
        self._sessions = sessions
        self._batch_max = batch_max

    def run_once(self) -> int:
        """Queue full batches, then the rest; returns how many rows were batched. A partial
        batch ends the run, so reads arriving as fast as they are batched cannot hold it."""
        batched = 0
        while True:
            with self._sessions() as session, session.begin():
                queued = decryptions.batch(session, max_rows=self._batch_max)
            if queued is None:
                return batched
            batched += queued[1]
            if queued[1] < self._batch_max:
                return batched
