"""Reads on a replica's client port need a right: raw TLS sockets against real replica
processes running the consent contracts.

The client port speaks TLS with the replica's certificate; a reader proves a member key by
signing the replica's fresh challenge bound to the certificate it saw and to the chain id
(`transport.reader_transcript`). Validators, the operator's listed readers, the vault and the
DPO read blocks and every query; a consumer reads its own accesses; a subject its own
consents, accesses and erasures; anyone else gets `status` only. A malformed, oversized or
unauthenticated frame closes its connection unanswered, and the replica goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
import ssl
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ledger_bridge import genesis as gen
from ledger_bridge import tls
from ledger_bridge.client import LedgerClient
from ledger_bridge.cluster import Cluster
from ledger_bridge.contracts import codec, tx
from ledger_bridge.contracts.app import own_query
from ledger_bridge.crypto import SigningKey
from ledger_bridge.node import Node
from ledger_bridge.transport import (
    HEADER,
    ClientListener,
    encode_frame,
    pack,
    read_frame,
    reader_transcript,
    split_address,
    unpack,
)
from tests.ledger_bridge.contracts.harness import key
from tests.ledger_bridge.test_processes import _base_port, _wait_height

pytestmark = pytest.mark.e2e

VAULT, DPO, UTILITY, BANK, CITIZEN, STRANGER = (key(n) for n in (50, 51, 60, 61, 70, 99))
OTHER_SUBJECT = key(71)


def _hex(k: SigningKey) -> str:
    return k.public_key.hex()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Four contract replicas with TLS, and block 1 committed (the vault registers a
    dataset), so a block read that is allowed has a block to show."""
    app_genesis = {
        "members": [
            {"public_key": _hex(VAULT), "role": "vault", "college": "providers"},
            {"public_key": _hex(DPO), "role": "dpo", "college": "services"},
            {"public_key": _hex(UTILITY), "role": "provider", "college": "providers"},
            {"public_key": _hex(BANK), "role": "consumer", "college": "services"},
        ]
    }
    params = {"app": "contracts", "batch_size_max": 16, "batch_wait_ms": 2}
    directory = tmp_path_factory.mktemp("reads") / "ledger"
    with Cluster(
        directory,
        4,
        base_port=_base_port(),
        use_tls=True,
        params=params,
        app_genesis=app_genesis,
    ) as c:
        c.start()
        c.wait_ready()
        g = c.genesis
        with LedgerClient(c.client_transport, g.public_keys(), g.f) as client:
            body = {
                "dataset": "addresses",
                "owner": bytes(UTILITY.public_key),
                "category": "address",
                "purposes": ["proof-of-address"],
                "retention_days": 30,
                "legal_basis": "consent",
            }
            valid_until = int(time.time() * 1000) + 60_000
            signed = tx.sign(VAULT, g.chain_id, "dataset.register", body, valid_until=valid_until)
            assert codec.decode(client.submit(signed.encode()).result)["ok"]
        # f+1 replies acknowledge block 1; the tests read replica 0, which may execute it a
        # moment later.
        _wait_height(c, list(range(c.n)), 1)
        yield c


class Raw:
    """One hand-driven connection to replica `i`'s client port: TLS (pinned to the cluster
    CA) unless `plain`; the challenge, the first frame, is read at once."""

    def __init__(self, cluster: Cluster, i: int = 0, *, plain: bool = False) -> None:
        host, port = split_address(cluster.client_addresses()[i])
        sock: socket.socket = socket.create_connection((host, port), timeout=10)
        if not plain:
            assert cluster.client_ssl is not None
            sock = cluster.client_ssl.wrap_socket(sock, server_hostname=f"node-{i}")
        self.sock = sock
        self.chain_id = cluster.genesis.chain_id
        self.challenge = b""
        self.channel = b""
        if not plain:
            der = sock.getpeercert(binary_form=True)  # type: ignore[attr-defined]
            self.channel = hashlib.sha256(der).digest()
            first = self.recv()
            assert isinstance(first, dict) and first["op"] == "challenge", first
            self.challenge = first["challenge"]
        self._ids = 0

    def send(self, obj: Any) -> None:
        self.sock.sendall(encode_frame(pack(obj)))

    def recv(self) -> Any:
        """The next frame, or None when the replica closed the connection."""
        try:
            header = self._exact(HEADER.size)
            (length,) = HEADER.unpack(header)
            return unpack(self._exact(length))
        except (ConnectionError, ssl.SSLError, EOFError):
            return None

    def _exact(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            if not chunk:
                raise EOFError
            out += chunk
        return out

    def ask(self, op: str, **args: Any) -> Any:
        self._ids += 1
        self.send({"op": op, "id": self._ids, **args})
        return self.recv()

    def prove(
        self,
        k: SigningKey,
        *,
        challenge: bytes | None = None,
        channel: bytes | None = None,
        chain_id: str | None = None,
    ) -> Any:
        transcript = reader_transcript(
            self.challenge if challenge is None else challenge,
            self.channel if channel is None else channel,
            self.chain_id if chain_id is None else chain_id,
        )
        return self.ask("auth", key=bytes(k.public_key), sig=k.sign(transcript))

    def close(self) -> None:
        self.sock.close()


def _validator(cluster: Cluster) -> SigningKey:
    return gen.load_signing_key(cluster.directory / "keys" / "node-1.key")


def _query(**q: Any) -> dict[str, Any]:
    return {"request": codec.encode(q)}


def test_plain_tcp_gets_nothing_from_a_tls_client_port(cluster: Cluster) -> None:
    raw = Raw(cluster, plain=True)
    try:
        raw.sock.sendall(encode_frame(pack({"op": "status", "id": 1})))
        got = b""
        while chunk := raw.sock.recv(65536):
            got += chunk
    except ConnectionError:
        got = b""
    finally:
        raw.close()
    # The replica reads the frame as a TLS ClientHello, fails the handshake and closes:
    # at most a TLS alert, never a status.
    assert b"status" not in got and b"height" not in got


def test_a_certificate_from_another_ca_is_refused_by_the_client(
    cluster: Cluster, tmp_path: Path
) -> None:
    foreign_ca, _ = tls.create_ca(tmp_path / "foreign")
    host, port = split_address(cluster.client_addresses()[0])
    with (
        socket.create_connection((host, port), timeout=10) as sock,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        tls.reader_context(foreign_ca).wrap_socket(sock, server_hostname="node-0")


def test_status_is_anyones(cluster: Cluster) -> None:
    raw = Raw(cluster)
    try:
        status = raw.ask("status")["status"]
        assert status["chain_id"] == cluster.genesis.chain_id and status["height"] >= 1
    finally:
        raw.close()


@pytest.mark.parametrize(
    "read",
    [
        {"op": "block", "height": 1},
        {"op": "query", **_query(q="members")},
        {"op": "query", **_query(q="consents", subject=_hex(CITIZEN))},
    ],
    ids=["block", "members", "consents"],
)
def test_an_unproven_read_closes_the_connection_unanswered(
    cluster: Cluster, read: dict[str, Any]
) -> None:
    raw = Raw(cluster)
    try:
        raw.send({"id": 1, **read})
        assert raw.recv() is None
    finally:
        raw.close()


def _another_challenge(cluster: Cluster) -> bytes:
    other = Raw(cluster)
    other.close()
    return other.challenge


@pytest.mark.parametrize(
    "bad",
    [
        "signed by another key",
        "bound to another certificate",
        "for another chain",
        "another connection's challenge",
        "a second key on a proven connection",
        "a key that is not bytes",
    ],
)
def test_a_bad_proof_closes_the_connection_unanswered(cluster: Cluster, bad: str) -> None:
    raw = Raw(cluster)
    try:
        if bad == "signed by another key":
            transcript = reader_transcript(raw.challenge, raw.channel, raw.chain_id)
            raw.send({"op": "auth", "key": bytes(VAULT.public_key), "sig": DPO.sign(transcript)})
        elif bad == "bound to another certificate":
            # A man in the middle relays the challenge; the reader signs the certificate it
            # saw, which is the middle's.
            raw.send(_proof(raw, VAULT, channel=hashlib.sha256(b"middle").digest()))
        elif bad == "for another chain":
            raw.send(_proof(raw, VAULT, chain_id="another-chain"))
        elif bad == "another connection's challenge":
            raw.send(_proof(raw, VAULT, challenge=_another_challenge(cluster)))
        elif bad == "a second key on a proven connection":
            assert raw.prove(STRANGER) == {"op": "auth", "id": 1, "ok": True}
            raw.send(_proof(raw, VAULT))
        else:
            raw.send({"op": "auth", "key": _hex(VAULT), "sig": b"\x00" * 64})
        assert raw.recv() is None
    finally:
        raw.close()


def _proof(raw: Raw, k: SigningKey, **bind: Any) -> dict[str, Any]:
    transcript = reader_transcript(
        bind.get("challenge", raw.challenge),
        bind.get("channel", raw.channel),
        bind.get("chain_id", raw.chain_id),
    )
    return {"op": "auth", "id": 9, "key": bytes(k.public_key), "sig": k.sign(transcript)}


BLOCK: dict[str, Any] = {"op": "block", "height": 1}
MEMBERS = {"op": "query", **_query(q="members")}
STATUS_Q = {"op": "query", **_query(q="status")}
BANK_ACCESSES = {"op": "query", **_query(q="accesses", consumer=bytes(BANK.public_key))}
UTILITY_ACCESSES = {"op": "query", **_query(q="accesses", consumer=bytes(UTILITY.public_key))}
ALL_ACCESSES = {"op": "query", **_query(q="accesses")}
CITIZEN_CONSENTS = {"op": "query", **_query(q="consents", subject=_hex(CITIZEN))}
CITIZEN_ACCESSES = {"op": "query", **_query(q="accesses", subject=_hex(CITIZEN))}
CITIZEN_ERASURES = {"op": "query", **_query(q="erasures", subject=_hex(CITIZEN))}
OTHER_CONSENTS = {"op": "query", **_query(q="consents", subject=_hex(OTHER_SUBJECT))}
CITIZEN_MEMBER = {"op": "query", **_query(q="member", key=bytes(CITIZEN.public_key))}
EVERY_READ = [
    BLOCK,
    MEMBERS,
    STATUS_Q,
    BANK_ACCESSES,
    UTILITY_ACCESSES,
    ALL_ACCESSES,
    CITIZEN_CONSENTS,
    CITIZEN_ACCESSES,
    CITIZEN_ERASURES,
    OTHER_CONSENTS,
    CITIZEN_MEMBER,
]
# reader -> the reads it is allowed, by index in EVERY_READ
ALLOWED: dict[str, set[int]] = {
    "vault": set(range(len(EVERY_READ))),
    "dpo": set(range(len(EVERY_READ))),
    "validator": set(range(len(EVERY_READ))),
    "operator": set(range(len(EVERY_READ))),
    "consumer": {EVERY_READ.index(BANK_ACCESSES)},
    "subject": {
        EVERY_READ.index(CITIZEN_CONSENTS),
        EVERY_READ.index(CITIZEN_ACCESSES),
        EVERY_READ.index(CITIZEN_ERASURES),
    },
    # Any key reads the accesses it asked for as consumer: none, for a provider that asked none.
    "provider": {EVERY_READ.index(UTILITY_ACCESSES)},
    "stranger": set(),
}


def _reader(cluster: Cluster, who: str) -> SigningKey:
    return {
        "vault": VAULT,
        "dpo": DPO,
        "validator": _validator(cluster),
        "operator": cluster.reader_key(),
        "consumer": BANK,
        "subject": CITIZEN,
        "provider": UTILITY,
        "stranger": STRANGER,
    }[who]


@pytest.mark.parametrize("who", sorted(ALLOWED))
def test_each_reader_reads_what_its_role_allows_and_nothing_else(
    cluster: Cluster, who: str
) -> None:
    raw = Raw(cluster, 2)
    try:
        assert raw.prove(_reader(cluster, who)) == {"op": "auth", "id": 1, "ok": True}
        for n, read in enumerate(EVERY_READ):
            answer = raw.ask(**read)
            assert answer is not None, f"{who}: read #{n} closed the connection"
            if n in ALLOWED[who]:
                assert "error" not in answer, (who, n, answer)
                assert ("block" if read["op"] == "block" else "result") in answer
                if read["op"] == "block":
                    assert isinstance(answer["block"], bytes)
            else:
                # Refused: an error naming nothing, and the connection stays usable.
                assert answer == {"op": read["op"], "id": raw._ids, "error": "forbidden"}, (
                    who,
                    n,
                    answer,
                )
        assert raw.ask("status")["status"]["refused_reads"] >= len(EVERY_READ) - len(ALLOWED[who])
    finally:
        raw.close()


BAD_FRAMES: dict[str, bytes] = {
    "oversized": struct.pack(">I", 1 << 30) + b"x" * 64,
    "not msgpack": encode_frame(b"\xc1\xc1\xc1"),
    "not a map": encode_frame(pack([1, 2, 3])),
    "unknown op": encode_frame(pack({"op": "dump", "id": 1})),
    "no op": encode_frame(pack({"id": 1})),
    "submit of garbage": encode_frame(pack({"op": "submit", "request": b"\x00" * 40})),
    "submit of text": encode_frame(pack({"op": "submit", "request": "x"})),
    "query without bytes": encode_frame(pack({"op": "query", "id": 1, "request": "members"})),
    "session without a key": encode_frame(pack({"op": "session", "key": 7})),
}


def test_bad_frames_close_their_connection_unanswered_and_the_replica_goes_on(
    cluster: Cluster,
) -> None:
    before = cluster.status(3) or {}
    for name, frame in BAD_FRAMES.items():
        raw = Raw(cluster, 3)
        try:
            raw.sock.sendall(frame)
            assert raw.recv() is None, name
        finally:
            raw.close()
    # A proven reader's bad frame closes its connection too.
    raw = Raw(cluster, 3)
    try:
        raw.prove(VAULT)
        raw.sock.sendall(BAD_FRAMES["unknown op"])
        assert raw.recv() is None
    finally:
        raw.close()
    assert cluster.running(3)
    status = cluster.status(3) or {}
    # Frames that are no msgpack frame (oversized, garbage) are the transport's to count;
    # every other one, and the proven reader's, the node's. No other test uses replica 3.
    framing = status["client_port"]["protocol_errors"] - before["client_port"]["protocol_errors"]
    assert framing == 2
    assert status["dropped_client"] - before["dropped_client"] == len(BAD_FRAMES) - 2 + 1
    raw = Raw(cluster, 3)
    try:
        raw.prove(DPO)
        assert isinstance(raw.ask(**BLOCK)["block"], bytes)
    finally:
        raw.close()


def test_a_replica_without_tls_files_or_the_insecure_flag_refuses_to_start(
    tmp_path: Path,
) -> None:
    [node_file, *_] = gen.create_local(tmp_path, 4, base_port=_base_port(), use_tls=False)
    text = node_file.read_text()
    assert "insecure = true" in text  # what `create_local` writes for a cluster without TLS
    gen.write_private_file(node_file, text.replace("insecure = true", "").encode())
    with pytest.raises(gen.GenesisError, match="client port needs TLS"):
        Node(gen.load_node_config(node_file))


@pytest.mark.parametrize(
    ("q", "mine"),
    [
        ({"q": "accesses", "consumer": b"K" * 32}, True),
        ({"q": "accesses", "consumer": b"L" * 32}, False),
        ({"q": "accesses", "subject": (b"K" * 32).hex()}, True),
        # The subject decides what is answered: another consumer named too changes nothing.
        ({"q": "accesses", "subject": (b"K" * 32).hex(), "consumer": b"L" * 32}, True),
        ({"q": "accesses", "subject": (b"L" * 32).hex(), "consumer": b"K" * 32}, False),
        ({"q": "accesses"}, False),
        ({"q": "consents", "subject": (b"K" * 32).hex()}, True),
        ({"q": "consents", "subject": b"K" * 32}, False),
        ({"q": "erasures", "subject": (b"K" * 32).hex()}, True),
        ({"q": "erasures"}, False),
        ({"q": "member", "key": b"K" * 32}, False),
        (["accesses"], False),
    ],
)
def test_a_query_is_ones_own_only_when_it_names_only_that_key(q: Any, mine: bool) -> None:
    assert own_query(q, b"K" * 32) is mine


def test_unfinished_tls_handshakes_count_against_the_hosts_connections(tmp_path: Path) -> None:
    """TCP connections that never send a ClientHello: each holds a descriptor for as long as
    the handshake may last, so they count against the per-host limit from the accept on,
    and what is over it is closed at once, while a client on another host is served."""
    ca, ca_key = tls.create_ca(tmp_path)
    files = tls.issue_node_certificate(tmp_path, ca, ca_key, 0, ["127.0.0.1"])

    async def go() -> None:
        served: list[Any] = []
        listener = ClientListener(
            lambda frame, conn: served.append(frame),
            tls.client_port_context(files),
            connections_max=8,
            connections_per_host_max=4,
            channel=tls.fingerprint(files.cert),
        )
        await listener.start("127.0.0.1:0")
        port = listener.port
        try:
            silent = [
                await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.2", 0))
                for _ in range(6)
            ]
            closed = 0
            for reader, _ in silent:
                with contextlib.suppress(TimeoutError):
                    closed += await asyncio.wait_for(reader.read(), 2) == b""
            assert closed == 2
            assert listener.stats.refused_over_host_connections_max == 2
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=tls.reader_context(ca), server_hostname="node-0"
            )
            first = await asyncio.wait_for(read_frame(reader), 10)
            assert first is not None and unpack(first)["op"] == "challenge"
            writer.close()
            for _, w in silent:
                w.close()
        finally:
            await listener.stop()

    asyncio.run(asyncio.wait_for(go(), 60))
