"""Subjects sign in with their wallet: a challenge signed by every pseudonym, for a short session.

Why: a subject reads their own export, consents, balance and erasure certificates with a
credential, and an API key per subject needs the operator (`civis-vault apikey create`), one per
pseudonym. Instead the wallet proves that it holds the keys it already has:

1. `new_challenge`: 32 random bytes with an id and an expiry (CHALLENGE_TTL_S), kept as a row
   so that it can be used once, and the exact bytes to sign (api/client/sign_in.py).
2. `sign_in`: every proof {pseudonym, signature} must verify over that one payload. Then the
   challenge row goes (single use: a replayed sign-in finds nothing) and a session row is
   made, bound to the set of proven pseudonyms, for `ttl` (the setting
   `subject_session_ttl_s`). A refused sign-in changes nothing.
3. The bearer `cvs_<session id>_<secret>` is checked as an API key is (only the secret's
   SHA-256 stored, constant-time comparison, a dummy hash for an unknown id). Signing out
   deletes the row. A signed-out, expired or unknown token gets the one same 401: unlike an
   API key's expiry, a session's ending is routine, and the answer is always "sign in again".

Must a pseudonym be known (a member on the ledger, a subject with records) to sign in? No. A
sign-in proves control of keys, nothing more, and what a session opens is bound to them: the
subject routes answer only for a subject in `Member.pseudonyms`. So a citizen whose records are
not uploaded yet signs in and sees an empty export; a wallet signs in with the pseudonyms of
every dataset it has met without the vault asking the ledger about each (which would tell the
replicas which pseudonyms sign in together); and a key nobody knows proves only itself: it
reads what is filed under it, which is nothing. Member-wide reads (purposes, proposals, ledger
headers) open to it too, as they open to any resident, and any key becomes a resident with one
signed `member.register`.

Nothing of a sign-in goes to the ledger: the ledger never learns that pseudonyms are one
person. The vault learns it while the session lives (the row names them all), which is why the
row lives minutes, goes at sign-out, is purged once expired (here at each challenge and
sign-in, and by the background jobs, `purge_expired_sessions`) and goes with an erasure of any
of its pseudonyms (vault/erasure.py).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import os
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import CursorResult, delete, select
from sqlalchemy.orm import Session, sessionmaker

from api.client.sign_in import CHALLENGE_BYTES, signing_payload
from api.http.errors import ApiError, Forbidden
from api.services.keys import Member
from ledger_bridge.crypto import verify
from vault.models import SESSION_PSEUDONYMS_MAX, SubjectChallenge, SubjectSession

CHALLENGE_TTL_S = 5 * 60
PROOFS_MAX = SESSION_PSEUDONYMS_MAX
TOKEN_PREFIX = "cvs_"  # noqa: S105  (the token's public prefix, no secret)
# A session's Member.member_id: names the session, never a person (see Member).
SESSION_MEMBER_PREFIX = "session:"
_TOKEN = re.compile(r"^cvs_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")
_DUMMY_HASH = hashlib.sha256(b"civis-vault/no-such-session").digest()
# Rows one purge deletes at most: a purge after a long quiet spell takes several calls rather
# than one long-held lock.
PURGE_BATCH = 10_000


class ChallengeGone(ApiError):
    """A sign-in naming a challenge that is used, expired or was never handed out."""

    status = 410
    title = "Challenge gone"


class ProofRefused(Forbidden):
    """A sign-in whose proofs do not all verify over the challenge's payload."""

    title = "Sign-in refused"


class NotASession(Forbidden):
    """Signing out with an API key: only a wallet sign-in ends that way."""

    title = "Not a sign-in session"


@dataclass(frozen=True, slots=True)
class Challenge:
    challenge_id: str
    challenge: bytes
    signing_payload: bytes
    expires_at: dt.datetime


@dataclass(frozen=True, slots=True)
class SignedIn:
    """A new session: its bearer token (shown once), when it ends, whom it proved."""

    session_id: str
    token: str
    expires_at: dt.datetime
    pseudonyms: tuple[str, ...]

    def __repr__(self) -> str:
        return f"SignedIn(session_id={self.session_id}, token=***)"


def _hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def new_challenge(session: Session, chain_id: str, now: dt.datetime) -> Challenge:
    """A fresh single-use challenge for the chain `chain_id`, valid CHALLENGE_TTL_S."""
    purge_expired(session, now)
    challenge = os.urandom(CHALLENGE_BYTES)
    row = SubjectChallenge(
        id=secrets.token_hex(16),
        challenge=challenge,
        expires_at=now + dt.timedelta(seconds=CHALLENGE_TTL_S),
    )
    session.add(row)
    session.flush()
    return Challenge(row.id, challenge, signing_payload(chain_id, challenge), row.expires_at)


def sign_in(
    session: Session,
    chain_id: str,
    challenge_id: str,
    proofs: Sequence[tuple[str, bytes]],
    *,
    ttl: dt.timedelta,
    now: dt.datetime,
) -> SignedIn:
    """A session for the pseudonyms of `proofs` ((pseudonym hex, signature) pairs), once
    every signature verifies over the challenge's payload; the challenge is used up.

    Refused, with nothing changed: a challenge used, expired or unknown (ChallengeGone, 410,
    checked first so that no signature is verified for it) and any proof that does not verify
    (ProofRefused, 403, naming its position in `proofs`).
    """
    pseudonyms = [p for p, _ in proofs]
    if not 1 <= len(pseudonyms) <= PROOFS_MAX or len(set(pseudonyms)) != len(pseudonyms):
        raise ProofRefused(f"a sign-in proves 1 to {PROOFS_MAX} distinct pseudonyms")
    # Locked: two sign-ins racing with one signed challenge cannot both find it.
    row = session.get(SubjectChallenge, challenge_id, with_for_update=True)
    if row is None or row.expires_at <= now:
        raise ChallengeGone(
            "this challenge is used, expired or unknown: ask for a new one "
            "(POST /v1/subjects/challenges) and sign its signing_payload"
        )
    payload = signing_payload(chain_id, bytes(row.challenge))
    for i, (pseudonym, signature) in enumerate(proofs):
        if not verify(bytes.fromhex(pseudonym), payload, signature):
            raise ProofRefused(
                f"proofs[{i}]: the signature does not verify for its pseudonym over this "
                "challenge's signing_payload"
            )
    session.delete(row)
    purge_expired(session, now)
    session_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    expires = now + ttl
    ordered = tuple(sorted(pseudonyms))
    session.add(
        SubjectSession(
            id=session_id, secret_hash=_hash(secret), pseudonyms=list(ordered), expires_at=expires
        )
    )
    session.flush()
    return SignedIn(session_id, f"{TOKEN_PREFIX}{session_id}_{secret}", expires, ordered)


def is_session_token(token: str) -> bool:
    return token.startswith(TOKEN_PREFIX)


def session_member(session: Session, token: str, now: dt.datetime) -> Member | None:
    """The signed-in subject behind a `cvs_` token, or None (malformed, unknown, wrong secret,
    signed out or expired: one answer, so nothing tells them apart)."""
    match = _TOKEN.fullmatch(token)
    if match is None:
        return None
    session_id, secret = match.groups()
    row = session.get(SubjectSession, session_id)
    expected = bytes(row.secret_hash) if row is not None else _DUMMY_HASH
    ok = hmac.compare_digest(_hash(secret), expected)
    if row is None or not ok or row.expires_at <= now:
        return None
    return Member(
        member_id=SESSION_MEMBER_PREFIX + row.id,
        role="subject",
        key_id=row.id,
        pseudonyms=frozenset(row.pseudonyms),
    )


def end_session(session: Session, member: Member) -> None:
    """Sign-out: the session's row goes, so its token, wherever a copy is, opens nothing."""
    if not member.member_id.startswith(SESSION_MEMBER_PREFIX):
        raise NotASession(
            "this credential is an API key, not a wallet sign-in; the operator revokes API "
            "keys (civis-vault apikey revoke)"
        )
    session.execute(delete(SubjectSession).where(SubjectSession.id == member.key_id))


def purge_expired(session: Session, now: dt.datetime) -> int:
    """Delete expired challenges and sessions (up to PURGE_BATCH of each); returns how many.

    Rows another transaction holds are skipped (the next purge takes them), so purges running
    at once on several instances never wait on each other.
    """
    purged = 0
    for model in (SubjectChallenge, SubjectSession):
        doomed = (
            select(model.id)
            .where(model.expires_at <= now)
            .limit(PURGE_BATCH)
            .with_for_update(skip_locked=True)
        )
        done = session.execute(
            delete(model).where(model.id.in_(doomed)).execution_options(synchronize_session=False)
        )
        purged += cast("CursorResult[Any]", done).rowcount
    return purged


def purge_expired_sessions(sessions: sessionmaker[Session]) -> int:
    """One purge in a transaction of its own: the background jobs' entry point."""
    with sessions() as session, session.begin():
        return purge_expired(session, dt.datetime.now(dt.UTC))
