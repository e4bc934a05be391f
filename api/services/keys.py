"""API keys: issue, list, rotate, revoke, authenticate. The token is shown once; only its hash
is stored.

Token format: `cvk_<key id>_<secret>`. The key id (16 hex) finds the row without scanning; the
secret (43 url-safe characters, 256 bits) is checked against its SHA-256 with a constant-time
comparison. An unknown key id is compared against a dummy hash so the answer takes the same
time whether the id exists or not.

Lifecycle: a key works from its creation until it is revoked or, if it has one, until its
`expires_at`. Rotation issues a new secret for the same member and role and ends the old key,
at once by default or after a grace period (its `expires_at` brought forward), so a client can
switch over without a window in which neither key works.

The API asks the database once per key every few seconds, not once per request
(`VerifiedKeys`): a revocation, or a grace cut short, reaches every API process within that
bound (the setting `api_key_cache_s`); an expiry is exact.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from api.http.errors import Unauthorized
from vault.models import API_ROLES, ApiKey

_TOKEN = re.compile(r"^cvk_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")
_DUMMY_HASH = hashlib.sha256(b"civis-vault/no-such-key").digest()
MEMBER_ID = re.compile(r"^[A-Za-z0-9._:@+=/-]{1,128}$")
KEY_ID = re.compile(r"^[0-9a-f]{16}$")
# Longer lifetimes outlive any rotation policy worth the name; a key meant to last forever
# is issued without an expiry, which says so explicitly.
LIFETIME_MAX = dt.timedelta(days=3660)
_DURATION = re.compile(r"^([1-9][0-9]{0,5})([mhdw])$")
# Keys one API process remembers as verified at once; beyond, the least recently used goes
# (an entry is a key id, a hash, a member: about 400 bytes).
VERIFIED_KEYS_MAX = 10_000
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


class KeyExpired(Unauthorized):
    """A key whose secret is right but whose lifetime ended.

    Why this refusal says more than the others (which share one answer, so nobody can probe
    which key ids exist): the caller proved it holds the secret, so telling it that the key
    expired reveals nothing it could not know, and tells it exactly what to do.
    """

    def __init__(self, key_id: str, expired_at: dt.datetime) -> None:
        super().__init__(
            f"this API key ({key_id}) expired at {expired_at:%Y-%m-%dT%H:%M:%SZ}; "
            "ask the operator for a new one (civis-vault apikey rotate)"
        )


@dataclass(frozen=True, slots=True)
class Member:
    """Who is calling: the member's pseudonym, the role its credential grants, and the
    pseudonyms it proved to hold.

    An API key proves one identity, its member id: `pseudonyms` is {member_id}. A subject's
    wallet sign-in (api/services/subject_sessions.py) proves several at once, one per dataset:
    its `member_id` then names the session (`session:<id>`), never a person, so a check that
    is about the subject must ask `pseudonyms` (as `subject_or_dpo` does).
    """

    member_id: str
    role: str
    key_id: str
    pseudonyms: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if not self.pseudonyms:
            object.__setattr__(self, "pseudonyms", frozenset({self.member_id}))


@dataclass(frozen=True, slots=True)
class IssuedKey:
    key_id: str
    token: str
    role: str
    expires_at: dt.datetime | None = None

    def __repr__(self) -> str:
        return f"IssuedKey(key_id={self.key_id}, token=***)"


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """What `apikey list` shows of a key: everything but its secret."""

    key_id: str
    member_id: str
    role: str
    created_at: dt.datetime
    expires_at: dt.datetime | None
    revoked_at: dt.datetime | None
    state: str  # active, expired or revoked

    def as_dict(self) -> dict[str, str | None]:
        def iso(t: dt.datetime | None) -> str | None:
            return None if t is None else t.astimezone(dt.UTC).isoformat()

        return {
            "key_id": self.key_id,
            "member": self.member_id,
            "role": self.role,
            "state": self.state,
            "created_at": iso(self.created_at),
            "expires_at": iso(self.expires_at),
            "revoked_at": iso(self.revoked_at),
        }


def _hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def _now(now: dt.datetime | None) -> dt.datetime:
    return now if now is not None else dt.datetime.now(dt.UTC)


def parse_duration(text: str) -> dt.timedelta | None:
    """`90m`, `12h`, `30d`, `8w` as a timedelta; None when `text` is not such a duration."""
    match = _DURATION.fullmatch(text)
    if match is None:
        return None
    amount, unit = match.groups()
    return dt.timedelta(**{_UNITS[unit]: int(amount)})


def parse_expiry(text: str, now: dt.datetime | None = None) -> dt.datetime:
    """`--expires`: a duration from now (`90m`, `12h`, `30d`, `8w`) or an ISO date or time.

    A date alone means its start, UTC; a time without a zone is UTC. Refused (ValueError): a
    moment not in the future, or further than LIFETIME_MAX.
    """
    now = _now(now)
    duration = parse_duration(text)
    if duration is not None:
        at = now + duration
    else:
        try:
            at = dt.datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(
                "--expires is a duration (90m, 12h, 30d, 8w) or an ISO date (2027-06-30) "
                "or time (2027-06-30T18:00:00+02:00)"
            ) from None
        if at.tzinfo is None:
            at = at.replace(tzinfo=dt.UTC)
    if at <= now:
        raise ValueError("--expires must be in the future")
    if at - now > LIFETIME_MAX:
        raise ValueError(f"--expires is at most {LIFETIME_MAX.days} days away")
    return at


def create_key(
    session: Session, *, member_id: str, role: str, expires_at: dt.datetime | None = None
) -> IssuedKey:
    if role not in API_ROLES:
        raise ValueError(f"role must be one of {', '.join(API_ROLES)}")
    if not MEMBER_ID.fullmatch(member_id):
        raise ValueError("member id must be 1..128 characters [A-Za-z0-9._:@+=/-]")
    if expires_at is not None and expires_at.tzinfo is None:
        raise ValueError("expires_at must carry a time zone")
    key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    session.add(
        ApiKey(
            id=key_id,
            secret_hash=_hash(secret),
            member_id=member_id,
            role=role,
            expires_at=expires_at,
        )
    )
    session.flush()
    return IssuedKey(
        key_id=key_id, token=f"cvk_{key_id}_{secret}", role=role, expires_at=expires_at
    )


def revoke_key(session: Session, key_id: str, *, now: dt.datetime | None = None) -> bool:
    """Revoke a key; False when no such key. Revoking twice keeps the first time."""
    key = session.get(ApiKey, key_id)
    if key is None:
        return False
    if key.revoked_at is None:
        key.revoked_at = _now(now)
        session.flush()
    return True


def _state(key: ApiKey, now: dt.datetime) -> str:
    if key.revoked_at is not None:
        return "revoked"
    if key.expires_at is not None and key.expires_at <= now:
        return "expired"
    return "active"


def list_keys(
    session: Session,
    *,
    member_id: str | None = None,
    include_ended: bool = False,
    now: dt.datetime | None = None,
) -> list[KeyInfo]:
    """Keys, oldest first; only those that still work unless `include_ended`."""
    now = _now(now)
    query = select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)
    if member_id is not None:
        query = query.where(ApiKey.member_id == member_id)
    if not include_ended:
        query = query.where(
            ApiKey.revoked_at.is_(None), or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > now)
        )
    return [
        KeyInfo(k.id, k.member_id, k.role, k.created_at, k.expires_at, k.revoked_at, _state(k, now))
        for k in session.scalars(query)
    ]


def rotate_key(
    session: Session,
    key_id: str,
    *,
    expires_at: dt.datetime | None = None,
    grace: dt.timedelta = dt.timedelta(0),
    now: dt.datetime | None = None,
) -> IssuedKey:
    """A new key for the old key's member and role; the old one ends now, or after `grace`.

    The new key's expiry: `expires_at` if given; otherwise the old key's lifetime (creation to
    expiry) counted from now, so a 30-day key rotates into a 30-day key, and a key without an
    expiry into one without. Refused (ValueError): an unknown key, or one that no longer works
    (revoked or expired): a rotation is not a way back in.
    """
    now = _now(now)
    old = session.get(ApiKey, key_id) if KEY_ID.fullmatch(key_id) else None
    if old is None:
        raise ValueError(f"no key {key_id}")
    if _state(old, now) != "active":
        raise ValueError(f"key {key_id} is {_state(old, now)}; issue a new one with create")
    if grace < dt.timedelta(0) or grace > LIFETIME_MAX:
        raise ValueError("the grace period is between 0 and the longest key lifetime")
    if expires_at is None and old.expires_at is not None:
        expires_at = now + (old.expires_at - old.created_at)
    issued = create_key(session, member_id=old.member_id, role=old.role, expires_at=expires_at)
    if grace == dt.timedelta(0):
        old.revoked_at = now
    else:
        ends = now + grace
        old.expires_at = ends if old.expires_at is None else min(old.expires_at, ends)
    session.flush()
    return issued


def _live_key(session: Session, key_id: str, secret_hash: bytes) -> ApiKey | None:
    """The row of `key_id` if `secret_hash` is its secret's and it is not revoked, else None.
    An unknown id is compared against a dummy hash: the answer takes the same time."""
    key = session.scalars(select(ApiKey).where(ApiKey.id == key_id)).one_or_none()
    expected = key.secret_hash if key is not None else _DUMMY_HASH
    ok = hmac.compare_digest(secret_hash, expected)
    if key is None or not ok or key.revoked_at is not None:
        return None
    return key


def _refuse_expired(key_id: str, expires_at: dt.datetime | None, now: dt.datetime | None) -> None:
    if expires_at is not None and expires_at <= _now(now):
        raise KeyExpired(key_id, expires_at.astimezone(dt.UTC))


def authenticate(session: Session, token: str, *, now: dt.datetime | None = None) -> Member | None:
    """The member behind a token, or None (malformed, unknown, wrong secret or revoked).

    An expired key with the right secret raises KeyExpired (401, saying so) instead of None:
    see KeyExpired for why that one refusal may explain itself.
    """
    parsed = _parse(token)
    if parsed is None:
        return None
    key = _live_key(session, *parsed)
    if key is None:
        return None
    _refuse_expired(key.id, key.expires_at, now)
    return Member(member_id=key.member_id, role=key.role, key_id=key.id)


def _parse(token: str) -> tuple[str, bytes] | None:
    """A well-formed API key's (key id, hash of its secret); None for anything else."""
    match = _TOKEN.fullmatch(token)
    if match is None:
        return None
    key_id, secret = match.groups()
    return key_id, _hash(secret)


@dataclass(frozen=True, slots=True)
class _Verified:
    secret_hash: bytes
    member: Member
    expires_at: dt.datetime | None
    verified_at: float  # on the process's monotonic clock


class VerifiedKeys:
    """`authenticate` that asks the database about a key at most once every `ttl_s` seconds.

    Why: every request of a member carries its key, and a query per request would be a tenth
    of the API's time on the consented read path. What holds regardless:
    - a wrong secret is never accepted: an entry is found by key id, then its secret's
      SHA-256 is compared in constant time; a mismatch goes to the database, which answers
      as for any wrong secret (so the cache tells no one which key ids were used lately);
    - only keys verified good are remembered: refusals are asked every time, and a key
      issued a moment ago works at once;
    - a revocation (or a rotation's grace cut short) takes effect within `ttl_s` in every
      process, each having verified the key at most that long ago;
    - an expiry is exact: the entry keeps `expires_at` and checks it on every request;
    - memory is bounded: `max_keys` entries, least recently used dropped first;
    - a subject's key is never remembered: its member id is a pseudonym, and an erasure
      everywhere deletes the subject's keys, which must stop working at once, in every
      process, and leave no copy of the pseudonym in any (the hot path is consumers',
      providers' and the DPO's keys).
    `ttl_s` 0 asks the database every time. Thread-safe.
    """

    def __init__(
        self,
        ttl_s: float,
        *,
        max_keys: int = VERIFIED_KEYS_MAX,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl_s < 0 or max_keys < 1:
            raise ValueError("ttl_s must be >= 0 and max_keys >= 1")
        self._ttl_s = ttl_s
        self._max = max_keys
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, _Verified] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def authenticate(
        self, session: Session, token: str, *, now: dt.datetime | None = None
    ) -> Member | None:
        """As `authenticate`, from memory when this key was verified less than `ttl_s` ago."""
        parsed = _parse(token)
        if parsed is None:
            return None
        key_id, secret_hash = parsed
        known = self._known(key_id, secret_hash, now)
        if known is not None:
            return known
        verified_at = self._monotonic()  # before the query: the bound counts from what it read
        key = _live_key(session, key_id, secret_hash)
        if key is None:
            return None
        _refuse_expired(key.id, key.expires_at, now)
        member = Member(member_id=key.member_id, role=key.role, key_id=key.id)
        if self._ttl_s > 0 and key.role != "subject":
            self._remember(key_id, _Verified(secret_hash, member, key.expires_at, verified_at))
        return member

    def remembered(self, token: str, *, now: dt.datetime | None = None) -> Member | None:
        """The member behind `token` if this process verified it less than `ttl_s` ago, from
        memory alone (no database: the API calls it on its event loop); None means ask
        `authenticate`, never that the key is refused."""
        parsed = _parse(token)
        return None if parsed is None else self._known(*parsed, now)

    def _known(self, key_id: str, secret_hash: bytes, now: dt.datetime | None) -> Member | None:
        """The remembered member of this key and secret (KeyExpired if its expiry passed)."""
        entry = self._recall(key_id, secret_hash)
        if entry is None:
            return None
        _refuse_expired(key_id, entry.expires_at, now)
        return entry.member

    def _recall(self, key_id: str, secret_hash: bytes) -> _Verified | None:
        with self._lock:
            entry = self._entries.get(key_id)
            if entry is None:
                return None
            if self._monotonic() - entry.verified_at >= self._ttl_s:
                del self._entries[key_id]
                return None
            if not hmac.compare_digest(entry.secret_hash, secret_hash):
                return None
            self._entries.move_to_end(key_id)
            return entry

    def _remember(self, key_id: str, entry: _Verified) -> None:
        with self._lock:
            self._entries[key_id] = entry
            self._entries.move_to_end(key_id)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)
