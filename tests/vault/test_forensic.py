"""Forensics on the real PostgreSQL: after erasure, nothing that decrypts the scope remains.

Invariant 2 of DESIGN.md, tested the way an auditor would: upload records carrying a unique
marker, erase them, rotate the KEK and retire the old one, VACUUM, then scan a `pg_dump` of the
database and the server's files (table, index and TOAST files, and the WAL) for the marker, for
every secret of the scope and for every DEK derived from them. Ciphertext may remain; keys may
not. A dump taken before the erasure (a backup) must not decrypt afterwards either.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import uuid
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from tests.vault.conftest import make_dataset
from vault import db
from vault.crypto import DataKey, DecryptionFailed, derive_dek
from vault.embedded import pg_binary
from vault.erasure import Eraser
from vault.final_erasure import FinalErasure
from vault.keys import KeyStore, LocalKeyProvider, SecretRef, epoch_ref, subject_ref, upload_ref
from vault.reads import Reader
from vault.uploads import RecordIn, Uploader, UploadResult


def _pg_dump(url: str) -> bytes:
    from sqlalchemy import make_url

    u = make_url(url)
    args = [str(pg_binary("pg_dump")), "--data-only", "--no-owner", "-d", u.database or ""]
    host = u.query.get("host") or u.host
    if host:
        args += ["-h", str(host)]
    args += ["-p", str(u.port or 5432), "-U", u.username or "postgres"]
    return subprocess.run(args, check=True, capture_output=True, timeout=120).stdout


def _server_files(engine: Engine) -> list[Path]:
    """Every file of the database's relations and the WAL, when this process can read them."""
    with engine.connect() as conn:
        data_dir = Path(str(conn.execute(text("SHOW data_directory")).scalar()))
        rels = conn.execute(
            text(
                "SELECT pg_relation_filepath(c.oid) FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname IN ('public', 'pg_toast') AND c.relkind IN ('r', 'i', 't') "
                "AND pg_relation_filepath(c.oid) IS NOT NULL"
            )
        ).scalars()
        conn.execute(text("CHECKPOINT"))
        files = [data_dir / p for p in rels]
    files += sorted((data_dir / "pg_wal").glob("0*"))
    out = []
    for f in files:
        out.extend(sorted(f.parent.glob(f.name + "*")) if f.parent.exists() else [])
    return [f for f in out if f.is_file()]


def _alice_secret_and_dek(
    engine: Engine, store: KeyStore, dataset_id: uuid.UUID, up: UploadResult
) -> tuple[bytes, DataKey]:
    """Alice's subject secret and the DEK of her records, read while they still exist."""
    # What an attacker would look for: alice's subject secret, and every secret and DEK of her
    # records (the upload and epoch secrets are shared with bob and stay alive, as they must).
    day = up.retention_day.isoformat()
    refs: list[SecretRef] = [
        subject_ref(dataset_id, "alice"),
        upload_ref(dataset_id, up.upload_id),
        epoch_ref(dataset_id, day),
    ]
    with Session(engine) as session:
        secrets = store.load(session, refs)
    dek = derive_dek(
        upload_secret=secrets[refs[1]],
        subject_secret=secrets[refs[0]],
        epoch_secret=secrets[refs[2]],
        upload_id=up.upload_id.bytes,
        subject_id=b"alice",
    )
    return secrets[refs[0]], dek


def _erase_alice_and_retire_the_kek(engine: Engine, store: KeyStore) -> None:
    """Erase alice, run a final-erasure cycle (KEK rotated, old one retired), VACUUM FULL."""
    with Session(engine) as session, session.begin():
        result = Eraser(store).erase_subject(session, "alice", reason="Art. 17", requester="dpo")
        assert result.secrets_destroyed == 1 and result.records_erased == 50
    cycle = FinalErasure(
        db.make_session_factory(engine),
        store,
        interval=dt.timedelta(days=1),
        instance_ttl_s=30,
    ).step(force=True)
    assert cycle is not None and cycle.finished and cycle.retired_keks == ["k1"]
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM FULL"))


def _assert_server_files_hold_none(
    engine: Engine, forbidden: dict[str, bytes], control: bytes
) -> None:
    """Scan the server's readable files: no forbidden needle, and the control is found."""
    files = [f for f in _server_files(engine) if _readable(f)]
    if files:  # readable when the server is local (embedded, or this machine's, as root)
        seen_control = False
        for f in files:
            blob = f.read_bytes()
            seen_control |= control in blob
            for name, needle in forbidden.items():
                assert needle not in blob, f"{name} found in {f}"
        assert seen_control, "the scan did not reach the key_secrets table file"


def test_erased_scope_leaves_no_key_and_no_plaintext(
    committed_engine: Engine, fresh_database_url: str, tmp_path: Path
) -> None:
    provider = LocalKeyProvider(tmp_path / "master.key")
    store = KeyStore(provider)
    marker = "FORENSIC-" + uuid.uuid4().hex
    with Session(committed_engine) as session, session.begin():
        dataset = make_dataset(session)
        dataset_id = dataset.id
        up = Uploader(store).upload(
            session,
            dataset_id,
            [RecordIn("alice", {"note": marker, "n": i}) for i in range(50)]
            + [RecordIn("bob", {"note": "kept", "n": i}) for i in range(50)],
        )
    alice_secret, dek = _alice_secret_and_dek(committed_engine, store, dataset_id, up)
    backup = _pg_dump(fresh_database_url)  # a backup taken before the erasure

    _erase_alice_and_retire_the_kek(committed_engine, store)

    forbidden = {
        "marker": marker.encode(),
        "subject secret": alice_secret,
        "DEK": dek._key,
        "DEK hex": dek._key.hex().encode(),
        "subject secret hex": alice_secret.hex().encode(),
    }
    dump = _pg_dump(fresh_database_url)
    # Positive control: the scanner does see live key-store rows (bob's wrapped secret).
    with Session(committed_engine) as session:
        bob_wrapped = session.execute(
            text("SELECT wrapped FROM key_secrets WHERE kind = 'subject' AND scope = 'bob'")
        ).scalar_one()
    assert bob_wrapped.hex().encode() in dump
    for name, needle in forbidden.items():
        assert needle not in dump, f"{name} found in pg_dump"
        assert needle not in backup, f"{name} found in the pre-erasure backup"
    _assert_server_files_hold_none(committed_engine, forbidden, bob_wrapped)

    # The backup's wrapped secrets no longer unwrap: the KEK they were wrapped under is retired.
    wrapped_rows = _wrapped_from_dump(backup)
    assert wrapped_rows, "the backup should hold wrapped secrets"
    for kind, dataset_text, scope, kek_id, wrapped in wrapped_rows:
        ref = SecretRef(kind, uuid.UUID(dataset_text), scope)
        with pytest.raises(DecryptionFailed):
            provider.unwrap(kek_id, wrapped, aad=ref.aad())

    # Outside the scope, everything still decrypts.
    with Session(committed_engine) as session:
        left = list(Reader(store).by_dataset(session, dataset_id))
        assert len(left) == 50 and all(json.loads(r.payload)["note"] == "kept" for r in left)


def _readable(path: Path) -> bool:
    try:
        path.open("rb").close()
    except OSError:
        return False
    return True


def _wrapped_from_dump(dump: bytes) -> list[tuple[str, str, str, str, bytes]]:
    """Parse the key_secrets COPY block of a plain-text pg_dump."""
    rows = []
    in_block = False
    for line in dump.decode().splitlines():
        if line.startswith("COPY public.key_secrets "):
            in_block = True
            continue
        if in_block:
            if line == "\\.":
                break
            _id, kind, dataset_id, scope, kek_id, wrapped, _created = line.split("\t")
            rows.append((kind, dataset_id, scope, kek_id, bytes.fromhex(wrapped[3:])))
    return rows
