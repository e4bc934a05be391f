"""Certified events: devices' claims checked, details kept in the vault, rewards on the ledger.

Why this order (signatures, upload, reward, withdraw on refusal):
- the device signatures are checked before anything else, so a forged claim stores nothing,
  reaches no replica and costs one Ed25519 verification per event;
- the details go to the vault BEFORE the reward is asked for: once the contract has
  credited an event, its detail exists, so no token is ever minted for an event the vault
  cannot show (the consumer of impact statistics reads the same records). The upload is one
  transaction of its own, committed, with its anchor fact in the outbox as any upload; the
  reward names it, so its erasure or retention expiry blanks the reward's claims too;
- a refusal by the contract (a device suspended meanwhile, an event already rewarded, a rule
  the device may not earn) withdraws the upload: its upload secret is destroyed and its rows
  dropped, exactly as the DPO's withdrawal of an upload, so nothing personal stays for an
  event that earned nothing.

The API's own refusals are the contract's, run early with its codes (`bad_device_signature`
403, `duplicate_event` 409, `device_unknown` 404, `device_pending` and `device_suspended` 403,
`invalid` 422): a client branches on one code whichever side refused.

Records are keyed by the event: the record id is derived from (device, event id), so the
same event sent twice is one record, and a request whose events are all stored already (a
replay of a rewarded batch) is refused before anything is written.

If the ledger does not answer in time (503), the outcome of the reward is unknown, so the
upload stays: withdrawing details of events the contract may have rewarded would break the
rule above. Sending the batch again tells the two outcomes apart by asking the ledger for its
events (the `event` query): rewarded, the batch is a replay (409 `duplicate_event`); never
rewarded, its reward is asked for again over the stored details (nothing uploaded twice) and
the request answers as a first one would. A batch only partly rewarded is refused as a replay,
naming its first rewarded event: a device does not mix old and new events in one batch.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from api.services.gateway import LedgerGateway, LedgerRefused
from ledger_bridge.contracts import bodies, events
from vault.erasure import Eraser
from vault.keys import KeyStore
from vault.models import Record
from vault.uploads import LEDGER_SUBJECT_ID, RecordIn, Uploader

if TYPE_CHECKING:
    from api.services.jobs import BackgroundJobs

EVENTS_MAX = 256
# The record a device sends: the design's event record (docs/API.md "Events"), nothing more,
# so a device cannot slip other personal data into the vault under a reward.
DETAIL_FIELDS = frozenset(
    {"event", "device", "rule", "at", "district", "week", "km", "litres", "euros", "salt"}
)
_RECORD_ID_DOMAIN = b"civis-vault/event-record/v1"
# The devices this process found registered AND active, by (chain id, device): their dataset
# (fixed at registration: `device.register` refuses a registered key) and until when their
# active status is trusted. Reading both from the replicas on every batch costs each request a
# round trip to a ledger busy executing rewards; trusting an active status for a moment
# costs, once governance suspends a device, at most that moment's batches stored and then
# withdrawn when the contract refuses them (the contract decides at the reward's height, and
# its refusal forgets the device here). A device found pending, suspended or unknown is never
# remembered: each of its batches is refused before anything is stored.
_ACTIVE: dict[tuple[str, str], tuple[uuid.UUID, float]] = {}
_ACTIVE_FOR_S = 2.0
_ACTIVE_MAX = 100_000
# The contract's refusal of a device not active, by whether it is pending (else suspended).
_INACTIVE = {
    True: ("device_pending", "the device is not admitted by governance"),
    False: ("device_suspended", "the device is suspended"),
}


@dataclass(frozen=True, slots=True)
class Ingested:
    """A rewarded batch: the reward's receipt, what it credited, where the details went."""

    tx_id: str
    block_height: int
    credited: list[list[Any]]
    upload_id: uuid.UUID
    dataset_id: uuid.UUID
    record_count: int


def record_id(device: bytes, event: bytes) -> uuid.UUID:
    """The vault record id of a device's event: one event, one record, whoever sends it."""
    return uuid.UUID(bytes=hashlib.sha256(_RECORD_ID_DOMAIN + device + event).digest()[:16])


def check_claims(chain_id: str, device_hex: str, items: list[dict[str, Any]]) -> None:
    """Every claim is the path's device's, signed by it, and commits to its detail.

    The signature first, for each event, before any other check reads the detail: a forged
    batch is answered 403 and nothing else is looked at."""
    for i, item in enumerate(items):
        if item["device"] != device_hex:
            raise LedgerRefused("bad_device_signature", f"events[{i}] is another device's")
        if not events.verify_claim(chain_id, item):
            raise LedgerRefused(
                "bad_device_signature", f"events[{i}]: the device signature does not verify"
            )
    seen: set[str] = set()
    for i, item in enumerate(items):
        _check_detail(i, item)
        if item["event"] in seen:
            raise LedgerRefused("duplicate_event", f"events[{i}] repeats an event id")
        seen.add(item["event"])


def _check_detail(i: int, item: dict[str, Any]) -> None:
    detail = item["detail"]
    if set(detail) != DETAIL_FIELDS:
        raise LedgerRefused(
            "invalid", f"events[{i}].detail holds exactly {', '.join(sorted(DETAIL_FIELDS))}"
        )
    salt = detail["salt"]
    if not isinstance(salt, str) or len(salt) != 2 * events.SALT_BYTES:
        raise LedgerRefused("invalid", f"events[{i}].detail.salt is 16 bytes in hex")
    try:
        salt_bytes = bytes.fromhex(salt)
    except ValueError:
        raise LedgerRefused("invalid", f"events[{i}].detail.salt is hex") from None
    for name in ("event", "device", "rule"):
        if detail[name] != item[name]:
            raise LedgerRefused("invalid", f"events[{i}].detail.{name} differs from the claim")
    try:
        expected = events.commitment(detail, salt_bytes)
    except (TypeError, ValueError):
        raise LedgerRefused("invalid", f"events[{i}].detail is not plain JSON") from None
    if expected.hex() != item["commitment"]:
        raise LedgerRefused("invalid", f"events[{i}].commitment does not match its detail and salt")


def reward_body(items: list[dict[str, Any]]) -> dict[str, Any]:
    """The event.reward body in the ledger's form: the claims without their details."""
    claims = [{k: item[k] for k in (*events.CLAIM_FIELDS, "signature")} for item in items]
    body = {"claims": claims}
    bodies.check("event.reward", body, json=True)
    return bodies.to_ledger("event.reward", body)


class EventIngestion:
    """One request's events: check, store, reward (or withdraw)."""

    def __init__(
        self,
        ledger: LedgerGateway,
        sessions: sessionmaker[Session],
        uploader: Uploader,
        store: KeyStore,
        jobs: BackgroundJobs | None,
    ) -> None:
        self._ledger = ledger
        self._sessions = sessions
        self._uploader = uploader
        self._store = store
        self._jobs = jobs

    @staticmethod
    def uploader(store: KeyStore, record_size_max_bytes: int) -> Uploader:
        return Uploader(
            store, record_size_max_bytes=record_size_max_bytes, subject_ids=LEDGER_SUBJECT_ID
        )

    def ingest(self, device_hex: str, items: list[dict[str, Any]]) -> Ingested:
        check_claims(self._ledger.chain_id, device_hex, items)
        body = reward_body(items)
        dataset_id = self._active_dataset(device_hex)
        device = bytes.fromhex(device_hex)
        records = [
            RecordIn(
                subject_id=item["subject"],
                payload=item["detail"],
                record_id=record_id(device, bytes.fromhex(item["event"])),
            )
            for item in items
        ]
        again = False  # the batch's details were stored by an earlier request
        try:
            upload, withdrawable = self._store_details(dataset_id, records), True
        except LedgerRefused as refused:
            stored = self._stored_batch(records) if refused.code == "duplicate_event" else None
            if stored is None:
                raise
            self._refuse_if_rewarded(device, items)
            (upload, withdrawable), again = stored, True
        try:
            # Naming the upload: its erasure or retention expiry blanks the reward's claims too.
            answer = self._ledger.act("event.reward", {**body, "upload": str(upload)})
        except LedgerRefused as refused:
            # A batch sent again may meet its first reward committing late: that refusal
            # (duplicate_event) is a reward, and its details must stay.
            if withdrawable and not (again and refused.code == "duplicate_event"):
                self._withdraw(upload)
            if refused.code in ("device_pending", "device_suspended"):
                _ACTIVE.pop((self._ledger.chain_id, device_hex), None)
            raise
        finally:
            if self._jobs is not None:
                self._jobs.kick()  # the anchor (and a withdrawal's erasure) to the ledger
        credited = [
            [bytes(s).hex() if isinstance(s, bytes) else s, n]
            for s, n in answer.result.get("credited", [])
        ]
        return Ingested(
            tx_id=answer.receipt.tx_id,
            block_height=answer.receipt.block_height,
            credited=credited,
            upload_id=upload,
            dataset_id=dataset_id,
            record_count=len(records),
        )

    def _active_dataset(self, device_hex: str) -> uuid.UUID:
        """The dataset of an active device: remembered for a moment, else read from the
        ledger. Unknown: 404; pending or suspended: 403, with nothing stored."""
        key = (self._ledger.chain_id, device_hex)
        known = _ACTIVE.get(key)
        if known is not None and time.monotonic() < known[1]:
            return known[0]
        found = self._ledger.query("device", device=bytes.fromhex(device_hex))["result"]
        if found is None:
            raise LedgerRefused("device_unknown", "no device is registered with this key")
        if found["status"] != "active":
            _ACTIVE.pop(key, None)
            raise LedgerRefused(*_INACTIVE[found["status"] == "pending"])
        if len(_ACTIVE) >= _ACTIVE_MAX:
            _ACTIVE.clear()  # a bound, not a policy: the next batches read it again
        dataset_id = uuid.UUID(str(found["dataset"]))
        _ACTIVE[key] = (dataset_id, time.monotonic() + _ACTIVE_FOR_S)
        return dataset_id

    def _store_details(self, dataset_id: uuid.UUID, records: list[RecordIn]) -> uuid.UUID:
        """One upload for the request, committed; 409 if its events are stored already."""
        ids = [r.record_id for r in records]
        with self._sessions() as session, session.begin():
            stored = set(session.scalars(select(Record.id).where(Record.id.in_(ids))))
            if stored:
                what = "every event of this batch is" if len(stored) == len(ids) else "an event is"
                first = next(i for i, r in enumerate(records) if r.record_id in stored)
                raise LedgerRefused(
                    "duplicate_event", f"events[{first}]: {what} stored and rewarded already"
                )
            result = self._uploader.upload(session, dataset_id, records)
        return result.upload_id

    def _stored_batch(self, records: list[RecordIn]) -> tuple[uuid.UUID, bool] | None:
        """If every record of the batch is stored: the upload of its first, and whether that
        upload holds exactly the batch (so a refusal of the reward may withdraw it; records
        stored by other batches are theirs to keep). None if only some are stored."""
        ids = [r.record_id for r in records if r.record_id is not None]  # all: keyed by event
        with self._sessions() as session:
            rows = session.execute(select(Record.id, Record.upload_id).where(Record.id.in_(ids)))
            found = {rid: upload for rid, upload in rows}
            if len(found) != len(ids):
                return None
            upload = found[ids[0]]
            held = session.scalar(
                select(func.count()).select_from(Record).where(Record.upload_id == upload)
            )
        return upload, set(found.values()) == {upload} and held == len(ids)

    def _refuse_if_rewarded(self, device: bytes, items: list[dict[str, Any]]) -> None:
        """A batch whose details are all stored: a replay if the ledger rewarded its events
        (409 naming the first rewarded), else a retry after a reward whose answer was lost,
        which may be rewarded now. One query per event until the first rewarded is found, so a
        replay costs one; a batch partly rewarded is a device's error, refused as a replay."""
        for i, item in enumerate(items):
            event = bytes.fromhex(item["event"])
            if self._ledger.query("event", device=device, event=event)["result"] is not None:
                raise LedgerRefused(
                    "duplicate_event", f"events[{i}]: this event is stored and rewarded already"
                )

    def _withdraw(self, upload_id: uuid.UUID) -> None:
        """The contract refused: destroy the upload's secret and drop its rows."""
        with self._sessions() as session, session.begin():
            Eraser(self._store).withdraw_upload(
                session, upload_id, reason="provider_withdrawal", requester="vault"
            )
