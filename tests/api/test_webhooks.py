"""A consumer's webhook is a door the vault opens from inside its network: attacks first.

Each URL below would make the vault call somewhere a consumer must not reach (its own
loopback, the cloud's metadata service, the private network, a host smuggled behind
credentials or a redirect). Each is refused at registration (422, nothing stored) and again
at delivery, where the host is resolved anew (a name may point elsewhere by then).
"""

from __future__ import annotations

import datetime as dt
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from api.services import recipient_notices as notices
from vault import db
from vault.models import ConsumerWebhook, RecipientNotice

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


def test_the_delivery_checks_the_address_again() -> None:
    """Whatever was registered, a delivery to a local address is refused unless the setting
    allows it, and nothing reaches the server."""
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
    url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    try:
        with pytest.raises(notices.InvalidWebhook):
            notices.post_notice(url, b"{}", timeout_s=5, allow_local=False)
        assert hits == []
        assert notices.post_notice(url, b"{}", timeout_s=5, allow_local=True) == 200
        assert hits == ["/hook"]
    finally:
        server.shutdown()
        server.server_close()


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
