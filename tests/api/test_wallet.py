"""The subject's wallet: a 0600 key file never overwritten, signatures the ledger verifies,
one pseudonym per dataset derived as docs/KEYS.md ("Identities") says, and, after an erasure,
the erasure receipt it kept, which `verify-erasure` accepts against the real ledger's block."""

from __future__ import annotations

import hashlib
import hmac
import json
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from api.cli import main
from api.client import CivisClient, public_hex
from api.client.wallet import Wallet, WalletError, new_wallet, pairwise_seed, pseudonym_key
from api.http.app import create_app
from ledger_bridge.contracts import tx
from ledger_bridge.crypto import SigningKey, verify
from ledger_bridge.genesis import GENESIS_FILE
from ledger_bridge.pbft import messages as m
from tests.api.ledger_env import LedgerEnv
from tests.api.test_erasure_receipt import _serve


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    code = main(["wallet", *argv])
    out = capsys.readouterr().out
    return code, json.loads(out) if code == 0 else {}


def test_new_sign_verify(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "w" / "subject.key"
    code, made = _run(capsys, "new", "--key", str(key))
    assert code == 0
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    public = made["public_key"]
    assert _run(capsys, "pubkey", "--key", str(key))[1]["public_key"] == public
    message = b"consent.grant bytes handed out by the API"
    code, signed = _run(capsys, "sign", "--key", str(key), "--hex", message.hex())
    assert code == 0
    assert verify(bytes.fromhex(public), message, bytes.fromhex(signed["signature"]))
    assert not verify(bytes.fromhex(public), message + b"!", bytes.fromhex(signed["signature"]))
    blob = tmp_path / "tx.bin"
    blob.write_bytes(message)
    assert _run(capsys, "sign", "--key", str(key), "--file", str(blob))[1] == signed


def test_refusals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "subject.key"
    assert _run(capsys, "new", "--key", str(key))[0] == 0
    before = key.read_bytes()
    assert main(["wallet", "new", "--key", str(key)]) == 2  # never overwritten
    assert key.read_bytes() == before
    assert main(["wallet", "sign", "--key", str(key), "--hex", "zz"]) == 2
    assert main(["wallet", "sign", "--key", str(key), "--hex", ""]) == 2
    key.chmod(0o644)
    assert main(["wallet", "sign", "--key", str(key), "--hex", "00"]) == 2
    err = capsys.readouterr().err
    assert before.decode().strip() not in err  # the seed never reaches an error message


# -- pairwise pseudonyms --------------------------------------------------------------------

DATASET = "0b7d5c1e-6a53-4f0e-9d0c-2f6f3f1b8a11"
OTHER = "5e0b3c9a-1f4d-4c7e-8a2b-9d6e0f1a2b3c"


def _hkdf_rfc5869(ikm: bytes, info: bytes) -> bytes:
    """RFC 5869 written out with the standard library, to hold the wallet to the design."""
    prk = hmac.new(b"\0" * 32, ikm, hashlib.sha256).digest()
    return hmac.new(prk, info + b"\x01", hashlib.sha256).digest()


def test_the_derivation_is_the_designs(tmp_path: Path) -> None:
    master = new_wallet(tmp_path / "w.key")
    for generation in (0, 1, 2**32 - 1):
        info = b"civis-vault/pairwise/v1" + DATASET.encode() + generation.to_bytes(4, "big")
        expected = _hkdf_rfc5869(master.seed(), info)
        assert pairwise_seed(master.seed(), DATASET, generation) == expected
        key = pseudonym_key(master, DATASET, generation)
        assert key.seed() == expected and key.public_key != master.public_key
    with pytest.raises(WalletError):
        pairwise_seed(master.seed(), DATASET, 2**32)


def test_pseudonym_and_sign_per_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "alice.key"
    master = _run(capsys, "new", "--key", str(key))[1]["public_key"]
    code, nym = _run(capsys, "pseudonym", "--key", str(key), "--dataset", DATASET)
    assert code == 0 and nym["generation"] == 0 and nym["dataset"] == DATASET
    other = _run(capsys, "pseudonym", "--key", str(key), "--dataset", OTHER)[1]
    assert len({master, nym["public_key"], other["public_key"]}) == 3
    # One dataset, one pseudonym: the id's spelling does not make a second one.
    again = _run(capsys, "pseudonym", "--key", str(key), "--dataset", DATASET.upper())[1]
    assert again["public_key"] == nym["public_key"]
    message = b"consent.grant bytes"
    code, signed = _run(capsys, "sign", "--key", str(key), "--dataset", DATASET, "--hex", "ab")
    assert code == 0 and signed["public_key"] == nym["public_key"]
    signed = _run(capsys, "sign", "--key", str(key), "--dataset", OTHER, "--hex", message.hex())[1]
    assert verify(bytes.fromhex(other["public_key"]), message, bytes.fromhex(signed["signature"]))
    assert not verify(bytes.fromhex(nym["public_key"]), message, bytes.fromhex(signed["signature"]))
    # The relationships file sits beside the key, private, and links only inside the wallet.
    state = tmp_path / "alice.key.pairwise.json"
    assert stat.S_IMODE(state.stat().st_mode) == 0o600
    assert set(json.loads(state.read_text())["datasets"]) == {DATASET, OTHER}
    assert main(["wallet", "pseudonym", "--key", str(key), "--dataset", "not-a-uuid"]) == 2


def _erasure_receipt(subject: str, dataset: str | None = None) -> dict[str, Any]:
    """A receipt whose request carries a validly signed erasure.record of `subject` (which no
    ledger ordered: what the wallet checks offline is whose erasure the receipt is)."""
    key = SigningKey.generate()
    scope = {"kind": "subject", "subject": subject}
    if dataset is not None:
        scope["dataset"] = dataset
    body = {"scope": scope, "key_commitments": [], "uploads": [], "reason": "dpo_decision"}
    body["requester"] = "dpo"
    signed = tx.sign(key, "civis-test", "erasure.record", body, valid_until=2**40)
    request = m.encode(m.make_request(key, 1, signed.encode()))
    return {"height": 42, "request": request.hex(), "tx_id": signed.tx_id.hex()}


def _certificate(subject: str, receipt: dict[str, Any] | None) -> dict[str, object]:
    ledger = None if receipt is None else {"tx_id": receipt["tx_id"], "block_height": 42}
    return {
        "erasure_id": 7,
        "state": "recorded" if receipt else "pending",
        "scope": {"type": "subject", "subject_id": subject},
        "receipt": ledger,
        "erasure_receipt": receipt,
        "receipt_key": None,
    }


def test_an_erasure_raises_the_generation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = tmp_path / "alice.key"
    _run(capsys, "new", "--key", str(key))
    before = _run(capsys, "pseudonym", "--key", str(key), "--dataset", DATASET)[1]["public_key"]
    beside = _run(capsys, "pseudonym", "--key", str(key), "--dataset", OTHER)[1]["public_key"]
    cert = tmp_path / "cert.json"
    receipt = _erasure_receipt(before)

    def erased(certificate: dict[str, object]) -> tuple[int, dict[str, Any]]:
        cert.write_text(json.dumps(certificate))
        return _run(
            capsys, "erased", "--key", str(key), "--dataset", DATASET, "--certificate", str(cert)
        )

    # Another pseudonym's certificate, or one without the erasure receipt, changes nothing;
    # so does a receipt of another pseudonym's erasure (or of this one's in another dataset)
    # under a certificate that names no one or names this pseudonym.
    assert erased(_certificate(beside, _erasure_receipt(beside)))[0] == 2
    assert erased(_certificate(before, None))[0] == 2
    pending = {**_certificate(before, None), "receipt_key": "11" * 32}
    assert erased(pending)[0] == 2
    for foreign in (_erasure_receipt(beside), _erasure_receipt(before, OTHER)):
        assert erased(_certificate(before, foreign))[0] == 2
        assert erased({**_certificate(before, foreign), "scope": {"type": "subject"}})[0] == 2
    tampered = {**receipt, "tx_id": "ab" * 32}
    assert erased(_certificate(before, tampered))[0] == 2
    assert erased({**_certificate(before, receipt), "erasure_receipt": {"height": 1}})[0] == 2
    assert _run(capsys, "pseudonym", "--key", str(key), "--dataset", DATASET)[1]["generation"] == 0
    code, out = erased(_certificate(before, receipt))
    assert code == 0 and out["erased"] == before and out["generation"] == 1
    after = _run(capsys, "pseudonym", "--key", str(key), "--dataset", DATASET)[1]
    assert after["public_key"] == out["public_key"] != before and after["generation"] == 1
    # The erased pseudonym is never used again; the other dataset keeps its own.
    assert erased(_certificate(before, receipt))[0] == 2
    assert (
        _run(capsys, "pseudonym", "--key", str(key), "--dataset", OTHER)[1]["public_key"] == beside
    )
    kept = {
        "generation": 0,
        "pseudonym": before,
        "erasure_id": 7,
        "receipt": {"tx_id": receipt["tx_id"], "block_height": 42},
        "erasure_receipt": receipt,
    }
    assert Wallet.open(key).datasets[DATASET].erasures == [kept]
    assert Wallet.open(key).pseudonyms()[DATASET].public_key.hex() == after["public_key"]
    # A certificate from a vault that has forgotten the subject names no one: the receipt's
    # own transaction says whose erasure it is.
    receipt = _erasure_receipt(after["public_key"], DATASET)
    forgotten = {**_certificate(before, receipt), "scope": {"type": "subject"}}
    code, out = erased(forgotten)
    assert code == 0 and out["erased"] == after["public_key"] and out["generation"] == 2
    assert erased({**forgotten, "scope": None})[0] == 2
    # `wallet receipt` prints what was kept, latest first, as verify-erasure reads it.
    shown = _run(capsys, "receipt", "--key", str(key), "--dataset", DATASET)[1]
    assert shown["erasure_receipt"] == receipt and shown["pseudonym"] == after["public_key"]
    first = _run(capsys, "receipt", "--key", str(key), "--dataset", DATASET, "--generation", "0")
    assert first[1] == {"dataset": DATASET, **kept}
    assert main(["wallet", "receipt", "--key", str(key), "--dataset", OTHER]) == 2


def test_the_relationships_file_is_private_and_well_formed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = tmp_path / "alice.key"
    _run(capsys, "new", "--key", str(key))
    assert _run(capsys, "pseudonym", "--key", str(key), "--dataset", DATASET)[0] == 0
    state = tmp_path / "alice.key.pairwise.json"
    good = state.read_bytes()
    state.chmod(0o644)
    assert main(["wallet", "pseudonym", "--key", str(key), "--dataset", DATASET]) == 2
    state.chmod(0o600)
    for bad in (
        b"{}",
        b"[1]",
        b'{"format": "civis-vault/wallet-pairwise/v1", "datasets": '
        b'{"x": {"generation": 0, "erasures": []}}}',
        good.replace(b'"generation": 0', b'"generation": true'),
    ):
        state.write_bytes(bad)
        assert main(["wallet", "pseudonym", "--key", str(key), "--dataset", DATASET]) == 2
    assert "Traceback" not in capsys.readouterr().err


# -- over the real API and ledger: what the wallet kept verifies ------------------------------


@pytest.fixture(scope="module")
def slow_answer_url(ledger_env: LedgerEnv, ledger_database_url: str) -> Iterator[str]:
    """An API instance on the module's database and ledger that answers before the ledger
    records anything (202, `receipt_key`); the module's own instance runs the relay."""
    app: FastAPI = ledger_env.client.app  # type: ignore[assignment]
    settings = app.state.settings.model_copy(update={"receipt_wait_s": 0.0})
    slow = create_app(
        settings, database_url=ledger_database_url, ledger=ledger_env.gateway, background_jobs=False
    )
    yield from _serve(slow, "on")


def _joined(env: LedgerEnv, wallet: Wallet) -> tuple[str, str]:
    """A new dataset holding one record of the wallet's pseudonym there; (dataset, pseudonym)."""
    provider = CivisClient(http=env.client).with_key(
        env.headers("provider", env.provider)["Authorization"].removeprefix("Bearer ")
    )
    dataset = provider.create_dataset(
        f"wallet-{uuid.uuid4().hex[:10]}",
        category="address",
        purposes=["proof-of-address"],
        retention_days=30,
        legal_basis="contract",
    )["id"]
    key = wallet.pseudonym(dataset)
    CivisClient(http=env.client).register(key, "subject", "citizens")
    line = json.dumps({"subject_id": public_hex(key), "payload": {"address": "1 rue du Reçu"}})
    upload = provider.upload(dataset, (line + "\n").encode(), media_type="application/x-ndjson")
    assert upload["state"] == "anchored"
    return dataset, public_hex(key)


def _verified(
    env: LedgerEnv, tmp_path: Path, capsys: pytest.CaptureFixture[str], key: Path, dataset: str
) -> dict[str, int]:
    """verify-erasure's exit code, from what `wallet receipt` printed, for the erased
    pseudonym and for the dataset's next one."""
    code, kept = _run(capsys, "receipt", "--key", str(key), "--dataset", dataset)
    assert code == 0
    receipt, block = tmp_path / "kept.json", tmp_path / "block.hex"
    receipt.write_text(json.dumps(kept))
    block.write_text(m.encode(env.gateway.block(kept["erasure_receipt"]["height"])).hex())
    args = ["wallet", "verify-erasure", "--receipt", str(receipt), "--block", str(block)]
    args += ["--genesis", str(env.cluster.directory / GENESIS_FILE), "--pseudonym"]
    following = Wallet.open(key).pseudonym(dataset).public_key.hex()
    return {
        who: main([*args, nym]) for who, nym in (("erased", kept["pseudonym"]), ("next", following))
    }


def test_the_wallet_keeps_a_receipt_that_proves_the_erasure(
    ledger_env: LedgerEnv, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The subject's own request answered at once: the certificate's receipt is kept."""
    key = tmp_path / "alice.key"
    wallet = Wallet.create(key)
    dataset, nym = _joined(ledger_env, wallet)
    cert = CivisClient(http=ledger_env.client).request_erasure(wallet.pseudonym(dataset))
    assert cert["state"] == "recorded" and cert["erasure_receipt"] is not None
    path = tmp_path / "cert.json"
    path.write_text(json.dumps(cert))
    argv = ["erased", "--key", str(key), "--dataset", dataset, "--certificate", str(path)]
    code, out = _run(capsys, *argv)
    assert code == 0 and out["erased"] == nym
    assert _verified(ledger_env, tmp_path, capsys, key, dataset) == {"erased": 0, "next": 1}


def test_a_pending_erasure_is_kept_once_its_sealed_receipt_is_fetched(
    ledger_env: LedgerEnv, slow_answer_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The DPO's erasure answered before the ledger recorded it: the certificate holds only
    `receipt_key`, and the wallet fetches the sealed receipt and opens it."""
    key = tmp_path / "bob.key"
    wallet = Wallet.create(key)
    dataset, nym = _joined(ledger_env, wallet)
    r = httpx.post(
        f"{slow_answer_url}/v1/erasures",
        json={"subject_id": nym},
        headers=ledger_env.headers("dpo", ledger_env.dpo),
    )
    assert r.status_code == 202, r.text
    assert r.json()["erasure_receipt"] is None and r.json()["receipt_key"]
    path = tmp_path / "cert.json"
    path.write_text(r.text)
    argv = ["erased", "--key", str(key), "--dataset", dataset, "--certificate", str(path)]
    assert main(["wallet", *argv]) == 2  # nothing proves it yet: the generation stays
    assert Wallet.open(key).generation(dataset) == 0
    wrong_key = {**r.json(), "receipt_key": "11" * 32}
    path.write_text(json.dumps(wrong_key))
    assert main(["wallet", *argv, "--api", slow_answer_url]) == 2
    path.write_text(r.text)
    code, out = _run(capsys, *argv, "--api", slow_answer_url)
    assert code == 0 and out["erased"] == nym and out["generation"] == 1
    assert _verified(ledger_env, tmp_path, capsys, key, dataset) == {"erased": 0, "next": 1}


def test_a_certificate_whose_receipt_was_lost_says_why_the_wallet_cannot_keep_it(
    tmp_path: Path,
) -> None:
    """The API's reason reaches the subject, rather than the wallet's generic refusal."""
    wallet = Wallet.create(tmp_path / "w.key")
    reason = "erasure 4 is recorded on the ledger, ... its receipt could not be made"
    scope = {"type": "subject"}  # the vault forgot whom it erased: no name in the scope
    certificate = {"erasure_id": 4, "scope": scope, "erasure_receipt_lost": reason}
    with pytest.raises(WalletError, match="never will: erasure 4 is recorded"):
        wallet.record_erasure(DATASET, certificate)
    with pytest.raises(WalletError, match="nothing proves the erasure"):
        wallet.record_erasure(DATASET, {"erasure_id": 5, "scope": scope})
