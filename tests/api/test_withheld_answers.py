"""A transaction whose answer the replicas withheld, over four real replicas.

Once an erasure is recorded, the replicas withhold every result their reply cache held from
before it (`messages.REDACTED`: a cached result may name whom the erasure forgets). A client
whose replies came late retransmits, and the f+1 matching answers it then gets are that
marker, not a contract result. The attack: a registration whose replies are held back until
an erasure is recorded after it. Decoded as a contract result, the marker makes the route
answer 500 for a transaction that committed; the gateway must say what happened instead.
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from api.services.gateway import LedgerAnswerWithheld, LedgerGateway
from ledger_bridge.client import AsyncLedgerClient
from ledger_bridge.contracts import tx
from ledger_bridge.crypto import SigningKey
from ledger_bridge.facts import ERASURE_RECORD
from tests.api.ledger_env import LedgerEnv, Wallet
from tests.api.test_erasure_receipt import _erasure_of

pytestmark = pytest.mark.e2e


@contextlib.contextmanager
def _deaf_gateway(env: LedgerEnv) -> Iterator[tuple[LedgerGateway, threading.Event]]:
    """A gateway of the vault with one pool client, which hears no reply until the event is
    set: what a client under load sees when the replies to its request come too late."""
    gateway = LedgerGateway(
        env.cluster.genesis, env.gateway.vault_key, clients=1, relay_key=SigningKey.generate()
    )
    client: AsyncLedgerClient = gateway._run(gateway._pool.get())
    gateway._loop.call_soon_threadsafe(gateway._pool.put_nowait, client)
    hearing = threading.Event()
    heard = client._on_reply

    def withheld(replica: int, reply: bytes, authenticated: bool = False) -> None:
        if hearing.is_set():
            heard(replica, reply, authenticated)

    gateway._transport.on_reply(client.client_id, withheld)
    try:
        yield gateway, hearing
    finally:
        hearing.set()
        gateway.close()


def _record_erasure(env: LedgerEnv, subject: Wallet) -> None:
    """An erasure recorded through a relay of its own (its request ids are its own)."""
    gateway = LedgerGateway(
        env.cluster.genesis, env.gateway.vault_key, clients=1, relay_key=SigningKey.generate()
    )
    try:
        fact_id = uuid.uuid4().int >> 80
        gateway.record(
            fact_id,
            ERASURE_RECORD,
            _erasure_of(subject),
            request_id=1,
            valid_until=gateway.valid_until(None),
        )
    finally:
        gateway.close()


def test_an_answer_withheld_after_an_erasure_says_so_and_the_transaction_stands(
    ledger_env: LedgerEnv,
) -> None:
    env = ledger_env
    erased = env.register_subject()
    newcomer = Wallet()
    signed = bytes.fromhex(
        newcomer.sign(env.chain_id, "member.register", {"role": "subject", "college": "citizens"})
    )
    with _deaf_gateway(env) as (gateway, hearing), ThreadPoolExecutor(1) as pool:
        answering = pool.submit(gateway.submit, signed)
        # The registration commits (its replies are held back); an erasure follows it.
        while env.gateway.query("member", key=bytes(newcomer.key.public_key))["result"] is None:
            assert not answering.done()
        _record_erasure(env, erased)
        hearing.set()
        with pytest.raises(LedgerAnswerWithheld) as withheld:
            answering.result(timeout=60)
    problem = str(withheld.value)
    assert withheld.value.status == 503
    assert tx.decode(signed).tx_id.hex() in problem and "erasure" in problem
    member = env.gateway.query("member", key=bytes(newcomer.key.public_key))["result"]
    assert member is not None and member["status"] == "active"  # the registration stands
