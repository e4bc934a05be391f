"""Consent notices on the client's side: write one, and check one against the hash a consent
names.

A consumer (or provider) writes the notice a subject reads before consenting
(`notice_body`, then `CivisClient.publish_notice`); the subject's wallet reads it back by its
hash (`CivisClient.notice`), checks that the words it shows are the words whose hash it signs
(`matches`), and names that hash in its consent.grant. The default rights texts say how each
right of GDPR Art. 13(2) is exercised in Civis Vault; a controller may give its own.
"""

from __future__ import annotations

from typing import Any

from ledger_bridge.contracts.notices import notice_hash

NOTICE_VERSION = 1

# How each right is exercised here, for a notice that gives no text of its own.
DEFAULT_RIGHTS: dict[str, str] = {
    "access": "Read everything held about you at any time: GET /v1/subjects/{you}/export, "
    "or the portable package (GET /v1/subjects/{you}/export/package).",
    "rectification": "Ask the provider or the DPO to correct an inaccurate record.",
    "erasure": "Ask for erasure with your wallet (POST /v1/erasure-requests): your keys are "
    "destroyed and the ledger forgets your pseudonym.",
    "restriction": "Ask the DPO to restrict the processing while accuracy or lawfulness is "
    "contested.",
    "objection": "Object to processing based on a public task or legitimate interests.",
    "portability": "Take your data in a machine-readable package that another controller can "
    "verify (civis-vault verify-export).",
    "withdrawal": "Withdraw this consent at any time with your wallet "
    "(POST /v1/consents/revocations); it stops every access from the next block.",
    "complaint": "Lodge a complaint with the CNIL (www.cnil.fr), 3 place de Fontenoy, 75007 Paris.",
}


def notice_body(
    *,
    recipient: str,
    purpose: str,
    purpose_text: str,
    retention: str,
    controller: str,
    contact: str,
    rights: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A notice in the shape `POST /v1/notices` takes; `rights` overrides default texts."""
    return {
        "version": NOTICE_VERSION,
        "controller": {"name": controller, "contact": contact},
        "recipient": recipient,
        "purpose": purpose,
        "purpose_text": purpose_text,
        "retention": retention,
        "rights": {**DEFAULT_RIGHTS, **(rights or {})},
    }


def matches(body: dict[str, Any], hash_hex: str) -> bool:
    """Whether `body` is the notice whose hash a consent names (what the wallet shows is what
    it signs)."""
    return notice_hash(body).hex() == hash_hex
