"""The event ingestion's pre-checks against the contract's outcome, with a ledger that times
out once (api/services/events.py): the vault must never keep an event's detail the ledger
neither rewarded nor refused for good.

The ledger is the real one: four replica processes running the consent contracts, with the
module's app (its database, key store and relay) in front. The device is registered by its
dataset's owner and admitted by governance, the reward rule voted in, the subject registered,
so the device's status, whether an event was rewarded and what was credited are the
contracts' answers. The one fault the tests need, a reward whose submission times out and in
fact never reaches a block, is `RewardsTimingOut`: the chosen `event.reward` submissions raise
the gateway's own `LedgerUnavailable` without being sent; everything else goes to the replicas.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, cast

import pytest
from fastapi import FastAPI
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from api.client.devices import Device
from api.services.events import EventIngestion, record_id
from api.services.gateway import LedgerAnswer, LedgerGateway, LedgerRefused, LedgerUnavailable
from tests.api.ledger_env import LedgerEnv
from tests.api.test_consented_access import register_subject
from tests.api.test_eco_tokens import admitted_device, bike_counts
from vault.models import Record

pytestmark = pytest.mark.timeout(300)


class RewardsTimingOut:
    """The real gateway, but the chosen `event.reward`s it is asked for (1st, 2nd, ... by this
    wrapper's count) time out: `LedgerUnavailable`, as the gateway raises when no quorum
    answers, and nothing is sent, so the reward never reaches a block. Queries and every other
    submission go to the replicas unchanged."""

    def __init__(self, gateway: LedgerGateway, silent: frozenset[int]) -> None:
        self._gateway = gateway
        self._silent = silent
        self.chain_id = gateway.chain_id
        self.rewards = 0  # `event.reward`s asked for, sent or not

    def query(self, q: str, *, timeout_s: float | None = None, **args: Any) -> dict[str, Any]:
        return self._gateway.query(q, timeout_s=timeout_s, **args)

    def act(self, tx_type: str, body: dict[str, Any]) -> LedgerAnswer:
        if tx_type == "event.reward":
            self.rewards += 1
            if self.rewards in self._silent:
                raise LedgerUnavailable("no quorum of replicas answered: TimeoutError")
        return self._gateway.act(tx_type, body)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._gateway, name)


@dataclass
class Rewarding:
    """A device admitted on the module's ledger, a subject it may reward, and the ingestion
    the app would run for it, over a gateway whose chosen rewards time out."""

    env: LedgerEnv
    device: Device
    subject: str
    ledger: RewardsTimingOut
    ingestion: EventIngestion
    sessions: sessionmaker[Session]

    def ride(self, km_milli: int) -> list[dict[str, Any]]:
        """A one-event batch, signed by the device."""
        event = self.device.event(
            subject=self.subject, rule="cycling", unit="km", quantity_milli=km_milli
        )
        return [event]

    def rewarded(self, batch: list[dict[str, Any]]) -> dict[str, Any] | None:
        """The ledger's entry for the batch's single event, None if it was never rewarded."""
        device, event = bytes.fromhex(self.device.id), bytes.fromhex(batch[0]["event"])
        answer = self.env.gateway.query("event", device=device, event=event)
        found: dict[str, Any] | None = answer["result"]
        return found

    def balance(self) -> int:
        """The subject's balance in mtok, as the contracts hold it."""
        answer = self.env.gateway.query("balance", account=bytes.fromhex(self.subject))
        return int(answer["result"]["mtok"])

    def stored_in(self, batch: list[dict[str, Any]]) -> uuid.UUID | None:
        """The vault upload holding the batch's single event's detail, None if not kept."""
        rid = record_id(bytes.fromhex(self.device.id), bytes.fromhex(batch[0]["event"]))
        with self.sessions() as session:
            upload: uuid.UUID | None = session.scalar(
                select(Record.upload_id).where(Record.id == rid)
            )
        return upload


@pytest.fixture(scope="module")
def bike_dataset(ledger_env: LedgerEnv) -> str:
    """A provider's dataset for bike readers' events, and the cycling rule voted in."""
    return bike_counts(ledger_env)


def _rewarding(env: LedgerEnv, dataset: str, silent: frozenset[int]) -> Rewarding:
    """A new device, registered by the dataset's owner and admitted by governance, and a new
    subject: each test reads only what it made on the module's ledger."""
    device = admitted_device(env, dataset)
    state = cast(FastAPI, env.client.app).state
    ledger = RewardsTimingOut(env.gateway, silent)
    ingestion = EventIngestion(
        cast(LedgerGateway, ledger),
        state.sessions,
        EventIngestion.uploader(state.key_store, state.settings.record_size_max_bytes),
        state.key_store,
        state.jobs,
    )
    subject = register_subject(env).id
    return Rewarding(env, device, subject, ledger, ingestion, state.sessions)


def test_a_batch_whose_reward_timed_out_is_rewarded_when_sent_again(
    ledger_env: LedgerEnv, bike_dataset: str
) -> None:
    w = _rewarding(ledger_env, bike_dataset, silent=frozenset({1}))
    batch = w.ride(5300)
    with pytest.raises(LedgerUnavailable):
        w.ingestion.ingest(w.device.id, batch)
    # The outcome is unknown to the vault: the detail stays; the ledger never saw the reward.
    kept = w.stored_in(batch)
    assert kept is not None and w.rewarded(batch) is None and w.balance() == 0
    try:
        done = w.ingestion.ingest(w.device.id, batch)  # the device (or its gateway) retries
    except LedgerRefused as refused:
        pytest.fail(f"the retry was refused {refused.code} without asking the ledger")
    assert w.ledger.rewards == 2 and done.credited == [[w.subject, 5300]]
    assert done.upload_id == kept and w.stored_in(batch) == kept  # nothing uploaded twice
    entry = w.rewarded(batch)
    assert entry is not None and entry["subject"] == w.subject and entry["minted"] == 5300
    assert entry["upload"] == str(kept) and w.balance() == 5300
    with pytest.raises(LedgerRefused) as replay:  # now rewarded: the same batch is a replay
        w.ingestion.ingest(w.device.id, batch)
    assert replay.value.code == "duplicate_event" and w.ledger.rewards == 2
    assert w.balance() == 5300 and w.stored_in(batch) == kept


def test_a_batch_mixing_a_rewarded_event_with_a_stored_one_is_refused_naming_it(
    ledger_env: LedgerEnv, bike_dataset: str
) -> None:
    """Both events stored after lost answers, one rewarded since: the batch is refused as a
    replay naming the rewarded one, and no reward is asked for. The other's detail stays,
    still neither rewarded nor refused: sent alone, it is rewarded over its stored detail."""
    w = _rewarding(ledger_env, bike_dataset, silent=frozenset({1, 2}))
    first, second = w.ride(1000), w.ride(2000)
    for batch in (first, second):
        with pytest.raises(LedgerUnavailable):
            w.ingestion.ingest(w.device.id, batch)
    stored = w.stored_in(first), w.stored_in(second)
    assert None not in stored and stored[0] != stored[1]
    w.ingestion.ingest(w.device.id, first)  # the first is rewarded now, the second is not
    with pytest.raises(LedgerRefused) as mixed:
        w.ingestion.ingest(w.device.id, second + first)
    assert mixed.value.code == "duplicate_event" and "events[1]" in str(mixed.value)
    assert w.ledger.rewards == 3
    assert w.rewarded(first) is not None and w.rewarded(second) is None
    assert w.balance() == 1000 and w.stored_in(second) == stored[1]
    done = w.ingestion.ingest(w.device.id, second)
    assert done.credited == [[w.subject, 2000]] and done.upload_id == stored[1]
    assert w.ledger.rewards == 4 and w.balance() == 3000
