"""Checking what the vault says about itself: a recipient notice's signature, and a recorded
read's inclusion proof. Offline: the vault's public key and the ledger's root are all either
check needs, and the server signs and hashes with these same functions.

Recipient notices (GDPR Art. 17(2), 19): when an erasure (or a rectification, a restriction)
touches data a consumer received, the vault tells that consumer in a notice signed by its
ledger key (the `vault` member of the genesis, Ed25519). The signed body is canonical JSON
(keys sorted, no spaces, UTF-8) after a domain tag:

    {"v": 1, "notice": n, "chain_id", "consumer", "dataset", "kind", "records": [record ids],
     "accesses": {"purposes", "heights"}, "fact": {"type", "tx_id", "height"}, "issuer",
     "issued_at"}

It names the subject by nothing but the ids of the records concerned, which the consumer
received in its access answers: it matches them against what it holds (`records_concerned`),
while the notice, kept by the vault and sent over the network, does not name the pseudonym
(docs/SECURITY.md says why record ids and not a hash of the pseudonym). A consumer that got
only yes/no answers holds no record id: `accesses` gives the purposes and block heights of
its accesses to the subject's data, which its access receipts name.

Recorded reads (GDPR Art. 5(2)): `GET /v1/decryptions/{id}/proof` gives a read's fields, its
salt and its audit path under the root of a `read.record` on the ledger; `verify_read`
recomputes the leaf and checks the path, and the caller compares the root with the ledger's.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from ledger_bridge.crypto import verify as ed25519_verify
from vault.crypto import read_leaf
from vault.crypto.merkle import leaf_hash, verify_inclusion

NOTICE_DOMAIN = b"civis-vault/recipient-notice/v1\x00"
PACKAGE_DOMAIN = b"civis-vault/export-package/v1\x00"
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def canonical(body: Mapping[str, Any]) -> bytes:
    """A notice body's canonical bytes: sorted keys, no whitespace, UTF-8."""
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def notice_message(body: Mapping[str, Any]) -> bytes:
    """The bytes the vault's ledger key signs for a recipient notice."""
    return NOTICE_DOMAIN + canonical(body)


def package_message(package: Mapping[str, Any]) -> bytes:
    """The bytes the vault's ledger key signs for an export package: the package without its
    `signature`, as canonical JSON, after a domain tag (docs/EXPORT.md "Whose word")."""
    return PACKAGE_DOMAIN + canonical({k: v for k, v in package.items() if k != "signature"})


def _hex_bytes(value: str | bytes) -> bytes | None:
    if isinstance(value, bytes):
        return value
    try:
        return bytes.fromhex(value)
    except ValueError:
        return None


def verify_notice(notice: Mapping[str, Any], vault_key: str | bytes) -> bool:
    """Whether `notice` ({"body", "signature"}, as the feed and the webhook deliver it) is
    signed by `vault_key` (the vault member's public key, hex or 32 bytes): take that key
    from the genesis or the ledger's member list, not from the notice's own `issuer`."""
    body, signature = notice.get("body"), notice.get("signature")
    key = _hex_bytes(vault_key)
    sig = _hex_bytes(signature) if isinstance(signature, str | bytes) else None
    if not isinstance(body, Mapping) or key is None or sig is None:
        return False
    if len(key) != 32 or len(sig) != 64:
        return False
    return ed25519_verify(key, notice_message(body), sig)


def records_concerned(notice: Mapping[str, Any], held: Iterable[str]) -> set[str]:
    """The record ids among `held` (those the consumer received) that `notice` concerns."""
    listed = notice.get("body", {}).get("records", [])
    return {str(r) for r in held} & {str(r) for r in listed}


def read_leaf_hash(decryption: Mapping[str, Any], leaf_salt: str) -> bytes:
    """The leaf of a recorded read, from its fields as the proof route returns them."""
    at = dt.datetime.fromisoformat(str(decryption["at"]))
    return leaf_hash(
        read_leaf(
            salt=bytes.fromhex(leaf_salt),
            read_id=uuid.UUID(str(decryption["id"])).bytes,
            at_us=(at - _EPOCH) // dt.timedelta(microseconds=1),
            reader=str(decryption["reader"]),
            reader_role=str(decryption["reader_role"]),
            kind=str(decryption["kind"]),
            subject=str(decryption["subject"]),
            dataset_id=uuid.UUID(str(decryption["dataset_id"])).bytes,
            record_count=int(decryption["record_count"]),
        )
    )


def verify_read(answer: Mapping[str, Any], reads_root: bytes | None = None) -> bool:
    """Whether a read's proof (`GET /v1/decryptions/{id}/proof`) holds: its fields and salt
    make its leaf, and the audit path leads from it to the root; with `reads_root` (read from
    the ledger: the `read_record` query, or the block of the receipt), that root too."""
    proof, salt = answer.get("proof"), answer.get("leaf_salt")
    if not isinstance(proof, Mapping) or not isinstance(salt, str):
        return False
    root = bytes.fromhex(proof["reads_root"])
    if reads_root is not None and root != reads_root:
        return False
    return verify_inclusion(
        read_leaf_hash(answer["decryption"], salt),
        int(proof["leaf_index"]),
        int(proof["tree_size"]),
        [bytes.fromhex(h) for h in proof["audit_path"]],
        root,
    )
