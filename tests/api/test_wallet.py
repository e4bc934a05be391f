"""The subject's wallet: a 0600 key file never overwritten, signatures the ledger verifies."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from api.cli import main
from ledger_bridge.crypto import verify


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, str]]:
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
