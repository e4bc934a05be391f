"""Coupons: the code a citizen shows at a partner, and the QR payload a scanner checks offline.

The wallet picks a random 16-byte secret and sends only its SHA-256 (`coupon`) in its
`token.redeem`: the ledger never learns the secret, so nobody reading blocks can spend a
coupon, and whoever holds the secret can (the partner's `coupon.spend` reveals it, once).

- The printable code is `CV1-` + base32 (no padding, groups of 4) of `secret || check`, the
  check being the first 2 bytes of SHA-256(secret): a mistyped code is caught here, before
  the ledger is asked.
- Once the redemption committed, the API signs (coupon, offer, price, height) with the
  cooperative's operations key (role `vault`, public in the genesis). The QR code carries
  `<code>.<offer>.<height>.<base64url sig>`: a partner's scanner checks offline that the
  cooperative issued this coupon for this offer at this price, without learning who redeemed
  it (the signature names no account).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from dataclasses import dataclass
from typing import Any, TypedDict, cast

from ledger_bridge.crypto import verify as ed25519_verify

PREFIX = "CV1-"
SECRET_BYTES = 16
CHECK_BYTES = 2
SIGNATURE_DOMAIN = b"civis-vault/coupon/v1"
_GROUP = 4
_OFFER = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


class CouponError(ValueError):
    """A code or QR payload that is not one the cooperative could have issued."""


def new_secret() -> bytes:
    return os.urandom(SECRET_BYTES)


def coupon_id(secret: bytes) -> bytes:
    """What `token.redeem` carries and the ledger keys the coupon by: SHA-256(secret)."""
    return hashlib.sha256(secret).digest()


def encode_code(secret: bytes) -> str:
    """`CV1-XXXX-XXXX-…`: the secret and its 2 check bytes in base32, grouped by 4."""
    if len(secret) != SECRET_BYTES:
        raise CouponError(f"a coupon secret is {SECRET_BYTES} bytes")
    raw = secret + hashlib.sha256(secret).digest()[:CHECK_BYTES]
    text = base64.b32encode(raw).decode().rstrip("=")
    return PREFIX + "-".join(text[i : i + _GROUP] for i in range(0, len(text), _GROUP))


def decode_code(code: str) -> bytes:
    """The secret of a code (case, spaces and dashes forgiven); CouponError if mistyped."""
    text = code.strip().upper()
    if not text.startswith(PREFIX):
        raise CouponError(f"a coupon code starts with {PREFIX}")
    body = re.sub(r"[\s-]", "", text[len(PREFIX) :])
    try:
        raw = base64.b32decode(body + "=" * (-len(body) % 8))
    except (binascii.Error, ValueError):
        raise CouponError("the code holds characters a coupon code never has") from None
    if len(raw) != SECRET_BYTES + CHECK_BYTES:
        raise CouponError("the code is too short or too long")
    secret, check = raw[:SECRET_BYTES], raw[SECRET_BYTES:]
    if hashlib.sha256(secret).digest()[:CHECK_BYTES] != check:
        raise CouponError("the code's check does not match: a character is mistyped")
    return secret


def signing_message(
    chain_id: str, coupon: bytes, offer: str, price_mtok: int, height: int
) -> bytes:
    """The bytes the cooperative's operations key signs for an issued coupon."""
    return (
        SIGNATURE_DOMAIN
        + chain_id.encode()
        + coupon
        + offer.encode()
        + price_mtok.to_bytes(8, "big")
        + height.to_bytes(8, "big")
    )


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64url(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise CouponError("the signature is not base64url") from None


@dataclass(frozen=True, slots=True)
class QrCoupon:
    """A decoded QR payload (not yet verified: see `verify_qr`)."""

    code: str
    secret: bytes
    offer: str
    height: int
    signature: bytes

    @property
    def coupon(self) -> bytes:
        return coupon_id(self.secret)


def qr_payload(code: str, offer: str, height: int, signature: bytes) -> str:
    """`<code>.<offer>.<height>.<base64url sig>`: what the QR code carries."""
    return f"{code}.{offer}.{height}.{_b64url(signature)}"


def decode_qr(payload: str) -> QrCoupon:
    """Split a QR payload; an offer name may hold dots, the code, height and signature don't."""
    head, sep, rest = payload.strip().partition(".")
    parts = rest.rsplit(".", 2)
    if not sep or len(parts) != 3:
        raise CouponError("a coupon QR payload is <code>.<offer>.<height>.<signature>")
    offer, height_text, sig_text = parts
    if not _OFFER.fullmatch(offer):
        raise CouponError("the offer is not an offer name")
    if not height_text.isdigit() or len(height_text) > 19:
        raise CouponError("the height is not a block height")
    signature = _unb64url(sig_text)
    if len(signature) != 64:
        raise CouponError("the signature is not 64 bytes")
    return QrCoupon(head, decode_code(head), offer, int(height_text), signature)


def verify_qr(payload: str, *, chain_id: str, issuer: bytes, price_mtok: int) -> QrCoupon:
    """The payload's coupon if `issuer` (the operations key, 32 bytes) signed it for this
    offer at `price_mtok` (the partner knows its own offer's price); CouponError otherwise."""
    qr = decode_qr(payload)
    message = signing_message(chain_id, qr.coupon, qr.offer, price_mtok, qr.height)
    if not ed25519_verify(issuer, message, qr.signature):
        raise CouponError("the cooperative did not issue this coupon for this offer and price")
    return qr


class IssuedCoupon(TypedDict):
    """The API's signed coupon (`POST /v1/redemptions`), without the secret."""

    coupon: str
    offer: str
    price_mtok: int
    height: int
    signature: str
    issuer: str


class Redemption(TypedDict):
    """A redemption as the wallet keeps it: the printable code (which holds the secret: keep
    it as a key), the QR payload for scanners, and the API's answer."""

    code: str
    qr: str
    coupon: IssuedCoupon
    receipt: dict[str, Any]
    result: dict[str, Any]


def redemption(code: str, answer: dict[str, Any]) -> Redemption:
    """The wallet's record of a committed redemption, its QR payload built from the answer."""
    issued = cast(IssuedCoupon, answer["coupon"])
    qr = qr_payload(code, issued["offer"], issued["height"], bytes.fromhex(issued["signature"]))
    return Redemption(
        code=code, qr=qr, coupon=issued, receipt=answer["receipt"], result=answer["result"]
    )
