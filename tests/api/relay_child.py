"""A relay process for the crash-injection tests: ships the outbox to a real contracts cluster.

The sink is the service's own (`LedgerGateway.record`): each fact becomes its consent-contract
transaction, signed by the vault, submitted by the relay's fixed client identity with request
id = fact id, so a retry after a crash is answered from the replicas' reply cache (or found by
its nonce), never executed twice. What is under test is the relay's exactly-once protocol.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from api.services.gateway import LedgerGateway
from api.services.outbox import OutboxRelay
from vault import db


def main() -> None:
    url, ledger_dir, keys_dir = sys.argv[1:4]
    engine = db.make_engine(url, pool_size=2)
    gateway = LedgerGateway.from_directory(Path(ledger_dir), Path(keys_dir), clients=1)
    try:
        shipped = OutboxRelay(db.make_session_factory(engine), gateway).run_once()
    finally:
        gateway.close()
        engine.dispose()
    print(json.dumps({"shipped": shipped}))


if __name__ == "__main__":
    main()
