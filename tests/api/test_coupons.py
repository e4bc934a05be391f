"""Coupon codes and QR payloads, and the device simulator's claims, without a ledger.

Attacks first: a mistyped or forged code, a QR payload with any part changed, a claim whose
detail was swapped after signing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from api.client import coupons
from api.client.devices import Device, iso_week
from api.services.events import check_claims
from api.services.gateway import LedgerRefused
from ledger_bridge.contracts import events
from ledger_bridge.crypto import SigningKey

CHAIN = "civis-test"
ROOT = Path(__file__).resolve().parents[2]


def _issued(secret: bytes, key: SigningKey, *, offer: str = "bakery.5pct") -> str:
    coupon = coupons.coupon_id(secret)
    sig = key.sign(coupons.signing_message(CHAIN, coupon, offer, 2000, 42))
    return coupons.qr_payload(coupons.encode_code(secret), offer, 42, sig)


def test_a_mistyped_code_is_caught_before_the_ledger() -> None:
    secret = bytes(range(16))
    code = coupons.encode_code(secret)
    assert code.startswith("CV1-") and all(len(g) <= 4 for g in code[4:].split("-"))
    # one character changed (to another base32 letter): the check bytes catch it
    body = code[4:]
    i = body.index(next(c for c in body if c != "-"))
    wrong = "CV1-" + body[:i] + ("B" if body[i] != "B" else "C") + body[i + 1 :]
    with pytest.raises(coupons.CouponError, match="check"):
        coupons.decode_code(wrong)
    with pytest.raises(coupons.CouponError):
        coupons.decode_code(code[:-2])
    with pytest.raises(coupons.CouponError):
        coupons.decode_code("XX1-" + body)
    # what a person types is forgiven: case, spaces, missing dashes
    assert coupons.decode_code(code.lower().replace("-", " ").replace("cv1 ", "CV1-")) == secret
    assert coupons.decode_code(code) == secret


def test_a_qr_payload_verifies_and_any_change_breaks_it() -> None:
    issuer = SigningKey.generate()
    secret = coupons.new_secret()
    payload = _issued(secret, issuer)
    pub = bytes(issuer.public_key)
    qr = coupons.verify_qr(payload, chain_id=CHAIN, issuer=pub, price_mtok=2000)
    assert qr.secret == secret and qr.offer == "bakery.5pct" and qr.height == 42
    code, _, rest = payload.partition(".")
    offer, height, sig = rest.rsplit(".", 2)
    tampered = [
        f"{code}.other.{height}.{sig}",  # another offer
        f"{code}.{offer}.43.{sig}",  # another height
        f"{coupons.encode_code(coupons.new_secret())}.{offer}.{height}.{sig}",  # another coupon
        f"{code}.{offer}.{height}.{sig[:-2]}{'A' if sig[-2] != 'A' else 'B'}{sig[-1]}",
    ]
    for bad in tampered:
        with pytest.raises(coupons.CouponError):
            coupons.verify_qr(bad, chain_id=CHAIN, issuer=pub, price_mtok=2000)
    for chain, price, key in (
        ("another-chain", 2000, pub),
        (CHAIN, 1000, pub),
        (CHAIN, 2000, bytes(SigningKey.generate().public_key)),
    ):
        with pytest.raises(coupons.CouponError):
            coupons.verify_qr(payload, chain_id=chain, issuer=key, price_mtok=price)


def test_the_wallet_command_checks_a_code_and_a_qr_payload() -> None:
    issuer = SigningKey.generate()
    secret = coupons.new_secret()
    payload = _issued(secret, issuer)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "api.cli", "wallet", "coupon", *args]
        return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)

    ok = run("--code", coupons.encode_code(secret))
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["coupon"] == coupons.coupon_id(secret).hex()
    checked = run(
        "--qr", payload, "--issuer", issuer.public_key.hex(), "--chain-id", CHAIN,
        "--price-mtok", "2000",
    )  # fmt: skip
    assert checked.returncode == 0, checked.stderr
    assert json.loads(checked.stdout)["signature_verified"] is True
    forged = run(
        "--qr", payload, "--issuer", issuer.public_key.hex(), "--chain-id", CHAIN,
        "--price-mtok", "1",
    )  # fmt: skip
    assert forged.returncode == 2 and "did not issue" in forged.stderr


def test_simulated_claims_verify_and_a_swapped_detail_is_refused() -> None:
    device = Device(CHAIN, "centre")
    subject = bytes(SigningKey.generate().public_key).hex()
    item = device.event(subject=subject, rule="cycling", unit="km", quantity_milli=5300)
    assert item["detail"]["km"] == 5.3 and item["detail"]["litres"] is None
    assert item["detail"]["week"] == iso_week(item["at"])
    assert events.verify_claim(CHAIN, item)
    check_claims(CHAIN, device.id, [item])  # raises nothing

    with pytest.raises(LedgerRefused) as forged:
        check_claims(CHAIN, device.id, [{**item, "quantity_milli": 53_000}])
    assert forged.value.status == 403 and forged.value.code == "bad_device_signature"
    with pytest.raises(LedgerRefused) as other_chain:
        check_claims("another-chain", device.id, [item])
    assert other_chain.value.code == "bad_device_signature"

    swapped = {**item, "detail": {**item["detail"], "district": "elsewhere"}}
    with pytest.raises(LedgerRefused) as detail:
        check_claims(CHAIN, device.id, [swapped])
    assert detail.value.status == 422 and "commitment" in detail.value.detail
    extra = {**item, "detail": {**item["detail"], "name": "Alice"}}
    with pytest.raises(LedgerRefused, match="holds exactly"):
        check_claims(CHAIN, device.id, [extra])
    with pytest.raises(LedgerRefused) as twice:
        check_claims(CHAIN, device.id, [item, item])
    assert twice.value.code == "duplicate_event"
