"""Transactions a member signs with their own key: drafts out, signatures in.

Why drafts: the bytes a subject signs must be exactly the bytes the contracts verify. The API
builds the canonical unsigned transaction from a JSON request (`POST /v1/drafts`) and hands
back both the transaction and the exact payload to sign (domain, chain id, transaction); the
subject's wallet (`civis-vault wallet sign --hex …`) signs that payload, and the submission
endpoints rebuild the signed transaction from the unsigned bytes and the signature. The API
never holds a subject's key, so it cannot express a subject's will: a consent the vault or a
consumer made up fails the signature check here and again in every replica.

A draft's body is checked against its type's declaration (ledger_bridge/contracts/bodies.py),
the same check the contracts run first, so a body the contracts would refuse for its shape is
refused here, before anyone signs it, naming the field: `body.voting_ends: must be an integer,
milliseconds since 1970, in [0, …]`. JSON has no bytes: public keys and hashes are 64 hex
characters in the draft and become the 32 bytes the contracts expect.
"""

from __future__ import annotations

import os
import time
from typing import Any

from api.http.errors import ApiError, Forbidden
from ledger_bridge.contracts import bodies, codec, tx
from vault.uploads import LEDGER_SUBJECT_ID

# What members sign themselves; everything else the vault signs for them.
SELF_SIGNED = (
    "member.register",
    "consent.grant",
    "consent.revoke",
    "erasure.request",
    "governance.propose",
    "governance.vote",
    # eco-citizen tokens: a provider registers its devices, a holder moves its own tokens,
    # a partner publishes its offers and spends the coupons shown to it
    "device.register",
    "token.transfer",
    "token.redeem",
    "offer.publish",
    "coupon.spend",
    # Art. 16: the subject asks for a record of theirs to be corrected
    "rectification.request",
    # restriction (Art. 18) and objection (Art. 21): the subject's own word, per dataset
    "restriction.set",
    "restriction.lift",
    "objection.set",
    "objection.withdraw",
)
DRAFT_TTL_MAX_S = tx.TTL_MAX_MS // 1000


class InvalidTransaction(ApiError):
    status = 422
    title = "Invalid transaction"


def ledger_body(tx_type: str, body: Any) -> dict[str, Any]:
    """`body` in the ledger's form, or a 422 naming the first field that does not match."""
    try:
        bodies.check(tx_type, body, json=True)
    except bodies.BodyError as exc:
        where = f"body.{exc.path}" if exc.path else "body"
        raise InvalidTransaction(f"{where}: {exc.problem}") from None
    return bodies.to_ledger(tx_type, body)


def draft(
    chain_id: str, tx_type: str, author_hex: str, body: dict[str, Any], valid_for_s: int
) -> dict[str, Any]:
    """The unsigned transaction and the exact bytes its author must sign."""
    if tx_type not in SELF_SIGNED:
        raise InvalidTransaction(f"type must be one of {', '.join(SELF_SIGNED)}")
    if not LEDGER_SUBJECT_ID.fullmatch(author_hex):
        raise InvalidTransaction("author must be a public key: 64 lowercase hex characters")
    if not 1 <= valid_for_s <= DRAFT_TTL_MAX_S:
        raise InvalidTransaction(f"valid_for_s must be in [1, {DRAFT_TTL_MAX_S}]")
    unsigned = {
        "v": tx.VERSION,
        "type": tx_type,
        "author": bytes.fromhex(author_hex),
        "nonce": os.urandom(tx.NONCE_BYTES),
        "valid_until": int(time.time() * 1000) + valid_for_s * 1000,
        "body": ledger_body(tx_type, body),
    }
    try:
        encoded = codec.encode(unsigned)
    except (codec.NotCanonical, TypeError, ValueError, OverflowError):
        raise InvalidTransaction("the body cannot be encoded canonically") from None
    return {
        "type": tx_type,
        "transaction": encoded.hex(),
        "signing_payload": tx.signing_bytes(chain_id, unsigned).hex(),
        "valid_until": unsigned["valid_until"],
    }


def assemble(
    chain_id: str, transaction_hex: str, signature_hex: str, expected: str | tuple[str, ...]
) -> tx.SignedTx:
    """The signed transaction from a draft and its author's signature, checked here first.
    `expected`: the type (or the types) the endpoint takes."""
    try:
        raw = bytes.fromhex(transaction_hex)
        sig = bytes.fromhex(signature_hex)
        unsigned = codec.decode(raw, max_bytes=tx.TX_BYTES_MAX)
    except (ValueError, codec.NotCanonical):
        raise InvalidTransaction(
            "transaction and signature are hex; the transaction canonical"
        ) from None
    if not isinstance(unsigned, dict) or "sig" in unsigned:
        raise InvalidTransaction("transaction is the unsigned map a draft returned")
    try:
        signed = tx.decode(codec.encode({**unsigned, "sig": sig}))
    except tx.MalformedTx as exc:
        raise InvalidTransaction(str(exc)) from None
    types = (expected,) if isinstance(expected, str) else expected
    if signed.type not in types:
        raise InvalidTransaction(f"this endpoint takes a {' or '.join(types)} transaction")
    if not signed.verify(chain_id):
        raise Forbidden("the signature does not verify for the transaction's author")
    return signed
