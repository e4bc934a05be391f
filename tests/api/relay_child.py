"""A relay process for the crash-injection tests: ships the outbox to a real ledger cluster.

The sink records each fact on the bundled key-value application (the consent contracts are
not in the repository yet); what is under test is the relay's exactly-once protocol over the
real PBFT client: fixed client identity, request id = fact id, mark only after the receipt.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from api.outbox import FactReceipt, OutboxRelay
from ledger_bridge.client import LedgerClient, TcpClientTransport
from ledger_bridge.crypto import SigningKey, VerifyKey
from ledger_bridge.kvapp import encode_set
from vault import db


class KvFactSink:
    def __init__(self, client: LedgerClient) -> None:
        self._client = client

    def record(self, fact_id: int, kind: str, payload: dict[str, Any]) -> FactReceipt:
        body = json.dumps({"kind": kind, "payload": payload}, sort_keys=True).encode()
        receipt = self._client.submit(encode_set(b"fact/%d" % fact_id, body), request_id=fact_id)
        return FactReceipt(tx_id=receipt.tx_id, block_height=receipt.block_height)


def main() -> None:
    url, addresses, keys_hex, seed_hex, f = sys.argv[1:6]
    validators = [VerifyKey(bytes.fromhex(k)) for k in keys_hex.split(",")]
    engine = db.make_engine(url, pool_size=2)
    with LedgerClient(
        lambda: TcpClientTransport(addresses.split(",")),
        validators,
        int(f),
        SigningKey(bytes.fromhex(seed_hex)),
    ) as client:
        shipped = OutboxRelay(db.make_session_factory(engine), KvFactSink(client)).run_once()
    engine.dispose()
    print(json.dumps({"shipped": shipped}))


if __name__ == "__main__":
    main()
