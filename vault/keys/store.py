"""The key store: destroyable secrets, wrapped by the key provider, in PostgreSQL.

Why it exists: DEKs are never stored (DESIGN.md, "Keys"); what is stored is three kinds of small
secrets from which a DEK is derived when needed. Erasing a scope is destroying its secret here:
the row is overwritten then deleted in the caller's transaction, so the erasure commits or rolls
back with the rest of the change. Old copies of the wrapped bytes (dead tuples, WAL, backups) are
made useless by rotating the KEK and retiring the old one (vault/final_erasure.py).

Callers own the transaction: nothing here commits.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, select, text, tuple_, update
from sqlalchemy.orm import Session

from vault.crypto import new_secret
from vault.db import driver_connection, driver_rows
from vault.keys.provider import KeyProvider, KeyProviderError
from vault.keys.registry import guard_wraps
from vault.models import KeySecret

_LOOKUP_CHUNK = 5000
# Uploads hold their dataset's lock (this class, the dataset's key) shared while they encrypt;
# destroying a dataset's orphaned subject secrets takes it exclusive, or waits for a later try.
DATASET_LOCK_CLASS = 0x44534554  # "DSET"
_LOCK_DATASET_SHARED = text("SELECT pg_advisory_xact_lock_shared(:c, :o)")
_TRY_LOCK_DATASET = text("SELECT pg_try_advisory_xact_lock(:c, :o)")
# Subject secrets of :dataset (of :subjects, when given) with no live key commitment there.
_ORPHANS = text(
    "SELECT k.scope FROM key_secrets k WHERE k.kind = 'subject' AND k.dataset_id = :dataset"
    " AND (CAST(:subjects AS text[]) IS NULL OR k.scope = ANY(CAST(:subjects AS text[])))"
    " AND NOT EXISTS (SELECT 1 FROM key_commitments c JOIN uploads u ON u.id = c.upload_id"
    "  WHERE c.subject_id = k.scope AND u.dataset_id = k.dataset_id"
    "  AND c.destroyed_at IS NULL)"
    " ORDER BY k.id"
)
_GUARD_ATTEMPTS = 3
_REWRAP_MANY = text(
    "UPDATE key_secrets k SET kek_id = :kek, wrapped = x.wrapped"
    " FROM unnest(CAST(:ids AS bigint[]), CAST(:wrapped AS bytea[])) AS x(id, wrapped)"
    " WHERE k.id = x.id"
)
_REWRAP_BATCH = 2000
# Bulk statements: parameters in the driver's binary format (`vault.db.driver_rows`).
_SELECT_MANY = (
    "SELECT k.kind, k.dataset_id, k.scope, k.kek_id, k.wrapped FROM key_secrets k "
    "JOIN unnest(CAST(%(kinds)b AS text[]), CAST(%(datasets)b AS uuid[]), "
    "CAST(%(scopes)b AS text[])) AS w(kind, dataset_id, scope) "
    "ON k.kind = w.kind AND k.dataset_id = w.dataset_id AND k.scope = w.scope"
)
_INSERT_MANY = (
    "INSERT INTO key_secrets (kind, dataset_id, scope, kek_id, wrapped) "
    "SELECT * FROM unnest(CAST(%(kinds)b AS text[]), CAST(%(datasets)b AS uuid[]), "
    "CAST(%(scopes)b AS text[]), CAST(%(keks)b AS text[]), CAST(%(wrapped)b AS bytea[])) "
    "ON CONFLICT (kind, dataset_id, scope) DO NOTHING"
)


def _columns(refs: Sequence[SecretRef]) -> dict[str, list[Any]]:
    """`refs` as the three column arrays the statements above take."""
    return {
        "kinds": [r.kind for r in refs],
        "datasets": [r.dataset_id for r in refs],
        "scopes": [r.scope for r in refs],
    }


def _lock_order(ref: SecretRef) -> tuple[str, int, str]:
    """A total order over `key_secrets`' unique key (kind, dataset_id, scope): any order
    every transaction uses will do."""
    return ref.kind, ref.dataset_id.int, ref.scope


def _dataset_key(dataset_id: uuid.UUID) -> int:
    """A dataset's advisory lock key (two datasets sharing one only wait for each other)."""
    return dataset_id.int & 0x7FFFFFFF


@dataclass(frozen=True, slots=True)
class SecretRef:
    """Names one secret: kind (upload, subject, epoch), its dataset and its scope key."""

    kind: str
    dataset_id: uuid.UUID
    scope: str

    def aad(self) -> bytes:
        return f"{self.kind}|{self.dataset_id}|{self.scope}".encode()


def upload_ref(dataset_id: uuid.UUID, upload_id: uuid.UUID) -> SecretRef:
    return SecretRef("upload", dataset_id, str(upload_id))


def subject_ref(dataset_id: uuid.UUID, subject_id: str) -> SecretRef:
    return SecretRef("subject", dataset_id, subject_id)


def epoch_ref(dataset_id: uuid.UUID, day_iso: str) -> SecretRef:
    return SecretRef("epoch", dataset_id, day_iso)


class KeyStore:
    """Secrets in, secrets out; the provider does the wrapping."""

    def __init__(self, provider: KeyProvider) -> None:
        self.provider = provider

    def __repr__(self) -> str:
        return f"KeyStore({self.provider!r})"

    def subject_unwrapper(self, dataset_id: uuid.UUID) -> Callable[[str, str, bytes], bytes]:
        """`unwrap` for the subject secrets of one dataset, given (subject id, KEK id, wrapped
        bytes): a read of many subjects builds the dataset's part of their associated data
        once, not one `SecretRef` per record."""
        prefix = SecretRef("subject", dataset_id, "").aad()
        unwrap = self.provider.unwrap

        def unwrap_subject(subject_id: str, kek_id: str, wrapped: bytes) -> bytes:
            return unwrap(kek_id, wrapped, aad=prefix + subject_id.encode())

        return unwrap_subject

    def unwrap(self, ref: SecretRef, kek_id: str, wrapped: bytes) -> bytes:
        """One secret as a row of `key_secrets` holds it (a read that joined the row to its
        records); raises `DecryptionFailed` if it does not unwrap."""
        return self.provider.unwrap(kek_id, wrapped, aad=ref.aad())

    def load(self, session: Session, refs: Iterable[SecretRef]) -> dict[SecretRef, bytes]:
        """The secrets that still exist among `refs`; a destroyed one is simply absent."""
        wanted = list(dict.fromkeys(refs))
        found: dict[SecretRef, bytes] = {}
        for i in range(0, len(wanted), _LOOKUP_CHUNK):
            chunk = wanted[i : i + _LOOKUP_CHUNK]
            # Arrays + unnest: one statement whatever the number of refs (a tuple IN list
            # would be another statement, compiled and planned, for every length).
            rows = driver_rows(session, _SELECT_MANY, _columns(chunk))
            for kind, dataset_id, scope, kek_id, wrapped in rows:
                ref = SecretRef(kind, dataset_id, scope)
                found[ref] = self.unwrap(ref, kek_id, wrapped)
        return found

    def ensure(
        self,
        session: Session,
        refs: Iterable[SecretRef],
        meanwhile: Callable[[dict[SecretRef, bytes]], None] | None = None,
    ) -> dict[SecretRef, bytes]:
        """Load `refs`, creating the missing ones. Safe under concurrent uploads: a secret
        created by another transaction first wins (ON CONFLICT DO NOTHING, then re-read).

        `meanwhile`, if given, is called with the secrets while the server stores the new
        ones (an upload derives its DEKs then, on the other core), and, if a concurrent
        transaction created some of them first, called again with the secrets of every ref
        of those statements, as stored. The connection is in pipeline mode while it runs:
        it may read through the session, which then waits for the inserts, not create.

        Whoever ensures subject secrets is about to encrypt under them: until its transaction
        ends it holds their datasets' lock shared, so `destroy_orphaned_subjects` never
        destroys a secret whose new records are not committed yet."""
        wanted = list(dict.fromkeys(refs))
        for dataset_id in sorted({r.dataset_id for r in wanted if r.kind == "subject"}, key=str):
            session.execute(
                _LOCK_DATASET_SHARED, {"c": DATASET_LOCK_CLASS, "o": _dataset_key(dataset_id)}
            )
        found = self.load(session, wanted)
        missing = [r for r in wanted if r not in found]
        if not missing:
            if meanwhile is not None:
                meanwhile(found)
            return found
        lost = self._create(session, missing, found, meanwhile)
        changed: set[SecretRef] = set()
        while lost:
            # A concurrent transaction created some of them first: its secrets are the ones
            # to use. One it created and an erasure destroyed since is created again here.
            changed.update(lost)
            winners = self.load(session, lost)
            found.update(winners)
            gone = [r for r in lost if r not in winners]
            lost = self._create(session, gone, found, None) if gone else []
        if changed and meanwhile is not None:
            meanwhile({r: found[r] for r in changed})
        return found

    def _create(
        self,
        session: Session,
        missing: list[SecretRef],
        found: dict[SecretRef, bytes],
        meanwhile: Callable[[dict[SecretRef, bytes]], None] | None,
    ) -> list[SecretRef]:
        """Create a secret for each of `missing` and put it in `found`; return the refs of
        every statement that inserted fewer rows than it was given (ON CONFLICT: another
        transaction's secret is stored for some of them, not the one put in `found`).

        The inserts go in a pipeline: sent, they run on the server while `meanwhile(found)`
        runs here, and their row counts come back after it. They insert in one order, that of
        the unique key: a row whose key another transaction has just inserted waits for that
        transaction, so two that took the same new keys in opposite orders would each wait
        for the other until PostgreSQL failed one of them."""
        missing = sorted(missing, key=_lock_order)
        chunks = [missing[i : i + _LOOKUP_CHUNK] for i in range(0, len(missing), _LOOKUP_CHUNK)]
        made = [self._wrap_guarded(session, chunk) for chunk in chunks]
        conn = driver_connection(session)
        with conn.pipeline() as pipeline, ExitStack() as stack:
            cursors = [stack.enter_context(conn.cursor()) for _ in chunks]
            for cursor, chunk, (secrets, kek_ids, wrapped) in zip(
                cursors, chunks, made, strict=True
            ):
                cursor.execute(
                    _INSERT_MANY, _columns(chunk) | {"keks": kek_ids, "wrapped": wrapped}
                )
                found.update(zip(chunk, secrets, strict=True))
            if meanwhile is not None:
                meanwhile(found)
            pipeline.sync()
            counts = [cursor.rowcount for cursor in cursors]
        return [
            r for chunk, n in zip(chunks, counts, strict=True) if n != len(chunk) for r in chunk
        ]

    def destroy_orphaned_subjects(
        self, session: Session, dataset_id: uuid.UUID, subjects: Sequence[str] | None = None
    ) -> int | None:
        """Destroy the subject secrets of `dataset_id` (of `subjects`, or all) whose every key
        commitment in the dataset is destroyed: all their records expired or were withdrawn,
        and the secret, useless now, would keep naming them (its scope is their id). None when
        an upload in the dataset is under way (it may be encrypting under one of them): try
        again later; the final-erasure cycle does."""
        if not session.scalar(
            _TRY_LOCK_DATASET, {"c": DATASET_LOCK_CLASS, "o": _dataset_key(dataset_id)}
        ):
            return None
        only = None if subjects is None else list(subjects)
        orphans = session.scalars(_ORPHANS, {"dataset": dataset_id, "subjects": only}).all()
        return len(self.destroy(session, [subject_ref(dataset_id, s) for s in orphans]))

    def _wrap_guarded(
        self, session: Session, refs: Sequence[SecretRef]
    ) -> tuple[list[bytes], list[str], list[bytes]]:
        """Fresh secrets for `refs`, and each wrapped (its KEK id, its wrapped bytes) under a
        KEK this transaction then holds (shared advisory lock) and that is not being retired:
        a process that has not yet adopted a rotation refreshes and wraps again, so nothing
        new is ever wrapped under a KEK on its way out (vault/keys/registry.py)."""
        for _ in range(_GUARD_ATTEMPTS):
            secrets, kek_ids, wrapped = [], [], []
            for ref in refs:
                secret = new_secret()
                kek_id, blob = self.provider.wrap(secret, aad=ref.aad())
                secrets.append(secret)
                kek_ids.append(kek_id)
                wrapped.append(blob)
            if guard_wraps(session, kek_ids):
                return secrets, kek_ids, wrapped
            self.provider.refresh()
        raise KeyProviderError(
            "the current KEK is being retired and the key provider offers no newer one"
        )

    def destroy(self, session: Session, refs: Sequence[SecretRef]) -> list[SecretRef]:
        """Overwrite then delete each secret that exists; return the ones destroyed.

        Overwriting first means the deleted tuple that VACUUM later reclaims holds zeros, not the
        wrapped secret (the pre-update version still exists until VACUUM, and in the WAL: the
        retirement of the KEK it was wrapped under is what makes those useless).
        """
        destroyed: list[SecretRef] = []
        for i in range(0, len(refs), _LOOKUP_CHUNK):
            chunk = refs[i : i + _LOOKUP_CHUNK]
            cond = tuple_(KeySecret.kind, KeySecret.dataset_id, KeySecret.scope).in_(
                [(r.kind, r.dataset_id, r.scope) for r in chunk]
            )
            # Locked in id order first, the order `rewrap` locks in: the two never deadlock.
            session.execute(
                select(KeySecret.id).where(cond).order_by(KeySecret.id).with_for_update()
            ).all()
            rows = session.execute(
                update(KeySecret)
                .where(cond)
                .values(
                    wrapped=func.decode(func.repeat("00", func.length(KeySecret.wrapped)), "hex")
                )
                .returning(KeySecret.kind, KeySecret.dataset_id, KeySecret.scope)
            ).all()
            session.execute(delete(KeySecret).where(cond))
            destroyed.extend(SecretRef(k, d, s) for k, d, s in rows)
        return destroyed

    def rewrap(
        self,
        session: Session,
        *,
        to_kek: str,
        from_kek: str | None = None,
        limit: int | None = None,
        skip_locked: bool = False,
        after_id: int = 0,
    ) -> tuple[int, int]:
        """Rewrap secrets not under `to_kek` (only those under `from_kek`, if given), of ids
        above `after_id`, under the provider's current KEK, which must be `to_kek`; ciphertext
        is not touched. At most `limit` rows (all if None); returns how many, and the last id
        reached (pass it back as `after_id` to go on: every batch then starts where the last
        stopped instead of walking past the rows already done). A secret being destroyed
        concurrently is waited for (FOR UPDATE) and then, deleted, skipped; with `skip_locked`
        it is left for a later pass instead (a rotation's bulk pass must not queue behind
        erasures; its retirement step takes what is left)."""
        done, last = 0, after_id
        cond = KeySecret.kek_id != to_kek if from_kek is None else KeySecret.kek_id == from_kek
        while limit is None or done < limit:
            batch = _REWRAP_BATCH if limit is None else min(_REWRAP_BATCH, limit - done)
            rows = session.execute(
                select(
                    KeySecret.id,
                    KeySecret.kind,
                    KeySecret.dataset_id,
                    KeySecret.scope,
                    KeySecret.kek_id,
                    KeySecret.wrapped,
                )
                .where(cond, KeySecret.id > last)
                .order_by(KeySecret.id)
                .limit(batch)
                .with_for_update(skip_locked=skip_locked)
            ).all()
            if not rows:
                break
            ids, rewrapped = [], []
            for row_id, kind, dataset_id, scope, kek_id, wrapped in rows:
                ref = SecretRef(kind, dataset_id, scope)
                secret = self.unwrap(ref, kek_id, wrapped)
                kid, new_wrapped = self.provider.wrap(secret, aad=ref.aad())
                if kid != to_kek:
                    raise KeyProviderError(f"the current KEK is {kid}, not {to_kek}")
                ids.append(row_id)
                rewrapped.append(new_wrapped)
            # One statement per batch (an executemany of row updates is ten times slower).
            session.execute(_REWRAP_MANY, {"ids": ids, "kek": to_kek, "wrapped": rewrapped})
            done += len(ids)
            last = ids[-1]
        return done, last

    def rotate_kek(self, session: Session) -> tuple[str, int]:
        """Create a new KEK and rewrap every secret under it in the caller's transaction.

        Returns (new kek id, rows rewrapped). Retiring the old KEK is not done here: with any
        process holding it, that goes through `vault.final_erasure.FinalErasure`.
        """
        new_kek = self.provider.rotate()
        return new_kek, self.rewrap(session, to_kek=new_kek)[0]
