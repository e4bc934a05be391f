"""Recipients told (GDPR Art. 17(2), 19), over the API on four replicas, to a real webhook.

A bank read Alice's records; another consumer read only Bob's. The DPO erases Alice
everywhere: the bank, and only the bank, gets a notice signed by the vault's ledger key,
naming the dataset, the erasure's ledger fact and the ids of the records it received, never
Alice's pseudonym; its webhook answers 500 once, the delivery retries and gets it through.
A webhook that keeps failing is given up after the attempts allowed, and the DPO's audit
shows the notice as a finding.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from api.client import CivisClient
from api.client.accountability import records_concerned, verify_notice
from api.http.settings import Settings
from tests.api.ledger_env import LedgerEnv, Wallet
from tests.api.test_consented_access import api, register_subject, setup_addresses
from tests.api.test_consented_access import notice as consent_notice
from tests.api.test_roles import admit

ATTEMPTS_MAX = 3
WAIT_S = 30


@pytest.fixture(scope="module")
def api_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Deliveries every 0.1 s, retried after 0.1 s then 0.2 s, three attempts; webhooks on
    this machine over plain HTTP (`webhook_allow_local`, tests only)."""
    data_dir: Path = tmp_path_factory.mktemp("civis-api")
    return Settings(
        environment="test",
        data_dir=data_dir,
        record_size_max_bytes=4096,
        upload_batch_rows=50,
        upload_body_max_bytes=256 * 1024,
        json_body_max_bytes=16 * 1024,
        notice_delivery_interval_s=0.1,
        notice_retry_base_s=0.1,
        notice_retry_max_s=0.5,
        notice_attempts_max=ATTEMPTS_MAX,
        webhook_timeout_s=5.0,
        webhook_allow_local=True,
    )


@dataclass
class Hook:
    """A consumer's webhook: answers `statuses` in turn (the last one from then on)."""

    statuses: list[int]
    url: str = ""
    received: list[tuple[int, dict[str, Any]]] = field(default_factory=list)

    def answered(self, status: int) -> list[dict[str, Any]]:
        return [body for s, body in self.received if s == status]


class Hooks:
    """Real HTTP servers on this machine, one per webhook."""

    def __init__(self) -> None:
        self._servers: list[ThreadingHTTPServer] = []

    def new(self, *statuses: int) -> Hook:
        hook = Hook(list(statuses))

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                status = hook.statuses.pop(0) if len(hook.statuses) > 1 else hook.statuses[0]
                hook.received.append((status, body))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self._servers.append(server)
        hook.url = f"http://127.0.0.1:{server.server_address[1]}/civis/notices"
        return hook

    def close(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()


@pytest.fixture()
def hooks() -> Iterator[Hooks]:
    made = Hooks()
    yield made
    made.close()


def _client(env: LedgerEnv, headers: dict[str, str]) -> CivisClient:
    return CivisClient(http=env.client, api_key=headers["Authorization"].removeprefix("Bearer "))


def _until(what: str, check: Any) -> Any:
    deadline = time.monotonic() + WAIT_S
    while not (found := check()):
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.05)
    return found


def _read(
    env: LedgerEnv, consumer: dict[str, str], dataset: str, subject: Wallet
) -> tuple[list[str], int]:
    """The consumer reads the subject's records; the record ids it received, and the height
    of its access's receipt."""
    body = {"dataset_id": dataset, "purpose": "billing", "subjects": [subject.id]}
    r = env.client.post("/v1/access-requests", headers=consumer, json=body)
    assert r.status_code == 200 and r.json()["granted"] == [subject.id], r.text
    records = [rec["record_id"] for rec in r.json()["records"]]
    return records, int(r.json()["receipt"]["block_height"])


def _webhook(env: LedgerEnv, consumer: dict[str, str], url: str) -> None:
    r = env.client.put("/v1/consumers/me/webhook", headers=consumer, json={"url": url})
    assert r.status_code == 200 and r.json()["url"] == url, r.text


def _status(env: LedgerEnv) -> dict[str, Any]:
    r = env.client.get("/v1/dpo/recipient-notices", headers=env.headers("dpo", env.dpo))
    assert r.status_code == 200, r.text
    answer: dict[str, Any] = r.json()
    return answer


@pytest.fixture(scope="module")
def scene(ledger_env: LedgerEnv) -> tuple[Wallet, str]:
    """A second admitted consumer, and a dataset whose subjects it may be granted."""
    other = Wallet()
    admit(ledger_env, other, "consumer", "services")
    return other, "billing"


def test_the_consumer_that_received_the_data_is_told_and_no_other(
    ledger_env: LedgerEnv, scene: tuple[Wallet, str], hooks: Hooks
) -> None:
    env, (other, purpose) = ledger_env, scene
    alice, bob = register_subject(env), register_subject(env)
    dataset, _ = setup_addresses(env, [alice, bob], purposes=(purpose,))
    api(env).grant_consent(
        alice.key,
        consumer=env.consumer.id,
        purpose=purpose,
        notice=consent_notice(env, purpose, env.consumer),
        dataset=dataset,
    )
    api(env).grant_consent(
        bob.key,
        consumer=other.id,
        purpose=purpose,
        notice=consent_notice(env, purpose, other),
        dataset=dataset,
    )
    bank, shop = env.headers("consumer", env.consumer), env.headers("consumer", other)
    received, read_at = _read(env, bank, dataset, alice)
    _read(env, shop, dataset, bob)
    hook = hooks.new(500, 200)
    _webhook(env, bank, hook.url)

    dpo = env.headers("dpo", env.dpo)
    r = env.client.post("/v1/erasures", headers=dpo, json={"subject_id": alice.id})
    assert r.status_code == 201, r.text

    [notice] = _until("the webhook took the notice", lambda: hook.answered(200))
    assert [s for s, _ in hook.received] == [500, 200]  # retried after the failure
    assert hook.answered(500) == [notice]  # the same notice, sent again
    assert verify_notice(notice, env.gateway.vault_id)
    assert not verify_notice(notice, env.provider.id)  # another key did not sign it
    forged = {**notice, "body": {**notice["body"], "records": []}}
    assert not verify_notice(forged, env.gateway.vault_id)
    body = notice["body"]
    assert (body["kind"], body["dataset"]) == ("erasure", dataset)
    assert body["consumer"] == env.consumer.id
    assert body["fact"]["type"] == "erasure.record" and body["fact"]["height"] >= 1
    assert records_concerned(notice, received) == set(received)
    assert body["accesses"] == {"purposes": [purpose], "heights": [read_at]}
    assert alice.id not in json.dumps(notice)  # the pseudonym is named nowhere

    # the job writes the 200 down just after the webhook answered it
    [status] = _until(
        "the delivery is recorded",
        lambda: [
            n for n in _status(env)["notices"] if n["id"] == notice["id"] and n["delivered_at"]
        ],
    )
    assert (status["delivered_via"], status["attempts"]) == ("webhook", 2)
    feed = env.client.get("/v1/recipient-notices", headers=bank).json()["notices"]
    assert [n["id"] for n in feed] == [notice["id"]] and feed[0]["body"] == body
    assert env.client.get("/v1/recipient-notices", headers=shop).json()["notices"] == []


def test_a_notice_never_delivered_is_a_finding(
    ledger_env: LedgerEnv, scene: tuple[Wallet, str], hooks: Hooks
) -> None:
    env, (other, purpose) = ledger_env, scene
    carol = register_subject(env)
    dataset, _ = setup_addresses(env, [carol], purposes=(purpose,))
    api(env).grant_consent(
        carol.key,
        consumer=other.id,
        purpose=purpose,
        notice=consent_notice(env, purpose, other),
        dataset=dataset,
    )
    shop = env.headers("consumer", other)
    _read(env, shop, dataset, carol)
    down = hooks.new(500)
    shop_api = _client(env, shop)
    assert shop_api.set_webhook(down.url)["url"] == down.url
    dpo = env.headers("dpo", env.dpo)
    body = {"subject_id": carol.id, "dataset_id": dataset}
    assert env.client.post("/v1/erasures", headers=dpo, json=body).status_code == 201

    def given_up() -> list[dict[str, Any]]:
        return [
            f
            for f in _client(env, dpo).dpo_recipient_findings()
            if f["code"] == "recipient-notice-undelivered" and f["refs"]["consumer"] == other.id
        ]

    [finding] = _until("the audit found the undelivered notice", given_up)
    time.sleep(1.0)  # well past the last retry delay: no attempt beyond the last
    assert len(down.received) == ATTEMPTS_MAX
    [status] = [n for n in _status(env)["notices"] if str(n["id"]) == finding["refs"]["notice_id"]]
    assert status["state"] == "undelivered" and status["last_error"] == "HTTP 500"
    assert status["attempts"] == ATTEMPTS_MAX and status["webhook"]
    # the feed still has it, and reading it there delivers it
    feed, after = shop_api.poll_notices()
    assert str(feed[-1]["id"]) == finding["refs"]["notice_id"] == str(after)
    assert verify_notice(feed[-1], env.gateway.vault_id)
    assert shop_api.poll_notices(after=after) == ([], after)
    assert not given_up()


def test_an_erasure_of_data_nobody_received_tells_nobody(ledger_env: LedgerEnv) -> None:
    env = ledger_env
    dan = register_subject(env)
    setup_addresses(env, [dan])
    before = {n["id"] for n in _status(env)["notices"]}
    dpo = env.headers("dpo", env.dpo)
    r = env.client.post("/v1/erasures", headers=dpo, json={"subject_id": dan.id})
    assert r.status_code == 201, r.text
    assert {n["id"] for n in _status(env)["notices"]} == before


class Tarpit:
    """A webhook that never finishes answering, a little at a time, each piece well within
    any read timeout: its headers (`headers`), or, after a 200, its body (`body`). What a
    hostile or broken consumer endpoint can do."""

    def __init__(self, trickles: str) -> None:
        self.stop = threading.Event()
        self.posts = threading.Event()
        tarpit = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                tarpit.posts.set()
                self.send_response_only(200)
                if trickles == "body":
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                piece = b"400\r\n" + b"x" * 1024 + b"\r\n" if trickles == "body" else b"X-A: b\r\n"
                while not tarpit.stop.wait(0.2):
                    try:
                        self.wfile.write(piece)
                        self.wfile.flush()
                    except OSError:
                        return

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/civis/notices"

    def close(self) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()


def _erased_after_read(env: LedgerEnv, consumer: Wallet, purpose: str) -> tuple[str, Any]:
    """A subject the consumer read, erased in its dataset by the DPO; (dataset, owner)."""
    subject = register_subject(env)
    dataset, owner = setup_addresses(env, [subject], purposes=(purpose,))
    api(env).grant_consent(
        subject.key,
        consumer=consumer.id,
        purpose=purpose,
        notice=consent_notice(env, purpose, consumer),
        dataset=dataset,
    )
    _read(env, env.headers("consumer", consumer), dataset, subject)
    dpo = env.headers("dpo", env.dpo)
    body = {"subject_id": subject.id, "dataset_id": dataset}
    assert env.client.post("/v1/erasures", headers=dpo, json=body).status_code == 201
    return dataset, owner


def _notice_of(env: LedgerEnv, consumer: Wallet, dataset: str) -> list[dict[str, Any]]:
    return [
        n
        for n in _status(env)["notices"]
        if n["consumer"] == consumer.id and n["dataset_id"] == dataset and n["attempts"]
    ]


def test_a_webhook_that_never_finishes_answering_holds_up_nothing_else(
    ledger_env: LedgerEnv, scene: tuple[Wallet, str]
) -> None:
    """The delivery must not wait on a consumer's endpoint for ever, nor let it hold the
    vault's other background work (the outbox relay anchoring uploads, recording erasures):
    an endpoint trickling its headers is given up within the webhook timeout, and an upload
    made meanwhile is anchored all the same; one trickling an endless body after its 200 has
    the notice, and its body is never read."""
    env, (other, purpose) = ledger_env, scene
    shop = env.headers("consumer", other)
    slow = Tarpit("headers")
    try:
        _webhook(env, shop, slow.url)
        dataset, owner = _erased_after_read(env, other, purpose)
        assert slow.posts.wait(WAIT_S), "the notice never reached the webhook"
        started = time.monotonic()
        line = json.dumps({"subject_id": "a" * 64, "payload": {"address": "x"}}) + "\n"
        r = env.client.post(
            f"/v1/datasets/{dataset}/uploads",
            headers={**owner, "Content-Type": "application/x-ndjson"},
            content=line.encode(),
        )
        assert r.status_code in (201, 202), r.text
        env.wait_anchored(dataset, r.json()["upload_id"], owner)
        assert time.monotonic() - started < 15
        [status] = _until("the attempt ended", lambda: _notice_of(env, other, dataset))
        assert status["state"] == "undelivered" and status["last_error"], status
        assert time.monotonic() - started < 15
    finally:
        slow.close()
    endless = Tarpit("body")
    try:
        _webhook(env, shop, endless.url)
        dataset, _ = _erased_after_read(env, other, purpose)
        [status] = _until("the notice was delivered", lambda: _notice_of(env, other, dataset))
        assert status["state"] == "delivered" and status["delivered_via"] == "webhook", status
    finally:
        endless.close()
