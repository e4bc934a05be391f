"""Certified devices and their events: the eco-citizen tokens' source.

A device is registered by the provider that operates it (`device.register`, signed by the
provider through a draft like every member write) and admitted by governance. It never holds
an API key: each event it sends carries its own Ed25519 signature over the claim, which is
what authenticates `POST /v1/devices/{device}/events` (api/services/events.py).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request
from pydantic import BaseModel, Field, StringConstraints

from api.http.bodies import BoundedJsonRoute
from api.http.deps import CurrentMember, KeyStoreDep, LedgerDep, SettingsDep, strict_query
from api.http.schemas import PUBLIC_KEY_HEX, LedgerReceipt, Name, PublicKeyHex, SignedIn, StrictIn
from api.http.signed import assemble
from api.services.events import EVENTS_MAX, EventIngestion
from api.services.gateway import LedgerGateway, LedgerRefused, jsonable
from ledger_bridge.contracts import tx
from vault.errors import NotFound

router = APIRouter(
    prefix="/v1",
    tags=["eco-citizen tokens"],
    dependencies=[Depends(strict_query)],
    route_class=BoundedJsonRoute,
)

Hex32 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
DeviceKey = Annotated[str, Path(pattern=PUBLIC_KEY_HEX, description="the device's public key")]


class EventIn(StrictIn):
    device: PublicKeyHex = Field(description="the device's public key (hex)")
    event: Hex32 = Field(description="the device's unique id of the event (32 bytes, hex)")
    commitment: Hex32 = Field(
        description='SHA-256("civis-vault/event/v1" || canonical(detail without salt) || salt)'
    )
    rule: Name = Field(description="the reward rule the event earns under")
    quantity_milli: Annotated[int, Field(ge=1, le=10**12)] = Field(
        description="thousandths of the rule's unit (5.3 km = 5300)"
    )
    subject: PublicKeyHex = Field(description="the subject's pseudonym in the device's dataset")
    at: Annotated[int, Field(ge=0, le=(1 << 53) - 1)] = Field(
        description="when it happened, ms since 1970"
    )
    signature: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{128}$")] = Field(
        description="the device's Ed25519 signature of the claim (hex)"
    )
    detail: dict[str, Any] = Field(
        description="the event record the vault keeps: event, device, rule, at (ISO-8601), "
        "district, week, km, litres, euros (null when not the rule's unit) and salt (hex)"
    )


class EventsIn(StrictIn):
    events: Annotated[list[EventIn], Field(min_length=1, max_length=EVENTS_MAX)]


class EventsOut(BaseModel):
    receipt: LedgerReceipt = Field(description="the event.reward transaction")
    credited: list[list[Any]] = Field(description="[subject, minted mtok] for each event")
    upload_id: str = Field(description="the vault upload holding the events' details")
    dataset_id: str
    record_count: int


class DeviceWriteOut(BaseModel):
    receipt: LedgerReceipt
    result: dict[str, Any] = Field(description="what the contracts answered")


class DeviceOut(BaseModel):
    height: int = Field(description="the last committed block the answer reflects")
    result: Any = Field(description="operator, kind, dataset, district, status, height")


@router.post("/devices", status_code=201)
def register_device(body: SignedIn, ledger: LedgerDep) -> DeviceWriteOut:
    """device.register, signed by the active provider that operates the device and owns its
    dataset: the device is `pending` until governance admits it (`admit_device`)."""
    signed = assemble(ledger.chain_id, body.transaction, body.signature, "device.register")
    try:
        answer = ledger.submit(signed.encode())
    except LedgerRefused as refused:
        raise _as_unknown_if_others_dataset(ledger, signed, refused) from None
    result = {k: v for k, v in answer.result.items() if k not in ("ok", "tx")}
    return DeviceWriteOut(
        receipt=LedgerReceipt(**answer.receipt.as_dict()), result=jsonable(result)
    )


def _as_unknown_if_others_dataset(
    ledger: LedgerGateway, signed: tx.SignedTx, refused: LedgerRefused
) -> LedgerRefused:
    """Another provider's dataset answers as a dataset the ledger does not know (404, in the
    contracts' own words for it), as the dataset routes do: a provider must not learn which
    dataset ids exist elsewhere. The contracts check the author's role before the dataset, so
    `unauthorized` for an active provider can only mean the dataset is someone else's."""
    if refused.code != "unauthorized":
        return refused
    author = ledger.query("member", key=signed.author)["result"]
    if author is None or author["role"] != "provider" or author["status"] != "active":
        return refused
    return LedgerRefused("not_found", f"dataset {signed.body['dataset']} is not registered")


@router.get("/devices/{device}")
def show_device(device: DeviceKey, ledger: LedgerDep, _: CurrentMember) -> DeviceOut:
    answer = ledger.query("device", device=bytes.fromhex(device))
    if answer["result"] is None:
        raise NotFound("no device is registered with this key")
    return DeviceOut(height=answer["height"], result=jsonable(answer["result"]))


@router.post("/devices/{device}/events", status_code=201)
def post_events(
    device: DeviceKey,
    body: EventsIn,
    request: Request,
    ledger: LedgerDep,
    store: KeyStoreDep,
    settings: SettingsDep,
) -> EventsOut:
    """Up to 256 events certified by the device: the device signatures are checked first (403
    `bad_device_signature`, nothing stored), the details stored in the device's dataset (one
    upload), then one `event.reward` credits the subjects. A refusal by the contracts
    (`device_suspended`, `duplicate_event` 409…) withdraws the upload and answers their code;
    a batch whose events are all stored and rewarded already is a replay: 409.

    No API key: each event's signature authenticates it."""
    items = [e.model_dump() for e in body.events]
    ingestion = EventIngestion(
        ledger,
        request.app.state.sessions,
        EventIngestion.uploader(store, settings.record_size_max_bytes),
        store,
        request.app.state.jobs,
    )
    done = ingestion.ingest(device, items)
    return EventsOut(
        receipt=LedgerReceipt(tx_id=done.tx_id, block_height=done.block_height),
        credited=done.credited,
        upload_id=str(done.upload_id),
        dataset_id=str(done.dataset_id),
        record_count=done.record_count,
    )
