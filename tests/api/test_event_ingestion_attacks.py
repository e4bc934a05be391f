"""The event ingestion's pre-checks against the contract's outcome, with a ledger that times
out once (api/services/events.py): the vault must never keep an event's detail the ledger
neither rewarded nor refused for good."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from api.client.devices import Device
from api.services.events import EventIngestion
from api.services.gateway import LedgerAnswer, LedgerReceipt, LedgerRefused, LedgerUnavailable
from tests.vault.conftest import make_dataset
from vault import db
from vault.keys import KeyStore, LocalKeyProvider

CHAIN = "civis-test"


class OnceSilentLedger:
    """Knows one active device; its first `event.reward` times out (the outcome unknown to
    the API), and in fact never reached a block; later ones commit."""

    def __init__(
        self, device: Device, dataset: str, silent: frozenset[int] = frozenset({1})
    ) -> None:
        self.chain_id = CHAIN
        self._silent = silent  # which `event.reward`s (1st, 2nd...) time out
        self._device = {"status": "active", "dataset": dataset, "kind": "bike_reader"}
        self.rewards = 0
        self._rewarded: dict[tuple[bytes, bytes], dict[str, Any]] = {}

    def query(self, q: str, **args: Any) -> dict[str, Any]:
        if q == "event":
            return {"height": 1, "result": self._rewarded.get((args["device"], args["event"]))}
        assert q == "device"
        return {"height": 1, "result": self._device}

    def act(self, tx_type: str, body: dict[str, Any]) -> LedgerAnswer:
        assert tx_type == "event.reward"
        self.rewards += 1
        if self.rewards in self._silent:
            raise LedgerUnavailable("no quorum of replicas answered: TimeoutError")
        credited = [[c["subject"], c["quantity_milli"]] for c in body["claims"]]
        for c in body["claims"]:
            self._rewarded[bytes(c["device"]), bytes(c["event"])] = {"subject": c["subject"]}
        return LedgerAnswer(LedgerReceipt("00" * 32, 7), {"ok": True, "credited": credited})


@pytest.fixture()
def committed(fresh_database_url: str) -> Iterator[Engine]:
    db.upgrade(fresh_database_url)
    eng = db.make_engine(fresh_database_url, pool_size=2)
    yield eng
    eng.dispose()


def test_a_batch_whose_reward_timed_out_is_rewarded_when_sent_again(
    committed: Engine, tmp_path: Path
) -> None:
    with Session(committed) as session, session.begin():
        dataset = str(make_dataset(session).id)
    device = Device(CHAIN, "centre")
    ledger = OnceSilentLedger(device, dataset)
    store = KeyStore(LocalKeyProvider(tmp_path / "master.key"))
    ingestion = EventIngestion(
        ledger,  # type: ignore[arg-type]
        sessionmaker(committed),
        EventIngestion.uploader(store, 4096),
        store,
        None,
    )
    subject = os.urandom(32).hex()
    batch = [device.event(subject=subject, rule="cycling", unit="km", quantity_milli=5300)]
    with pytest.raises(LedgerUnavailable):
        ingestion.ingest(device.id, batch)
    try:
        done = ingestion.ingest(device.id, batch)  # the device (or its gateway) retries
    except LedgerRefused as refused:
        pytest.fail(f"the retry was refused {refused.code} without asking the ledger")
    assert ledger.rewards == 2 and done.credited == [[subject, 5300]]
    with pytest.raises(LedgerRefused) as replay:  # now rewarded: the same batch is a replay
        ingestion.ingest(device.id, batch)
    assert replay.value.code == "duplicate_event" and ledger.rewards == 2


def test_a_batch_mixing_a_rewarded_event_with_a_stored_one_is_refused_naming_it(
    committed: Engine, tmp_path: Path
) -> None:
    """Both events stored after lost answers, one rewarded since: the batch is refused as a
    replay naming the rewarded one, and no reward is asked for."""
    with Session(committed) as session, session.begin():
        dataset = str(make_dataset(session).id)
    device = Device(CHAIN, "centre")
    ledger = OnceSilentLedger(device, dataset, silent=frozenset({1, 2}))
    store = KeyStore(LocalKeyProvider(tmp_path / "master.key"))
    ingestion = EventIngestion(
        ledger,  # type: ignore[arg-type]
        sessionmaker(committed),
        EventIngestion.uploader(store, 4096),
        store,
        None,
    )
    subject = os.urandom(32).hex()
    first, second = (
        [device.event(subject=subject, rule="cycling", unit="km", quantity_milli=q)]
        for q in (1000, 2000)
    )
    for batch in (first, second):
        with pytest.raises(LedgerUnavailable):
            ingestion.ingest(device.id, batch)
    ingestion.ingest(device.id, first)  # the first is rewarded now, the second is not
    with pytest.raises(LedgerRefused) as mixed:
        ingestion.ingest(device.id, second + first)
    assert mixed.value.code == "duplicate_event" and "events[1]" in str(mixed.value)
    assert ledger.rewards == 3
