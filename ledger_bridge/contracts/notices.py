"""A consent notice's canonical bytes and hash: what `consent.grant`'s `notice` field names.

Why here: the subject's wallet, the vault that stores the notice and whoever verifies an
export must compute the same hash from the same body, so the canonical form is one function
that both sides of the API import (the public client may import `ledger_bridge`, the server
may too). The contracts never see a notice, only its hash; its shape is checked by the API
(api/http/routes/notices.py), its hash by anyone.

Canonical JSON: keys sorted, no insignificant space, UTF-8 without escaping non-ASCII.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

# A notice's canonical bytes at most: eight rights, a purpose and a retention in words fit in
# a few KB; a bigger body is not a notice a person reads before consenting.
NOTICE_BYTES_MAX = 8192


def canonical(body: dict[str, Any]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def notice_hash(body: dict[str, Any]) -> bytes:
    """SHA-256 of the canonical bytes: the 32 bytes a consent names."""
    return hashlib.sha256(canonical(body)).digest()
