"""The notice a test consumer publishes before its subjects consent (api/services/notices.py).

Why a helper: every consent the API relays names the hash of a notice the vault holds and
that names the consent's consumer and purpose; tests that grant consents through the client
publish one first, with the consumer's own key, as a real consumer does.
"""

from __future__ import annotations

from api.client import CivisClient
from api.client.notices import notice_body


def publish(consumer_api: CivisClient, consumer_id: str, purpose: str) -> str:
    """Publish (idempotently: the same words are the same notice) and return the hash."""
    body = notice_body(
        recipient=consumer_id,
        purpose=purpose,
        purpose_text=f"the tests' consumer uses your records for {purpose}",
        retention="until the consent ends",
        controller="Civis Vault test cooperative",
        contact="dpo@example.invalid",
    )
    return consumer_api.publish_notice(body)["notice_hash"]
