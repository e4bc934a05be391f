"""The forensic attack on a vault's host: decrypt an erased record from the database's files.

What an attacker who got the host (or a copy of its disk) holds: the PostgreSQL data directory
(table and index files, the WAL), a `pg_dump`, and the master key file beside them. What they
know: whom they are after (the subject's pseudonym, the dataset, the upload). The attack:

1. every window of 32..80 bytes that PostgreSQL could have stored as one bytea value (after
   a 1-byte varlena header giving that length: how heap tuples, and the WAL records and page
   images that copy them, store values under 127 bytes), and every bytea value of that
   length in the dump, is tried as a wrapped secret, under every KEK in the master key file,
   for the target's scope (`subject|dataset|pseudonym`);
2. with the subject's secret found, and the upload's and the epoch's (live, unwrapped from the
   dump's key_secrets rows with the same KEKs), the DEK is derived;
3. every record envelope in the files (a value starting with version 1, key version 1) is
   opened with that DEK, for every record id of the upload.

A success is the erased plaintext. `tests/api/test_final_erasure_up.py` runs it on a real
`civis-vault up`: it must succeed after the erasure is recorded and fail once it is final,
while the same scan still opens a subject who was not erased (the control).
"""

from __future__ import annotations

import re
import subprocess
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import Engine, make_url, text

from vault.crypto import DataKey, DecryptionFailed, KeyWrapper, derive_dek, unseal
from vault.embedded import pg_binary
from vault.keys import SecretRef

WINDOW_LENGTHS = range(32, 81)
# A short (1-byte) varlena header: (total length including the header) << 1 | 1. PostgreSQL
# stores every bytea value under 127 bytes so in a heap tuple (and the WAL copies tuples and
# pages as they are); longer ones get a 4-byte header, which no value of these lengths has.
_SHORT_HEADERS = {((n + 1) << 1) | 1: n for n in range(1, 126)}
# One regex per length, the window in a lookahead group: overlapping windows, found in C.
_WINDOWS = [
    re.compile(re.escape(bytes([((n + 1) << 1) | 1])) + b"(?=(.{%d}))" % n, re.DOTALL)
    for n in WINDOW_LENGTHS
]
_ENVELOPE_START = b"\x01\x00\x01"  # envelope version 1, key version 1
_DUMP_BYTEA = re.compile(rb"\\\\x([0-9a-f]+)")
# How the local key provider wraps (vault.crypto.KeyWrapper): nonce (12) | AES-256-GCM
# ciphertext || tag, the scope as associated data after this prefix. Written out here so the
# attack runs at the speed of the primitive; `unwrap_targets` checks it against KeyWrapper.
WRAP_AAD_PREFIX = b"civis-vault/wrap/v1"


def short_windows(blob: bytes) -> set[bytes]:
    """Every value of 32..80 bytes PostgreSQL could have stored in `blob` (deduplicated)."""
    out: set[bytes] = set()
    for pattern in _WINDOWS:
        out.update(pattern.findall(blob))
    return out


def envelopes(blob: bytes) -> set[bytes]:
    """Every value in `blob` that starts like a record envelope, whatever its length."""
    out: set[bytes] = set()
    at = blob.find(_ENVELOPE_START)
    while at != -1:
        header = blob[at - 1] if at else 0
        n = _SHORT_HEADERS.get(header)
        if n is not None and n >= len(_ENVELOPE_START) + 28:
            out.add(blob[at : at + n])
        at = blob.find(_ENVELOPE_START, at + 1)
    return out


def dump_values(dump: bytes) -> Iterator[bytes]:
    """The bytea values of a plain-text pg_dump (COPY's `\\\\x...` hex)."""
    for m in _DUMP_BYTEA.finditer(dump):
        yield bytes.fromhex(m.group(1).decode())


@dataclass
class Evidence:
    """What the attacker reads off the host: files, a dump, the master key file's KEKs."""

    blobs: dict[str, bytes] = field(default_factory=dict)  # file name -> content
    values: set[bytes] = field(default_factory=set)  # exact values (a dump's bytea)
    keks: dict[str, bytes] = field(default_factory=dict)

    def windows(self) -> Iterator[bytes]:
        """The candidate windows, the dump's values first, then file by file in the order
        given (the key store's files first: found early, the attack stops early), each
        once."""
        seen = {v for v in self.values if len(v) in WINDOW_LENGTHS}
        yield from seen
        for blob in self.blobs.values():
            fresh = short_windows(blob) - seen
            seen |= fresh
            yield from fresh

    def envelopes(self) -> set[bytes]:
        out = {v for v in self.values if v.startswith(_ENVELOPE_START)}
        for blob in self.blobs.values():
            out |= envelopes(blob)
        return out


def unwrap_targets(
    windows: Iterable[bytes],
    keks: dict[str, bytes],
    targets: dict[str, SecretRef],
    witnesses: dict[str, bytes] | None = None,
) -> dict[str, bytes]:
    """For each target scope: a secret some window unwraps to under some KEK (stops once
    every target is found); `witnesses` gets the window that opened each."""
    probe = KeyWrapper(b"\x00" * 32).wrap(b"\x01" * 32, b"probe")
    assert AESGCM(b"\x00" * 32).decrypt(probe[:12], probe[12:], WRAP_AAD_PREFIX + b"probe")
    ciphers = [AESGCM(k) for k in keks.values()]
    aads = {name: WRAP_AAD_PREFIX + ref.aad() for name, ref in targets.items()}
    found: dict[str, bytes] = {}
    for window in windows:
        nonce, body = window[:12], window[12:]
        for name, aad in aads.items():
            if name in found:
                continue
            for cipher in ciphers:
                try:
                    found[name] = cipher.decrypt(nonce, body, aad)
                except InvalidTag:
                    continue
                if witnesses is not None:
                    witnesses[name] = window
                break
        if len(found) == len(aads):
            break
    return found


@dataclass(frozen=True)
class Target:
    """A subject's records in one upload, as the attacker knows them."""

    subject: str
    dataset: uuid.UUID
    upload: uuid.UUID
    day: str  # the upload's retention day (ISO)
    record_ids: tuple[uuid.UUID, ...]


def decrypt_records(
    evidence: Evidence, target: Target, shared: tuple[bytes, bytes], subject_secret: bytes
) -> list[bytes]:
    """Open every envelope in the evidence with the target's DEK (`shared`: the upload's and
    the epoch's secrets)."""
    dek: DataKey = derive_dek(
        upload_secret=shared[0],
        subject_secret=subject_secret,
        epoch_secret=shared[1],
        upload_id=target.upload.bytes,
        subject_id=target.subject.encode(),
    )
    opened = []
    for envelope in evidence.envelopes():
        for record_id in target.record_ids:
            try:
                opened.append(
                    unseal(
                        dek,
                        envelope,
                        record_id=record_id.bytes,
                        dataset_id=target.dataset.bytes,
                        upload_id=target.upload.bytes,
                    )
                )
            except DecryptionFailed:
                continue
            break
    return opened


def server_files(engine: Engine) -> dict[str, bytes]:
    """Every file of the database's relations (tables, indexes, TOAST; the key store's
    first) and the WAL, after a CHECKPOINT (what reaches the disk), as the host's root reads
    them."""
    with engine.connect() as conn:
        # The scan reads values as PostgreSQL wrote them: compressed page images in the WAL
        # would need decompressing first, so make sure there are none.
        assert conn.execute(text("SHOW wal_compression")).scalar() == "off"
        conn.execute(text("CHECKPOINT"))
        data_dir = Path(str(conn.execute(text("SHOW data_directory")).scalar()))
        rels = conn.execute(
            text(
                "SELECT pg_relation_filepath(c.oid) FROM pg_class c "
                "WHERE c.relkind IN ('r', 'i', 't') AND pg_relation_filepath(c.oid) IS NOT NULL "
                "ORDER BY c.relname <> 'key_secrets', c.oid"
            )
        ).scalars()
        paths = [data_dir / p for p in rels]
    files: list[Path] = []
    for p in paths:
        files.extend(sorted(p.parent.glob(p.name + "*")))
    files += sorted((data_dir / "pg_wal").glob("0*"))
    return {str(f): f.read_bytes() for f in files if f.is_file()}


def pg_dump(url: str) -> bytes:
    u = make_url(url)
    args = [str(pg_binary("pg_dump")), "--data-only", "--no-owner", "-d", u.database or ""]
    host = u.query.get("host") or u.host
    if host:
        args += ["-h", str(host)]
    args += ["-p", str(u.port or 5432), "-U", u.username or "postgres"]
    return subprocess.run(args, check=True, capture_output=True, timeout=120).stdout
