"""Which KEKs exist, which processes hold them, and the lock that keeps a KEK alive while used.

Why: the vault's processes (API instances, uvicorn workers, `civis-vault keys rotate`) share
one master key file or token but each holds the KEKs in its own memory. Retiring a KEK is
only safe once (1) every live process wraps new secrets under the new KEK, (2) no transaction
that wrapped a secret under the old one is still open, and it is only final once (3) no live
process still holds the old KEK. The database they share is where they agree:

- `InstanceRegistry.beat` (the heartbeat, every `instance_heartbeat_s`) refreshes the
  provider from the shared file or token and reports the process's current and loaded KEKs
  in `vault_instances`; (1) and (3) read those rows.
- `guard_wraps`: a transaction that wraps new secrets takes a SHARED advisory lock on each KEK
  it used and checks that none is being retired; the retirer takes the same lock EXCLUSIVE
  after marking the KEK retiring, so it waits for (2), and rewraps what those transactions
  wrote before destroying the KEK (vault/final_erasure.py).

KEK ids are `k<N>` for both providers; the lock's second key is N.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
import zlib
from collections.abc import Iterable, Sequence

from sqlalchemy import delete, func, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session, sessionmaker

from vault.keys.provider import KeyProvider, KeyProviderError
from vault.models import Kek, VaultInstance

_log = logging.getLogger(__name__)

# The first key of the KEKs' advisory locks ("KEKS"); the second is the KEK's number. The
# two-key form lives in its own key space: it never meets the relay's single-key lock.
KEK_LOCK_CLASS = 0x4B454B53
_LOCK_SHARED = text("SELECT pg_advisory_xact_lock_shared(:c, :o)")
_TRY_LOCK = text("SELECT pg_try_advisory_xact_lock(:c, :o)")
_LIVE = text("heartbeat_at > now() - make_interval(secs => :ttl)")


def kek_number(kek_id: str) -> int:
    """The lock key of a KEK: N for `k<N>`, a stable 31-bit hash for any other id."""
    if kek_id[:1] == "k" and kek_id[1:].isdigit() and len(kek_id) <= 10:
        return int(kek_id[1:])
    return zlib.crc32(kek_id.encode()) & 0x7FFFFFFF


def note_keks(session: Session, kek_ids: Iterable[str]) -> None:
    """Record KEKs the vault has seen (their first sighting is their `created_at`)."""
    ids = sorted(set(kek_ids))
    if ids:
        session.execute(
            insert(Kek)
            .values([{"id": k} for k in ids])
            .on_conflict_do_nothing(index_elements=["id"])
        )


def guard_wraps(session: Session, kek_ids: Iterable[str]) -> bool:
    """Hold each KEK that just wrapped new secrets until this transaction ends, and say
    whether all of them may still be used. False: one is being retired; wrap again under
    the provider's refreshed current KEK."""
    ids = sorted(set(kek_ids))
    for kid in ids:
        session.execute(_LOCK_SHARED, {"c": KEK_LOCK_CLASS, "o": kek_number(kid)})
    retiring = session.scalar(
        select(func.count()).where(Kek.id.in_(ids), Kek.retiring_at.is_not(None))
    )
    return not retiring


def try_hold_exclusive(session: Session, kek_id: str) -> bool:
    """The retirer's side of `guard_wraps`: True once no open transaction holds `kek_id`
    (for the rest of this transaction, none can start); False if one still does."""
    return bool(session.scalar(_TRY_LOCK, {"c": KEK_LOCK_CLASS, "o": kek_number(kek_id)}))


def live_instances(session: Session, ttl_s: float) -> Sequence[VaultInstance]:
    """The instances whose last heartbeat is younger than `ttl_s` (the database's clock)."""
    return session.scalars(
        select(VaultInstance)
        .where(_LIVE.bindparams(ttl=ttl_s))
        .order_by(VaultInstance.started_at, VaultInstance.id)
    ).all()


class InstanceRegistry:
    """This process's row in `vault_instances`: joined at start, beaten, left at stop."""

    def __init__(self, sessions: sessionmaker[Session], provider: KeyProvider) -> None:
        self.id = uuid.uuid4()
        self._sessions = sessions
        self._provider = provider

    def __repr__(self) -> str:
        return f"InstanceRegistry({self.id})"

    def beat(self) -> None:
        """Adopt what the shared file or token now holds, then say so. A provider that cannot
        refresh (an unreadable key file) keeps what it has and reports it: honest rows block a
        retirement rather than let it through."""
        try:
            self._provider.refresh()
        except KeyProviderError as exc:
            _log.error("the key provider could not refresh (%s); reporting what it holds", exc)
        current = self._provider.current_kek_id()
        loaded = self._provider.kek_ids()
        row = {
            "id": self.id,
            "host": socket.gethostname()[:255],
            "pid": os.getpid(),
            "current_kek": current,
            "loaded_keks": loaded,
        }
        with self._sessions() as session, session.begin():
            note_keks(session, [current, *loaded])
            session.execute(
                insert(VaultInstance)
                .values(row)
                .on_conflict_do_update(
                    index_elements=["id"],
                    set_={
                        "heartbeat_at": func.now(),
                        "current_kek": current,
                        "loaded_keks": loaded,
                    },
                )
            )

    def leave(self) -> None:
        """A clean stop: this process holds nothing any more."""
        with self._sessions() as session, session.begin():
            session.execute(delete(VaultInstance).where(VaultInstance.id == self.id))
