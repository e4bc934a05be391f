"""A consumer's webhook is a door the vault opens from inside its network: attacks first.

Each URL below would make the vault call somewhere a consumer must not reach (its own
loopback, the cloud's metadata service, the private network, a host smuggled behind
credentials or a redirect). Each is refused at registration (422, nothing stored) and again
at delivery, where the host is resolved anew (a name may point elsewhere by then).
"""

from __future__ import annotations

import datetime as dt
import os
import re
import socket
import ssl
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import certifi
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from api.services import recipient_notices as notices
from ledger_bridge.tls import TlsFiles, create_ca, issue_node_certificate
from vault import db
from vault.models import ConsumerWebhook, RecipientNotice

LOCAL_REFUSAL = "resolves to a private, loopback or reserved address"
LOCAL = [
    "https://127.0.0.1/hook",
    "https://localhost/hook",
    "https://[::1]/hook",
    "https://[::ffff:127.0.0.1]/hook",
    "https://10.1.2.3/hook",
    "https://192.168.0.10/hook",
    "https://172.16.5.4/hook",
    "https://169.254.169.254/latest/meta-data/",  # the cloud's metadata service
    "https://100.64.0.1/hook",  # carrier-grade NAT
    "https://0.0.0.0/hook",
    "https://224.0.0.1/hook",
]
MALFORMED = [
    "http://93.184.216.34/hook",  # plain http: notices would travel in clear
    "ftp://93.184.216.34/hook",
    "https://user:secret@93.184.216.34/hook",
    "https://93.184.216.34/hook#frag",
    "https://93.184.216.34:99999/hook",
    "https:///hook",
    "https://93.184.216.34/ho ok",
    "https://93.184.216.34/hook\r\nX-Injected: 1",
    "https://no-such-host.invalid/hook",
    "https://93.184.216.34/" + "a" * notices.URL_MAX,
]


@pytest.fixture(scope="module")
def engine_for_api(api_database_url: str) -> Iterator[Engine]:
    engine = db.make_engine(api_database_url, pool_size=1)
    yield engine
    engine.dispose()


@pytest.mark.parametrize("url", LOCAL + MALFORMED)
def test_a_webhook_the_vault_must_not_call_is_refused(url: str) -> None:
    with pytest.raises(notices.InvalidWebhook):
        notices.check_webhook_url(url, allow_local=False)


def test_a_public_https_address_is_taken() -> None:
    assert notices.check_webhook_url("https://93.184.216.34:8443/a?b=c", allow_local=False) == (
        "https",
        "93.184.216.34",
        8443,
    )


def test_the_registration_refuses_and_stores_nothing(
    client: TestClient, make_key: Callable[..., dict[str, str]], engine_for_api: Engine
) -> None:
    member = os.urandom(32).hex()
    consumer = make_key("consumer", member_id=member)
    for url in ("https://169.254.169.254/latest/meta-data/", "http://127.0.0.1:8080/"):
        r = client.put("/v1/consumers/me/webhook", headers=consumer, json={"url": url})
        assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json"
        assert "169.254" not in r.text  # the refusal does not echo the URL
    with Session(engine_for_api) as s:
        assert s.get(ConsumerWebhook, member) is None
    r = client.put(
        "/v1/consumers/me/webhook", headers=consumer, json={"url": "https://93.184.216.34/h"}
    )
    assert r.status_code == 200 and r.json()["url"] == "https://93.184.216.34/h"
    r = client.put("/v1/consumers/me/webhook", headers=consumer, json={"url": None})
    assert r.status_code == 200 and r.json()["url"] is None
    with Session(engine_for_api) as s:
        assert (
            s.scalars(select(ConsumerWebhook).where(ConsumerWebhook.consumer == member)).all() == []
        )


def test_a_key_without_a_ledger_identity_has_no_webhook(
    client: TestClient, make_key: Callable[..., dict[str, str]]
) -> None:
    consumer = make_key("consumer", member_id="bank-without-ledger-key")
    r = client.put(
        "/v1/consumers/me/webhook", headers=consumer, json={"url": "https://93.184.216.34/"}
    )
    assert r.status_code == 403


def test_a_local_address_is_refused_at_delivery_unless_the_setting_allows_it() -> None:
    """A local address that reaches the delivery (stored when the setting allowed it) is
    refused there, and nothing reaches the server; the tests' setting lets it through."""
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            hits.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        with pytest.raises(notices.InvalidWebhook, match=LOCAL_REFUSAL):
            notices.post_notice(
                f"https://127.0.0.1:{port}/hook", b"{}", timeout_s=5, allow_local=False
            )
        assert hits == []
        url = f"http://127.0.0.1:{port}/hook"
        assert notices.post_notice(url, b"{}", timeout_s=5, allow_local=True) == 200
        assert hits == ["/hook"]
    finally:
        server.shutdown()
        server.server_close()


# -- a name that points elsewhere at delivery --------------------------------------------------
#
# The consumer owns the name's DNS: `Resolver` answers for HOST what each test says, lookup by
# lookup; `Dialer` records every address the vault connects to and reaches only the TLS stub
# (a certificate for HOST under a test CA the vault's client trusts for the test), so nothing
# leaves the machine and a test sees where the vault would have connected.

HOST = "hook.example"
HOOK = f"https://{HOST}/hook"
PUBLIC = "93.184.216.34"


class Resolver:
    """Stands in for `socket.getaddrinfo`. HOST resolves to `answers[i]` at its i-th lookup
    (the last answer from then on); any other name resolves as usual."""

    def __init__(self, real: Callable[..., Any]) -> None:
        self._real = real
        self.answers: list[list[str]] = [[PUBLIC]]
        self.lookups = 0

    def serve(self, *answers: list[str]) -> None:
        self.answers, self.lookups = list(answers), 0

    def __call__(self, host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host != HOST:
            return self._real(host, port, *args, **kwargs)
        answer = self.answers[min(self.lookups, len(self.answers) - 1)]
        self.lookups += 1
        out: list[tuple[Any, ...]] = []
        for ip in answer:
            if ":" in ip:
                out.append((socket.AF_INET6, socket.SOCK_STREAM, 6, "", (ip, int(port), 0, 0)))
            else:
                out.append((socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, int(port))))
        return out


class Dialer:
    """Stands in for `socket.create_connection`, which httpcore opens its connections with:
    resolves like it (through `Resolver`), records each (address, port) it would connect to,
    and connects only where `routes` sends it; any other address is refused here."""

    def __init__(self, real: Callable[..., socket.socket]) -> None:
        self._real = real
        self.dialled: list[tuple[str, int]] = []
        self.routes: dict[tuple[str, int], tuple[str, int]] = {}

    def __call__(self, address: tuple[str, int], *args: Any, **kwargs: Any) -> socket.socket:
        host, port = address
        for *_, sockaddr in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
            target = (str(sockaddr[0]), int(port))
            self.dialled.append(target)
            if target in self.routes:
                return self._real(self.routes[target], *args, **kwargs)
        raise ConnectionRefusedError(f"the test routes nothing to {address}")


@dataclass
class TlsStub:
    """A webhook endpoint for HOST on loopback: what it was sent, and what it answers."""

    port: int
    hits: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Host header)
    names: list[str | None] = field(default_factory=list)  # the SNI of each handshake
    reply: tuple[int, dict[str, str]] = (200, {})


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    directory = tmp_path_factory.mktemp("webhook-tls")
    ca_cert, ca_key = create_ca(directory, "webhook-test-ca")
    return issue_node_certificate(directory, ca_cert, ca_key, 0, [HOST])


@pytest.fixture
def resolver(monkeypatch: pytest.MonkeyPatch) -> Resolver:
    fake = Resolver(socket.getaddrinfo)
    monkeypatch.setattr(socket, "getaddrinfo", fake)
    return fake


@pytest.fixture
def dialer(monkeypatch: pytest.MonkeyPatch) -> Dialer:
    fake = Dialer(socket.create_connection)
    monkeypatch.setattr(socket, "create_connection", fake)
    return fake


@pytest.fixture
def stub(tls_files: TlsFiles, monkeypatch: pytest.MonkeyPatch, dialer: Dialer) -> Iterator[TlsStub]:
    """The stub, reached by a connection to PUBLIC:443, its CA trusted by the vault's client."""
    monkeypatch.setattr(certifi, "where", lambda: str(tls_files.ca_cert))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls_files.cert, tls_files.key)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _StubHandler)
    found = TlsStub(port=server.server_address[1])
    context.sni_callback = lambda _sock, name, _ctx: found.names.append(name)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.stub = found  # type: ignore[attr-defined]  # read by _StubHandler
    dialer.routes[(PUBLIC, 443)] = ("127.0.0.1", found.port)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield found
    server.shutdown()
    server.server_close()


class _StubHandler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        stub: TlsStub = self.server.stub  # type: ignore[attr-defined]
        stub.hits.append((self.path, self.headers["Host"]))
        status, headers = stub.reply
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_a_public_name_is_posted_to_at_its_checked_address(
    resolver: Resolver, dialer: Dialer, stub: TlsStub
) -> None:
    """The control of the attacks below: the name resolves to a public address at
    registration and at delivery, and the notice goes out, to that address, with the name
    as SNI (the certificate is checked against it) and as Host."""
    assert notices.check_webhook_url(HOOK, allow_local=False) == ("https", HOST, 443)
    resolver.serve([PUBLIC])
    assert notices.post_notice(HOOK, b"{}", timeout_s=5, allow_local=False) == 200
    assert dialer.dialled == [(PUBLIC, 443)]
    assert stub.hits == [("/hook", HOST)]
    assert stub.names == [HOST]


@pytest.mark.parametrize(
    "later",
    [
        ["127.0.0.1"],
        ["169.254.169.254"],  # the cloud's metadata service
        ["10.0.0.7"],
        ["::1"],
        ["::ffff:127.0.0.1"],
        [PUBLIC, "10.0.0.7"],  # one bad address among good ones is enough
    ],
)
def test_a_name_repointed_to_a_local_address_after_registration_is_refused(
    later: list[str], resolver: Resolver, dialer: Dialer, stub: TlsStub
) -> None:
    """DNS rebinding: the name was public when the consumer registered it, and is local when
    the notice goes out. The delivery refuses it and connects nowhere."""
    resolver.serve([PUBLIC])
    assert notices.check_webhook_url(HOOK, allow_local=False) == ("https", HOST, 443)
    resolver.serve(later)
    with pytest.raises(notices.InvalidWebhook, match=LOCAL_REFUSAL):
        notices.post_notice(HOOK, b"{}", timeout_s=5, allow_local=False)
    assert resolver.lookups > 0
    assert dialer.dialled == []
    assert stub.hits == []


def test_the_delivery_connects_to_the_address_it_checked(
    resolver: Resolver, dialer: Dialer, stub: TlsStub
) -> None:
    """A name answering public once, then local to every later lookup (a zero TTL): however
    many times the delivery resolves it, it connects only to an address it checked, so it
    either posts to the public one or refuses; it never reaches the local one."""
    resolver.serve([PUBLIC], ["127.0.0.1"])
    try:
        status: int | None = notices.post_notice(HOOK, b"{}", timeout_s=5, allow_local=False)
    except notices.InvalidWebhook as exc:
        assert re.search(LOCAL_REFUSAL, exc.detail)
        status = None
    assert dialer.dialled == ([] if status is None else [(PUBLIC, 443)])
    assert status in (None, 200)


def test_a_redirect_to_the_metadata_service_is_not_followed(
    resolver: Resolver, dialer: Dialer, stub: TlsStub
) -> None:
    """The endpoint answers 302 to the metadata service: the delivery returns the 302 as its
    status and connects nowhere else."""
    resolver.serve([PUBLIC])
    stub.reply = (302, {"Location": "http://169.254.169.254/latest/meta-data/"})
    assert notices.post_notice(HOOK, b"{}", timeout_s=5, allow_local=False) == 302
    assert dialer.dialled == [(PUBLIC, 443)]
    assert stub.hits == [("/hook", HOST)]


def test_a_notice_undelivered_for_too_long_is_a_finding(session: Session) -> None:
    policy = notices.DeliveryPolicy(attempts_max=8)
    now = dt.datetime.now(dt.UTC)
    consumer = os.urandom(32).hex()

    def notice(created: dt.timedelta, **state: Any) -> int:
        row = RecipientNotice(
            consumer=consumer,
            kind="erasure",
            dataset_id=uuid.uuid4(),
            body={},
            fact_type="erasure.record",
            created_at=now - created,
            **state,
        )
        session.add(row)
        session.flush()
        return row.id

    old = notice(dt.timedelta(hours=80))
    spent = notice(dt.timedelta(minutes=5), attempts=8)
    notice(dt.timedelta(minutes=5), attempts=2)  # still trying: no finding yet
    notice(dt.timedelta(hours=80), delivered_at=now, delivered_via="feed")
    found = [
        f for f in notices.findings(session, policy, 72, now) if f.refs["consumer"] == consumer
    ]
    assert sorted(int(f.refs["notice_id"]) for f in found) == sorted([old, spent])
    assert {f.code for f in found} == {"recipient-notice-undelivered"}
