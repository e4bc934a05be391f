"""Signing in with a wallet: the exact bytes a subject's pseudonyms sign, on both sides.

The API hands out a challenge and the bytes to sign (`POST /v1/subjects/challenges`); the
wallet signs them with each of its pseudonyms (`CivisClient.sign_in`). This module is the one
definition of those bytes: the server builds them here (api/services/subject_sessions.py) and
the wallet checks, before it signs, that what it was handed is exactly that:

    SIGN_IN_DOMAIN || canonical([chain_id, challenge])

Why the domain: a pseudonym's key also signs ledger transactions, whose signed bytes start with
`civis-vault/contract-tx/v1\\0` (ledger_bridge/contracts/tx.py). The two prefixes differ
within their first 13 bytes, so no byte string is both a sign-in payload and a transaction's:
a sign-in signature can never be submitted as a transaction, and a transaction's signature
(blocks carry them) never signs anyone in. The wallet's check matters as much as the
server's: an API that handed a wallet a consent's signing payload as a "challenge" would
otherwise get the consent signed. Why the chain id: a sign-in for one cooperative's API is no
sign-in for another's.
"""

from __future__ import annotations

from ledger_bridge.contracts import codec

SIGN_IN_DOMAIN = b"civis-vault/sign-in/v1\x00"
CHALLENGE_BYTES = 32
# A chain id is a short name; the bound keeps a hostile payload from costing the wallet much.
PAYLOAD_BYTES_MAX = 1024


class SignInPayloadError(ValueError):
    """Bytes that are not a sign-in payload: a wallet must not sign them as one."""


def signing_payload(chain_id: str, challenge: bytes) -> bytes:
    """What every pseudonym signs to answer `challenge` on the chain `chain_id`."""
    if len(challenge) != CHALLENGE_BYTES:
        raise SignInPayloadError(f"a challenge is {CHALLENGE_BYTES} bytes")
    return SIGN_IN_DOMAIN + codec.encode([chain_id, challenge])


def read_payload(payload: bytes) -> tuple[str, bytes]:
    """(chain id, challenge) of a sign-in payload; SignInPayloadError for any other bytes."""
    if len(payload) > PAYLOAD_BYTES_MAX or not payload.startswith(SIGN_IN_DOMAIN):
        raise SignInPayloadError("not a sign-in payload (its domain is not civis-vault/sign-in)")
    try:
        fields = codec.decode(payload[len(SIGN_IN_DOMAIN) :], max_bytes=PAYLOAD_BYTES_MAX)
    except codec.NotCanonical:
        raise SignInPayloadError("a sign-in payload that is not canonical") from None
    if (
        not isinstance(fields, list)
        or len(fields) != 2
        or not isinstance(fields[0], str)
        or not isinstance(fields[1], bytes)
        or len(fields[1]) != CHALLENGE_BYTES
    ):
        raise SignInPayloadError("a sign-in payload is [chain id, 32-byte challenge]")
    return fields[0], fields[1]
