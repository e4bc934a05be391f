"""The erasure receipt, over real HTTP, a real relay and four real replicas.

A subject erased everywhere gets {height, request, tx_id} in the erasure's answer, and
`receipts.verify` accepts it against the block the ledger serves and the validator keys alone.
The attacks first: without the receipt, the erasure entries the ledger serves do not say whose
erasure it was; a receipt for P does not verify for another pseudonym; a receipt with any field
changed fails. The vault keeps neither the subject nor the receipt in clear (pg_dump, with a
subject not erased as the control), and when the ledger is slower than the answer, the subject
fetches the sealed receipt later and opens it with the key the answer gave. When the relay
records an erasure but finds no request that carried it, no receipt can ever be made: the
answer and `GET /v1/erasure-receipts/{id}` say so (410), rather than "not recorded yet".
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from sqlalchemy.orm import Session

from api import cli
from api.client import CivisClient, ErasureReceiptLost
from api.http.app import create_app
from api.services.gateway import LedgerGateway
from api.services.outbox import FactReceipt
from ledger_bridge import receipts
from ledger_bridge.client import LedgerError
from ledger_bridge.contracts import codec, tx
from ledger_bridge.crypto import SigningKey, digest
from ledger_bridge.facts import ERASURE_RECORD
from ledger_bridge.genesis import GENESIS_FILE
from ledger_bridge.node import cluster_config
from ledger_bridge.pbft import messages as m
from ledger_bridge.receipts import ErasureReceipt
from tests.api.ledger_env import LedgerEnv, Wallet
from tests.vault.test_forensic import _pg_dump
from vault import db
from vault.crypto.merkle import leaf_hash, merkle_root
from vault.models import OutboxFact, Upload
from vault.reads import key_commitments_in_order

SEALED_WAIT_S = 30


def _serve(app: FastAPI, lifespan: Literal["on", "off"]) -> Iterator[str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, lifespan=lifespan, log_level="warning")
    )
    thread = threading.Thread(target=server.run, name="receipt-http", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "the HTTP server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture(scope="module")
def base_url(ledger_env: LedgerEnv) -> Iterator[str]:
    """The module's app (its lifespan already run by the TestClient) behind real HTTP."""
    yield from _serve(ledger_env.client.app, "off")  # type: ignore[arg-type]


def _client(base_url: str, env: LedgerEnv, role: str | None = None, who: Any = None) -> CivisClient:
    api = CivisClient(base_url)
    if role is None:
        return api
    return api.with_key(env.headers(role, who)["Authorization"].removeprefix("Bearer "))


def _subject(api: CivisClient) -> Wallet:
    wallet = Wallet()
    assert api.register(wallet.key, "subject", "citizens")["result"]["status"] == "active"
    return wallet


def _stored(base_url: str, env: LedgerEnv, subjects: list[Wallet]) -> tuple[str, str]:
    """A dataset holding one record of each subject, anchored; (dataset id, upload id)."""
    provider = _client(base_url, env, "provider", env.provider)
    dataset = provider.create_dataset(
        f"receipts-{uuid.uuid4().hex[:10]}",
        category="address",
        purposes=["proof-of-address"],
        retention_days=30,
        legal_basis="contract",
    )["id"]
    lines = "".join(
        json.dumps({"subject_id": s.id, "payload": {"address": f"{i} rue du Reçu"}}) + "\n"
        for i, s in enumerate(subjects)
    ).encode()
    upload = provider.upload(dataset, lines, media_type="application/x-ndjson")
    assert upload["state"] == "anchored"
    return dataset, upload["upload_id"]


def _forged_erasure_request(env: LedgerEnv, subject: str) -> bytes:
    """A well-formed, validly signed request carrying an erasure.record of `subject`, which
    the ledger never ordered."""
    key = SigningKey.generate()
    body = {
        "scope": {"kind": "subject", "subject": subject},
        "key_commitments": [],
        "uploads": [],
        "reason": "dpo_decision",
        "requester": "dpo",
    }
    signed = tx.sign(key, env.chain_id, "erasure.record", body, valid_until=2**40)
    return m.encode(m.make_request(key, 1, signed.encode()))


def _check_with_the_command(
    env: LedgerEnv, tmp_path: Path, cert: dict[str, Any], block: m.Block, erased: str, kept: str
) -> None:
    """`civis-vault wallet verify-erasure`, offline: the erasure's answer, the block's bytes
    (hex), the genesis file."""
    answer, raw = tmp_path / "erasure.json", tmp_path / "block.hex"
    answer.write_text(json.dumps(cert))
    raw.write_text(m.encode(block).hex())
    genesis = env.cluster.directory / GENESIS_FILE
    args = ["wallet", "verify-erasure", "--receipt", str(answer), "--block", str(raw)]
    args += ["--genesis", str(genesis), "--pseudonym"]
    assert cli.main([*args, erased]) == 0
    assert cli.main([*args, kept]) == 1
    raw.write_text("not a block")
    assert cli.main([*args, erased]) == 2


def test_the_receipt_proves_the_subjects_erasure_and_nothing_else(
    ledger_env: LedgerEnv, base_url: str, ledger_database_url: str, tmp_path: Path
) -> None:
    env = ledger_env
    anyone = _client(base_url, env)
    erased, kept = _subject(anyone), _subject(anyone)
    _, upload_id = _stored(base_url, env, [erased, kept])

    cert: dict[str, Any] = dict(anyone.request_erasure(erased.key))
    assert cert["state"] == "recorded" and cert["receipt_key"] is None
    receipt = ErasureReceipt.from_json(cert["erasure_receipt"])
    assert receipt.height == cert["receipt"]["block_height"]
    assert receipt.tx_id == cert["receipt"]["tx_id"]

    validators = env.gateway.validators
    block = env.gateway.block(receipt.height)
    # Attacks first: the ledger's erasure entries name no subject (only the receipt links
    # the erasure to P), and a receipt proves P's erasure, not anyone else's.
    served = codec.encode(env.gateway.query("erasures", limit=1000)["result"])
    assert erased.id.encode() not in served and bytes.fromhex(erased.id) not in served
    assert not receipts.verify(receipt, block, validators, kept.id)
    forged = dataclasses.replace(receipt, request=_forged_erasure_request(env, kept.id))
    assert not receipts.verify(forged, block, validators, kept.id)
    tampered = [
        dataclasses.replace(receipt, height=receipt.height - 1),
        dataclasses.replace(receipt, tx_id="00" * 32),
        dataclasses.replace(
            receipt, request=receipt.request[:-1] + bytes([receipt.request[-1] ^ 1])
        ),
    ]
    earlier = env.gateway.block(receipt.height - 1)
    for bad in tampered:
        assert not receipts.verify(bad, block, validators, erased.id)
        assert not receipts.verify(bad, earlier, validators, erased.id)
    # A block with a forged certificate does not verify, whatever it holds.
    unsigned = dataclasses.replace(block, certificate=tuple(b"\0" * 64 for _ in block.signers))
    assert not receipts.verify(receipt, unsigned, validators, erased.id)

    assert receipts.verify(receipt, block, validators, erased.id)
    segment = [env.gateway.block(h) for h in range(max(1, receipt.height - 3), receipt.height + 1)]
    assert receipts.verify(receipt, segment, validators, erased.id)
    assert receipts.verify(
        ErasureReceipt.decode(receipt.encode()), block, validators, erased.id.upper()
    )
    _check_with_the_command(env, tmp_path, cert, block, erased.id, kept.id)
    _assert_the_vault_forgot(ledger_database_url, cert, erased.id, kept.id, upload_id)


def _assert_the_vault_forgot(
    url: str, cert: dict[str, Any], erased: str, kept: str, upload_id: str
) -> None:
    """The vault forgot P and never kept the receipt in clear (pg_dump), and the upload's
    key-commitments root still holds over what the erasure left of its commitments.

    The controls: the subject kept is found; and what the vault does keep of this receipt
    is found in the encoding a clear copy would have, hex in the erasure fact's row (the
    sealed receipt in its payload, the transaction id beside it), so the absence of the
    request's hex is not the dump's blindness to that row or that encoding."""
    receipt = ErasureReceipt.from_json(cert["erasure_receipt"])
    engine = db.make_engine(url, pool_size=1)
    try:
        with Session(engine) as s:
            fact = s.get(OutboxFact, cert["erasure_id"])
            assert fact is not None and fact.tx_id == receipt.tx_id
            sealed = fact.payload["sealed_receipt"]
            dump = _pg_dump(url)
            assert sealed.encode() in dump and receipt.tx_id.encode() in dump
            assert kept.encode() in dump
            assert erased.encode() not in dump and erased.upper().encode() not in dump
            assert receipt.request.hex().encode() not in dump
            upload = s.get(Upload, uuid.UUID(upload_id))
            assert upload is not None
            leaves = [leaf_hash(c) for c in key_commitments_in_order(s, upload.id)]
            assert merkle_root(leaves) == bytes(upload.commitments_root)
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def slow_answer_url(ledger_env: LedgerEnv, ledger_database_url: str) -> Iterator[str]:
    """A second API instance on the same database and ledger that answers without waiting
    for the ledger (the module's instance runs the relay)."""
    app: FastAPI = ledger_env.client.app  # type: ignore[assignment]
    settings = app.state.settings.model_copy(update={"receipt_wait_s": 0.0})
    slow = create_app(
        settings,
        database_url=ledger_database_url,
        ledger=ledger_env.gateway,
        background_jobs=False,
    )
    yield from _serve(slow, "on")


def _dpo_erases(
    url: str, env: LedgerEnv, subject: Wallet, timeout_s: float = 5.0
) -> httpx.Response:
    """The DPO's erasure of `subject` everywhere, through the API at `url`."""
    return httpx.post(
        f"{url}/v1/erasures",
        json={"subject_id": subject.id},
        headers=env.headers("dpo", env.dpo),
        timeout=timeout_s,
    )


def test_a_pending_answer_gives_the_key_that_opens_the_sealed_receipt_later(
    ledger_env: LedgerEnv, base_url: str, slow_answer_url: str
) -> None:
    env = ledger_env
    subject = _subject(_client(base_url, env))
    _stored(base_url, env, [subject, Wallet()])
    r = _dpo_erases(slow_answer_url, env, subject)
    assert r.status_code == 202, r.text
    cert = r.json()
    assert cert["erasure_receipt"] is None and cert["receipt_key"]

    deadline = time.monotonic() + SEALED_WAIT_S
    while True:  # anyone may fetch it: no API key, and the subject has none left
        got = httpx.get(f"{slow_answer_url}/v1/erasure-receipts/{cert['erasure_id']}")
        assert got.status_code == 200, got.text
        if got.json()["sealed_receipt"] is not None:
            break
        assert time.monotonic() < deadline, "the erasure was not recorded in time"
        time.sleep(0.1)
    sealed = bytes.fromhex(got.json()["sealed_receipt"])
    with pytest.raises(receipts.ReceiptInvalid):
        receipts.open_sealed(sealed, receipts.new_receipt_key()[0])
    receipt = receipts.open_sealed(sealed, bytes.fromhex(cert["receipt_key"]))
    block = env.gateway.block(receipt.height)
    assert receipts.verify(receipt, block, env.gateway.validators, subject.id)
    assert httpx.get(f"{slow_answer_url}/v1/erasure-receipts/999999999").status_code == 404


def test_a_repeated_erasure_answers_the_first_certificate_without_its_receipt(
    ledger_env: LedgerEnv, base_url: str
) -> None:
    """The first call's receipt was sealed to the first caller's key: a repeat gets the same
    certificate, and neither the receipt nor a key that would not open it."""
    env = ledger_env
    subject = _subject(_client(base_url, env))
    dataset, _ = _stored(base_url, env, [subject])
    dpo = env.headers("dpo", env.dpo)
    body = {"subject_id": subject.id, "dataset_id": dataset}
    first = httpx.post(f"{base_url}/v1/erasures", json=body, headers=dpo, timeout=30)
    assert first.status_code == 201, first.text
    assert first.json()["erasure_receipt"] is not None
    again = httpx.post(f"{base_url}/v1/erasures", json=body, headers=dpo, timeout=30)
    assert again.status_code == 201, again.text
    assert again.json()["erasure_id"] == first.json()["erasure_id"]
    assert again.json()["erasure_receipt"] is None and again.json()["receipt_key"] is None
    assert again.json()["erasure_receipt_lost"] is None  # it was made: for the first caller


# -- an erasure recorded without the request that carried it: its receipt never comes --------


@contextlib.contextmanager
def _recorded_without_request(
    env: LedgerEnv, monkeypatch: pytest.MonkeyPatch
) -> Iterator[threading.Event]:
    """The module's relay records erasures on the real ledger, once the event is set, but gets
    back no request that carried them: what it sees when the replicas redacted the request
    before it was read back (ledger_bridge/receipts.py cannot find it in the block)."""
    recorded = threading.Event()
    real = env.gateway.record

    def record(
        fact_id: int, kind: str, payload: dict[str, Any], *, request_id: int, valid_until: int
    ) -> FactReceipt:
        if kind != ERASURE_RECORD:
            return real(fact_id, kind, payload, request_id=request_id, valid_until=valid_until)
        assert recorded.wait(SEALED_WAIT_S), "the test never let the erasure be recorded"
        receipt = real(fact_id, kind, payload, request_id=request_id, valid_until=valid_until)
        return dataclasses.replace(receipt, request=None)

    with monkeypatch.context() as patch:
        patch.setattr(env.gateway, "record", record)
        try:
            yield recorded
        finally:
            recorded.set()  # never leave the module's relay waiting


def _assert_receipt_gone(got: httpx.Response, erasure_id: int) -> None:
    assert got.status_code == 410, got.text
    assert got.headers["content-type"].startswith("application/problem+json")
    problem = got.json()
    assert problem["status"] == 410 and problem["title"] == "Erasure receipt lost"
    assert f"erasure {erasure_id} is recorded on the ledger" in problem["detail"]
    assert f"/v1/erasures/{erasure_id}" in problem["detail"]
    assert "never will be" in problem["detail"]


def test_an_erasure_recorded_without_its_request_says_its_receipt_will_never_come(
    ledger_env: LedgerEnv, base_url: str, slow_answer_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pending answer's sealed receipt is null while the ledger has not recorded the
    erasure; once recorded without a receipt, it is 410 for good, and the client says so
    instead of waiting for it and reporting the erasure "not recorded yet"."""
    env = ledger_env
    subject = _subject(_client(base_url, env))
    _stored(base_url, env, [subject])
    with _recorded_without_request(env, monkeypatch) as recorded:
        r = _dpo_erases(slow_answer_url, env, subject)
        assert r.status_code == 202, r.text
        cert = r.json()
        assert cert["receipt_key"] and cert["erasure_receipt_lost"] is None
        erasure_id = cert["erasure_id"]
        got = httpx.get(f"{slow_answer_url}/v1/erasure-receipts/{erasure_id}")
        assert got.status_code == 200, got.text
        assert got.json() == {"erasure_id": erasure_id, "sealed_receipt": None}
        recorded.set()
        with pytest.raises(ErasureReceiptLost, match=f"erasure {erasure_id} is recorded"):
            _client(slow_answer_url, env).erasure_receipt(cert, wait_s=SEALED_WAIT_S)
    _assert_receipt_gone(
        httpx.get(f"{slow_answer_url}/v1/erasure-receipts/{erasure_id}"), erasure_id
    )
    shown = httpx.get(f"{base_url}/v1/erasures/{erasure_id}", headers=env.headers("dpo"))
    assert shown.status_code == 200 and shown.json()["state"] == "recorded", shown.text


def test_a_recorded_answer_without_its_receipt_says_why_and_not_that_it_was_repeated(
    ledger_env: LedgerEnv, base_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The answer that waited for the ledger carries neither the receipt nor a key (nothing
    would ever open): `erasure_receipt_lost` tells it apart from a repeated erasure's."""
    env = ledger_env
    subject = _subject(_client(base_url, env))
    _stored(base_url, env, [subject])
    with _recorded_without_request(env, monkeypatch) as recorded:
        recorded.set()
        r = _dpo_erases(base_url, env, subject, timeout_s=30)
    assert r.status_code == 201, r.text
    cert = r.json()
    assert cert["state"] == "recorded"
    assert cert["erasure_receipt"] is None and cert["receipt_key"] is None
    erasure_id = cert["erasure_id"]
    assert f"erasure {erasure_id} is recorded on the ledger" in cert["erasure_receipt_lost"]
    with pytest.raises(ErasureReceiptLost, match="never will be"):
        _client(base_url, env).erasure_receipt(cert)
    _assert_receipt_gone(httpx.get(f"{base_url}/v1/erasure-receipts/{erasure_id}"), erasure_id)


REDACTION_BLOCKS_MAX = 200  # the erasure's checkpoint (every 32 blocks) must become stable
# Blocks an erasure's answer may take to come back (the subject's request, the relay's
# erasure.record, whatever else the vault submits meanwhile), with room to spare.
ERASURE_BLOCKS_MAX = 10


def _far_from_a_checkpoint(env: LedgerEnv, anyone: CivisClient) -> None:
    """Traffic until no checkpoint falls in the next ERASURE_BLOCKS_MAX blocks. A block is
    redacted once the checkpoint after it is stable, and checkpoints move only with traffic:
    a block committed in that stretch stays as committed until the test moves them on."""
    interval = cluster_config(env.cluster.genesis).checkpoint_interval
    for _ in range(interval):
        executed = max(int((env.cluster.status(i) or {}).get("last_executed", 0)) for i in range(4))
        if interval - executed % interval > ERASURE_BLOCKS_MAX:
            return
        _subject(anyone)
    raise AssertionError("the ledger never left the stretch before a checkpoint")


def test_once_the_replicas_redacted_the_erasure_only_the_receipt_links_it_to_the_subject(
    ledger_env: LedgerEnv, base_url: str
) -> None:
    """The replicas drop the body of every request naming P, the erasure.record's own and
    P's registration included, once the erasure's checkpoint is stable: each replica's copy
    of those blocks then holds digests and nothing naming P, and the receipt still verifies
    against the erasure's. The control: the same copies, read before the redaction, name P
    in each form looked for (the erasure's by P's key in hex, the registration's raw)."""
    env = ledger_env
    anyone = _client(base_url, env)
    erased = Wallet()
    joined = anyone.register(erased.key, "subject", "citizens")
    assert joined["result"]["status"] == "active"
    _stored(base_url, env, [erased])
    _far_from_a_checkpoint(env, anyone)
    cert: dict[str, Any] = dict(anyone.request_erasure(erased.key))
    receipt = ErasureReceipt.from_json(cert["erasure_receipt"])
    ours = digest(receipt.request)
    named = {"key hex": erased.id.encode(), "key raw": bytes.fromhex(erased.id)}
    heights = (joined["receipt"]["block_height"], receipt.height)
    for i in range(4):  # every replica's copies, as committed, hold every form of P's key
        committed = [env.gateway.block(h, replica=i) for h in heights]
        assert ours not in {o.request_digest for o in committed[1].omitted}
        held = b"".join(m.encode(b) for b in committed)
        assert {what for what, n in named.items() if n in held} == set(named)
    for _ in range(REDACTION_BLOCKS_MAX):  # traffic moves the checkpoints on
        blocks = [env.gateway.block(receipt.height, replica=i) for i in range(4)]
        if all(ours in {o.request_digest for o in b.omitted} for b in blocks):
            break
        _subject(anyone)
    else:
        raise AssertionError("the replicas never redacted the erasure's request")
    # Redactions due at one checkpoint are applied together: the registration's with ours.
    for block in blocks + [env.gateway.block(heights[0], replica=i) for i in range(4)]:
        left = [what for what, n in named.items() if n in m.encode(block)]
        assert left == [], f"P's key ({left}) still in block {block.height}"
    for block in blocks:
        assert receipts.verify(receipt, block, env.gateway.validators, erased.id)


# -- the relay's receipt when the replicas answer its erasure only after redacting it ---------


@contextlib.contextmanager
def _deaf_relay(
    env: LedgerEnv, *, timeout_ms: int, relay_key: SigningKey | None = None
) -> Iterator[tuple[LedgerGateway, threading.Event, ThreadPoolExecutor]]:
    """A gateway of the vault whose relay hears no reply until the event is set: what a relay
    under load sees when the replies to its submission come too late; and a thread to submit
    from in the background. Its relay has a key of its own (`relay_key`, or a new one), so its
    request ids never meet those of the module's relay.

    On the way out the replies are let through before the background thread is waited for:
    a failing test gets its submission answered, rather than waiting out its timeout."""
    gateway = LedgerGateway(
        env.cluster.genesis,
        env.gateway.vault_key,
        clients=1,
        relay_key=relay_key or SigningKey.generate(),
        timeout_ms=timeout_ms,
    )
    hearing = threading.Event()
    heard = gateway._relay._on_reply

    def withheld(replica: int, reply: bytes, authenticated: bool = False) -> None:
        if hearing.is_set():
            heard(replica, reply, authenticated)

    gateway._transport.on_reply(gateway._relay.client_id, withheld)
    background = ThreadPoolExecutor(1)
    try:
        yield gateway, hearing, background
    finally:
        hearing.set()
        background.shutdown(wait=True)
        gateway.close()


def _erasure_of(subject: Wallet) -> dict[str, Any]:
    """The payload of an erasure fact that forgets `subject` everywhere."""
    return {
        "scope": {"kind": "subject", "subject": subject.id},
        "key_commitments": [],
        "uploads": [],
        "secrets_destroyed": 0,
        "reason": "subject_request",
        "requester": "subject",
        "at": "2026-12-05T00:00:00+00:00",
    }


def _redactions_applied(env: LedgerEnv) -> int:
    return min(int((env.cluster.status(i) or {}).get("redactions_applied", 0)) for i in range(4))


def _wait_redactions(env: LedgerEnv, at_least: int) -> None:
    """Until every replica applied `at_least` redaction entries: the erasure's checkpoint is
    stable and its block holds the digests of what it forgot, no longer their bodies."""
    for _ in range(REDACTION_BLOCKS_MAX):
        if _redactions_applied(env) >= at_least:
            return
        env.register_subject()  # traffic moves the checkpoints on
    raise AssertionError("the replicas never redacted the erasure's request")


def _assert_sealable(env: LedgerEnv, receipt: FactReceipt, subject: Wallet) -> None:
    """The fact's receipt holds the request that carried the erasure, although the block it
    committed in no longer holds it; the subject's receipt verifies against that block."""
    block = env.gateway.block(receipt.block_height)
    assert receipts.find_request(block, bytes.fromhex(receipt.tx_id)) is None
    assert receipt.request is not None, "the erasure is recorded without its request"
    erasure = ErasureReceipt(receipt.block_height, receipt.request, receipt.tx_id)
    assert receipts.verify(erasure, block, env.gateway.validators, subject.id)


def test_a_relay_answered_only_after_the_redaction_still_holds_the_erasures_request(
    ledger_env: LedgerEnv,
) -> None:
    """The replicas execute the relay's erasure, but their replies are lost until the
    erasure's block was redacted: the relay's retransmission is then answered from the reply
    cache, whose result is withheld (`REDACTED`). What committed is the very request the
    relay sent (same key, request id and transaction: the same bytes), so the relay's
    receipt holds it, not the redacted block's copy, which is gone."""
    env = ledger_env
    subject = env.register_subject()
    payload = _erasure_of(subject)
    applied = _redactions_applied(env)
    fact_id = uuid.uuid4().int >> 80
    with _deaf_relay(env, timeout_ms=120_000) as (gateway, hearing, background):
        recording = background.submit(
            gateway.record,
            fact_id,
            ERASURE_RECORD,
            payload,
            request_id=1,
            valid_until=gateway.valid_until(None),
        )
        _wait_redactions(env, applied + 2)  # the registration and the erasure itself
        assert not recording.done()
        hearing.set()
        receipt = recording.result(timeout=60)
    _assert_sealable(env, receipt, subject)


def test_a_relay_retry_after_no_answer_sends_the_same_request_and_gets_its_receipt(
    ledger_env: LedgerEnv,
) -> None:
    """The relay's erasure committed but no reply reached it before its timeout; the relay
    tries again under the same request id once the erasure's block was redacted. The retry
    sends the transaction it sent first, not a new signature of it (whose request the block
    never held), so the answer from the reply cache leads to the request that committed."""
    env = ledger_env
    subject = env.register_subject()
    payload = _erasure_of(subject)
    applied = _redactions_applied(env)
    fact_id = uuid.uuid4().int >> 80
    with _deaf_relay(env, timeout_ms=4_000) as (gateway, hearing, _):
        valid_until = gateway.valid_until(None)  # as the relay stores it before submitting
        with pytest.raises(LedgerError):
            gateway.record(fact_id, ERASURE_RECORD, payload, request_id=1, valid_until=valid_until)
        _wait_redactions(env, applied + 2)
        hearing.set()
        receipt = gateway.record(
            fact_id, ERASURE_RECORD, payload, request_id=1, valid_until=valid_until
        )
    _assert_sealable(env, receipt, subject)


def test_another_workers_retry_after_no_answer_sends_the_same_request_and_gets_its_receipt(
    ledger_env: LedgerEnv,
) -> None:
    """As above, but the retry comes from another worker process of the instance (or from
    this one restarted after a crash): a gateway of its own with the same relay key, which
    never saw the first submission. It signs the transaction with the fact's stored
    `valid_until`, so it sends the very request that committed, byte for byte."""
    env = ledger_env
    subject = env.register_subject()
    payload = _erasure_of(subject)
    applied = _redactions_applied(env)
    fact_id = uuid.uuid4().int >> 80
    relay_key = SigningKey.generate()
    with _deaf_relay(env, timeout_ms=4_000, relay_key=relay_key) as (first, _, _):
        valid_until = first.valid_until(None)  # as the relay stores it before submitting
        with pytest.raises(LedgerError):
            first.record(fact_id, ERASURE_RECORD, payload, request_id=1, valid_until=valid_until)
    _wait_redactions(env, applied + 2)
    time.sleep(0.01)  # the other worker's clock has moved on
    second = LedgerGateway(
        env.cluster.genesis, env.gateway.vault_key, clients=1, relay_key=relay_key
    )
    try:
        # What the other worker's relay reads in the fact's row, and keeps: minutes to go.
        assert second.valid_until(valid_until) == valid_until
        receipt = second.record(
            fact_id, ERASURE_RECORD, payload, request_id=1, valid_until=valid_until
        )
    finally:
        second.close()
    _assert_sealable(env, receipt, subject)
