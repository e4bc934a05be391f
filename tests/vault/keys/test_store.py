"""The key store on PostgreSQL: ensure, destroy, KEK rotation without touching ciphertext."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import Engine, func, select, text
from sqlalchemy.orm import Session

from tests.vault.conftest import VaultServices, make_dataset
from vault.crypto import DecryptionFailed
from vault.keys import KeyProvider, KeyStore, SecretRef, subject_ref, upload_ref
from vault.models import KeySecret, Record
from vault.reads import Reader
from vault.uploads import RecordIn, Uploader


class _Services:
    """The library services over a given provider (tests/vault/conftest.py fixes the local one)."""

    def __init__(self, provider: KeyProvider) -> None:
        self.provider = provider
        self.store = KeyStore(provider)
        self.uploader = Uploader(self.store, record_size_max_bytes=4096, batch_rows=64)
        self.reader = Reader(self.store)


def test_ensure_is_idempotent_and_destroy_removes(
    session: Session, services: VaultServices
) -> None:
    store = services.store
    d = uuid.uuid4()
    refs = [subject_ref(d, "alice"), subject_ref(d, "bob"), upload_ref(d, uuid.uuid4())]
    first = store.ensure(session, refs)
    assert store.ensure(session, refs) == first
    assert len(set(first.values())) == 3
    assert store.destroy(session, [refs[0]]) == [refs[0]]
    assert store.destroy(session, [refs[0]]) == []
    assert set(store.load(session, refs)) == set(refs[1:])
    # A new secret for the same scope is a different secret, not the old one resurrected.
    assert store.ensure(session, [refs[0]])[refs[0]] != first[refs[0]]


def test_rotation_rewraps_without_touching_ciphertext(
    session: Session, any_provider: KeyProvider
) -> None:
    """KEK rotation without re-encrypting records, on both providers (local file, PKCS#11)."""
    services = _Services(any_provider)
    dataset = make_dataset(session)
    records = [RecordIn(f"subject-{i % 5}", {"n": i}) for i in range(20)]
    result = services.uploader.upload(session, dataset.id, records)
    envelopes_before = session.scalars(select(Record.envelope).order_by(Record.id)).all()
    rows_before = session.execute(
        select(KeySecret.kind, KeySecret.dataset_id, KeySecret.scope, KeySecret.wrapped)
    ).all()
    wrapped_before = {w for *_, w in rows_before}
    assert all(
        services.provider.unwrap(
            services.provider.current_kek_id(), w, aad=SecretRef(k, d, s).aad()
        )
        for k, d, s, w in rows_before
    )
    old_kek = services.provider.current_kek_id()

    new_kek, count = services.store.rotate_kek(session)
    assert count == 5 + 1 + 1  # five subjects, the upload, the retention epoch
    services.provider.retire(old_kek)  # one process, nothing else holds it: no protocol needed
    assert services.provider.kek_ids() == [new_kek]
    assert set(session.scalars(select(KeySecret.kek_id))) == {new_kek}
    assert not wrapped_before & set(session.scalars(select(KeySecret.wrapped)))
    assert session.scalars(select(Record.envelope).order_by(Record.id)).all() == envelopes_before
    payloads = [r.payload for r in services.reader.by_dataset(session, dataset.id)]
    assert sorted(payloads) == sorted(f'{{"n":{i}}}'.encode() for i in range(20))
    assert result.record_count == 20
    # An old wrapped secret (say, from a backup) no longer unwraps under any KEK.
    for kind, dataset_id, scope, wrapped in rows_before:
        for kek in [*services.provider.kek_ids(), old_kek]:
            with pytest.raises(DecryptionFailed):
                services.provider.unwrap(kek, wrapped, aad=SecretRef(kind, dataset_id, scope).aad())
    assert session.scalar(select(func.count()).select_from(KeySecret)) == 7


def test_two_transactions_creating_the_same_secrets_in_opposite_orders_do_not_deadlock(
    committed_engine: Engine, services: VaultServices
) -> None:
    """Each insert locks its rows' keys one after the other. Given the same new refs in
    opposite orders, two transactions would each hold a key the other waits for; the store
    inserts in one order (a trigger slows each row, so that the two interleave every time)."""
    with committed_engine.begin() as conn:
        conn.execute(
            text(
                "CREATE FUNCTION slow_row() RETURNS trigger LANGUAGE plpgsql AS"
                " $$ BEGIN PERFORM pg_sleep(0.2); RETURN NEW; END $$"
            )
        )
        conn.execute(
            text(
                "CREATE TRIGGER slow_row BEFORE INSERT ON key_secrets"
                " FOR EACH ROW EXECUTE FUNCTION slow_row()"
            )
        )
    d = uuid.uuid4()
    refs = [subject_ref(d, name) for name in ("alice", "bob", "carol")]
    results: dict[str, dict[SecretRef, bytes]] = {}

    def ensure(order: list[SecretRef], name: str) -> None:
        with Session(committed_engine) as session, session.begin():
            results[name] = services.store.ensure(session, order)

    with ThreadPoolExecutor(2) as pool:
        runs = [
            pool.submit(ensure, refs, "forward"),
            pool.submit(ensure, refs[::-1], "backward"),
        ]
        for run in runs:
            run.result()  # a deadlock would raise here in one of them
    assert results["forward"] == results["backward"]
    with Session(committed_engine) as session:
        assert services.store.load(session, refs) == results["forward"]
