"""DEKs for (upload, subject) pairs, derived from the key store on demand and cached briefly.

Why a cache: an upload or a read touches the same (upload, subject) pair many times; deriving
once per pair keeps the hot path to one AES-GCM call per record. The cache is bounded (an LRU),
so memory stays flat whatever the number of subjects, and it lives only as long as one call:
DEKs are never written anywhere.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable

from sqlalchemy.orm import Session

from vault.crypto import DataKey, derive_dek
from vault.keys import KeyStore, SecretRef, epoch_ref, subject_ref, upload_ref

CACHE_MAX = 10_000


class KeyRing:
    """Derives DEKs for one dataset. `create=True` (uploads) makes missing subject secrets."""

    def __init__(
        self, store: KeyStore, session: Session, dataset_id: uuid.UUID, *, create: bool
    ) -> None:
        self._store = store
        self._session = session
        self._dataset_id = dataset_id
        self._create = create
        self._secrets: OrderedDict[SecretRef, bytes] = OrderedDict()
        self._deks: OrderedDict[tuple[uuid.UUID, str], DataKey | None] = OrderedDict()
        self._shared: dict[tuple[uuid.UUID, str], tuple[bytes | None, bytes | None]] = {}

    def __repr__(self) -> str:
        return f"KeyRing(dataset={self._dataset_id}, ***)"

    def _remember(self, cache: OrderedDict[SecretRef, bytes], ref: SecretRef, v: bytes) -> None:
        cache[ref] = v
        cache.move_to_end(ref)
        while len(cache) > CACHE_MAX:
            cache.popitem(last=False)

    def prefetch(
        self, refs: Iterable[SecretRef], meanwhile: Callable[[], None] | None = None
    ) -> None:
        """Fetch (or create) many secrets in one round trip.

        `meanwhile`, if given, is called once the secrets are known here, while the key store
        stores the ones just created (`KeyStore.ensure`): DEKs derived in it are derived
        while the server works. If a concurrent transaction created some of them first, the
        DEKs derived so far are dropped and it is called again."""
        missing = []
        for ref in dict.fromkeys(refs):
            if ref in self._secrets:
                # Kept as recently used: secrets fetched for the rest must not push it out
                # before the caller derives from it.
                self._secrets.move_to_end(ref)
            else:
                missing.append(ref)
        calls = 0

        def known(got: dict[SecretRef, bytes]) -> None:
            nonlocal calls
            if calls:
                self._deks.clear()
                self._shared.clear()
            calls += 1
            for ref, secret in got.items():
                self._remember(self._secrets, ref, secret)
            if meanwhile is not None:
                meanwhile()

        if not missing:
            known({})
        elif self._create:
            self._store.ensure(self._session, missing, known)
        else:
            known(self._store.load(self._session, missing))

    def prefetch_subjects(
        self,
        upload_id: uuid.UUID,
        day_iso: str,
        subjects: Iterable[str],
        meanwhile: Callable[[], None] | None = None,
    ) -> None:
        """`prefetch` the secrets of these subjects' DEKs in this upload: afterwards (and in
        `meanwhile`) `dek_fresh` derives any of them from what is held here, with no statement,
        as long as they are fewer than `CACHE_MAX`."""
        refs = [upload_ref(self._dataset_id, upload_id), epoch_ref(self._dataset_id, day_iso)]
        refs.extend(subject_ref(self._dataset_id, s) for s in subjects)
        self.prefetch(refs, meanwhile)

    def dek(self, upload_id: uuid.UUID, day_iso: str, subject_id: str) -> DataKey | None:
        """The DEK, or None when any of its three secrets is destroyed (the scope is erased)."""
        return self.dek_fresh(upload_id, day_iso, subject_id)[0]

    def dek_fresh(
        self, upload_id: uuid.UUID, day_iso: str, subject_id: str
    ) -> tuple[DataKey | None, bool]:
        """The DEK and whether it was just derived (not served from the cache): an upload
        records the key commitment of each freshly derived (upload, subject) DEK."""
        key = (upload_id, subject_id)
        if key in self._deks:
            self._deks.move_to_end(key)
            return self._deks[key], False
        # The upload's and the epoch's secrets are shared by all of an upload's subjects:
        # looked up once per (upload, day), absent ones too, not three lookups per record.
        shared = self._shared.get((upload_id, day_iso))
        subject = subject_ref(self._dataset_id, subject_id)
        if shared is None or subject not in self._secrets:
            refs = [
                subject,
                upload_ref(self._dataset_id, upload_id),
                epoch_ref(self._dataset_id, day_iso),
            ]
            if any(r not in self._secrets for r in refs):
                self.prefetch(refs)
            if shared is None:
                shared = (self._secrets.get(refs[1]), self._secrets.get(refs[2]))
                self._shared[(upload_id, day_iso)] = shared
        u, e = shared
        s = self._secrets.get(subject)
        dek: DataKey | None = None
        if u is not None and s is not None and e is not None:
            dek = derive_dek(
                upload_secret=u,
                subject_secret=s,
                epoch_secret=e,
                upload_id=upload_id.bytes,
                subject_id=subject_id.encode(),
            )
        self._deks[key] = dek
        while len(self._deks) > CACHE_MAX:
            self._deks.popitem(last=False)
        return dek, True
