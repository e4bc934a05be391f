"""LedgerClient over the in-process transport: receipts, retries across a view change, and
block certificates checked against the genesis keys (PBFT TOCS §4.1 client, §4.4 view change)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import threading
from collections.abc import AsyncIterator, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest

from ledger_bridge import ports
from ledger_bridge.client import (
    INTRODUCE_BACKOFF_S,
    AsyncLedgerClient,
    CertificateError,
    InProcessTransport,
    LedgerError,
    TcpClientTransport,
)
from ledger_bridge.cluster import Cluster
from ledger_bridge.crypto import SigningKey, VerifyKey
from ledger_bridge.genesis import load_node_config
from ledger_bridge.kvapp import KVApp, encode_get, encode_set
from ledger_bridge.node import LAZY_WRITE_MS, Node, now_ms
from ledger_bridge.pbft import messages as m
from ledger_bridge.pbft.blocks import verify_chain
from ledger_bridge.pbft.config import ClusterConfig
from ledger_bridge.pbft.replica import DurableDelta, Outbound, Ready, Replica
from ledger_bridge.transport import split_address

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

        def tamper(replica: int, payload: bytes, authenticated: bool) -> None:
            if replica in (1, 2):
                reply = m.decode(payload)
                assert isinstance(reply, m.Reply)
                payload = m.encode(dataclasses.replace(reply, result=b"forged"))
                forged_from.append(replica)
            genuine(replica, payload, authenticated)

        transport.on_reply(client.client_id, tamper)
        receipt = await client.submit(encode_set(b"a", b"1"))
        assert forged_from == [1, 2] and receipt.result != b"forged"
        assert receipt.result == (await client.submit(encode_set(b"b", b"2"))).result
        await transport.close()

    run(go())


def test_the_retry_time_follows_the_observed_commit_latency() -> None:
    """Under load a commit takes longer than `retry_ms`; a client that re-sent every such
    request to all replicas would multiply the load. A client whose commits took 10 s each
    waits 5 s (three times that, capped) before re-sending, where a fresh one re-sends after
    `retry_ms` (50 ms). The primary is dead in both cases; 0.5 s tells the two apart with a
    wide margin."""

    async def attempt(rtt_ms: float | None) -> list[int]:
        transport, client, _ = _cluster()
        await client.submit(encode_set(b"a", b"1"))
        client._rtt_ms = rtt_ms
        transport.crash(0)
        sends = _count_sends(transport)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(client.submit(encode_set(b"b", b"2")), 0.5)
        await transport.close()
        return sends

    async def go() -> None:
        assert await attempt(10_000.0) == [0]
        assert (await attempt(None))[:5] == [0, 0, 1, 2, 3]

    run(go())


def _count_sends(transport: InProcessTransport | TcpClientTransport) -> list[int]:
    """The replicas `transport.send_now` is called for from now on, in order: every send of a
    client starts there (`send` after it, when no connection was open)."""
    sent: list[int] = []
    send_now = transport.send_now

    def counting(replica: int, request: bytes, client: bytes = b"") -> bool:
        sent.append(replica)
        return send_now(replica, request, client)

    transport.send_now = counting  # type: ignore[method-assign]
    return sent


def _port_block() -> int:
    """A base port with base..base+7 and base+100..base+107 free (peers and client ports),
    outside the ephemeral range (`ledger_bridge.ports`)."""
    return ports.cluster_block(8)


@contextlib.asynccontextmanager
async def _tcp_nodes(cluster: Cluster) -> AsyncIterator[tuple[list[Node], TcpClientTransport]]:
    """The cluster's replicas as in-process nodes on real TCP, and a client transport to them;
    all stopped on the way out."""
    nodes = [Node(load_node_config(f), synchronous="OFF") for f in cluster.node_files]
    tasks = [asyncio.create_task(node.run()) for node in nodes]
    transport = cluster.client_transport()
    try:
        yield nodes, transport
    finally:
        await transport.close()
        for node in nodes:
            node.stop()
        await asyncio.gather(*tasks, return_exceptions=True)


def test_forged_reply_macs_are_rejected_like_forged_signatures(tmp_path: Path) -> None:
    """Castro & Liskov, TOCS 2002 §5 (authenticators: MACs instead of signatures where no
    third party must be convinced). Over real TCP to four in-process nodes, the client agrees
    a MAC key with each replica (the replica's half signed by its validator key) and checks
    replies by HMAC. Replicas 1 and 2 are then made to MAC under keys the client does not
    share (what a forger without the session key produces): their replies are dropped, they
    never count towards the f+1, and the receipt is the one replicas 0 and 3 vouch for. A
    session answer not signed by the replica's validator key yields no MAC key at all."""
    cluster = Cluster(tmp_path, 4, base_port=_port_block(), params={"batch_wait_ms": 0})
    validators = cluster.genesis.public_keys()

    async def go() -> None:
        async with _tcp_nodes(cluster) as (_, transport):
            client = AsyncLedgerClient(transport, validators, 1, retry_ms=200, timeout_ms=20_000)
            first = await client.submit(encode_set(b"a", b"1"))
            macs = {i: c.mac_key for i, c in transport._conns.items()}
            assert macs.get(0) is not None and transport.forged_replies == 0
            verified: list[int] = []
            original = m.verify_reply

            def counting(reply: m.Reply, keys: Sequence[VerifyKey]) -> bool:
                verified.append(reply.replica_id)
                return original(reply, keys)

            m.verify_reply = counting  # type: ignore[assignment]
            try:
                for i in range(4):  # sessions with every replica, then forged MACs from 1, 2
                    await transport.send(i, m.encode(m.make_request(client.key, 1, b"probe")))
                await asyncio.sleep(0.2)
                assert all(transport._conns[i].mac_key is not None for i in range(4))
                for i in (1, 2):
                    transport._conns[i].mac_key = bytes(32)
                second = await client.submit(encode_set(b"b", b"2"))
            finally:
                m.verify_reply = original
            assert second.block_height > first.block_height
            assert transport.forged_replies >= 2  # both forgers' replies were dropped
            assert verified == []  # the genuine replies were MAC-checked, no signature check

            # The session answer must be signed by the validator key of the replica it names.
            forged = SigningKey.generate()
            bad = cluster.client_transport()
            bad.enable_reply_macs([forged.public_key] * 4)
            await bad.send(0, m.encode(m.make_request(client.key, 2, b"probe")))
            await asyncio.sleep(0.2)
            assert bad._conns[0].mac_key is None
            await bad.close()

    run(go())


def test_replies_are_signed_only_for_a_client_without_a_mac_key(tmp_path: Path) -> None:
    """A replica signs a REPLY only for a client that checks signatures: over real TCP to four
    in-process nodes, a client that agreed MAC keys gets unsigned replies whose MACs verify,
    and a client that agreed none gets replies signed by each replica's validator key."""
    cluster = Cluster(tmp_path, 4, base_port=_port_block(), params={"batch_wait_ms": 0})
    validators = cluster.genesis.public_keys()

    async def go() -> None:
        async with _tcp_nodes(cluster) as (_, transport):
            client = AsyncLedgerClient(transport, validators, 1, retry_ms=200, timeout_ms=20_000)
            frames: list[tuple[int, dict[str, Any]]] = []
            dispatch = transport._dispatch

            def seen(replica: int, frame: Any, conn: Any) -> None:
                if isinstance(frame, dict) and frame.get("op") == "reply":
                    frames.append((replica, frame))
                dispatch(replica, frame, conn)

            transport._dispatch = seen  # type: ignore[method-assign]
            await client.submit(encode_set(b"a", b"1"))  # sessions agreed on the way
            frames.clear()
            await client.submit(encode_set(b"b", b"2"))
            await asyncio.sleep(0.2)  # the replies past the f+1 too
            assert {r for r, _ in frames} == {0, 1, 2, 3}
            for _, frame in frames:
                reply = m.decode(frame["reply"])
                assert isinstance(frame.get("mac"), bytes)
                assert isinstance(reply, m.Reply) and reply.signature == b""

            plain = cluster.client_transport()  # agrees no MAC key
            answers: list[tuple[int, m.Message, bool]] = []
            key = SigningKey.generate()

            def heard(replica: int, raw: bytes, authenticated: bool) -> None:
                answers.append((replica, m.decode(raw), authenticated))

            plain.on_reply(bytes(key.public_key), heard)
            request = m.encode(m.make_request(key, 1, encode_set(b"c", b"3")))
            for i in range(4):
                await plain.send(i, request)
            for _ in range(100):  # a replica may send its reply again (a duplicate request)
                if {r for r, _, _ in answers} == {0, 1, 2, 3}:
                    break
                await asyncio.sleep(0.05)
            await plain.close()
            assert {r for r, _, _ in answers} == {0, 1, 2, 3}
            for _, reply, authenticated in answers:
                assert isinstance(reply, m.Reply) and not authenticated
                assert m.verify_reply(reply, validators)

    run(go())


def test_a_committed_block_reaches_the_disk_within_the_lazy_window(tmp_path: Path) -> None:
    """A block needs no fsync (the core tolerates losing it, see `Ready.must_sync`), so the
    node holds its write back to join the next fsynced transaction. With no further traffic
    the lazy timer must still land it, in every replica's SQLite, within LAZY_WRITE_MS: read
    here straight from the storage, not through a read request (which flushes first)."""
    cluster = Cluster(tmp_path, 4, base_port=_port_block(), params={"batch_wait_ms": 0})

    async def go() -> None:
        async with _tcp_nodes(cluster) as (nodes, transport):
            client = AsyncLedgerClient(
                transport, cluster.genesis.public_keys(), 1, retry_ms=200, timeout_ms=20_000
            )
            receipt = await client.submit(encode_set(b"lazy", b"1"))
            deadline = asyncio.get_running_loop().time() + 5
            while not all(n.storage.block(receipt.block_height) for n in nodes):
                assert asyncio.get_running_loop().time() < deadline, "a block never reached disk"
                await asyncio.sleep(LAZY_WRITE_MS / 1000 / 4)
            assert all(not n._lazy for n in nodes)  # nothing held back once idle

    run(go())


def test_the_node_sends_a_readys_early_messages_before_its_fsync(tmp_path: Path) -> None:
    """`Ready.early_messages` (TOCS §4.4: only what claims a prepared certificate waits for
    it to be on disk): the node sends the PREPARE the core produced before the certificate
    first, then fsyncs, then sends the COMMIT."""
    cluster = Cluster(tmp_path, 4, base_port=_port_block())
    node = Node(load_node_config(cluster.node_files[1]))
    order: list[str] = []

    def recording_send(to: int, payload: bytes) -> None:
        order.append(type(m.decode(payload)).__name__)

    node.network.send = recording_send  # type: ignore[method-assign]
    write_many = node.storage.write_many

    def recording_write(batches: Any, *, sync: bool = True) -> None:
        order.append(f"write sync={sync}")
        write_many(batches, sync=sync)

    node.storage.write_many = recording_write  # type: ignore[method-assign]
    key = SigningKey(bytes(32))  # any key: the node does not check what it sends
    prepare = m.sign(m.Prepare(0, 1, bytes(32), 1), key)
    commit = m.sign(m.Commit(0, 1, bytes(32), 1), key)
    delta = DurableDelta(put=[("meta", b"x", b"1")])
    outbound = [Outbound(None, prepare), Outbound(None, commit)]
    node._handle(Ready(delta, [], outbound, [], must_sync=True, early_messages=1))
    assert order == ["Prepare"] * 3 + ["write sync=True"] + ["Commit"] * 3
    node.storage.close()


def test_the_batch_timer_wakes_the_replica_once_per_due_time(tmp_path: Path) -> None:
    """`Node._arm_batch_timer`: the replica is ticked when its waiting batch is due (its
    ticker may be in a 25 ms idle sleep); an earlier due time replaces a later timer, not the
    reverse; a due time it was woken for and did not act on is left to the ticker, never
    re-armed (a primary that cannot propose would otherwise be woken in a loop); and a node
    that is stopping ticks no more."""
    cluster = Cluster(tmp_path, 4, base_port=_port_block())
    node = Node(load_node_config(cluster.node_files[0]), synchronous="OFF")
    due: list[int | None] = [None]
    ticks: list[int] = []
    node.replica.batch_due_ms = lambda: due[0]  # type: ignore[method-assign]
    node.replica.tick = ticks.append  # type: ignore[method-assign, assignment]

    async def scenario() -> None:
        node._arm_batch_timer()
        assert node._batch_timer is None  # nothing waits
        due[0] = now_ms() + 200
        node._arm_batch_timer()
        later = node._batch_timer
        node._arm_batch_timer()
        assert later is not None and node._batch_timer is later
        due[0] = now_ms() + 20
        node._arm_batch_timer()
        assert node._batch_timer is not later and later.cancelled()
        await asyncio.sleep(0.1)
        assert len(ticks) == 1 and ticks[0] >= due[0]
        node._flush()  # the replica proposed nothing: the same due time
        await asyncio.sleep(0.05)
        assert len(ticks) == 1 and node._batch_timer is None
        due[0] = now_ms() + 10
        node._arm_batch_timer()
        await asyncio.sleep(0.05)
        assert len(ticks) == 2
        due[0] = now_ms() + 10
        node._arm_batch_timer()
        node._stopping.set()
        await asyncio.sleep(0.05)
        assert len(ticks) == 2

    asyncio.run(scenario())
    node.storage.close()


class _LossyFront:
    """A TCP relay in front of a replica's client port whose first SYN is lost: its accept
    queue (backlog 0) is held full by a connection nobody accepts until `hold_s` passed, so
    the kernel drops the next SYN, as a lossy link does, and the dialler's kernel sends it
    again after its initial retransmission timeout (1 s on Linux)."""

    def __init__(self, target: str, hold_s: float) -> None:
        self._target = split_address(target)
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(0)
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._sockets = [socket.create_connection(self._listener.getsockname())]
        self._hold_s = hold_s
        self._closed = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        if self._closed.wait(self._hold_s):
            return
        while True:
            try:
                conn, _ = self._listener.accept()
                upstream = socket.create_connection(self._target)
            except OSError:
                return
            self._sockets += [conn, upstream]
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._closed.set()
        self._listener.close()
        for s in self._sockets:
            s.close()


def _behind(cluster: Cluster, front: _LossyFront) -> TcpClientTransport:
    """A transport to the cluster's client ports, replica 0's through `front`."""
    return TcpClientTransport(
        [front.address, *cluster.client_addresses()[1:]],
        cluster.client_ssl,
        reader=cluster.reader_key(),
        chain_id=cluster.genesis.chain_id,
    )


def test_a_first_syn_lost_on_the_way_to_a_replica_costs_a_retransmission_not_the_read(
    tmp_path: Path,
) -> None:
    """A lost SYN is retransmitted after the kernel's initial timeout (1 s), and on a WAN with
    1 % loss about one connection in fifty loses its SYN or SYN-ACK: a connect timeout at or
    under that second turns each of those into a failed read. Over real TCP to four in-process
    nodes, replica 0 behind a relay that drops the first SYN still answers a read."""
    cluster = Cluster(tmp_path, 4, base_port=_port_block(), params={"batch_wait_ms": 0})

    async def go() -> None:
        async with _tcp_nodes(cluster) as _:
            front = _LossyFront(cluster.client_addresses()[0], hold_s=0.3)
            transport = _behind(cluster, front)
            try:
                started = asyncio.get_running_loop().time()
                status = (await transport.call(0, "status", {}))["status"]
                took_s = asyncio.get_running_loop().time() - started
            finally:
                await transport.close()
                front.close()
            assert status["id"] == 0
            assert took_s >= 0.9  # the first SYN was lost: the control that the front drops it

    run(go())


def test_a_replica_out_of_reach_holds_up_neither_the_retry_to_the_others_nor_the_receipt(
    tmp_path: Path,
) -> None:
    """The client's way to the primary is cut before any connection was made (its SYNs are
    dropped, nothing answers), while the replicas reach one another. Three requests in a row
    each get their receipt from replicas 1-3 while the first connect to the primary is still
    pending: no send waits for a connection (the first goes out in the background, the retry
    to all at once where connections are open), and every send to the primary joins the one
    attempt under way instead of queueing an attempt of its own behind it."""
    cluster = Cluster(tmp_path, 4, base_port=_port_block(), params={"batch_wait_ms": 0})
    validators = cluster.genesis.public_keys()

    async def go() -> None:
        async with _tcp_nodes(cluster) as _:
            front = _LossyFront(cluster.client_addresses()[0], hold_s=3600)
            transport = _behind(cluster, front)
            client = AsyncLedgerClient(transport, validators, 1, retry_ms=200, timeout_ms=20_000)
            try:
                receipts = []
                for i in range(3):
                    receipts.append(await client.submit(encode_set(b"k%d" % i, b"v")))
                    assert not transport._dialling[0].done()
                first_dial = transport._dialling[0]
                assert 0 not in transport._conns
                status = (await transport.call(1, "status", {}))["status"]
                with pytest.raises(LedgerError, match="status failed"):
                    await transport.call(0, "status", {})  # joins the attempt, fails with it
                assert first_dial.done()
            finally:
                await client.close()
                await transport.close()
                front.close()
            assert [r.block_height for r in receipts] == sorted({r.block_height for r in receipts})
            assert status["id"] == 1

    run(go())


def test_a_clients_first_request_reaches_f_plus_1_repliers_without_a_retry(
    tmp_path: Path,
) -> None:
    """A backup sends a client's replies to the connection on which that client's own request
    reached it. A client that sent only to the primary would hear the primary alone, one
    reply short of f+1, until its retry to all (`retry_ms` later: here a minute, past the
    deadline). So a request also goes to each replica that has not yet had one from this
    client on the connection open now: once per client and connection, a new client's too,
    and again after a connection is lost; after that, to the primary alone."""
    cluster = Cluster(tmp_path, 4, base_port=_port_block(), params={"batch_wait_ms": 0})
    validators = cluster.genesis.public_keys()

    async def go() -> None:
        async with _tcp_nodes(cluster) as (_, transport):
            sent = _count_sends(transport)

            def client() -> AsyncLedgerClient:
                return AsyncLedgerClient(
                    transport, validators, 1, retry_ms=60_000, timeout_ms=5_000
                )

            await _ready(transport)
            first = client()
            await first.submit(encode_set(b"a", b"1"))
            assert sent == [0, 1, 2, 3]
            sent.clear()
            for i in range(3):
                await first.submit(encode_set(b"b%d" % i, b"2"))
            assert sent == [0, 0, 0]  # introduced: the primary alone

            for i in (1, 2, 3):  # the backups' connections lost: introduced again on new ones
                transport._conns[i].close()
            for _ in range(100):
                if all(i not in transport._conns for i in (1, 2, 3)):
                    break
                await asyncio.sleep(0.01)
            else:
                raise AssertionError("the closed connections were never dropped")
            await first.submit(encode_set(b"c", b"3"))

            second = client()  # a new client on connections that are open
            await second.submit(encode_set(b"d", b"4"))

    run(go())


def test_a_replica_that_refuses_connections_is_not_dialled_at_every_request(
    tmp_path: Path,
) -> None:
    """Replica 3's client port refuses connections (its address is a closed port). Requests
    still go out to introduce the client to replicas that have not had one from it, but not
    to a replica whose last connection attempt failed less than INTRODUCE_BACKOFF_S ago: ten
    requests in a row cost about one attempt to connect to it per backoff period, not one
    each, and each is answered by the three others."""
    cluster = Cluster(tmp_path, 4, base_port=_port_block(), params={"batch_wait_ms": 0})
    validators = cluster.genesis.public_keys()
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{closed.getsockname()[1]}"  # bound, never listening: refused

        async def go() -> None:
            async with _tcp_nodes(cluster) as _:
                transport = TcpClientTransport(
                    [*cluster.client_addresses()[:3], dead],
                    cluster.client_ssl,
                    reader=cluster.reader_key(),
                    chain_id=cluster.genesis.chain_id,
                )
                dials: list[int] = []
                dial = transport._dial

                async def counting(replica: int) -> Any:
                    dials.append(replica)
                    return await dial(replica)

                transport._dial = counting  # type: ignore[method-assign]
                client = AsyncLedgerClient(
                    transport, validators, 1, retry_ms=200, timeout_ms=20_000
                )
                try:
                    await client.submit(encode_set(b"a", b"1"))  # the nodes may still be starting
                    client.retry_ms = 60_000  # from here a retry to all would dial replica 3 too
                    dials.clear()
                    started = asyncio.get_running_loop().time()
                    for i in range(10):
                        await client.submit(encode_set(b"b%d" % i, b"2"))
                    elapsed = asyncio.get_running_loop().time() - started
                finally:
                    await client.close()
                    await transport.close()
                # One attempt per backoff period that the ten requests spanned, at most.
                assert dials.count(3) <= 2 + int(elapsed / INTRODUCE_BACKOFF_S), (dials, elapsed)
                assert 3 not in transport._conns

        run(go())


def test_a_key_two_processes_send_with_is_answered_in_whichever_sent_last(
    tmp_path: Path,
) -> None:
    """The vault's relay key is loaded by every API worker: a replica sends the key's replies
    to the process whose request reached it last, which the other's transport cannot know.
    Two transports (two processes) take turns with one key, as workers do with the relay's
    lock: marked `shared_key`, each request goes to every replica and is answered without a
    retry (a minute here, past the deadline); unmarked, the first process's second request
    would hear the primary alone once the other process had introduced the key."""
    cluster = Cluster(tmp_path, 4, base_port=_port_block(), params={"batch_wait_ms": 0})
    validators = cluster.genesis.public_keys()
    key = SigningKey.generate()

    async def go() -> None:
        async with _tcp_nodes(cluster) as (_, first):
            second = cluster.client_transport()
            clients = [
                AsyncLedgerClient(
                    t, validators, 1, key, retry_ms=60_000, timeout_ms=5_000, shared_key=True
                )
                for t in (first, second)
            ]
            try:
                await _ready(first)
                for i in range(4):  # first, second, first, second
                    receipt = await clients[i % 2].submit(encode_set(b"k%d" % i, b"v"), 100 + i)
                    assert receipt.block_height >= 1
            finally:
                await second.close()

    run(go())


async def _ready(transport: TcpClientTransport) -> None:
    """Every node listening, and a connection open to each."""
    for i in range(transport.n):
        for _ in range(100):
            with contextlib.suppress(LedgerError):
                await transport.call(i, "status", {})
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError(f"replica {i} never answered")


def test_a_request_sent_while_a_read_opens_the_connections_still_introduces_its_client(
    tmp_path: Path,
) -> None:
    """A read (a readiness probe, say) is opening every connection when a new client submits:
    its request waits for those connections and goes out on them, so every replica can send
    its replies back, with no retry (a minute here, past the deadline)."""
    cluster = Cluster(tmp_path, 4, base_port=_port_block(), params={"batch_wait_ms": 0})
    validators = cluster.genesis.public_keys()

    async def go() -> None:
        async with _tcp_nodes(cluster) as (_, warm):
            await _ready(warm)  # the nodes listening; this transport is not used after
            transport = cluster.client_transport()
            client = AsyncLedgerClient(transport, validators, 1, retry_ms=60_000, timeout_ms=5_000)
            try:
                reads = [asyncio.create_task(transport.call(i, "status", {})) for i in range(4)]
                await asyncio.sleep(0)  # the reads' connection attempts under way
                assert set(transport._dialling) == {0, 1, 2, 3}
                await client.submit(encode_set(b"a", b"1"))
                await asyncio.gather(*reads)
            finally:
                await client.close()
                await transport.close()

    run(go())
