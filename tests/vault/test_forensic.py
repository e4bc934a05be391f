"""Forensics on the real PostgreSQL: after erasure, nothing that decrypts the scope remains.

Invariant 2 of DESIGN.md, tested the way an auditor would: upload records carrying a unique
marker, erase them, rotate the KEK and retire the old one, VACUUM, then look in a `pg_dump` of
the database, the live key store and the server's files (table, index and TOAST files, and
the WAL) for what would open the scope. The marker, the subject's secret and the DEKs are
never stored in clear, so their absence alone proves little: what is stored is the subject's
WRAPPED secret, and that is what the test tracks. It is in the backup taken before the
erasure (the control that the scan finds it), and afterwards in no dump, no live row and no
table file; the copies the WAL and the backup still hold no longer unwrap with any KEK of the
master key file, by the attack of tests/vault/forensics.py, which before the retirement opens
them and afterwards still opens the subject who was not erased (the controls).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from tests.vault import forensics
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


def _live_wrapped(engine: Engine, subject: str) -> list[bytes]:
    """The subject's wrapped secrets as the live key store holds them."""
    with Session(engine) as session:
        return list(
            session.execute(
                text("SELECT wrapped FROM key_secrets WHERE kind = 'subject' AND scope = :s"),
                {"s": subject},
            ).scalars()
        )


def _keks(master_key: Path) -> dict[str, bytes]:
    """Every KEK the master key file holds: what an attacker with the host's disk has."""
    doc = json.loads(master_key.read_text())
    return {kid: base64.b64decode(k) for kid, k in doc["keks"].items()}


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


def _assert_backup_unwraps(provider: LocalKeyProvider, backup: bytes, alice: bytes) -> None:
    """The control for the backup check below: while its KEK lives, every wrapped secret the
    backup holds, parsed as that check parses them, unwraps, alice's to her secret."""
    rows = _wrapped_from_dump(backup)
    assert any(kind == "subject" and scope == "alice" for kind, _, scope, _, _ in rows)
    for kind, dataset_text, scope, kek_id, wrapped in rows:
        ref = SecretRef(kind, uuid.UUID(dataset_text), scope)
        secret = provider.unwrap(kek_id, wrapped, aad=ref.aad())
        if (kind, scope) == ("subject", "alice"):
            assert secret == alice


def _attack(
    evidence: forensics.Evidence, master_key: Path, dataset_id: uuid.UUID
) -> dict[str, bytes]:
    """The subject secrets of alice and bob that some stored value unwraps to, under any KEK
    the master key file holds (tests/vault/forensics.py)."""
    targets = {who: subject_ref(dataset_id, who) for who in ("alice", "bob")}
    return forensics.unwrap_targets(evidence.windows(), _keks(master_key), targets)


def _server_files_or_skip(engine: Engine) -> dict[str, bytes]:
    """The server's relation files and WAL (forensics.server_files). Only a server this
    process cannot read (`CIVIS_TEST_DATABASE_URL` naming another host's, or one whose data
    directory is closed to this user) skips the scan, by name: the embedded server's files
    are always readable, and finding none of them is a failure."""
    try:
        files = forensics.server_files(engine)
    except PermissionError as exc:
        if os.environ.get("CIVIS_TEST_DATABASE_URL"):
            pytest.skip(f"the external test server's files are not readable here: {exc}")
        raise
    if not files and os.environ.get("CIVIS_TEST_DATABASE_URL"):
        pytest.skip("the external test server's data directory is not on this machine")
    assert files, "no file of the server was found"
    return files


def _assert_files_hold_none(
    files: dict[str, bytes], forbidden: dict[str, bytes], wrapped: bytes, control: bytes
) -> None:
    """No forbidden needle in any file, nor alice's wrapped secret in a table or index file;
    bob's wrapped secret, as the key_secrets table file holds it, is found (the control).
    The WAL may still hold alice's wrapped secret: that copy is the attack's to try."""
    assert any(control in blob for blob in files.values()), "the scan missed key_secrets"
    for name, blob in files.items():
        for what, needle in forbidden.items():
            assert needle not in blob, f"{what} found in {name}"
        if "/pg_wal/" not in name:
            assert wrapped not in blob, f"alice's wrapped secret found in {name}"


def test_erased_scope_leaves_no_key_and_no_plaintext(
    committed_engine: Engine, fresh_database_url: str, tmp_path: Path
) -> None:
    master_key = tmp_path / "master.key"
    provider = LocalKeyProvider(master_key)
    store = KeyStore(provider)
    marker = "FORENSIC-" + uuid.uuid4().hex
    with Session(committed_engine) as session, session.begin():
        dataset_id = make_dataset(session).id
        up = Uploader(store).upload(
            session,
            dataset_id,
            [RecordIn("alice", {"note": marker, "n": i}) for i in range(50)]
            + [RecordIn("bob", {"note": "kept", "n": i}) for i in range(50)],
        )
    alice_secret, dek = _alice_secret_and_dek(committed_engine, store, dataset_id, up)
    [alice_wrapped] = _live_wrapped(committed_engine, "alice")
    backup = _pg_dump(fresh_database_url)  # a backup taken before the erasure

    # Controls, before the erasure: the scan finds alice's wrapped secret where it is, and
    # both the backup check and the attack open it while its KEK lives.
    assert alice_wrapped.hex().encode() in backup
    _assert_backup_unwraps(provider, backup, alice_secret)
    before = forensics.Evidence(values=set(forensics.dump_values(backup)))
    assert _attack(before, master_key, dataset_id)["alice"] == alice_secret

    _erase_alice_and_retire_the_kek(committed_engine, store)

    forbidden = {
        "marker": marker.encode(),
        "subject secret": alice_secret,
        "subject secret hex": alice_secret.hex().encode(),
        "DEK": dek._key,
        "DEK hex": dek._key.hex().encode(),
    }
    dump = _pg_dump(fresh_database_url)
    [bob_wrapped] = _live_wrapped(committed_engine, "bob")
    assert bob_wrapped.hex().encode() in dump  # the control: live key-store rows are dumped
    assert _live_wrapped(committed_engine, "alice") == [], "alice's secret is still stored"
    in_dump = {**forbidden, "wrapped subject secret": alice_wrapped.hex().encode()}
    for name, needle in in_dump.items():
        assert needle not in dump, f"{name} found in pg_dump"

    # The backup's wrapped secrets no longer unwrap: the KEK they were wrapped under is retired.
    for kind, dataset_text, scope, kek_id, wrapped in _wrapped_from_dump(backup):
        ref = SecretRef(kind, uuid.UUID(dataset_text), scope)
        with pytest.raises(DecryptionFailed):
            provider.unwrap(kek_id, wrapped, aad=ref.aad())
    # Nor does anything in the new dump or the backup under any KEK the host still holds; the
    # same attack opens bob's secret (rewrapped, live).
    after = forensics.Evidence(
        values=set(forensics.dump_values(dump)) | set(forensics.dump_values(backup))
    )
    assert set(_attack(after, master_key, dataset_id)) == {"bob"}

    # Outside the scope, everything still decrypts.
    with Session(committed_engine) as session:
        left = list(Reader(store).by_dataset(session, dataset_id))
        assert len(left) == 50 and all(json.loads(r.payload)["note"] == "kept" for r in left)

    # Last, as it may skip (a server whose files this process cannot read): the files.
    files = _server_files_or_skip(committed_engine)
    _assert_files_hold_none(files, forbidden, alice_wrapped, bob_wrapped)
    assert set(_attack(forensics.Evidence(blobs=files), master_key, dataset_id)) == {"bob"}


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
