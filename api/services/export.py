"""The subject's export (GDPR Art. 15 and 20), one page at a time, nothing cut.

Why pages with a cursor: a subject's accesses grow by one per access (a sensor dataset read
every hour makes thousands), and the ledger answers at most 1,000 entries a query. Every list
of the export is a section with its own position: records and superseded records by (upload,
leaf), consents by their key, accesses and erasures by their ledger number, decryptions by
their time and row. A page carries up to `limit` items of each section not yet finished and a cursor
that names where each stands; `next_cursor` is null only once every section is read to its
end. The cursor is opaque to clients (base64url of a small JSON map) and checked strictly when
it comes back: anything else is a 422.

What each page also carries: the datasets the subject's data is in, with their purposes, legal
basis, retention, source (the provider) and recipients (the consumers the ledger's access
record granted the subject's data, `recipients` query), so every item can be read in context.
The package (api/services/export_package.py) reads every page and adds the ledger's proofs.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.http.errors import ApiError
from api.services import decryptions
from api.services.gateway import jsonable
from vault import reads
from vault.keys import KeyStore
from vault.models import Dataset, Notice, Record

if TYPE_CHECKING:
    from api.services.gateway import LedgerGateway

SECTIONS = ("records", "history", "consents", "accesses", "erasures", "decryptions")
PAGE_MAX = 500  # items per section and page: a ledger query answers at most 1,000 (+1 to peek)
CURSOR_CHARS_MAX = 2048
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


class InvalidCursor(ApiError):
    status = 422
    title = "Invalid cursor"


@dataclass(frozen=True)
class Cursor:
    """Where each section stands: its position (None: from the start); a finished section is
    absent. Positions: [upload id, leaf index] for records and history, the consent's key for
    consents, the last number read for accesses and erasures, the last read's time and id for
    decryptions."""

    at: dict[str, Any]

    @classmethod
    def start(cls) -> Cursor:
        return cls(dict.fromkeys(SECTIONS))

    def encode(self) -> str | None:
        if not self.at:
            return None
        raw = json.dumps(self.at, separators=(",", ":"), sort_keys=True).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str | None) -> Cursor:
        if text is None:
            return cls.start()
        try:
            if len(text) > CURSOR_CHARS_MAX:
                raise ValueError
            at = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
            if not isinstance(at, dict) or not set(at) <= set(SECTIONS) or not at:
                raise ValueError
            for section, position in at.items():
                _check_position(section, position)
        except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
            raise InvalidCursor(
                "cursor: not a cursor this export gave; start again without one"
            ) from None
        return cls(at)


def _check_position(section: str, position: Any) -> None:
    if position is None:
        return
    if section in ("records", "history"):
        if not (isinstance(position, list) and len(position) == 2):
            raise ValueError
        if not isinstance(position[0], str):
            raise ValueError
        uuid.UUID(position[0])
        if type(position[1]) is not int or position[1] < 0:
            raise ValueError
    elif section in ("consents", "decryptions"):
        if not isinstance(position, str) or len(position) > 512:
            raise ValueError
    elif type(position) is not int or position < 0:
        raise ValueError


def _record_position(position: Any) -> reads.RecordPosition | None:
    return None if position is None else (uuid.UUID(position[0]), int(position[1]))


@dataclass
class Sources:
    """What the sections read: the database, the key store, the ledger; and `record`, called
    with each page's decrypted records before the page lists the reads, so the export's own
    read is recorded (invariant 10) and listed with the others."""

    session: Session
    store: KeyStore
    ledger: LedgerGateway
    record: Callable[[list[dict[str, Any]]], None] | None = None


# A section: (sources, subject, position, limit) -> (items, next position or None: finished).
Section = Callable[[Sources, str, Any, int], tuple[list[dict[str, Any]], Any]]


def proof_json(leaf_index: int, path: Sequence[bytes], root: bytes, size: int) -> dict[str, Any]:
    return {
        "leaf_index": leaf_index,
        "audit_path": [h.hex() for h in path],
        "merkle_root": root.hex(),
        "tree_size": size,
    }


def record_json(r: reads.RecordOut) -> dict[str, Any]:
    """A decrypted record with its inclusion proof. `payload` is the JSON object; when its
    compact encoding is not the stored bytes the proof covers, `payload_raw` holds those
    bytes (base64), so a verifier hashes exactly what was anchored."""
    payload = json.loads(r.payload)
    out = {
        "record_id": str(r.record_id),
        "subject_id": r.subject_id,
        "dataset_id": str(r.dataset_id),
        "upload_id": str(r.upload_id),
        "payload": payload,
        "proof": {
            **proof_json(r.leaf_index, r.proof, r.merkle_root, r.record_count),
            "leaf_salt": r.leaf_salt.hex(),
        },
    }
    compact = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
    if compact != r.payload:
        out["payload_raw"] = base64.b64encode(r.payload).decode()
    return out


def _records(src: Sources, subject: str, position: Any, limit: int) -> tuple[list[Any], Any]:
    page, following = reads.Reader(src.store).subject_page(
        src.session, subject, after=_record_position(position), limit=limit
    )
    return [record_json(r) for r in page], (
        None if following is None else [str(following[0]), following[1]]
    )


def _history(src: Sources, subject: str, position: Any, limit: int) -> tuple[list[Any], Any]:
    page, following = reads.history(
        src.session, subject, after=_record_position(position), limit=limit
    )
    items = [
        {
            "record_id": str(h.record_id),
            "subject_id": h.subject_id,
            "dataset_id": str(h.dataset_id),
            "upload_id": str(h.upload_id),
            "superseded_by": str(h.superseded_by),
            "leaf_hash": h.leaf_hash.hex(),
            "proof": proof_json(h.leaf_index, h.proof, h.merkle_root, h.record_count),
        }
        for h in page
    ]
    return items, None if following is None else [str(following[0]), following[1]]


def consent_key(c: dict[str, Any]) -> str:
    """A consent's place in the export's order: consumer, scope, purpose."""
    return f"{bytes(c['consumer']).hex()}|{c['scope']}|{c['purpose']}"


def _consents(src: Sources, subject: str, position: Any, limit: int) -> tuple[list[Any], Any]:
    """The subject's consents, each with the notice it names (its words, from the vault)."""
    found = sorted(src.ledger.query("consents", subject=subject)["result"], key=consent_key)
    rest = [c for c in found if position is None or consent_key(c) > position]
    page = rest[:limit]
    hashes = {bytes(c["notice"]) for c in page if c.get("notice") is not None}
    words = {
        bytes(n.hash): n.body
        for n in src.session.scalars(select(Notice).where(Notice.hash.in_(hashes)))
    }
    items = []
    for c in page:
        digest = c.get("notice")
        notice = None
        if digest is not None:
            notice = {"notice_hash": bytes(digest).hex(), "body": words.get(bytes(digest))}
        items.append({**jsonable(c), "subject_id": subject, "notice": notice})
    return items, consent_key(page[-1]) if len(rest) > limit else None


def _ledger_list(
    query: str, number: str
) -> Callable[[Sources, str, Any, int], tuple[list[Any], Any]]:
    """A section read from a paged ledger query (`accesses`, `erasures`), one extra entry
    asked for to know whether the list goes on."""

    def read(src: Sources, subject: str, position: Any, limit: int) -> tuple[list[Any], Any]:
        after = position or 0
        found = src.ledger.query(query, subject=subject, after=after, limit=limit + 1)["result"]
        page = [{**jsonable(e), "subject_id": subject} for e in found[:limit]]
        return page, page[-1][number] if len(found) > limit else None

    return read


def _decryptions(src: Sources, subject: str, position: Any, limit: int) -> tuple[list[Any], Any]:
    """The reads of the subject's data, by time (api/services/decryptions.py); the position
    is `<microseconds since 1970>.<row id>`."""
    after = None
    if position is not None:
        try:
            micros, _, row = position.partition(".")
            at = _EPOCH + dt.timedelta(microseconds=int(micros))
            after = (at, uuid.UUID(row))
        except (ValueError, OverflowError):
            raise InvalidCursor("cursor: not a cursor this export gave") from None
    items, following = decryptions.decryptions_page(src.session, subject, after=after, limit=limit)
    if following is None:
        return items, None
    return items, f"{(following[0] - _EPOCH) // dt.timedelta(microseconds=1)}.{following[1]}"


SECTION_READERS: dict[str, Section] = {
    "records": _records,
    "history": _history,
    "consents": _consents,
    "accesses": _ledger_list("accesses", "access"),
    "erasures": _ledger_list("erasures", "erasure"),
    "decryptions": _decryptions,
}


def datasets(src: Sources, subjects: list[str]) -> list[dict[str, Any]]:
    """The datasets the subjects' data is in or was read from: purposes, legal basis,
    retention, source (the provider that uploaded it) and recipients (the consumers the
    ledger granted it to, with the purposes and the heights of those accesses)."""
    recipients: dict[str, list[dict[str, Any]]] = {}
    for subject in subjects:
        for row in src.ledger.query("recipients", subject=subject)["result"]:
            entry = {"subject_id": subject, **jsonable(row)}
            recipients.setdefault(entry.pop("dataset"), []).append(entry)
    ids = set(
        src.session.scalars(
            select(Record.dataset_id).where(Record.subject_id.in_(subjects)).distinct()
        )
    )
    for dataset_id in recipients:
        try:
            ids.add(uuid.UUID(dataset_id))
        except ValueError:
            continue  # a dataset registered on the ledger by another vault: no row here
    rows = src.session.scalars(select(Dataset).where(Dataset.id.in_(ids)).order_by(Dataset.id))
    return [
        {
            "dataset_id": str(d.id),
            "name": d.name,
            "category": d.category,
            "purposes": list(d.purposes),
            "legal_basis": d.legal_basis,
            "retention_days": d.retention_days,
            "source": {"provider": d.owner_id},
            "receipt": None
            if d.register_tx_id is None
            else {"tx_id": d.register_tx_id, "block_height": d.register_height},
            "recipients": recipients.get(str(d.id), []),
        }
        for d in rows
    ]


def page(src: Sources, subject: str, cursor: Cursor, limit: int) -> dict[str, Any]:
    """One page of the export: every unfinished section's next items, the datasets, and the
    cursor of the next page (null: this page ends the export)."""
    height = src.ledger.query("status")["height"]
    out: dict[str, Any] = {"subject_id": subject, "ledger_height": height}
    out["datasets"] = datasets(src, [subject])
    following: dict[str, Any] = {}
    for section in SECTIONS:
        if section not in cursor.at:
            out[section] = []
            continue
        items, position = SECTION_READERS[section](src, subject, cursor.at[section], limit)
        if section == "records" and src.record is not None:
            src.record(items)
        out[section] = items
        if position is not None:
            following[section] = position
    out["next_cursor"] = Cursor(following).encode()
    out["complete"] = out["next_cursor"] is None
    return out
