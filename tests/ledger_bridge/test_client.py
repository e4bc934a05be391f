"""LedgerClient over the in-process transport: receipts, retries across a view change, and
block certificates checked against the genesis keys (PBFT TOCS §4.1 client, §4.4 view change)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest

from ledger_bridge.client import AsyncLedgerClient, CertificateError, InProcessTransport
from ledger_bridge.crypto import SigningKey
from ledger_bridge.kvapp import KVApp, encode_get, encode_set
from ledger_bridge.pbft import messages as m
from ledger_bridge.pbft.blocks import verify_chain
from ledger_bridge.pbft.config import ClusterConfig
from ledger_bridge.pbft.replica import Replica

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 30))


def _cluster() -> tuple[InProcessTransport, AsyncLedgerClient, list[SigningKey]]:
    keys = [SigningKey(bytes([i + 1]) * 32) for i in range(4)]
    config = ClusterConfig.create(
        [bytes(k.public_key) for k in keys],
        batch_wait_ms=0,
        heartbeat_ms=10,
        view_change_timeout_ms=100,
    )
    transport = InProcessTransport([Replica(config, i, keys[i], KVApp()) for i in range(4)])
    client = AsyncLedgerClient(
        transport, [k.public_key for k in keys], 1, retry_ms=50, timeout_ms=10_000
    )
    return transport, client, keys


def test_receipts_name_the_block_that_holds_the_tx_and_the_chain_verifies() -> None:
    async def go() -> None:
        transport, client, keys = _cluster()
        receipts = [await client.submit(encode_set(b"k%d" % i, b"v")) for i in range(10)]
        heights = [r.block_height for r in receipts]
        assert heights == sorted(heights) and len(set(r.tx_id for r in receipts)) == 10
        blocks = [await client.get_block(h) for h in range(1, heights[-1] + 1)]
        assert verify_chain(blocks, [k.public_key for k in keys])
        for i, r in enumerate(receipts):
            assert encode_set(b"k%d" % i, b"v") in blocks[r.block_height - 1].txs
        assert await client.query(encode_get(b"k3")) != await client.query(encode_get(b"zz"))
        await transport.close()

    run(go())


def test_the_client_retries_to_all_replicas_when_the_primary_is_dead() -> None:
    async def go() -> None:
        transport, client, _ = _cluster()
        await client.submit(encode_set(b"a", b"1"))
        transport.crash(0)  # the primary of view 0
        receipt = await client.submit(encode_set(b"b", b"2"))
        assert receipt.block_height >= 2
        assert (await client.status(1))["view"] >= 1
        await transport.close()

    run(go())


def test_a_block_with_a_forged_certificate_is_refused() -> None:
    async def go() -> None:
        transport, client, _ = _cluster()
        await client.submit(encode_set(b"a", b"1"))
        # Every replica serves a block whose certificate was tampered with.
        for i in range(4):
            b = transport.blocks[i][1]
            bad = bytes([b.certificate[0][0] ^ 1]) + b.certificate[0][1:]
            transport.blocks[i][1] = dataclasses.replace(b, certificate=(bad, *b.certificate[1:]))
        with pytest.raises(CertificateError):
            await client.get_block(1)
        await transport.close()

    run(go())


def test_f_plus_1_agreeing_replies_with_forged_signatures_are_not_a_receipt() -> None:
    """TOCS §4.1: the client needs f+1 *valid* matching replies. Replies are verified only once
    f+1 agree; two replicas' replies rewritten in transit to the same forged result (their
    signatures no longer match) agree with each other, fail verification, and the receipt is
    the genuine answer of the other two."""

    async def go() -> None:
        transport, client, _ = _cluster()
        genuine = transport._handlers[client.client_id]
        forged_from: list[int] = []

        def tamper(replica: int, payload: bytes) -> None:
            if replica in (1, 2):
                reply = m.decode(payload)
                assert isinstance(reply, m.Reply)
                payload = m.encode(dataclasses.replace(reply, result=b"forged"))
                forged_from.append(replica)
            genuine(replica, payload)

        transport.on_reply(client.client_id, tamper)
        receipt = await client.submit(encode_set(b"a", b"1"))
        assert forged_from == [1, 2] and receipt.result != b"forged"
        assert receipt.result == (await client.submit(encode_set(b"b", b"2"))).result
        await transport.close()

    run(go())


def test_the_retry_time_follows_the_observed_commit_latency() -> None:
    """Under load a commit takes longer than `retry_ms`; a client that re-sent every such
    request to all replicas would multiply the load. A client whose commits took 10 s each
    waits 30 s before re-sending, where a fresh one re-sends after `retry_ms` (50 ms). The
    primary is dead in both cases; 0.5 s tells the two apart with a wide margin."""

    async def attempt(rtt_ms: float | None) -> list[int]:
        transport, client, _ = _cluster()
        await client.submit(encode_set(b"a", b"1"))
        client._rtt_ms = rtt_ms
        transport.crash(0)
        sends: list[int] = []
        original = transport.send

        async def counting_send(replica: int, request: bytes) -> None:
            sends.append(replica)
            await original(replica, request)

        transport.send = counting_send  # type: ignore[method-assign]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(client.submit(encode_set(b"b", b"2")), 0.5)
        await transport.close()
        return sends

    async def go() -> None:
        assert await attempt(10_000.0) == [0]
        assert (await attempt(None))[:5] == [0, 0, 1, 2, 3]

    run(go())
