"""`api.client` against the real API: the app over a four-replica consent-contracts cluster.

What a user of the client would notice: a signed step is one call and the ledger accepts its
signature; an upload streams from a file with its progress reported and comes back anchored;
list routes are iterated across pages without a gap or a repeat; and every refusal arrives
as the exception of its status carrying the problem's title, detail and contract code, while
a missing server stays a transport error.
"""

from __future__ import annotations

import json
import socket
import uuid
from pathlib import Path

import httpx
import pytest

from api.client import (
    CivisClient,
    ClientError,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    ProblemError,
    TooManyRequests,
    Unauthorized,
    Unavailable,
    Unprocessable,
    public_hex,
)
from api.client.errors import problem_from
from tests.api.ledger_env import LedgerEnv, Wallet
from tests.api.test_consented_access import notice


def _token(headers: dict[str, str]) -> str:
    return headers["Authorization"].removeprefix("Bearer ")


def _api(env: LedgerEnv, role: str | None = None, member: Wallet | None = None) -> CivisClient:
    api = CivisClient(http=env.client)
    return api if role is None else api.with_key(_token(env.headers(role, member)))


def _dataset(provider: CivisClient, purpose: str = "proof-of-address") -> str:
    return provider.create_dataset(
        f"client-{uuid.uuid4().hex[:12]}",
        category="address",
        purposes=[purpose],
        retention_days=30,
        legal_basis="contract",
    )["id"]


def _subject(env: LedgerEnv) -> Wallet:
    wallet = Wallet()
    out = _api(env).register(wallet.key, "subject", "citizens")
    assert out["result"]["status"] == "active" and out["receipt"]["block_height"] >= 1
    return wallet


def test_an_upload_streams_from_a_file_reports_progress_and_comes_back_anchored(
    ledger_env: LedgerEnv, tmp_path: Path
) -> None:
    subjects = [_subject(ledger_env) for _ in range(3)]
    provider = _api(ledger_env, "provider", ledger_env.provider)
    dataset = _dataset(provider)
    path = tmp_path / "addresses.ndjson"
    lines = [
        json.dumps(
            {"subject_id": s.id, "payload": {"address": f"{i} rue du Client", "pad": "x" * 900}}
        )
        for i, s in enumerate(subjects)
    ]
    path.write_text("\n".join(lines) + "\n")
    seen: list[tuple[int, int | None]] = []

    upload = provider.upload(
        dataset, path, chunk_bytes=1024, progress=lambda sent, total: seen.append((sent, total))
    )

    size = path.stat().st_size
    assert upload["record_count"] == 3 and upload["state"] == "anchored"
    assert upload["receipt"] is not None and upload["receipt"]["block_height"] >= 1
    # One call per chunk, growing to the whole file, the total known from the file's size.
    assert len(seen) == -(-size // 1024) and seen[-1] == (size, size)
    assert [s for s, _ in seen] == sorted({s for s, _ in seen})
    assert provider.wait_anchored(dataset, upload["upload_id"]) == upload
    streamed = list(provider.iter_records(dataset))
    assert sorted(r["subject_id"] for r in streamed) == sorted(s.id for s in subjects)
    assert all(r["proof"]["merkle_root"] == upload["merkle_root"] for r in streamed)


def test_signed_steps_consent_predicate_revocation_and_the_subjects_erasure(
    ledger_env: LedgerEnv,
) -> None:
    env = ledger_env
    citizen = _subject(env)
    provider = _api(env, "provider", env.provider)
    bank = _api(env, "consumer", env.consumer)
    dataset = _dataset(provider, "proof-of-address")
    row = json.dumps({"subject_id": citizen.id, "payload": {"address": "1 quai du Test"}})
    provider.upload(dataset, (row + "\n").encode())

    def ask() -> bool:
        answer = bank.predicate(
            dataset,
            "proof-of-address",
            subject=citizen.id,
            field="address",
            op="eq",
            value="1 quai du Test",
        )
        return answer["result"]

    with pytest.raises(Forbidden) as refused:
        ask()
    assert refused.value.code == "no_consent" and refused.value.status_code == 403
    assert refused.value.title and "no consent in force" in refused.value.detail
    assert refused.value.path == "/v1/access-requests" and refused.value.method == "POST"

    api = _api(env)
    api.grant_consent(
        citizen.key,
        consumer=env.consumer.id,
        purpose="proof-of-address",
        notice=notice(env, "proof-of-address"),
        dataset=dataset,
    )
    assert ask() is True
    api.revoke_consent(
        citizen.key, consumer=env.consumer.id, purpose="proof-of-address", dataset=dataset
    )
    with pytest.raises(Forbidden):
        ask()

    mine = _api(env, "subject", citizen)
    assert [c["granted"] for c in mine.export(citizen.id)["consents"]] == [False]
    cert = api.request_erasure(citizen.key)
    assert cert["requester"] == "subject" and cert["secrets_destroyed"] >= 1
    # Erased everywhere, the vault forgot the pseudonym, its API keys included.
    with pytest.raises(Unauthorized):
        mine.export(citizen.id)
    assert _api(env, "dpo", env.dpo).export(citizen.id)["records"] == []
    # The answer's receipt is the subject's proof; the sealed copy, served to anyone, is
    # ciphertext without the key, and an answer with neither cannot give one.
    receipt = cert["erasure_receipt"]
    assert receipt is not None and cert["receipt_key"] is None
    assert api.erasure_receipt(cert) == receipt
    assert cert["receipt"] is not None and receipt["tx_id"] == cert["receipt"]["tx_id"]
    sealed = api.sealed_receipt(cert["erasure_id"])["sealed_receipt"]
    assert sealed is not None and receipt["request"] not in sealed
    with pytest.raises(ClientError):
        api.erasure_receipt({**cert, "erasure_receipt": None})


def test_purposes_carry_their_declarations(ledger_env: LedgerEnv) -> None:
    """What a consent may disclose is read from the purpose's declaration: its modes,
    narrowest first, bound a consent's `mode`."""
    purposes = _api(ledger_env, "consumer", ledger_env.consumer).purposes()
    assert purposes["height"] >= 1
    by_name = {p["purpose"]: p for p in purposes["purposes"]}
    declared = by_name["proof-of-address"]["declaration"]
    assert declared is not None and "address" in declared["fields"]
    assert set(declared["modes"]) <= {"predicate", "projection", "full"}
    with pytest.raises(Unauthorized):
        _api(ledger_env).purposes()


def test_a_signature_by_another_key_is_refused_as_forbidden(ledger_env: LedgerEnv) -> None:
    """The client signs with the key it is given: a draft for one author signed by another
    key is what a forger would send, and the API says so with a typed refusal."""
    api = _api(ledger_env)
    author, forger = Wallet(), Wallet()
    draft = api.draft(author.id, "member.register", {"role": "subject", "college": "citizens"})
    forged = forger.key.sign(bytes.fromhex(draft["signing_payload"])).hex()
    with pytest.raises(Forbidden) as refused:
        api.request(
            "POST",
            "/v1/members",
            json_body={"transaction": draft["transaction"], "signature": forged},
        )
    assert "signature does not verify" in refused.value.detail
    assert public_hex(author.key) == author.id


def test_list_routes_are_iterated_page_by_page_without_gap_or_repeat(
    ledger_env: LedgerEnv,
) -> None:
    env = ledger_env
    for _ in range(3):
        _subject(env)
    dpo = _api(env, "dpo", env.dpo)
    heights = [b["height"] for b in dpo.iter_blocks(limit=2)]
    assert len(heights) > 4 and heights == list(range(1, len(heights) + 1))

    citizen = _subject(env)
    provider = _api(env, "provider", env.provider)
    dataset = _dataset(provider, "billing")  # billing reads whole records
    row = json.dumps({"subject_id": citizen.id, "payload": {"address": "2 quai du Test"}})
    provider.upload(dataset, (row + "\n").encode())
    _api(env).grant_consent(
        citizen.key,
        consumer=env.consumer.id,
        purpose="billing",
        notice=notice(env, "billing"),
        dataset=dataset,
    )
    bank = _api(env, "consumer", env.consumer)
    accesses = [bank.access(dataset, "billing")["access"] for _ in range(3)]
    logged = [a["access"] for a in dpo.iter_access_log(subject=citizen.id, limit=1)]
    assert logged == accesses


def test_refusals_arrive_as_the_exception_of_their_status(ledger_env: LedgerEnv) -> None:
    env = ledger_env
    with pytest.raises(Unauthorized):
        _api(env).with_key("cvk_unknown_secret").datasets()
    provider = _api(env, "provider", env.provider)
    with pytest.raises(NotFound) as missing:
        provider.dataset("00000000-0000-4000-8000-000000000000")
    assert missing.value.status_code == 404 and missing.value.code is None
    dataset = _dataset(provider, "research")
    with pytest.raises(Unprocessable) as bad:
        good = json.dumps({"subject_id": "a" * 64, "payload": {"n": 1}})
        provider.upload(dataset, f"{good}\nnot json\n".encode())
    assert bad.value.line == 2 and bad.value.body["status"] == 422
    too_big = b"x" * (300 * 1024)  # the test app's body limit is 256 KiB
    with pytest.raises(PayloadTooLarge):
        provider.upload(dataset, too_big)
    with pytest.raises(ValueError, match="exactly one of dataset or category"):
        _api(env).grant_consent(
            Wallet().key, consumer=env.consumer.id, purpose="research", notice="00" * 32
        )


def _answer(status: int, body: bytes, headers: dict[str, str]) -> httpx.Response:
    request = httpx.Request("GET", "http://vault.test/v1/datasets")
    return httpx.Response(status, content=body, headers=headers, request=request)


def test_a_problem_keeps_its_members_and_retry_after_whatever_the_body() -> None:
    problem = {
        "type": "about:blank",
        "title": "Too many uploads",
        "status": 429,
        "detail": "this API key already runs 2 uploads",
        "instance": "/v1/datasets",
    }
    busy = problem_from(
        _answer(
            429,
            json.dumps(problem).encode(),
            {"Retry-After": "2", "Content-Type": "application/problem+json"},
        )
    )
    assert isinstance(busy, TooManyRequests) and busy.retry_after_s == 2.0
    assert (busy.title, busy.detail, busy.instance) == (
        problem["title"],
        problem["detail"],
        "/v1/datasets",
    )
    # A proxy's HTML page in front of the API is still a typed problem, its text cut short.
    down = problem_from(
        _answer(503, b"<html>" + b"x" * 5000 + b"</html>", {"Content-Type": "text/html"})
    )
    assert isinstance(down, Unavailable) and down.title == "Service Unavailable"
    assert len(down.detail) <= 300 and down.retry_after_s is None
    other = problem_from(_answer(418, b"{}", {}))
    assert type(other) is ProblemError and other.status_code == 418


def test_no_server_is_a_transport_error_not_a_problem() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with (
        CivisClient(f"http://127.0.0.1:{port}", timeout_s=5) as api,
        pytest.raises(httpx.TransportError),
    ):
        api.health()


def test_the_client_imports_nothing_of_the_server_side() -> None:
    """A user installs the client to talk to the API over HTTP: it must not pull in the
    server's rooms (HTTP app, services, command line), its web stack or its database layer.
    (The wallet derives pseudonyms with the vault's HKDF: a primitive, not the vault.)"""
    import ast

    root = Path(__file__).resolve().parents[2]
    server_side = ("api.http", "api.services", "api.cli", "fastapi", "starlette", "sqlalchemy")
    offenders = []
    for path in sorted((root / "api" / "client").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom) and node.level == 0
                else []
            )
            offenders += [
                f"{path.name} imports {n}"
                for n in names
                if any(n == s or n.startswith(s + ".") for s in server_side)
            ]
    assert offenders == []
