"""Tokens: the cooperative's signature on an issued coupon, and reads of the token ledger.

Why the API signs coupons: a partner's scanner must tell an issued coupon from a made-up
code while offline. The operations key (role `vault`, public in the genesis) signs what the
ledger committed (the coupon's hash, its offer, its price and the redemption's height), so
the signature says nothing the ledger does not, and names nobody (api/client/coupons.py).
"""

from __future__ import annotations

from typing import Any

from api.client.coupons import signing_message
from api.services.gateway import LedgerAnswer, LedgerGateway, LedgerRefused
from ledger_bridge.crypto import SigningKey


def issued_coupon(ledger: LedgerGateway, coupon: bytes, answer: LedgerAnswer) -> dict[str, Any]:
    """The committed coupon of a redemption, signed for scanners.

    Taken from the contract's answer (or read back from the ledger), never from the request:
    the price is the offer's at the redemption's height, which only the committed state says."""
    found = answer.result if "price_mtok" in answer.result else None
    if found is None:
        found = ledger.query("coupon", coupon=coupon)["result"]
    if found is None:
        raise LedgerRefused("internal", "the redemption committed but its coupon cannot be read")
    offer, price = str(found["offer"]), int(found["price_mtok"])
    height = int(found.get("height", answer.receipt.block_height))
    return {
        "coupon": coupon.hex(),
        "offer": offer,
        "price_mtok": price,
        "height": height,
        "signature": sign_coupon(ledger.vault_key, ledger.chain_id, coupon, offer, price, height),
        "issuer": ledger.vault_key.public_key.hex(),
    }


def sign_coupon(
    key: SigningKey, chain_id: str, coupon: bytes, offer: str, price_mtok: int, height: int
) -> str:
    """The operations key's Ed25519 signature (hex) over an issued coupon."""
    return key.sign(signing_message(chain_id, coupon, offer, price_mtok, height)).hex()
