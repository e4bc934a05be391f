"""API keys: issue, revoke, authenticate. The token is shown once; only its hash is stored.

Token format: `cvk_<key id>_<secret>`. The key id (16 hex) finds the row without scanning; the
secret (43 url-safe characters, 256 bits) is checked against its SHA-256 with a constant-time
comparison. An unknown key id is compared against a dummy hash so the answer takes the same
time whether the id exists or not.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from vault.models import API_ROLES, ApiKey

_TOKEN = re.compile(r"^cvk_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")
_DUMMY_HASH = hashlib.sha256(b"civis-vault/no-such-key").digest()
MEMBER_ID = re.compile(r"^[A-Za-z0-9._:@+=/-]{1,128}$")


@dataclass(frozen=True, slots=True)
class Member:
    """Who is calling: the member's pseudonym and the role its key grants."""

    member_id: str
    role: str
    key_id: str


@dataclass(frozen=True, slots=True)
class IssuedKey:
    key_id: str
    token: str

    def __repr__(self) -> str:
        return f"IssuedKey(key_id={self.key_id}, token=***)"


def _hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def create_key(session: Session, *, member_id: str, role: str) -> IssuedKey:
    if role not in API_ROLES:
        raise ValueError(f"role must be one of {', '.join(API_ROLES)}")
    if not MEMBER_ID.match(member_id):
        raise ValueError("member id must be 1..128 characters [A-Za-z0-9._:@+=/-]")
    key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    session.add(ApiKey(id=key_id, secret_hash=_hash(secret), member_id=member_id, role=role))
    session.flush()
    return IssuedKey(key_id=key_id, token=f"cvk_{key_id}_{secret}")


def revoke_key(session: Session, key_id: str, *, now: dt.datetime | None = None) -> bool:
    """Revoke a key; False when no such key. Revoking twice keeps the first time."""
    key = session.get(ApiKey, key_id)
    if key is None:
        return False
    if key.revoked_at is None:
        key.revoked_at = now or dt.datetime.now(dt.UTC)
        session.flush()
    return True


def authenticate(session: Session, token: str) -> Member | None:
    """The member behind a token, or None (malformed, unknown, wrong secret or revoked)."""
    match = _TOKEN.match(token)
    if match is None:
        return None
    key_id, secret = match.groups()
    key = session.scalars(select(ApiKey).where(ApiKey.id == key_id)).one_or_none()
    expected = key.secret_hash if key is not None else _DUMMY_HASH
    ok = hmac.compare_digest(_hash(secret), expected)
    if key is None or not ok or key.revoked_at is not None:
        return None
    return Member(member_id=key.member_id, role=key.role, key_id=key.id)
