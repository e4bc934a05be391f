"""The DPO's page sessions: a browser signs in once with the DPO's API key, then holds a token.

A browser cannot send an `Authorization` header by itself, and an API key must never travel
in a URL (it would land in logs, history and Referer headers). So the DPO posts the key ONCE
in a form; the answer sets a cookie holding a random token, `v2.<256 bits>`, whose SHA-256
names a row of `dpo_sessions` (shared by every instance through the database). Only the hash
is stored: a copy of the table opens nothing. Every request re-checks the row and the API
key, so revoking the key ends its sessions. Sessions live 15 minutes; signing out deletes the
row, so a copy of the cookie is refused afterwards.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import secrets

from sqlalchemy import delete
from sqlalchemy.orm import Session

from api.services.keys import Member
from vault.models import ApiKey, DpoSession

# `__Host-`: the browser keeps it only if it was set Secure, with path /, by this very host.
SESSION_COOKIE = "__Host-civis-dpo"
SESSION_TTL_S = 15 * 60


_TOKEN = re.compile(r"^v2\.[A-Za-z0-9_-]{43}$")


def _token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def open_session(session: Session, api_key: ApiKey, now: dt.datetime) -> str:
    """A new session of `api_key`: its row, and the token (256 random bits) for the cookie.

    Expired rows go at the same time: sign-ins are rare, and the table stays as small as the
    number of live sessions without a job of its own.
    """
    session.execute(delete(DpoSession).where(DpoSession.expires_at <= now))
    token = f"v2.{secrets.token_urlsafe(32)}"
    expires = now + dt.timedelta(seconds=SESSION_TTL_S)
    session.add(DpoSession(token_hash=_token_hash(token), key_id=api_key.id, expires_at=expires))
    session.flush()
    return token


def close_session(session: Session, token: str) -> None:
    """Sign-out: the session's row goes, so the cookie, wherever a copy of it is, opens nothing."""
    if _TOKEN.fullmatch(token):
        session.execute(delete(DpoSession).where(DpoSession.token_hash == _token_hash(token)))


def session_member(
    session: Session, token: str, now: dt.datetime, roles: tuple[str, ...] = ("dpo",)
) -> Member | None:
    """The member behind a session token, or None (malformed, unknown, ended, expired, key
    revoked, or a key whose role is not in `roles`: a dashboard session opens no DPO page)."""
    if not _TOKEN.fullmatch(token):
        return None
    row = session.get(DpoSession, _token_hash(token))
    if row is None or row.expires_at <= now:
        return None
    key = session.get(ApiKey, row.key_id)
    if key is None or key.revoked_at is not None or key.role not in roles:
        return None
    if key.expires_at is not None and key.expires_at <= now:
        return None  # a session lives no longer than the key that opened it
    return Member(member_id=key.member_id, role=key.role, key_id=key.id)
